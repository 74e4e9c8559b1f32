"""What the validator keeps across runs in one boot (probe results) and what the kernel logs
while it runs (lockdown refusals).
"""

from __future__ import annotations

import contextlib
import json
import os
import re

from .limits import KMSG_MAX_RECORDS, KMSG_RECORD_BYTES, LOCKDOWN_DENIALS_MAX
from .util import decode, read_text, write_atomic

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any

CACHE_DIR = "/tmp/bpfcompat-validator-cache"


class BootCache:
    """Per-boot cache in /tmp so that many validator runs in one guest boot probe once.

    Keyed by /proc/sys/kernel/random/boot_id plus whatever else the entry depends on
    (bpftool binary, libbpf version). Only conclusive results are stored. The directory
    must be ours (owner and mode) before anything in it is trusted.
    """

    def __init__(self) -> None:
        self.boot_id = (read_text("/proc/sys/kernel/random/boot_id") or "").strip() or None
        self.usable = False
        if not self.boot_id:
            return
        try:
            os.makedirs(CACHE_DIR, mode=0o700, exist_ok=True)
            st = os.stat(CACHE_DIR)
            self.usable = st.st_uid == os.geteuid() and not st.st_mode & 0o022
        except OSError:
            self.usable = False

    def _path(self, name: str) -> str:
        return os.path.join(CACHE_DIR, f"{name}-{self.boot_id}.json")

    def get(self, name: str, key: str) -> Any:
        if not self.usable:
            return None
        try:
            with open(self._path(name), "rb") as handle:
                entry = json.loads(handle.read())
        except (OSError, ValueError):
            return None
        if isinstance(entry, dict) and entry.get("key") == key:
            return entry.get("value")
        return None

    def put(self, name: str, key: str, value: Any) -> None:
        if not self.usable:
            return
        with contextlib.suppress(OSError):
            write_atomic(self._path(name), json.dumps({"key": key, "value": value}).encode())


# Kernel log: lockdown refusals (security/lockdown/lockdown.c lockdown_is_locked_down(),
# "Lockdown: <comm>: <what> is restricted; see man kernel_lockdown.7"; before 5.4 the
# distribution patches printed it without the comm). Rate-limited by the kernel.
KMSG_PATH = "/dev/kmsg"

_LOCKDOWN_DENIAL_RE = re.compile(r"^Lockdown: .+ is restricted; see man kernel_lockdown\.7")


class KernelLog:
    """Kernel log records written while the validator runs, read from /dev/kmsg.

    The descriptor is opened non-blocking and moved to the end of the log at the start of
    the run, so reading it at the end returns only what the kernel said in between (each
    read() is one record; EAGAIN means no more, EPIPE that records were overwritten before
    they were read). Nothing is consumed: /dev/kmsg readers each have their own position.
    """

    def __init__(self) -> None:
        self.fd: int | None = None
        self.error: str | None = None
        self.lost = False
        try:
            flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
            self.fd = os.open(KMSG_PATH, flags)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as exc:
            self.error = f"cannot read {KMSG_PATH}: {exc.strerror or exc}"
            self.close()

    def messages(self, limit: int = KMSG_MAX_RECORDS) -> list[str]:
        """The text of each record since the start (first line only), at most ``limit``."""
        texts: list[str] = []
        while self.fd is not None and len(texts) < limit:
            try:
                record = os.read(self.fd, KMSG_RECORD_BYTES)
            except BlockingIOError:
                break
            except BrokenPipeError:
                self.lost = True
                continue
            except OSError as exc:
                self.error = f"reading {KMSG_PATH}: {exc.strerror or exc}"
                break
            if not record:
                break
            _prefix, _sep, text = decode(record).partition(";")
            texts.append(text.split("\n", 1)[0])
        return texts

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def lockdown_denials(messages: list[str], limit: int = LOCKDOWN_DENIALS_MAX) -> list[str]:
    """The distinct lockdown refusal lines among kernel log messages, first ``limit``."""
    found: dict[str, None] = {}
    for text in messages:
        if len(found) < limit and _LOCKDOWN_DENIAL_RE.match(text):
            found[text.strip()] = None
    return list(found)
