"""The verifier's own account of each program it checked: instructions processed, states,
stack depth and verification time, read from its summary lines.

The kernel prints "processed N insns (limit L) max_states_per_insn M total_states T
peak_states P mark_read R" at the end of every log (kernel/bpf/verifier.c
print_verification_stats()), and at log level 4 (BPF_LOG_STATS, 5.2) that line plus
"verification time N usec" and "stack depth A+B..." (one depth per subprogram; 7.x adds
" max M" and an "insns processed N" line) alone, without the instruction trace; a
refused program's error lines come first. So every program of a load gets a small slice
of one anonymous mapping as its log buffer at level 4: a program that loads costs the
kernel a few hundred bytes of output, and only the pages it writes are ever backed by
memory.
"""

from __future__ import annotations

import ctypes
import mmap
import re

from .elf import decode_calls
from .libbpf import BPF_LOG_STATS
from .limits import STATS_BUF_BYTES, STATS_SLICE_MAX, STATS_SLICE_MIN, STATS_TAIL_CHARS
from .log import _FAILED_PROG_RES, window_text
from .state import RunState
from .util import decode

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any

# Anchored at line starts: source lines the verifier quotes from the artifact's line
# info start with "; ", so an object cannot forge these lines through its own strings.
_PROCESSED_RE = re.compile(r"^processed (\d{1,12}) insns \(limit (\d{1,12})\)(.*)$", re.M)
_COUNTERS = (
    ("max_states_per_insn", re.compile(r"\bmax_states_per_insn (\d{1,12})")),
    ("states_total", re.compile(r"\btotal_states (\d{1,12})")),
    ("states_peak", re.compile(r"\bpeak_states (\d{1,12})")),
)
_TIME_RE = re.compile(r"^verification time (\d{1,15}) usec$", re.M)
# 7.x appends " max M" to the per-subprogram depths (and an "insns processed N" line).
_OLD_STACK_RE = re.compile(r"^, stack depth (\d{1,9}(?:\+\d{1,9}){0,255})$")  # before 5.2
_STACK_RE = re.compile(r"^stack depth (\d{1,9}(?:\+\d{1,9}){0,255})(?: max \d{1,9})?$", re.M)

STATS_KEYS = (
    "insns_processed", "insn_limit", "max_states_per_insn", "states_total", "states_peak",
    "stack_depth", "verify_usec",
)  # fmt: skip


def parse_verifier_stats(log: str) -> dict[str, Any] | None:
    """The summary of the last program check in ``log``; None when it has none.

    Kernels print what they know: the level-1 log of a refused program has the
    "processed" line only, so time and stack depth are null there; fields a kernel's
    line lacks are null too. The summary is the log's last lines: only its tail is read.
    """
    log = log[-STATS_TAIL_CHARS:]
    found = list(_PROCESSED_RE.finditer(log))
    if not found:
        return None
    last = found[-1]
    stats: dict[str, Any] = dict.fromkeys(STATS_KEYS)
    stats["insns_processed"] = int(last.group(1))
    stats["insn_limit"] = int(last.group(2))
    rest = last.group(3)
    for key, regex in _COUNTERS:
        match = regex.search(rest)
        if match:
            stats[key] = int(match.group(1))
    before = log[: last.start()]  # level 4 prints time and stack depth just before it
    times = _TIME_RE.findall(before)
    if times:
        stats["verify_usec"] = int(times[-1])
    stacks = _STACK_RE.findall(before) or _OLD_STACK_RE.findall(rest)
    if stacks:
        stats["stack_depth"] = [int(part) for part in stacks[-1].split("+")]
    return stats


