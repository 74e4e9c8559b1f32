"""The guest's serial console: read incrementally, kept bounded, searched with one table.

The console is written by the kernel and, through /dev/console or the serial device, by
anything running as root in the guest, so no single line on it proves a crash: the VM
layer calls a guest dead only when QEMU itself has stopped, and then quotes the kernel's
own report. The same table picks the evidence line the classifier shows, so the two can
never disagree about what a crash looks like.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

READY_MARKER = "bpfcompat-guest-ready"
# The agent (vm/guest_agent.py) waits for the host's handoff after printing this.
WAITING_MARKER = "bpfcompat-guest-waiting"

# Lines the kernel prints when it dies or is about to, strongest first: the first kind
# present is the evidence. (kernel/panic.c panic(), arch/x86/kernel/dumpstack.c
# __die_header(), mm/fault.c page_fault_oops(), lib/bug.c report_bug(),
# arch/x86/kernel/traps.c, drivers/tty/sysrq.c sysrq_handle_crash().)
CRASH_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("panic", re.compile(r"Kernel panic - not syncing")),
    ("oops", re.compile(r"Oops: |BUG: kernel NULL pointer|BUG: unable to handle")),
    ("bug", re.compile(r"kernel BUG at|BUG: ")),
    ("gpf", re.compile(r"general protection fault")),
    ("double-fault", re.compile(r"double fault")),
    ("sysrq", re.compile(r"sysrq: Trigger a crash")),
)
CRASH_PATTERNS = re.compile("|".join(p.pattern for _, p in CRASH_KINDS))
# A register dump line of a user-space context (code segment 0x33 on x86-64): it comes
# with a kernel report but never names the kernel's own fault.
USER_RIP = re.compile(r"RIP: 0033:")
# mm/oom_kill.c: "Out of memory: Killed process %d (%s) total-vm:..." (older kernels:
# "Out of memory: Kill process"; memory cgroups: "Memory cgroup out of memory: ..."), to
# the end of the line: the console watch finds it, the classifier quotes it.
OOM_KILL = re.compile(r"(?:Memory cgroup )?[Oo]ut of memory: Kill(?:ed)? process.*")

TAIL_BYTES = 64 << 10  # what is kept in memory of the console
LINE_CHARS = 500  # one quoted console line, at most
MAX_CRASH_LINES = 32


def crash_evidence(text: str) -> str | None:
    """The line that best proves a kernel crash in `text`: a panic over an oops over a BUG,
    never a user-space register dump; None when the text shows no crash."""
    lines = [ln.strip() for ln in text.splitlines()]
    for _, pattern in CRASH_KINDS:
        for line in lines:
            if pattern.search(line) and not USER_RIP.search(line):
                return line[:LINE_CHARS]
    return None


def oom_evidence(text: str) -> str | None:
    """The last OOM-killer report in `text`."""
    found = [m.group().strip() for m in OOM_KILL.finditer(text)]
    return found[-1][:LINE_CHARS] if found else None


@dataclass
class ConsoleWatch:
    """Follows a console log file as QEMU writes it, reading only what is new.

    Keeps the last TAIL_BYTES in memory, counts every byte (so a flooding guest can be
    stopped before it fills the disk) and remembers crash and OOM lines with the byte
    offset they appeared at, so a crash can be tied to the job that was running then.
    With a `nonce`, only a ready line naming it counts: the guest read this run's handoff.
    """

    path: Path
    nonce: str | None = None
    offset: int = 0
    tail: str = ""
    ready: bool = False
    waiting: bool = False
    crash_lines: list[tuple[int, str]] = field(default_factory=list)
    oom_lines: list[tuple[int, str]] = field(default_factory=list)
    _partial: str = ""

    def poll(self) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read(4 << 20)
        except OSError:
            return
        if not chunk:
            return
        start = self.offset
        self.offset += len(chunk)
        text = self._partial + chunk.decode("utf-8", "replace")
        lines = text.split("\n")
        self._partial = lines.pop()[-LINE_CHARS * 4 :]
        for line in lines:
            self._scan(start, line)
        self.tail = (self.tail + text[: len(text) - len(self._partial)])[-TAIL_BYTES:]

    def _scan(self, offset: int, line: str) -> None:
        if READY_MARKER in line:
            words = line.split()
            at = words.index(READY_MARKER) if READY_MARKER in words else -1
            named = at >= 0 and words[at + 1 : at + 2] == [self.nonce]
            self.ready = self.ready or self.nonce is None or named
        if WAITING_MARKER in line:
            self.waiting = True
        if len(self.crash_lines) < MAX_CRASH_LINES and CRASH_PATTERNS.search(line):
            self.crash_lines.append((offset, line.strip()[:LINE_CHARS]))
        match = OOM_KILL.search(line)
        if match and len(self.oom_lines) < MAX_CRASH_LINES:
            self.oom_lines.append((offset, match.group().strip()[:LINE_CHARS]))

    def crash_line(self, since: int = 0) -> str | None:
        """The best crash evidence among lines seen at or after byte `since`."""
        text = "\n".join(line for at, line in self.crash_lines if at >= since)
        return crash_evidence(text)

    def oom_line(self, since: int = 0) -> str | None:
        found = [line for at, line in self.oom_lines if at >= since]
        return found[-1] if found else None

    def tail_lines(self, lines: int = 40) -> str:
        return "\n".join((self.tail + self._partial).splitlines()[-lines:])
