"""The predicates behind the evidence rules: each reads `Facts` and returns the `Hit` that
proves its rule (one verbatim line, and optionally why / how sure / whose), or None.

The kernel facts they test against (helper ids, lockdown gates, version thresholds) are
defined here, each with the kernel or libbpf source that fixes it.
"""

from __future__ import annotations

import errno as E
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .facts import Facts, verifier_summary
from .messages import (
    ATTACH_BTF_ID,
    ATTACH_NO_ADDRESS,
    ATTACH_NOT_IN_VMLINUX,
    ATTACH_TARGET_UNSET,
    BTF_REQUIRED,
    BTF_VMLINUX_MALFORMED,
    CALL_TOO_DEEP,
    CALLER_INVALID_ARGS,
    CORE_INVALID,
    CORE_PERFORM,
    CORE_POISON,
    CORE_POISON_CALL,
    CORE_RESOLVE,
    ELF_ANY,
    ELF_LEGACY_MAPS,
    ELF_NOT_64,
    ELF_NOT_BPF,
    ELF_NOT_ELF,
    ELF_OPEN,
    ELF_SHSTR,
    ELF_SYMTAB,
    EPERM_TEXT,
    EXTERN_NO_BTF,
    FREPLACE_NO_TARGET,
    FUNC_INFO_MISMATCH,
    GPL_ONLY,
    GPL_ONLY_OLD,
    HELPER_CANNOT_USE,
    HELPER_IN_PROBE,
    HELPER_INVALID_FUNC,
    HELPER_SLEEPS,
    HELPER_UNKNOWN_FUNC,
    JMP_SEQ,
    KBTF_MISSING,
    KBTF_NONE,
    KBTF_READ,
    KCONFIG_OPEN,
    KFUNC_NOT_ALLOWED,
    KFUNC_NOT_FOUND,
    KFUNC_POISON_BASE,
    KFUNC_POISON_CALL,
    KFUNC_PROTO,
    KFUNC_UNRESOLVED,
    KSYM_VAR,
    LD_IMM64_UNKNOWN,
    MAP_CREATE,
    MAP_INNER,
    MAP_POISON_BASE,
    PERM_MEMLOCK,
    PIN_INVALID,
    PROG_LOAD_FAILED,
    PROG_TYPE_MISSING,
    STACK_TOO_LARGE,
    STATIC_PROGRAM,
    STRUCT_OPS_NOT_FOUND,
    TOO_COMPLEX_OLD,
    TOO_LARGE,
    VMLINUX_LOAD,
    VMLINUX_NOT_FOUND,
)

ENOTSUPP = 524  # kernel-internal "operation is not supported" (include/linux/errno.h)

# Helpers whose prototype the kernel withholds under lockdown since 5.13, so the verifier
# reports them as not allowed (kernel/trace/bpf_trace.c bpf_tracing_func_proto() and
# kernel/bpf/helpers.c bpf_base_func_proto(): `security_locked_down(...) < 0 ? NULL : ...`).
LOCKDOWN_GATED_HELPERS: dict[int, str] = {
    4: "LOCKDOWN_BPF_READ_KERNEL",  # bpf_probe_read (libbpf falls back to it, see below)
    45: "LOCKDOWN_BPF_READ_KERNEL",  # bpf_probe_read_str
    113: "LOCKDOWN_BPF_READ_KERNEL",  # bpf_probe_read_kernel
    115: "LOCKDOWN_BPF_READ_KERNEL",  # bpf_probe_read_kernel_str
    36: "LOCKDOWN_BPF_WRITE_USER",  # bpf_probe_write_user
}
# Event-transport helpers: perf_event_output, ringbuf_{output,reserve,submit,discard,query},
# ringbuf_{reserve,submit,discard}_dynptr, user_ringbuf_drain (include/uapi/linux/bpf.h).
TRANSPORT_HELPERS = frozenset({25, 130, 131, 132, 133, 134, 198, 199, 200, 209})
TRANSPORT_MAP_TYPES = frozenset({"ringbuf", "user_ringbuf"})
# BPF_PSEUDO_FUNC (a callback passed in an ld_imm64) arrived in 5.13; every helper that
# takes a callback is newer: for_each_map_elem 5.13, timer_set_callback 5.15, loop and
# find_vma 5.17, user_ringbuf_drain 6.1.
PSEUDO_FUNC_SINCE = (5, 13)
CALLBACK_HELPERS = ("bpf_for_each_map_elem", "bpf_timer_set_callback", "bpf_loop",
                    "bpf_find_vma", "bpf_user_ringbuf_drain")  # fmt: skip
