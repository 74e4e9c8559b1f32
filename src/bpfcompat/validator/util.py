"""Small pure helpers every step uses: bounded text, /proc reads, atomic writes, mounts."""

from __future__ import annotations

import ctypes
import os
import time


def tail_text(text: str, limit: int) -> str:
    """The last ``limit`` characters of ``text``, starting at a line boundary."""
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    newline = cut.find("\n")
    if 0 <= newline < len(cut) - 1:
        cut = cut[newline + 1 :]
    return cut


def decode(raw: bytes | None) -> str:
    """Bytes from C (names, logs) to text that always serialises as valid JSON."""
    return raw.decode("utf-8", "replace") if raw else ""


def utc_timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%03dZ" % int(now % 1 * 1000)


def read_text(path: str, limit: int = 1 << 16) -> str | None:
    """Read a small /proc or /sys file; None if it is not there or not readable."""
    try:
        with open(path, "rb") as handle:
            return decode(handle.read(limit))
    except OSError:
        return None


def describe_exception(exc: BaseException) -> str:
    """One line naming the exception and the innermost frame it came from."""
    where = ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        where = f" (at {tb.tb_frame.f_code.co_name}:{tb.tb_lineno})"
    return f"{type(exc).__name__}: {exc}{where}"


def read_mounts() -> dict[str, str]:
    """mount point -> filesystem type, from /proc/self/mounts."""
    mounts: dict[str, str] = {}
    for line in (read_text("/proc/self/mounts", 1 << 20) or "").splitlines():
        fields = line.split()
        if len(fields) >= 3:
            mounts[fields[1].replace("\\040", " ")] = fields[2]
    return mounts


def mount_fs(fstype: str, target: str) -> str | None:
    """mount(2) through libc (no process spawned); None on success, else the error."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        func = libc.mount
        func.restype = ctypes.c_int
        func.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
        if func(fstype.encode(), target.encode(), fstype.encode(), 0, None) == 0:
            return None
        return os.strerror(ctypes.get_errno())
    except (OSError, AttributeError) as exc:
        return str(exc)


def write_atomic(path: str, data: bytes) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def safe_filename(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
    return cleaned[:100] or "unnamed"


def find_executable(name: str) -> str | None:
    """PATH lookup plus the sbin directories a minimal guest PATH may lack."""
    dirs = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/sbin", "/usr/local/sbin"]
    for directory in dirs:
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
