"""libbpf's print stream: captured (bounded) into the run's log, read back per call, and
searched for the words that name a failing program, map or errno.
"""

from __future__ import annotations

import ctypes
import os
import re

from .limits import LOG_FILE_CHARS, LOG_MESSAGE_CHARS, LOG_MESSAGE_HEAD, WARN_TAIL
from .tables import errno_from_text
from .util import decode, tail_text

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any

_FAILED_PROG_RES = (
    re.compile(r"prog '([^']+)': (?:BPF program load failed|failed to load)"),
    re.compile(r"failed to load program '([^']+)'"),
)

_FAILED_MAP_RES = (
    re.compile(r"map '([^']+)': failed to (?:create|initialize slot)"),
    re.compile(r"Error in bpf_create_map_xattr\(([^)]+)\)"),
)

_LOAD_ERRNO_TEXT_RE = re.compile(r"(?:BPF program load failed|load bpf program failed): (.+)")

_SLOT_INIT_TEXT = "failed to initialize slot"


def load_errno(rc: int, text: str) -> int:
    """The kernel's errno of a failed load (libbpf 0.x hides it behind codes >= 4000)."""
    code = -rc
    if code >= 4000:
        found = _LOAD_ERRNO_TEXT_RE.findall(text)
        code = (found and errno_from_text(found[-1])) or code
    return code


class LibbpfLog:
    """Every message libbpf prints during the run (bounded), plus per-call windows.

    A step opens a window around one libbpf call to read back what libbpf said about it
    (an isolated probe's "failed to initialize slot", an attach warning) without searching
    the whole run; windows nest, so a step inside a larger phase can have its own.
    Levels: 0 warn, 1 info, 2 debug (enum libbpf_print_level); -1 marks a bpfcompat step
    boundary in the log.
    """

    def __init__(self, cap: int = LOG_FILE_CHARS) -> None:
        from collections import deque

        self._entries: Any = deque()
        self._size = 0
        self._cap = cap
        self.dropped = 0
        self.count = 0
        self._windows: list[list[tuple[int, str]]] = []
        # Debug messages dropped unread: set while the per-program probes load the object
        # again and again. A CO-RE-heavy object makes libbpf print 100k of them per load,
        # which the callback formats at a cost of whole seconds under emulation, and the
        # probes read only warnings (tracee: 470k messages, most of its probe time).
        self.quiet = False

    def add(self, level: int, text: str) -> None:
        if len(text) > LOG_MESSAGE_CHARS:
            keep = LOG_MESSAGE_CHARS - LOG_MESSAGE_HEAD
            elided = len(text) - LOG_MESSAGE_CHARS
            text = (
                f"{text[:LOG_MESSAGE_HEAD]}\n[... {elided} characters elided ...]\n{text[-keep:]}"
            )
        if not text.endswith("\n"):
            text += "\n"
        self.count += 1
        self._entries.append((level, text))
        self._size += len(text)
        while self._size > self._cap and len(self._entries) > 1:
            _, old = self._entries.popleft()
            self._size -= len(old)
            self.dropped += 1
        for window in self._windows:
            window.append((level, text))

    def mark(self, text: str) -> None:
        self.add(-1, f"-- {text} --")

    def open_window(self) -> None:
        """Start collecting messages for one call; windows nest."""
        self._windows.append([])

    def close_window(self) -> list[tuple[int, str]]:
        return self._windows.pop() if self._windows else []

    def render(self, limit: int | None = None) -> str:
        parts = [f"{LOG_LEVELS.get(level, level)}: {text}" for level, text in self._entries]
        if self.dropped:
            parts.insert(0, f"bpfcompat: -- {self.dropped} earlier messages dropped --\n")
        text = "".join(parts)
        return tail_text(text, limit) if limit else text


_DUMP_BEGINS = ("-- BEGIN PROG LOAD LOG --", "-- BEGIN DUMP LOG ---")

_DUMP_ENDS = ("-- END PROG LOAD LOG --", "-- END LOG --")