# What each lockdown reason is called in the kernel's "Lockdown: ..." line
# (security/security.c lockdown_reasons[]).
_LOCKDOWN_REASON_TEXT = {
    "LOCKDOWN_BPF_READ_KERNEL": "use of bpf to read kernel RAM",
    "LOCKDOWN_BPF_WRITE_USER": "use of bpf to write user RAM",
}
_LOCKDOWN_ATTACH_TEXTS = ("use of kprobes", "unsafe use of perf", "use of tracefs")
_LOCKDOWN_FUNCTIONAL_TEXTS = ("use of tracefs", "unsafe use of perf", "debugfs access")

INVALID_ARTIFACT_MSGS = (ELF_NOT_ELF, ELF_SHSTR, ELF_OPEN, ELF_NOT_64, ELF_NOT_BPF, ELF_SYMTAB,
                         ELF_LEGACY_MAPS, BTF_REQUIRED, ELF_ANY)  # fmt: skip
MISSING_BTF_MSGS = (KBTF_MISSING, KBTF_NONE, KBTF_READ, VMLINUX_LOAD, VMLINUX_NOT_FOUND)
CORE_MSGS = (CORE_RESOLVE, CORE_POISON_CALL, CORE_INVALID, CORE_PERFORM)
KFUNC_MSGS = (KFUNC_NOT_FOUND, KFUNC_UNRESOLVED, KFUNC_POISON_CALL, KFUNC_PROTO, KSYM_VAR,
              KFUNC_NOT_ALLOWED)  # fmt: skip
LOAD_ATTACH_TARGET_MSGS = (ATTACH_BTF_ID, ATTACH_NOT_IN_VMLINUX, ATTACH_NO_ADDRESS)
LIMIT_MSGS = (JMP_SEQ, TOO_LARGE, STACK_TOO_LARGE, CALL_TOO_DEEP, TOO_COMPLEX_OLD)


@dataclass(frozen=True)
class Hit:
    """What a rule found: the verbatim line, and optionally why / how sure / whose."""

    line: str
    detail: str | None = None
    confidence: str | None = None
    program: str | None = None
    remediation: str | None = None  # this cell's own fix (e.g. its manifest lines)


def _hit(line: str | None, **kw: Any) -> Hit | None:
    return Hit(line, **kw) if line else None


def _errname(code: int) -> str | int:
    return E.errorcode.get(code, code)


# --- open and load stages -------------------------------------------------------------------


def _helper_refusal(f: Facts) -> tuple[str, str, int] | None:
    """(line, helper name, id) of a 'not allowed' helper line naming a helper."""
    for msg in (HELPER_CANNOT_USE, HELPER_UNKNOWN_FUNC):
        for line in f.lines(f.verifier_log(), "\n".join(f.messages)):
            m = msg.rx.search(line)
            if m and m.group("name") != "unknown":
                return line, m.group("name"), int(m.group("id"))
    return None


# libbpf's refusals at open of objects built for another loader or another build step,
# each with what it means (the object is fine for that loader, not for libbpf's open).
_OPEN_REFUSALS = (
    (
        EXTERN_NO_BTF,
        "an extern with no BTF: the object is one piece of a program that its "
        "build links with the piece defining it (bpftool gen object, or a compiler-made libcall "
        "such as memcmp that needs a definition); it was shipped unlinked",
    ),
    (
        PIN_INVALID,
        "a pinning value libbpf does not know (LIBBPF_PIN_NONE 0, LIBBPF_PIN_BY_NAME "
        "1): another loader's own convention, which libbpf refuses when it opens the object",
    ),
    (
        STATIC_PROGRAM,
        "libbpf refuses static BPF programs when it opens the object; loaders "
        "such as cilium/ebpf accept them: the object is built for another loader",
    ),
)