class LoadEvidence(RunState):
    """Per-program BPF_LOG_STATS buffers, and what a load proves about each program."""

    def stats_supported(self) -> bool:
        """Asked once per run: the kernel takes level 4 and libbpf sets it per program."""
        if self._stats_ok is None:
            assert self.lib is not None
            self._stats_ok = self.lib.probe_log_stats()
        return self._stats_ok

    def _arm_stats(self, progs: list[int], indexes: list[int]) -> bool:
        """Give each of ``indexes`` a cleared slice at log level 4; False if any refused.

        A passing program then leaves its summary in its slice, a refused one its error
        lines and summary (libbpf retries at level 1 only for programs at level 0)."""
        lib = self.lib
        assert lib is not None
        count = max(len(progs), 1)
        if self._stats_map is None or self._stats_count < count:
            size = STATS_BUF_BYTES // count // mmap.PAGESIZE * mmap.PAGESIZE
            self._stats_slice = max(STATS_SLICE_MIN, min(STATS_SLICE_MAX, size))
            self._stats_map = mmap.mmap(-1, self._stats_slice * count)
            self._stats_view = ctypes.c_char.from_buffer(self._stats_map)
            self._stats_count = count
        base = ctypes.addressof(self._stats_view)
        for index in indexes:
            offset = index * self._stats_slice
            self._stats_map[offset] = 0
            if not lib.set_log_level(progs[index], BPF_LOG_STATS):
                return False
            if not lib.set_log_buf(progs[index], base + offset, self._stats_slice):
                return False
        return True

    def _record_attempt(
        self, progs: list[int], indexes: list[int], rc: int, window: list[tuple[int, str]],
        armed: bool,
    ) -> Attempt:  # fmt: skip
        """What one load of ``progs`` (autoloaded: ``indexes``) proves, read before the
        object is closed or the statistics slices are used again."""
        attempt = Attempt(indexes, rc, window)
        entries = self.result["discovery"]["programs"]
        if rc == 0:
            attempt.loaded = list(indexes)
        else:
            name = refused_program(warn_text(window))
            for position, index in enumerate(indexes):
                if entries[index]["name"] == name:
                    attempt.failed = index
                    attempt.loaded = indexes[:position]
                    break
        if armed:
            for index in indexes:
                text = self._stats_log(index)
                attempt.stats[index] = parse_verifier_stats(text)
                if not text:
                    attempt.silent.add(index)
        for index in attempt.loaded:
            attempt.kfuncs[index] = self._kfunc_ids(progs[index])
        return attempt

    def _kfunc_ids(self, prog: int) -> list[int] | None:
        """BTF ids of the kfuncs a loaded program calls (libbpf wrote them in at load)."""
        assert self.lib is not None
        insns = self.lib.prog_insns(prog)
        return decode_calls(insns)[1] if insns is not None else None

    def _stats_log(self, index: int) -> str:
        """What the verifier wrote into program ``index``'s slice at the last load."""
        if self._stats_map is None or index >= self._stats_count:
            return ""
        start = index * self._stats_slice
        end = self._stats_map.find(b"\0", start, start + self._stats_slice)
        return decode(self._stats_map[start : end if end >= 0 else start + self._stats_slice])


class Attempt:
    """One load of an object with a chosen set of programs autoloaded, as evidence: its
    return code, libbpf's messages, the program the kernel refused (libbpf loads programs
    in order and stops at the first refusal, so those before it loaded), each program's
    statistics, and the kfunc ids of the programs that loaded."""

    __slots__ = (
        "failed", "indexes", "kfuncs", "loaded", "rc", "silent", "stats", "text", "window",
    )  # fmt: skip

    def __init__(self, indexes: list[int], rc: int, window: list[tuple[int, str]]) -> None:
        self.indexes = indexes
        self.rc = rc
        self.window = window
        self.text = window_text(window)
        self.failed: int | None = None
        self.loaded: list[int] = []
        self.stats: dict[int, dict[str, Any] | None] = {}
        self.kfuncs: dict[int, list[int] | None] = {}
        self.silent: set[int] = set()  # armed programs the kernel wrote no log for


def warn_text(window: list[tuple[int, str]]) -> str:
    """libbpf's warn-level messages of a window (its debug lines name every program)."""
    return "".join(text for level, text in window if level == 0)


def refused_program(text: str) -> str | None:
    """The program libbpf last reported the kernel refused at load, by name."""
    last: tuple[int, str] | None = None
    for regex in _FAILED_PROG_RES:
        for match in regex.finditer(text):
            if last is None or match.start() > last[0]:
                last = (match.start(), match.group(1))
    return last[1] if last else None
