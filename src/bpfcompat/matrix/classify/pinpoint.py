"""Where the verifier stopped, read on the host from a stored verifier log.

With BTF line info the verifier interleaves the C source of each new line with the
instructions it checks (`; return *next != 0; @ verifier-oob.bpf.c:30`; kernels before
6.x print the source without `@ file:line`), and register states either on their own
line (` R0_w=map_value(...)`, 5.10) or after the instruction they follow
(`7: (15) if r0 == 0x0 goto pc+4  ; R0_w=map_value(...)`, 6.x). The failing instruction
is the last one printed before the reason line; its source line and the state before it
are the nearest ones above it. Only the tail of a log is read: the verifier prints the
failure last, and a log may be megabytes.
"""

from __future__ import annotations

import re

from bpfcompat.matrix.verdict import Pinpoint

from .facts import Facts, clean, verifier_summary, verifier_text

MAX_LOG_CHARS = 64 << 10  # the tail of a log a pinpoint is read from

# "8: (79) r1 = *(u64 *)(r0 +8)", optionally "   ; R1_w=..." after it.
_INSN = re.compile(r"^(\d{1,9}): (\([0-9a-f]{2}\) .*?)(?:\s+; (.*))?$")
# "; return *next != 0; @ verifier-oob.bpf.c:30" or "; return *next != 0;"
_SOURCE = re.compile(r"^;\s?(.*?)(?:\s*@ (\S+):(\d+))?$")
# A state line of its own: " R0_w=map_value(...) R6_w=inv0" or "0: R1=ctx() R10=fp0".
_STATE = re.compile(r"^(?:\d{1,9}: )?((?:R\d+|fp-?\d+)\S*=.*)$")


def _lines(log: str) -> list[str]:
    return [clean(ln) for ln in log[-MAX_LOG_CHARS:].splitlines()]


def _reason_index(lines: list[str], evidence: str | None) -> int | None:
    """The line the verdict quotes (its last occurrence), else the verifier's reason."""
    for reason in (evidence, verifier_summary("\n".join(lines))):
        if not reason:
            continue
        for i in range(len(lines) - 1, -1, -1):
            if reason in lines[i]:
                return i
    return None


def _source_above(lines: list[str], start: int) -> tuple[str | None, str | None]:
    """The nearest real source line above `start` (empty and line-0 entries are code the
    compiler made up; they name no line to fix)."""
    for i in range(start - 1, -1, -1):
        m = _SOURCE.match(lines[i])
        if not m:
            continue
        text, path, line = m.group(1).strip(), m.group(2), m.group(3)
        if not text or line == "0":
            continue
        return text, f"{path}:{line}" if path else None
    return None, None


def _state_above(lines: list[str], start: int) -> str | None:
    """The register state printed last before the instruction at `start`."""
    for i in range(start - 1, -1, -1):
        line = lines[i]
        insn = _INSN.match(line)
        if insn:
            if insn.group(3):
                return insn.group(3).strip()
            continue
        state = _STATE.match(line.strip())
        if state:
            return state.group(1).strip()
    return None


def read_pinpoint(log: str, evidence: str | None) -> Pinpoint | None:
    """The failing instruction, its source line and the state before it, or None when
    the log shows no instruction before its reason line."""
    lines = _lines(log)
    end = _reason_index(lines, evidence)
    if end is None:
        return None
    for i in range(end, -1, -1):
        m = _INSN.match(lines[i])
        if m:
            source, location = _source_above(lines, i)
            return Pinpoint(
                insn=int(m.group(1)),
                instruction=m.group(2).strip(),
                source=source,
                location=location,
                state=_state_above(lines, i),
            )
    return None


def pinpoint(f: Facts, evidence: str | None, program: str | None) -> Pinpoint | None:
    """The pinpoint from the failing program's own probe log, else the whole object's."""
    for log, where in ((f.prog_log, "isolated probe"), (f.object_log, "whole-object load")):
        if not log or not verifier_text(log):
            continue
        found = read_pinpoint(log, evidence)
        if found is not None:
            prog = program or f.program
            label = f"{where} of {prog}" if where == "isolated probe" and prog else where
            return found.model_copy(update={"program": prog, "log": label})
    return None