def invalid_artifact(f: Facts) -> Hit | None:
    line = f.find(*INVALID_ARTIFACT_MSGS, texts=(f.warnings(),))
    if line:
        return Hit(line)
    if f.artifact_problem:
        return Hit(f.artifact_problem, detail="host ELF pre-check (libbpf never saw the file)")
    if f.result.load.stage == "open":
        for msg, why in _OPEN_REFUSALS:
            line = f.find(msg, texts=(f.warnings(),))
            if line:
                return Hit(line, detail=why)
    # libbpf's last words say more than the errno they end in.
    line = next(iter(reversed(f.messages)), None)
    if line:
        return Hit(line, confidence="medium")
    return _hit(f.result.load.error, confidence="medium", detail="the validator's ELF check")


def _with_denials(detail: str, f: Facts, *reasons: str) -> str:
    """`detail` plus the kernel's own lockdown line for it, when the validator logged one."""
    denials = f.lockdown_denials(*reasons)
    return f"{detail}; kernel: {denials[0]}" if denials else detail


def _gated_probe(f: Facts) -> tuple[str, str, int] | None:
    """(line, name, id) for a lockdown-gated helper the helper probe found unusable here."""
    for probe in f.helper_probes():
        assert probe.id is not None  # helper_probes() keeps only probes with an id
        if probe.supported is False and probe.id in LOCKDOWN_GATED_HELPERS:
            line = verifier_summary(f.verifier_log()) or f.find(PROG_LOAD_FAILED)
            name = probe.name or f"helper#{probe.id}"
            return (line, name, probe.id) if line else None
    return None


def lockdown_helper(f: Facts) -> Hit | None:
    if not f.locked_down:
        return None
    found = _helper_refusal(f)
    if not found or found[2] not in LOCKDOWN_GATED_HELPERS:
        found = _gated_probe(f)
    if not found:
        return None
    line, name, hid = found
    detail = (
        f"kernel lockdown={f.lockdown} withholds {name}#{hid} "
        f"({LOCKDOWN_GATED_HELPERS[hid]}); the verifier only sees a helper it is not given"
    )
    reason = _LOCKDOWN_REASON_TEXT[LOCKDOWN_GATED_HELPERS[hid]]
    return Hit(line, detail=_with_denials(detail, f, reason))


def missing_btf(f: Facts) -> Hit | None:
    if f.kernel_btf is True:
        return None
    line = f.find(*MISSING_BTF_MSGS)
    return _hit(line, detail="btf.kernel_btf_available is "
                f"{f.kernel_btf if f.kernel_btf is not None else 'unknown'}")  # fmt: skip


def global_func_kernel_btf(f: Facts) -> Hit | None:
    """A global function taking the context, refused because the kernel has no vmlinux
    BTF to check that argument against. The "malformed" line alone is not enough (kernels
    without BTF print it for programs that load): the refused call must follow. It is
    also how an freplace target fails there, so this rule comes before loader-freplace."""
    if f.kernel_btf is True or not f.find(CALLER_INVALID_ARGS):
        return None
    line = f.find(BTF_VMLINUX_MALFORMED)
    if not line:
        return None
    return Hit(
        line,
        detail="a global function's context argument is typed against the kernel's own BTF "
        f"(btf.kernel_btf_available is {f.kernel_btf}); the verifier then refuses the call: "
        f"{f.find(CALLER_INVALID_ARGS)}",
    )


def core(f: Facts) -> Hit | None:
    return _hit(f.find(*CORE_MSGS))


def kfunc(f: Facts) -> Hit | None:
    line = f.find(*KFUNC_MSGS)
    return _hit(line, program=f.program_of(line) if line else None)


def load_attach_target(f: Facts) -> Hit | None:
    return _hit(f.find(*LOAD_ATTACH_TARGET_MSGS))


@dataclass(frozen=True)
class MapFailure:
    line: str
    name: str
    type: str | None
    errno: int
    supported: bool | None
    max_entries: int | None


