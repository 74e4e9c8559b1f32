"""QEMU's control channel (QMP) and the streams that save a guest to a file and load it back.

QMP runs over one end of a socketpair whose other end QEMU inherits, so no socket file
exists that another local user could connect to and drive the guest through. A saved guest
is QEMU's migration stream compressed by zstd: on save QEMU writes into a pipe (handed over
with SCM_RIGHTS) that zstd reads; on restore zstd decompresses into a pipe QEMU inherits,
while a thread checks the file's sha256 against the one recorded when it was saved. Both
programs are ours to wait for, so a file is never taken as complete before zstd has exited.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpfcompat.errors import SnapshotError, VMError
from bpfcompat.vm.proc import die_with_parent

ZSTD = "zstd"
# QMP answers are small; a line over this is not QEMU talking.
MAX_QMP_LINE = 1 << 20
# QEMU's default migration bandwidth cap is for live migration over a network; a stopped
# guest saved to a local pipe should go as fast as zstd takes it.
SAVE_BANDWIDTH = 1 << 40


def zstd_problem() -> str | None:
    """Why snapshots cannot be used on this host, or None."""
    return None if shutil.which(ZSTD) else "zstd not found (apt-get install zstd)"


class Qmp:
    """A QMP client on our end of the socketpair; events are kept, not interpreted."""

    def __init__(self, sock: socket.socket, where: str) -> None:
        self.sock = sock
        self.where = where
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        self._ready = False

    def _line(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VMError(f"{self.where}: QEMU's monitor did not answer in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise VMError(f"{self.where}: QEMU's monitor failed: {exc}") from None
            if not chunk:
                raise VMError(f"{self.where}: QEMU closed its monitor")
            self._buffer += chunk
            if len(self._buffer) > MAX_QMP_LINE:
                raise VMError(f"{self.where}: QEMU's monitor sent a line over {MAX_QMP_LINE} bytes")
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError:
            raise VMError(f"{self.where}: QEMU's monitor sent something not JSON") from None
        if not isinstance(message, dict):
            raise VMError(f"{self.where}: QEMU's monitor sent something not an object")
        return message

    def execute(
        self, command: str, deadline: float, fds: tuple[int, ...] = (), **arguments: Any
    ) -> Any:
        """Run one command; its `return` value, or SnapshotError with QEMU's own words."""
        if not self._ready:
            self._line(deadline)  # the greeting
            self._ready = True
            self.execute("qmp_capabilities", deadline)
        payload = json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n"
        try:
            if fds:
                socket.send_fds(self.sock, [payload], list(fds))
            else:
                self.sock.sendall(payload)
        except OSError as exc:
            raise VMError(f"{self.where}: QEMU's monitor failed: {exc}") from None
        while True:
            message = self._line(deadline)
            if "event" in message:
                if len(self.events) < 100:
                    self.events.append(message)
                continue
            if "error" in message:
                error = message["error"]
                desc = error.get("desc") if isinstance(error, dict) else error
                raise SnapshotError(f"QEMU refused {command}: {str(desc)[:300]}")
            return message.get("return")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def wait_migration(qmp: Qmp, deadline: float, alive: Any) -> dict[str, Any]:
    """Poll until the migration (either direction) completes; SnapshotError if it fails."""
    while True:
        alive()
        state = qmp.execute("query-migrate", deadline) or {}
        status = state.get("status")
        if status == "completed":
            return state
        if status in ("failed", "cancelled"):
            why = state.get("error-desc") or status
            raise SnapshotError(f"migration {status}: {str(why)[:300]}")
        if time.monotonic() > deadline:
            raise SnapshotError(f"migration still {status or 'starting'} at the deadline")
        time.sleep(0.005)


def _popen(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """zstd, killed with this process as QEMU is, so a killed run leaves neither behind."""
    parent = os.getpid()
    try:
        return subprocess.Popen(
            cmd, stderr=subprocess.PIPE, preexec_fn=lambda: die_with_parent(parent), **kwargs
        )
    except OSError as exc:
        raise SnapshotError(f"{cmd[0]}: {exc.strerror or exc}") from None


def _finished(proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    try:
        proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise SnapshotError(f"{what}: zstd did not finish") from None
    err = proc.stderr.read(2000).decode("utf-8", "replace").strip() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise SnapshotError(f"{what}: zstd exit {proc.returncode}: {err[-300:]}")


class _ZstdPipe:
    """A zstd process on one end of a pipe whose other end (`fd_for_qemu`) QEMU gets."""

    fd_for_qemu: int
    proc: subprocess.Popen[bytes]

    def handed_over(self) -> None:
        """QEMU holds its own copy now; ours would keep zstd from ever seeing the end."""
        if self.fd_for_qemu >= 0:
            os.close(self.fd_for_qemu)
            self.fd_for_qemu = -1

    def abort(self) -> None:
        self.handed_over()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


class SaveStream(_ZstdPipe):
    """zstd compressing what QEMU writes into `fd_for_qemu`, into `path`."""

    def __init__(self, path: Path) -> None:
        read_end, self.fd_for_qemu = os.pipe()
        try:
            with path.open("xb") as out:
                self.proc = _popen([ZSTD, "-q", "-1", "-c"], stdin=read_end, stdout=out)
        finally:
            os.close(read_end)
        self.path = path

    def finish(self, deadline: float) -> None:
        self.handed_over()
        _finished(self.proc, f"saving to {self.path.name}", deadline - time.monotonic())


@dataclass(frozen=True)
class SavedGuest:
    """A compressed migration stream on disk and what it must hash to."""

    path: Path
    size: int
    sha256: str


class RestoreStream(_ZstdPipe):
    """zstd decompressing `saved` into a pipe QEMU reads (`fd_for_qemu`), its sha256
    checked by a thread meanwhile."""

    def __init__(self, saved: SavedGuest) -> None:
        self.saved = saved
        try:
            size = saved.path.stat().st_size
        except OSError as exc:
            raise SnapshotError(f"{saved.path}: {exc.strerror or exc}") from None
        if size != saved.size:
            raise SnapshotError(f"{saved.path.name} is {size} bytes, {saved.size} recorded")
        self.fd_for_qemu, write_end = os.pipe()
        try:
            self.proc = _popen([ZSTD, "-dc", "-q", "--", str(saved.path)], stdout=write_end)
        finally:
            os.close(write_end)
        self._digest: str | None = None
        self._error: str | None = None
        self._thread = threading.Thread(target=self._hash, name="bpfc-snapshot-hash", daemon=True)
        self._thread.start()

    def _hash(self) -> None:
        digest = hashlib.sha256()
        try:
            with self.saved.path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            self._error = f"{self.saved.path.name}: {exc.strerror or exc}"
            return
        self._digest = digest.hexdigest()

    def finish(self, deadline: float) -> None:
        """After QEMU loaded the stream: zstd ended cleanly and the file is the one saved."""
        self.handed_over()
        self._thread.join(max(deadline - time.monotonic(), 1.0))
        if self._error:
            raise SnapshotError(self._error)
        if self._digest != self.saved.sha256:
            raise SnapshotError(f"{self.saved.path.name}: sha256 is not the one recorded")
        _finished(self.proc, f"restoring {self.saved.path.name}", deadline - time.monotonic())
