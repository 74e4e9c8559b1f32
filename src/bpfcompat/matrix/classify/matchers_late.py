"""The predicates of the attach and functional stages: what went wrong after the object
loaded. Same contract as matchers.py: read `Facts`, return the proving `Hit` or None.
"""

from __future__ import annotations

import errno as E
import re

from bpfcompat.matrix.result import FunctionalTest

from .facts import MAX_LINE_CHARS, Facts
from .matchers import (
    _LOCKDOWN_ATTACH_TEXTS,
    _LOCKDOWN_FUNCTIONAL_TEXTS,
    ENOTSUPP,
    Hit,
    _errname,
    _hit,
    _with_denials,
)
from .messages import KPROBE_LEGACY, TP_CREATE

# --- attach stage ---------------------------------------------------------------------------


def attach_line(f: Facts) -> str | None:
    """The failing program's own attach error, cut like every log line."""
    return ((f.entry.attach_error if f.entry else None) or "")[:MAX_LINE_CHARS] or None


def _via_tracefs(f: Facts) -> bool:
    """The attach path needs tracefs: tracepoints always, kprobes without the PMU."""
    section = (f.entry.section if f.entry else None) or ""
    line = attach_line(f) or ""
    if f.prog_type == "tracepoint" or section.startswith(("tracepoint/", "tp/")):
        return True
    if TP_CREATE.rx.search(line) or KPROBE_LEGACY.rx.search(line):
        return True
    return f.prog_type == "kprobe" and f.result.capabilities.attach_prereqs.kprobe_pmu is False


def _tracefs_missing(f: Facts) -> bool:
    return f.result.capabilities.attach_prereqs.tracefs is False


def lockdown_attach(f: Facts) -> Hit | None:
    if not f.locked_down:
        return None
    if f.errno in (E.EPERM, E.EACCES) or (
        f.errno == E.ENOENT and _via_tracefs(f) and _tracefs_missing(f)
    ):
        detail = (f"kernel lockdown={f.lockdown}; attach via "
                  f"{'tracefs' if _via_tracefs(f) else 'perf/BPF link'} refused "
                  f"({_errname(f.errno)})")  # fmt: skip
        return _hit(attach_line(f), detail=_with_denials(detail, f, *_LOCKDOWN_ATTACH_TEXTS))
    return None


def attach_target_missing(f: Facts) -> Hit | None:
    if f.errno not in (E.ENOENT, E.ESRCH, E.ENXIO):
        return None
    if _via_tracefs(f) and _tracefs_missing(f):
        return None  # the event directory is missing, not the target
    return _hit(attach_line(f), detail=f"attach failed with {E.errorcode.get(f.errno)}: the "
                "function or event does not exist on this kernel")  # fmt: skip


def attach_permission(f: Facts) -> Hit | None:
    if f.errno in (E.EPERM, E.EACCES):
        return _hit(attach_line(f), detail="no lockdown in force")
    return None


def attach_unsupported(f: Facts) -> Hit | None:
    if f.errno in (E.EOPNOTSUPP, ENOTSUPP, E.EINVAL, E.EPROTO, E.ENOSYS):
        return _hit(attach_line(f))
    if f.errno == E.ENOENT and _via_tracefs(f) and _tracefs_missing(f):
        return _hit(attach_line(f), detail="tracefs is not available in the guest")
    return None


# --- functional stage -----------------------------------------------------------------------


def _failed_test(f: Facts) -> FunctionalTest | None:
    failed = [t for t in f.result.functional.tests if t.status == "fail"]
    required = [t for t in failed if t.required]
    return (required or failed or [None])[0]


def _test_output_line(test: FunctionalTest) -> str | None:
    for text in (test.stderr_tail, test.stdout_tail):
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return None


def functional_plan(f: Facts) -> Hit | None:
    test = _failed_test(f)
    if test and test.name == "functional-plan":
        return _hit(test.error or "")
    return None


def lockdown_functional(f: Facts) -> Hit | None:
    test = _failed_test(f)
    if not f.locked_down or not test:
        return None
    for line in f"{test.stderr_tail}\n{test.stdout_tail}".splitlines():
        if "Operation not permitted" in line and re.search(r"tracing|tracefs|perf", line):
            detail = f"kernel lockdown={f.lockdown} refuses tracefs/perf"
            return Hit(line.strip(), detail=_with_denials(detail, f, *_LOCKDOWN_FUNCTIONAL_TEXTS))
    return None


def functional(f: Facts) -> Hit | None:
    test = _failed_test(f)
    if not test:
        return None
    error = test.error or None
    output = _test_output_line(test)
    line = output if output and (test.exit_code or test.timed_out) else error
    return _hit(line or error or output, detail=f"required test {test.name!r}: {error}")