def map_failure(f: Facts) -> MapFailure | None:
    for msg in (MAP_CREATE, MAP_INNER):
        for line in f.lines("\n".join(f.messages), f.prog_log, f.libbpf_log):
            m = msg.rx.search(line)
            if not m:
                continue
            name = m.group("map")
            info = f.maps.get(name)
            inner = msg is MAP_INNER
            mtype = None if inner or info is None else info.type
            supported = f.map_types.get(mtype) if mtype else None
            max_entries = None if inner or info is None else info.max_entries
            return MapFailure(line, name, mtype, abs(int(m.group("err"))) or f.errno, supported,
                               max_entries)  # fmt: skip
    return None


def _map_detail(mf: MapFailure, f: Facts) -> str:
    probe = {True: "supported", False: "NOT supported", None: "not probed"}[mf.supported]
    err = _errname(mf.errno)
    where = f.release or "this kernel"
    kind = mf.type or "unknown"
    return f"map {mf.name!r} of type {kind}; type probe: {probe} on {where}; errno {err}"


def map_transport(f: Facts) -> Hit | None:
    mf = map_failure(f)
    if mf and mf.type in TRANSPORT_MAP_TYPES and mf.supported is False:
        return Hit(mf.line, detail=_map_detail(mf, f))
    return None


def map_permission(f: Facts) -> Hit | None:
    mf = map_failure(f)
    if mf and mf.errno in (E.EPERM, E.ENOMEM) and mf.supported is not False:
        return Hit(mf.line, detail=_map_detail(mf, f) + "; " + (f.find(PERM_MEMLOCK) or
                   "no memlock hint from libbpf"))  # fmt: skip
    return None


def map_sizing(f: Facts) -> Hit | None:
    mf = map_failure(f)
    if mf and any(m.name == mf.name and m.status == "applied" for m in f.result.map_fixups):
        return None  # sized by the manifest: its declared 0 is not the problem
    info = f.maps.get(mf.name) if mf else None
    zero = mf is not None and (mf.max_entries == 0 or (info is not None and info.value_size == 0))
    if mf and mf.errno == E.EINVAL and zero and mf.supported is not False:
        detail = _map_detail(mf, f) + "; compiled with a zero size that no manifest or fixup set"
        finding = f.finding("map_sized_at_runtime", mf.name)
        lines = "\n".join(finding.get("manifest_lines") or []) if finding else ""
        fix = lines or f"maps:\n  - name: {mf.name}\n    max_entries: cpus"
        return Hit(mf.line, detail=detail, remediation=_declare(fix))
    return None


def _declare(manifest_lines: str) -> str:
    return f"Declare what the object's loader does, in its manifest:\n{manifest_lines}"


def freplace_target(f: Facts) -> Hit | None:
    line = f.find(FREPLACE_NO_TARGET)
    if not line:
        return None
    program = f.program or next((p.name for p in f.programs if p.type == "ext"), None)
    finding = f.finding("freplace_target", program)
    lines = "\n".join(finding.get("manifest_lines") or []) if finding else ""
    return Hit(
        line,
        detail="an extension (freplace) program needs the program it replaces a function of",
        remediation=_declare(lines) if lines else None,
    )


def placeholder_target(f: Facts) -> Hit | None:
    """A BTF-attached program whose target exists in no kernel of the matrix, or that names
    none: the loader sets the real one (libbpf or the host's kernel BTF check says so), not
    a newer kernel."""
    unset = f.find(ATTACH_TARGET_UNSET)
    line = unset or f.find(ATTACH_BTF_ID)
    if not line:
        return None
    m = re.search(r"prog '([^']+)'", line)
    program = m.group(1) if m else f.program
    for kind in ("attach_target_placeholder", "attach_target_unset"):
        finding = f.finding(kind, program)
        if finding and finding.get("level") == "required":
            lines = "\n".join(finding.get("manifest_lines") or [])
            return Hit(line, detail=str(finding.get("why") or ""), program=program,
                       remediation=_declare(lines) if lines else None)  # fmt: skip
    if unset:  # libbpf's own words: only a loader can name the target, whatever was read
        return Hit(
            unset,
            detail="the section names no attach target: the loader sets it before load",
            program=program,
            remediation=_declare(f"programs:\n  - name: {program}\n    attach_target: FUNCTION"),
        )
    return None