def warnings_of(window: list[tuple[int, str]], limit: int = WARN_TAIL) -> list[str]:
    """The last warn-level libbpf messages of a window, first line each, 'libbpf: ' dropped.

    Verifier log dumps are left out (they are reported on their own): 1.x prints one
    message framed by BEGIN/END PROG LOAD LOG, 0.x three messages (BEGIN, log, END).
    """
    lines = []
    in_dump = False
    for level, text in window:
        if level != 0:
            continue
        if any(marker in text for marker in _DUMP_BEGINS):
            in_dump = not any(marker in text for marker in _DUMP_ENDS)
            continue
        if in_dump:
            in_dump = not any(marker in text for marker in _DUMP_ENDS)
            continue
        line = text.strip().split("\n", 1)[0].strip()
        if line.startswith("libbpf: "):
            line = line[len("libbpf: ") :]
        if line:
            lines.append(tail_text(line, 1024))
    return lines[-limit:]


def window_text(window: list[tuple[int, str]]) -> str:
    return "".join(text for level, text in window if level >= 0)


def extract_verifier_log(text: str) -> str:
    """The verifier log libbpf dumped into its print stream (when it owned the buffer)."""
    for begin, end in (
        ("-- BEGIN PROG LOAD LOG --\n", "-- END PROG LOAD LOG --"),
        ("-- BEGIN DUMP LOG ---\n", "-- END LOG --"),
    ):
        start = text.rfind(begin)
        if start >= 0:
            start += len(begin)
            stop = text.find(end, start)
            return tidy_verifier_log(text[start : stop if stop >= 0 else len(text)])
    return ""


def tidy_verifier_log(text: str) -> str:
    """A verifier log without leading or trailing blank lines, ending in one newline.

    0.x prints the log as its own "libbpf: \n<log>\n" message: those prefixes go too."""
    lines = text.split("\n")
    while lines and lines[0].strip() in ("", "libbpf:"):
        lines.pop(0)
    while lines and lines[-1].strip() in ("", "libbpf:"):
        lines.pop()
    return "\n".join(lines) + "\n" if lines else ""


LOG_LEVELS = {-1: "bpfcompat", 0: "warn", 1: "info", 2: "debug"}

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)

_CALLBACKS: list[Any] = []  # libbpf keeps a raw pointer: the ctypes thunk must never be freed


def make_print_callback(log: LibbpfLog) -> Any:
    """A libbpf_print_fn_t that formats each message with libc's vsnprintf into ``log``.

    The va_list arrives as a pointer (on x86-64 va_list is an array type; on arm64 the
    caller passes a copy by reference), which is handed straight to vsnprintf. To learn a
    long message's length first, a byte copy of the va_list (va_copy) is consumed by the
    measuring call; arches whose va_list layout is unknown get one truncating call.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        libc = ctypes.CDLL(None, use_errno=True)
    vsnprintf = libc.vsnprintf
    vsnprintf.restype = ctypes.c_int
    vsnprintf.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
    small_size = 8192
    small = ctypes.create_string_buffer(small_size)
    va_size = {"x86_64": 24, "aarch64": 32}.get(os.uname().machine, 0)
    va_copy = ctypes.create_string_buffer(max(va_size, 1))
    # Addresses, not buffer objects, and string_at (the message's bytes) rather than .raw
    # (all 8 KiB): libbpf prints 100k messages for a CO-RE-heavy object.
    small_at, va_copy_at, string_at = (
        ctypes.addressof(small),
        ctypes.addressof(va_copy),
        ctypes.string_at,
    )

    def callback(level: int, fmt: int | None, args: int | None) -> int:
        try:
            if not fmt or (level == 2 and log.quiet):
                return 0
            if va_size and args:
                ctypes.memmove(va_copy_at, args, va_size)
                length = vsnprintf(small_at, small_size, fmt, va_copy_at)
                if length >= small_size:
                    big = ctypes.create_string_buffer(length + 1)
                    length = vsnprintf(big, length + 1, fmt, args)
                    raw = big.raw[: max(length, 0)]
                else:
                    raw = string_at(small_at, max(length, 0))
            else:
                length = vsnprintf(small_at, small_size, fmt, args)
                raw = string_at(small_at, max(min(length, small_size - 1), 0))
            log.add(int(level), decode(raw))
        except Exception:  # a callback must never raise into C
            pass
        return 0

    thunk = _PRINT_FN(callback)
    _CALLBACKS.append((thunk, small, va_copy))  # the buffers outlive this call: C uses them
    return thunk