def struct_ops_module(f: Facts) -> Hit | None:
    """A struct_ops struct no kernel of the matrix has in vmlinux: a module defines it."""
    hit = _struct_ops(f)
    if hit and not hit[1].get("kernels_with"):
        finding = hit[1]
        return Hit(hit[0], detail=str(finding.get("why") or ""))
    return None


def struct_ops_newer(f: Facts) -> Hit | None:
    """A struct_ops struct this kernel lacks and newer ones have."""
    hit = _struct_ops(f)
    if hit and hit[1].get("kernels_with"):
        have = ", ".join(hit[1]["kernels_with"])
        return Hit(hit[0], detail=f"struct {hit[1].get('struct')} is in {have}, not in this kernel")
    return None


def _struct_ops(f: Facts) -> tuple[str, dict[str, Any]] | None:
    for line in f.lines("\n".join(f.messages), f.libbpf_log):
        m = STRUCT_OPS_NOT_FOUND.rx.search(line)
        if not m:
            continue
        for item in f.setup:
            detail = item.get("detail") or {}
            if item.get("kind") == "struct_ops" and detail.get("struct") == m.group("struct"):
                return line, {**detail, "why": item.get("why")}
        return line, {"struct": m.group("struct")}
    return None


def loader_section(f: Facts) -> Hit | None:
    """A section named by another loader's convention: the loader sets the type."""
    line = f.find(PROG_TYPE_MISSING)
    if not line:
        return None
    m = re.search(r"prog '([^']+)'", line)
    program = m.group(1) if m else f.program
    finding = f.finding("untypable_section", program)
    if finding is None:
        return None
    lines = "\n".join(finding.get("manifest_lines") or [])
    return Hit(line, detail=str(finding.get("why") or ""), program=program,
               remediation=_declare(lines) if lines else None)  # fmt: skip


def kconfig_missing(f: Facts) -> Hit | None:
    return _hit(f.find(KCONFIG_OPEN), detail="no /boot/config-<release> in the guest")


def map_type(f: Facts) -> Hit | None:
    mf = map_failure(f)
    if mf is None:
        return None
    if mf.supported is False:
        return Hit(mf.line, detail=_map_detail(mf, f))
    if mf.errno in (E.EINVAL, E.EOPNOTSUPP, ENOTSUPP, E.E2BIG):
        conf = "medium" if mf.supported is None else "low"
        return Hit(mf.line, confidence=conf, detail=_map_detail(mf, f))
    return None


def license_(f: Facts) -> Hit | None:
    return _hit(f.find(GPL_ONLY, GPL_ONLY_OLD))


def helper_not_allowed(f: Facts) -> Hit | None:
    found = _helper_refusal(f)
    if found:
        line, name, hid = found
        return Hit(line, detail=f"the kernel knows {name}#{hid} (it names it) but not for "
                   f"program type {f.prog_type or 'of this program'}")  # fmt: skip
    line = f.find(HELPER_IN_PROBE, HELPER_SLEEPS)
    if line:
        return Hit(line)
    return _probed_helper(f, known=True)


def _probed_helper(f: Facts, *, known: bool) -> Hit | None:
    """Decide from the validator's per-program helper probe, when the result has one.

    A helper the failing program's own instructions call, probed unusable for its program
    type: HELPER_NOT_ALLOWED if the kernel has it for other types (bpftool's lists, or the
    verifier's dump naming it), UNSUPPORTED_HELPER if for none.
    """
    for probe in f.helper_probes():
        if probe.supported is not False:
            continue
        assert probe.id is not None  # helper_probes() keeps only probes with an id
        name = probe.name or f"helper#{probe.id}"
        is_known = f.helper_known(name)  # None: no per-type helper lists recorded
        if is_known is None:
            is_known = f.verifier_knows(probe.id)
        if (known and is_known is not True) or (not known and is_known is True):
            continue
        line = verifier_summary(f.verifier_log()) or f.find(PROG_LOAD_FAILED)
        where = "for other program types only" if known else "for no program type"
        ptype = f.prog_type or "this program's type"
        return _hit(
            line,
            confidence=None if is_known is not None else "medium",
            detail=f"helper probe: {name} ({probe.id}) refused for {ptype}, usable {where}",
        )
    return None


def _unknown_ids(f: Facts) -> Iterator[tuple[str, int]]:
    for msg in (HELPER_INVALID_FUNC, HELPER_UNKNOWN_FUNC):
        for line in f.lines(f.verifier_log(), "\n".join(f.messages)):
            m = msg.rx.search(line)
            if m and m.group("name") == "unknown":
                hid = int(m.group("id"))
                poisoned = hid == CORE_POISON or MAP_POISON_BASE <= hid < KFUNC_POISON_BASE + 10**6
                if not poisoned:
                    yield line, hid


def transport_helper(f: Facts) -> Hit | None:
    for line, hid in _unknown_ids(f):
        if hid in TRANSPORT_HELPERS:
            return Hit(line, detail=f"transport helper id {hid} is not in this kernel")
    return None


def unknown_helper(f: Facts) -> Hit | None:
    for line, hid in _unknown_ids(f):
        return Hit(line, detail=f"helper id {hid} is beyond this kernel's helpers")
    return None


def helper_probe(f: Facts) -> Hit | None:
    return _probed_helper(f, known=False)


def callback_helper(f: Facts) -> Hit | None:
    """A callback argument (BPF_PSEUDO_FUNC, 5.13) refused before any helper is checked."""
    line = f.find(FUNC_INFO_MISMATCH, LD_IMM64_UNKNOWN, texts=(f.verifier_log(),))
    if not line:
        return None
    missing = [str(p.name) for p in f.helper_probes() if p.supported is False]
    if missing:
        return Hit(line, detail=f"helper probe: {', '.join(missing)} not supported here")
    if f.version is not None and f.version < PSEUDO_FUNC_SINCE:
        return Hit(line, confidence="medium",
                   detail=f"kernel {f.release} predates callback arguments (5.13); the object "
                   f"passes a callback, which only these newer helpers take: "
                   f"{', '.join(CALLBACK_HELPERS)}")  # fmt: skip
    return None


def prog_type(f: Facts) -> Hit | None:
    line = f.find(PROG_TYPE_MISSING)
    if line:
        return Hit(
            line, confidence="medium", detail="the guest's libbpf does not know this section"
        )
    ptype = f.prog_type
    probed = f.program_types.get(ptype) if ptype else None
    if probed is not False or f.has_verifier_text:
        return None
    if f.errno not in (E.EINVAL, E.EPERM, E.EOPNOTSUPP, ENOTSUPP):
        return None
    line = f.find(PROG_LOAD_FAILED)
    return _hit(line, detail=f"program type probe: {ptype} NOT supported on "
                f"{f.release or 'this kernel'}; no verifier log")  # fmt: skip


def verifier_limit(f: Facts) -> Hit | None:
    return _hit(f.find(*LIMIT_MSGS, texts=(f.verifier_log(),)))


def verifier(f: Facts) -> Hit | None:
    if not f.has_verifier_text:
        return None
    line = verifier_summary(f.verifier_log())
    return _hit(line, detail=f"errno {_errname(f.errno)} with a verifier log")


def capability(f: Facts) -> Hit | None:
    if f.errno != E.EPERM or f.has_verifier_text:
        return None
    line = f.find(PERM_MEMLOCK, PROG_LOAD_FAILED) or f.find(EPERM_TEXT)
    return _hit(line or f.result.load.error,
                detail="EPERM with no verifier log and no policy in force")  # fmt: skip


def load_attach_type(f: Facts) -> Hit | None:
    ptype = f.prog_type
    probed = f.program_types.get(ptype) if ptype else None
    if f.errno != E.EINVAL or f.has_verifier_text or probed is not True:
        return None
    return _hit(f.find(PROG_LOAD_FAILED), confidence="low",
                detail=f"program type {ptype} is supported, yet BPF_PROG_LOAD failed with EINVAL "
                f"before the verifier ran: likely its expected attach type")  # fmt: skip
