"""Classify one stored validator result into a precise code with the line that proves it.

Why a table: the reference tool did first-match substring search over the libbpf log and
ignored errno, so EACCES verifier rejections became capability failures, BTF-less kernels
turned everything into MISSING_BTF and every attach failure was "unsupported attach
type". Here each rule is a small named predicate over a `Facts` view of *all* the
evidence (errno of the failing step, the failing program's own verifier log from its
isolated probe, the whole-object log, libbpf's messages, probe results, BTF facts,
kernel release, lockdown state, the stage that failed). Rules are data, in precedence
order; the first that matches wins. Every message a rule matches is a `Msg`: the exact
printf format the kernel or libbpf prints, and the function that prints it (libbpf
v1.5.0 as shipped in the guests; kernel/bpf/verifier.c), the way cilium/ebpf ties each
matched string to its source. Evidence is always one verbatim line from the recorded
logs (or the host's ELF pre-check for objects that never reached libbpf).
"""

from __future__ import annotations

import errno as E
import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bpfcompat.vm.console import OOM_KILL, crash_evidence

CLASSIFIER_VERSION = "2"

# --- outcome codes ------------------------------------------------------------------------

CODES: tuple[str, ...] = (
    "UNSUPPORTED_ATTACH_TYPE", "UNSUPPORTED_MAP_TYPE", "UNSUPPORTED_PROGRAM_TYPE",
    "MISSING_BTF", "CORE_RELOCATION_FAILURE", "POLICY_DENIED", "UNSUPPORTED_TRANSPORT",
    "UNSUPPORTED_HELPER", "HELPER_NOT_ALLOWED", "UNSUPPORTED_KFUNC", "MISSING_ATTACH_TARGET",
    "LICENSE_INCOMPATIBLE", "VERIFIER_REJECTION", "VERIFIER_LIMIT", "CAPABILITY_FAILURE",
    "INVALID_ARTIFACT", "FUNCTIONAL_TEST_FAILURE", "KERNEL_CRASH", "INFRA_ERROR", "UNKNOWN",
)  # fmt: skip

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
# Ids libbpf writes into instructions it had to poison; the verifier then prints them as
# unknown helpers. src/relo_core.c bpf_core_poison_insn() (0xbad2310, failed CO-RE
# relocation); src/libbpf.c POISON_LDIMM64_MAP_BASE (poison_map_ldimm64()) and
# POISON_CALL_KFUNC_BASE (poison_kfunc_call()).
CORE_POISON = 195896080
MAP_POISON_BASE = 2001000000
KFUNC_POISON_BASE = 2002000000
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
LOCKED_DOWN = frozenset({"integrity", "confidentiality"})
# Helpers `bpftool feature probe` leaves out of every per-type list unless run with `full`
# (bpftool src/feature.c probe_helpers_for_progtype()): their absence there proves nothing.
BPFTOOL_UNLISTED_HELPERS = frozenset({"trace_printk", "trace_vprintk", "probe_write_user"})


# --- messages: printf format + where it is printed ----------------------------------------

_SPEC = re.compile(r"%(?:%|(?:l|ll|z|h)?[dui]|(?:l|ll|z)?x|s)")


@functools.cache
def _fmt_regex(fmt: str) -> re.Pattern[str]:
    """A regex for a printf format string: the same text, conversions as wildcards
    (built once per format: classification runs for every cell of every run)."""
    out, pos = [], 0
    for m in _SPEC.finditer(fmt):
        out.append(re.escape(fmt[pos : m.start()]))
        spec = m.group(0)
        if spec == "%%":
            out.append("%")
        elif spec == "%s":
            out.append(".*?")
        elif spec.endswith("x"):
            out.append("[0-9a-fA-F]+")
        else:
            out.append(r"-?\d+")
        pos = m.end()
    out.append(re.escape(fmt[pos:]))
    return re.compile("".join(out))


@dataclass(frozen=True)
class Msg:
    """One message as its source prints it; `regex` overrides the derived pattern."""

    fmt: str
    source: str
    regex: re.Pattern[str] | None = None

    @property
    def rx(self) -> re.Pattern[str]:
        return self.regex or _fmt_regex(self.fmt)


_LIBBPF = "libbpf src/libbpf.c"
_BTF_C = "libbpf src/btf.c"
_VERIFIER = "kernel/bpf/verifier.c"

# libbpf v1.5.0 (the guests' libbpf1 1.5.0)
ELF_NOT_ELF = Msg("elf: '%s' is not a proper ELF object", f"{_LIBBPF} bpf_object__elf_init()")
ELF_OPEN = Msg("elf: failed to open %s as ELF file: %s", f"{_LIBBPF} bpf_object__elf_init()")
ELF_NOT_64 = Msg("elf: '%s' is not a 64-bit ELF object", f"{_LIBBPF} bpf_object__elf_init()")
ELF_SHSTR = Msg("elf: failed to get section names strings from %s: %s",
                f"{_LIBBPF} bpf_object__elf_init()")  # fmt: skip
ELF_NOT_BPF = Msg("elf: %s is not a valid eBPF object file", f"{_LIBBPF} bpf_object__elf_init()")
ELF_SYMTAB = Msg("elf: couldn't find symbol table in %s, stripped object file?",
                 f"{_LIBBPF} bpf_object__elf_collect()")  # fmt: skip
ELF_LEGACY_MAPS = Msg("elf: legacy map definitions in 'maps' section are not supported by "
                      "libbpf v1.0+", f"{_LIBBPF} bpf_object__elf_collect()")  # fmt: skip
ELF_ANY = Msg("elf: %s", f"{_LIBBPF} bpf_object__elf_*() (any other 'elf:' warning)",
              re.compile(r"^elf: "))  # fmt: skip
BTF_REQUIRED = Msg("BTF is required, but is missing or corrupted.",
                   f"{_LIBBPF} bpf_object__init_btf()")  # fmt: skip

KBTF_MISSING = Msg("kernel BTF is missing at '%s', was CONFIG_DEBUG_INFO_BTF enabled?",
                   f"{_BTF_C} btf__load_vmlinux_btf()")  # fmt: skip
KBTF_READ = Msg("failed to read kernel BTF from '%s': %d", f"{_BTF_C} btf__load_vmlinux_btf()")
KBTF_NONE = Msg("failed to find valid kernel BTF", f"{_BTF_C} btf__load_vmlinux_btf()")
VMLINUX_LOAD = Msg("Error loading vmlinux BTF: %s", f"{_LIBBPF} bpf_object__load_vmlinux_btf()")
VMLINUX_NOT_FOUND = Msg("vmlinux BTF is not found", f"{_LIBBPF} libbpf_find_vmlinux_btf_id()")

CORE_RESOLVE = Msg("failed to resolve CO-RE relocation %s",
                   f"{_LIBBPF} fixup_log_failed_core_relo()")  # fmt: skip
CORE_INVALID = Msg("%d: <invalid CO-RE relocation>", f"{_LIBBPF} fixup_log_failed_core_relo()")
CORE_POISON_CALL = Msg(f"invalid func unknown#{CORE_POISON}",
                       f"{_VERIFIER} check_helper_call() on the imm of "
                       "libbpf src/relo_core.c bpf_core_poison_insn()")  # fmt: skip
CORE_PERFORM = Msg("failed to perform CO-RE relocations: %d", f"{_LIBBPF} bpf_object__relocate()")

KFUNC_NOT_FOUND = Msg("extern (func ksym) '%s': not found in kernel or module BTFs",
                      f"{_LIBBPF} bpf_object__resolve_ksym_func_btf_id()")  # fmt: skip
KFUNC_PROTO = Msg("extern (func ksym) '%s': func_proto [%d] incompatible with %s [%d]",
                  f"{_LIBBPF} bpf_object__resolve_ksym_func_btf_id()")  # fmt: skip
KSYM_VAR = Msg("extern (var ksym) '%s': not found in kernel BTF",
               f"{_LIBBPF} bpf_object__resolve_ksym_var_btf_id()")  # fmt: skip
KFUNC_UNRESOLVED = Msg("kfunc '%s' is referenced but wasn't resolved",
                       f"{_LIBBPF} fixup_log_missing_kfunc_call()")  # fmt: skip
KFUNC_POISON_CALL = Msg("invalid func unknown#2002%d",
                        f"{_VERIFIER} check_helper_call() on the imm of "
                        f"{_LIBBPF} poison_kfunc_call()")  # fmt: skip
KFUNC_NOT_ALLOWED = Msg("calling kernel function %s is not allowed",
                        f"{_VERIFIER} check_kfunc_call()")  # fmt: skip

ATTACH_BTF_ID = Msg("prog '%s': failed to find kernel BTF type ID of '%s': %d",
                    f"{_LIBBPF} libbpf_find_attach_btf_id()")  # fmt: skip
ATTACH_NOT_IN_VMLINUX = Msg("%s is not found in vmlinux BTF",
                            f"{_LIBBPF} libbpf_find_vmlinux_btf_id()")  # fmt: skip
ATTACH_NO_ADDRESS = Msg("The address of function %s cannot be found",
                        f"{_VERIFIER} bpf_check_attach_target()")  # fmt: skip

MAP_CREATE = Msg(
    "map '%s': failed to create: %s(%d)",
    f"{_LIBBPF} bpf_object__create_maps()",
    re.compile(r"map '(?P<map>[^']+)': failed to create: .*\((?P<err>-?\d+)\)"),
)
MAP_INNER = Msg(
    "map '%s': failed to create inner map: %d",
    f"{_LIBBPF} bpf_object__create_map()",
    re.compile(r"map '(?P<map>[^']+)': failed to create inner map: (?P<err>-?\d+)"),
)
PERM_MEMLOCK = Msg("permission error while running as root; try raising 'ulimit -l'? current "
                   "value: %s", f"{_LIBBPF} pr_perm_msg()")  # fmt: skip
PROG_LOAD_FAILED = Msg("prog '%s': BPF program load failed: %s",
                       f"{_LIBBPF} bpf_object_load_prog()")  # fmt: skip
PROG_TYPE_MISSING = Msg("prog '%s': missing BPF prog type, check ELF section name '%s'",
                        f"{_LIBBPF} bpf_object_load_prog()")  # fmt: skip
KPROBE_CREATE = Msg("prog '%s': failed to create %s '%s+0x%zx' perf event: %s",
                    f"{_LIBBPF} bpf_program__attach_kprobe_opts()")  # fmt: skip
KPROBE_LEGACY = Msg("failed to add legacy kprobe event for '%s+0x%zx': %s",
                    f"{_LIBBPF} perf_event_kprobe_open_legacy()")  # fmt: skip
TP_CREATE = Msg("prog '%s': failed to create tracepoint '%s/%s' perf event: %s",
                f"{_LIBBPF} bpf_program__attach_tracepoint_opts()")  # fmt: skip

# kernel/bpf/verifier.c (wording as of 5.10 .. 7.2)
HELPER_CANNOT_USE = Msg("program of this type cannot use helper %s#%d",
                        f"{_VERIFIER} check_helper_call() (wording of 6.12, 7.2)",
                        re.compile(r"program of this type cannot use helper "
                                   r"(?P<name>\w+)#(?P<id>-?\d+)"))  # fmt: skip
HELPER_UNKNOWN_FUNC = Msg("unknown func %s#%d",
                          f"{_VERIFIER} check_helper_call() (wording of 5.10, 6.1)",
                          re.compile(r"unknown func (?P<name>\w+)#(?P<id>-?\d+)"))  # fmt: skip
HELPER_INVALID_FUNC = Msg("invalid func %s#%d",
                          f"{_VERIFIER} check_helper_call() (id beyond __BPF_FUNC_MAX_ID)",
                          re.compile(r"invalid func (?P<name>\w+)#(?P<id>-?\d+)"))  # fmt: skip
HELPER_IN_PROBE = Msg("helper call is not allowed in probe", f"{_VERIFIER} check_helper_call()")
HELPER_SLEEPS = Msg("helper call might sleep in a non-sleepable prog",
                    f"{_VERIFIER} check_helper_call()")  # fmt: skip
GPL_ONLY = Msg("cannot call GPL-restricted function from non-GPL compatible program",
               f"{_VERIFIER} check_helper_call()")  # fmt: skip
GPL_ONLY_OLD = Msg("cannot call GPL only function from proprietary program",
                   f"{_VERIFIER} check_call() (4.x wording)")  # fmt: skip
FUNC_INFO_MISMATCH = Msg("number of funcs in func_info doesn't match number of subprogs",
                         f"{_VERIFIER} check_btf_func()")  # fmt: skip
LD_IMM64_UNKNOWN = Msg("unrecognized bpf_ld_imm64 insn", f"{_VERIFIER} resolve_pseudo_ldimm64()")
JMP_SEQ = Msg("The sequence of %d jumps is too complex.", f"{_VERIFIER} push_stack()")
TOO_COMPLEX_OLD = Msg("BPF program is too complex", f"{_VERIFIER} push_stack() (4.x wording)")
TOO_LARGE = Msg("BPF program is too large. Processed %d insn", f"{_VERIFIER} do_check()")
STACK_TOO_LARGE = Msg("combined stack size of %d calls is %d. Too large",
                      f"{_VERIFIER} check_max_stack_depth[_subprog]()")  # fmt: skip
CALL_TOO_DEEP = Msg("the call stack of %d frames is too deep",
                    f"{_VERIFIER} check_func_call() / check_max_stack_depth()")  # fmt: skip

# Lines that are never evidence: informational output printed for programs that load fine.
NOISE: tuple[Msg, ...] = (
    Msg("object '%s': failed (%d) to create BPF token from '%s'%s",
        f"{_LIBBPF} bpf_object_prepare_token() (debug, optional step)"),
    Msg("Error in bpf_create_map_xattr(%s):%s(%d). Retrying without BTF.",
        f"{_LIBBPF} bpf_object__create_map() (warning before the real map error)"),
    Msg("arg#%d reference type('%s %s') size cannot be determined: %ld",
        "kernel/bpf/btf.c btf_prepare_func_args() (any main prog taking void *ctx)"),
    Msg("arg#%d type is not a struct", "kernel/bpf/btf.c btf_get_prog_ctx_type()"),
    Msg("Unrecognized arg#%d type %s", "kernel/bpf/btf.c btf_prepare_func_args()"),
    Msg("reg type unsupported for arg#%d function %s#%d",
        "kernel/bpf/btf.c btf_prepare_func_args()"),
    Msg("processed %d insns (limit %d) max_states_per_insn %d total_states %d",
        f"{_VERIFIER} print_verification_stats()"),
    Msg("verification time %d usec", f"{_VERIFIER} print_verification_stats()"),
    Msg("stack depth %s", f"{_VERIFIER} print_verification_stats()",
        re.compile(r"^stack depth [\d+ ]+$")),
)  # fmt: skip
_NOISE_RX = tuple(m.rx for m in NOISE)

# Shapes of libbpf's own messages (as the validator stores them, "libbpf: " dropped), to
# tell a libbpf-only probe log from the kernel's verifier log.
_LIBBPF_SHAPE = re.compile(
    r"^(?:prog '|map '|sec '|elf: |extern \(|object '|failed to |Error (?:in|loading) |"
    r"kfunc '|kernel BTF |vmlinux BTF |BTF is required|permission error |libbpf: |"
    r"-- (?:BEGIN|END) |bpfcompat: |load bpf program failed|\[\.\.\. )"
)
# Instruction trace and register-state lines of a verifier log (not reasons).
_TRACE = re.compile(
    r"^(?:\d+: |\d+:$|;|R\d+(?:_[a-z]+)?=|from \d+ to \d+|last_idx |regs=|parent didn't|"
    r"mark_precise|frame\d+:|func#\d+ @|Func#\d+|Validating |propagating |Live regs|"
    r"\(\w\w\) |[0-9a-f]+: \(|caller:|callee:|returning from|-- (?:BEGIN|END))"
)
# A helper call in the verifier's instruction dump: "6: (85) call bpf_skb_load_bytes#26".
_CALL_DUMP = re.compile(r"\(85\) call (\w{1,64})#(\d{1,10})\b")
_LEVEL_PREFIX = re.compile(r"^(?:(?:warn|info|debug|bpfcompat): )?(?:libbpf: )?")


# Log lines are cut to this before any regex sees them: the '%s' wildcards make the rules
# polynomial in line length, and the guest (running the artifact under test) writes the logs.
MAX_LINE_CHARS = 512


def is_noise(line: str) -> bool:
    line = line[:MAX_LINE_CHARS]
    return any(rx.search(line) for rx in _NOISE_RX)


def clean(line: str) -> str:
    """A log line without the validator's level prefix or libbpf's: still verbatim text."""
    return _LEVEL_PREFIX.sub("", line.strip()[:MAX_LINE_CHARS], count=1).strip()


def verifier_text(log: str) -> bool:
    """Whether `log` holds the kernel verifier's words (not only libbpf's messages)."""
    for raw in log.splitlines():
        line = clean(raw)
        if line and not _LIBBPF_SHAPE.search(line):
            return True
    return False


def verifier_summary(log: str) -> str | None:
    """The verifier's own reason: the first line after the last instruction/state line.

    The kernel prints the failing instruction, then its reason, then context lines (for a
    bad map access, "R0 min value is outside of the allowed memory range" follows the
    real "invalid access to map value ..." line) and the stats, so the *first* non-trace
    line after the trace is the cause; stats and known noise are never chosen.
    """
    lines = [clean(ln) for ln in log.splitlines()]
    lines = [ln for ln in lines if ln and not is_noise(ln) and not ln.startswith("-- ")]
    last_trace = max((i for i, ln in enumerate(lines) if _TRACE.search(ln)), default=-1)
    for line in lines[last_trace + 1 :]:
        if not _TRACE.search(line):
            return line
    reasons = [ln for ln in lines if not _TRACE.search(ln)]
    return reasons[-1] if reasons else None


# --- the evidence, flattened -------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    status: str  # pass | fail | error
    code: str | None
    confidence: str | None
    stage: str | None
    program: str | None
    evidence: str | None
    remediation: str | None
    rule: str | None = None
    detail: str | None = None  # the inputs that decided it (probe, lockdown, release), in words


@dataclass(frozen=True)
class Hit:
    """What a rule found: the verbatim line, and optionally why / how sure / whose."""

    line: str
    detail: str | None = None
    confidence: str | None = None
    program: str | None = None


@dataclass
class Facts:
    """The evidence of one cell, flattened for the rules."""

    result: dict[str, Any]
    stage: str  # open | load | attach | functional | pass | infra
    errno: int
    program: str | None
    entry: dict[str, Any] | None  # discovery.programs[] of the failing program
    prog_log: str  # the failing program's own isolated-probe log
    object_log: str  # whole-object verifier log
    messages: list[str]  # libbpf warnings of the failing step
    libbpf_log: str  # libbpf's messages while opening and loading the whole object
    lockdown: str | None
    kernel_btf: bool | None
    release: str
    artifact_problem: str | None = None
    map_types: dict[str, bool] = field(default_factory=dict)
    program_types: dict[str, bool] = field(default_factory=dict)

    @property
    def locked_down(self) -> bool:
        return self.lockdown in LOCKED_DOWN

    @property
    def version(self) -> tuple[int, int] | None:
        m = re.match(r"(\d+)\.(\d+)", self.release or "")
        return (int(m.group(1)), int(m.group(2))) if m else None

    @property
    def programs(self) -> list[dict[str, Any]]:
        progs = (self.result.get("discovery") or {}).get("programs") or []
        return [p for p in progs if isinstance(p, dict)]

    @property
    def maps(self) -> dict[str, dict[str, Any]]:
        maps = (self.result.get("discovery") or {}).get("maps") or []
        return {m.get("name"): m for m in maps if isinstance(m, dict)}

    @property
    def caps(self) -> dict[str, Any]:
        return self.result.get("capabilities") or {}

    def sources(self) -> Iterator[str]:
        """Logs in order of trust: the failing program's own probe log first."""
        yield self.prog_log
        yield self.object_log
        yield "\n".join(self.messages)
        yield self.libbpf_log

    def lines(self, *texts: str) -> Iterator[str]:
        for text in texts or tuple(self.sources()):
            for raw in text.splitlines():
                line = clean(raw)
                if line:
                    yield line

    def find(self, *msgs: Msg, texts: Iterable[str] | None = None) -> str | None:
        """The first line matching the first message that matches anywhere, verbatim."""
        for msg in msgs:
            for line in self.lines(*(texts or ())):
                if msg.rx.search(line) and not is_noise(line):
                    return line
        return None

    def warnings(self) -> str:
        """libbpf's warn-level messages only (its debug lines also start with 'elf: ')."""
        full = str((self.result.get("logs") or {}).get("libbpf") or "")
        warn = [ln for ln in full.splitlines() if ln.startswith("warn: ")]
        return "\n".join([*self.messages, *warn])

    def program_of(self, line: str) -> str | None:
        """The program whose own probe log holds `line` (for object-level failures)."""
        for p in self.programs:
            if p.get("load_status") == "fail" and line in (p.get("load_log") or ""):
                return p.get("name")
        return self.program

    @property
    def has_verifier_text(self) -> bool:
        return verifier_text(self.prog_log) or verifier_text(self.object_log)

    def verifier_log(self) -> str:
        return self.prog_log if verifier_text(self.prog_log) else self.object_log

    def helper_probes(self) -> list[dict[str, Any]]:
        """discovery.programs[].helpers of the failing program: the helpers its own
        instructions call, each probed for its own program type: [{id, name, supported}]."""
        helpers = (self.entry or {}).get("helpers")
        if not isinstance(helpers, list):
            return []
        probes = {}  # by id, first entry kept; bounded (the kernel has ~212 helpers)
        for h in helpers:
            if isinstance(h, dict) and isinstance(h.get("id"), int) and len(probes) < 1024:
                probes.setdefault(h["id"], h)
        return list(probes.values())

    def helper_known(self, name: str) -> bool | None:
        """Whether any program type may call `name`, from bpftool's per-type helper lists.

        capabilities.helper_program_types (every type bpftool lists the helper for, recorded
        for helpers a program may not call) decides; else capabilities.helpers, the lists
        of the artifact's types. None: no lists, or a helper bpftool never lists.
        """
        short = name.removeprefix("bpf_")
        if short in BPFTOOL_UNLISTED_HELPERS:
            return None
        usable = self.caps.get("helper_program_types")
        if isinstance(usable, dict):
            for key, types in usable.items():
                if str(key).removeprefix("bpf_") == short and isinstance(types, list):
                    return bool(types)
        table = self.caps.get("helpers")
        if not isinstance(table, dict) or not table:
            return None
        lists = [v for v in table.values() if isinstance(v, list)]
        return any(short in [str(h).removeprefix("bpf_") for h in v] for v in lists)

    def lockdown_denials(self, *reasons: str) -> list[str]:
        """security.lockdown_denials: the kernel's own "Lockdown: <comm>: <what> is
        restricted" lines logged during the run, only those naming one of `reasons`."""
        security = self.result.get("security")
        lines = security.get("lockdown_denials") if isinstance(security, dict) else None
        if not isinstance(lines, list):
            return []
        return [str(ln) for ln in lines if any(f": {r} is restricted" in str(ln) for r in reasons)]

    def verifier_knows(self, helper_id: int) -> bool | None:
        """Whether the verifier's instruction dump names helper `helper_id` (it prints
        `call unknown#<id>` for an id beyond this kernel's helpers)."""
        return self._dumped_calls.get(helper_id)

    @functools.cached_property
    def _dumped_calls(self) -> dict[int, bool]:
        """helper id -> named (not `unknown`) for every call the verifier's dump shows."""
        calls: dict[int, bool] = {}
        for m in _CALL_DUMP.finditer(self.verifier_log()):
            calls.setdefault(int(m.group(2)), m.group(1) != "unknown")
        return calls


# --- rules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    code: str
    stages: tuple[str, ...]
    match: Callable[[Facts], Hit | None]
    confidence: str
    meaning: str
    cause: str
    remediation: str
    msgs: tuple[Msg, ...] = ()
    inputs: str = ""  # the non-log inputs the rule reads, for the docs


def _hit(line: str | None, **kw: Any) -> Hit | None:
    return Hit(line, **kw) if line else None


def _helper_refusal(f: Facts) -> tuple[str, str, int] | None:
    """(line, helper name, id) of a 'not allowed' helper line naming a helper."""
    for msg in (HELPER_CANNOT_USE, HELPER_UNKNOWN_FUNC):
        for line in f.lines(f.verifier_log(), "\n".join(f.messages)):
            m = msg.rx.search(line)
            if m and m.group("name") != "unknown":
                return line, m.group("name"), int(m.group("id"))
    return None


def _invalid_artifact(f: Facts) -> Hit | None:
    line = f.find(ELF_NOT_ELF, ELF_SHSTR, ELF_OPEN, ELF_NOT_64, ELF_NOT_BPF, ELF_SYMTAB,
                  ELF_LEGACY_MAPS, BTF_REQUIRED, ELF_ANY, texts=(f.warnings(),))  # fmt: skip
    if line:
        return Hit(line)
    if f.artifact_problem:
        return Hit(f.artifact_problem, detail="host ELF pre-check (libbpf never saw the file)")
    load = f.result.get("load") or {}
    if load.get("error"):
        return Hit(str(load["error"]), confidence="medium", detail="the validator's ELF check")
    return _hit(next(iter(f.messages), None), confidence="medium")


# What each lockdown reason is called in the kernel's "Lockdown: ..." line
# (security/security.c lockdown_reasons[]).
_LOCKDOWN_REASON_TEXT = {
    "LOCKDOWN_BPF_READ_KERNEL": "use of bpf to read kernel RAM",
    "LOCKDOWN_BPF_WRITE_USER": "use of bpf to write user RAM",
}
_LOCKDOWN_ATTACH_TEXTS = ("use of kprobes", "unsafe use of perf", "use of tracefs")
_LOCKDOWN_FUNCTIONAL_TEXTS = ("use of tracefs", "unsafe use of perf", "debugfs access")


def _with_denials(detail: str, f: Facts, *reasons: str) -> str:
    """`detail` plus the kernel's own lockdown line for it, when the validator logged one."""
    denials = f.lockdown_denials(*reasons)
    return f"{detail}; kernel: {denials[0]}" if denials else detail


def _gated_probe(f: Facts) -> tuple[str, str, int] | None:
    """(line, name, id) for a lockdown-gated helper the helper probe found unusable here."""
    for probe in f.helper_probes():
        if probe.get("supported") is False and probe["id"] in LOCKDOWN_GATED_HELPERS:
            line = verifier_summary(f.verifier_log()) or f.find(PROG_LOAD_FAILED)
            name = str(probe.get("name") or f"helper#{probe['id']}")
            return (line, name, probe["id"]) if line else None
    return None


def _lockdown_helper(f: Facts) -> Hit | None:
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
    if hid == 4:
        detail += (
            "; libbpf rewrites bpf_probe_read_kernel to bpf_probe_read when its own "
            "probe of the former fails, as it does under lockdown"
        )
    reason = _LOCKDOWN_REASON_TEXT[LOCKDOWN_GATED_HELPERS[hid]]
    return Hit(line, detail=_with_denials(detail, f, reason))


def _missing_btf(f: Facts) -> Hit | None:
    if f.kernel_btf is True:
        return None
    line = f.find(KBTF_MISSING, KBTF_NONE, KBTF_READ, VMLINUX_LOAD, VMLINUX_NOT_FOUND)
    return _hit(line, detail="btf.kernel_btf_available is "
                f"{f.kernel_btf if f.kernel_btf is not None else 'unknown'}")  # fmt: skip


def _core(f: Facts) -> Hit | None:
    return _hit(f.find(CORE_RESOLVE, CORE_POISON_CALL, CORE_INVALID, CORE_PERFORM))


def _kfunc(f: Facts) -> Hit | None:
    line = f.find(KFUNC_NOT_FOUND, KFUNC_UNRESOLVED, KFUNC_POISON_CALL, KFUNC_PROTO, KSYM_VAR,
                  KFUNC_NOT_ALLOWED)  # fmt: skip
    return _hit(line, program=f.program_of(line) if line else None)


def _load_attach_target(f: Facts) -> Hit | None:
    return _hit(f.find(ATTACH_BTF_ID, ATTACH_NOT_IN_VMLINUX, ATTACH_NO_ADDRESS))


@dataclass(frozen=True)
class _MapFailure:
    line: str
    name: str
    type: str | None
    errno: int
    supported: bool | None
    max_entries: int | None


def _map_failure(f: Facts) -> _MapFailure | None:
    for msg in (MAP_CREATE, MAP_INNER):
        for line in f.lines("\n".join(f.messages), f.prog_log, f.libbpf_log):
            m = msg.rx.search(line)
            if not m:
                continue
            name = m.group("map")
            info = f.maps.get(name) or {}
            inner = msg is MAP_INNER
            mtype = None if inner else info.get("type")
            supported = f.map_types.get(mtype) if mtype else None
            return _MapFailure(line, name, mtype, abs(int(m.group("err"))) or f.errno, supported,
                               None if inner else info.get("max_entries"))  # fmt: skip
    return None


def _map_detail(mf: _MapFailure, f: Facts) -> str:
    probe = {True: "supported", False: "NOT supported", None: "not probed"}[mf.supported]
    err = E.errorcode.get(mf.errno, mf.errno)
    where = f.release or "this kernel"
    kind = mf.type or "unknown"
    return f"map {mf.name!r} of type {kind}; type probe: {probe} on {where}; errno {err}"


def _map_transport(f: Facts) -> Hit | None:
    mf = _map_failure(f)
    if mf and mf.type in TRANSPORT_MAP_TYPES and mf.supported is False:
        return Hit(mf.line, detail=_map_detail(mf, f))
    return None


def _map_permission(f: Facts) -> Hit | None:
    mf = _map_failure(f)
    if mf and mf.errno in (E.EPERM, E.ENOMEM) and mf.supported is not False:
        return Hit(mf.line, detail=_map_detail(mf, f) + "; " + (f.find(PERM_MEMLOCK) or
                   "no memlock hint from libbpf"))  # fmt: skip
    return None


def _map_sizing(f: Facts) -> Hit | None:
    mf = _map_failure(f)
    fixups = [m for m in f.result.get("map_fixups") or [] if isinstance(m, dict)]
    if mf and any(m.get("name") == mf.name and m.get("status") == "applied" for m in fixups):
        return None  # sized by the manifest: its declared 0 is not the problem
    if mf and mf.errno == E.EINVAL and mf.max_entries == 0 and mf.supported is not False:
        detail = _map_detail(mf, f) + "; max_entries is 0 and no fixup sized it"
        return Hit(mf.line, confidence="medium", detail=detail)
    return None


def _map_type(f: Facts) -> Hit | None:
    mf = _map_failure(f)
    if mf is None:
        return None
    if mf.supported is False:
        return Hit(mf.line, detail=_map_detail(mf, f))
    if mf.errno in (E.EINVAL, E.EOPNOTSUPP, ENOTSUPP, E.E2BIG):
        conf = "medium" if mf.supported is None else "low"
        return Hit(mf.line, confidence=conf, detail=_map_detail(mf, f))
    return None


def _license(f: Facts) -> Hit | None:
    return _hit(f.find(GPL_ONLY, GPL_ONLY_OLD))


def _helper_not_allowed(f: Facts) -> Hit | None:
    found = _helper_refusal(f)
    if found:
        line, name, hid = found
        return Hit(line, detail=f"the kernel knows {name}#{hid} (it names it) but not for "
                   f"program type {(f.entry or {}).get('type') or 'of this program'}")  # fmt: skip
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
        if probe.get("supported") is not False:
            continue
        name = str(probe.get("name") or f"helper#{probe['id']}")
        is_known = f.helper_known(name)  # None: no per-type helper lists recorded
        if is_known is None:
            is_known = f.verifier_knows(probe["id"])
        if (known and is_known is not True) or (not known and is_known is True):
            continue
        line = verifier_summary(f.verifier_log()) or f.find(PROG_LOAD_FAILED)
        where = "for other program types only" if known else "for no program type"
        ptype = (f.entry or {}).get("type") or "this program's type"
        return _hit(
            line,
            confidence=None if is_known is not None else "medium",
            detail=f"helper probe: {name} ({probe['id']}) refused for {ptype}, usable {where}",
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


def _helper_name(hid: int) -> str:
    from bpfcompat.validator import helper_name_from_id

    return helper_name_from_id(hid)


def _transport_helper(f: Facts) -> Hit | None:
    for line, hid in _unknown_ids(f):
        if hid in TRANSPORT_HELPERS:
            return Hit(line, detail=f"{_helper_name(hid)} ({hid}) is not in this kernel")
    return None


def _unknown_helper(f: Facts) -> Hit | None:
    for line, hid in _unknown_ids(f):
        return Hit(line, detail=f"{_helper_name(hid)} ({hid}) is beyond this kernel's helpers")
    return None


def _helper_probe(f: Facts) -> Hit | None:
    return _probed_helper(f, known=False)


def _callback_helper(f: Facts) -> Hit | None:
    """A callback argument (BPF_PSEUDO_FUNC, 5.13) refused before any helper is checked."""
    line = f.find(FUNC_INFO_MISMATCH, LD_IMM64_UNKNOWN, texts=(f.verifier_log(),))
    if not line:
        return None
    missing = [str(p.get("name")) for p in f.helper_probes() if p.get("supported") is False]
    if missing:
        return Hit(line, detail=f"helper probe: {', '.join(missing)} not supported here")
    if f.version is not None and f.version < PSEUDO_FUNC_SINCE:
        return Hit(line, confidence="medium",
                   detail=f"kernel {f.release} predates callback arguments (5.13); the object "
                   f"passes a callback, which only these newer helpers take: "
                   f"{', '.join(CALLBACK_HELPERS)}")  # fmt: skip
    return None


def _prog_type(f: Facts) -> Hit | None:
    line = f.find(PROG_TYPE_MISSING)
    if line:
        return Hit(
            line, confidence="medium", detail="the guest's libbpf does not know this section"
        )
    ptype = (f.entry or {}).get("type")
    if f.program_types.get(ptype) is not False or f.has_verifier_text:
        return None
    if f.errno not in (E.EINVAL, E.EPERM, E.EOPNOTSUPP, ENOTSUPP):
        return None
    line = f.find(PROG_LOAD_FAILED)
    return _hit(line, detail=f"program type probe: {ptype} NOT supported on "
                f"{f.release or 'this kernel'}; no verifier log")  # fmt: skip


_LIMIT_MSGS = (JMP_SEQ, TOO_LARGE, STACK_TOO_LARGE, CALL_TOO_DEEP, TOO_COMPLEX_OLD)


def _verifier_limit(f: Facts) -> Hit | None:
    return _hit(f.find(*_LIMIT_MSGS, texts=(f.verifier_log(),)))


def _verifier(f: Facts) -> Hit | None:
    if not f.has_verifier_text:
        return None
    line = verifier_summary(f.verifier_log())
    return _hit(line, detail=f"errno {E.errorcode.get(f.errno, f.errno)} with a verifier log")


def _capability(f: Facts) -> Hit | None:
    if f.errno != E.EPERM or f.has_verifier_text:
        return None
    line = f.find(PERM_MEMLOCK, PROG_LOAD_FAILED) or f.find(
        Msg("%s", "errno text", re.compile(r"Operation not permitted"))
    )
    load_error = (f.result.get("load") or {}).get("error")
    return _hit(line or load_error, detail="EPERM with no verifier log and no policy in force")


def _load_attach_type(f: Facts) -> Hit | None:
    ptype = (f.entry or {}).get("type")
    if f.errno != E.EINVAL or f.has_verifier_text or f.program_types.get(ptype) is not True:
        return None
    return _hit(f.find(PROG_LOAD_FAILED), confidence="low",
                detail=f"program type {ptype} is supported, yet BPF_PROG_LOAD failed with EINVAL "
                f"before the verifier ran: likely its expected attach type")  # fmt: skip


# attach stage ------------------------------------------------------------------------------


def _attach_line(f: Facts) -> str | None:
    return str((f.entry or {}).get("attach_error") or "")[:MAX_LINE_CHARS] or None


def _via_tracefs(f: Facts) -> bool:
    """The attach path needs tracefs: tracepoints always, kprobes without the PMU."""
    entry = f.entry or {}
    prereqs = f.caps.get("attach_prereqs") or {}
    section = str(entry.get("section") or "")
    line = _attach_line(f) or ""
    if entry.get("type") == "tracepoint" or section.startswith(("tracepoint/", "tp/")):
        return True
    if TP_CREATE.rx.search(line) or KPROBE_LEGACY.rx.search(line):
        return True
    return entry.get("type") == "kprobe" and prereqs.get("kprobe_pmu") is False


def _tracefs_missing(f: Facts) -> bool:
    return (f.caps.get("attach_prereqs") or {}).get("tracefs") is False


def _lockdown_attach(f: Facts) -> Hit | None:
    if not f.locked_down:
        return None
    if f.errno in (E.EPERM, E.EACCES) or (
        f.errno == E.ENOENT and _via_tracefs(f) and _tracefs_missing(f)
    ):
        detail = (f"kernel lockdown={f.lockdown}; attach via "
                  f"{'tracefs' if _via_tracefs(f) else 'perf/BPF link'} refused "
                  f"({E.errorcode.get(f.errno, f.errno)})")  # fmt: skip
        return _hit(_attach_line(f), detail=_with_denials(detail, f, *_LOCKDOWN_ATTACH_TEXTS))
    return None


def _attach_target_missing(f: Facts) -> Hit | None:
    if f.errno not in (E.ENOENT, E.ESRCH, E.ENXIO):
        return None
    if _via_tracefs(f) and _tracefs_missing(f):
        return None  # the event directory is missing, not the target
    return _hit(_attach_line(f), detail=f"attach failed with {E.errorcode.get(f.errno)}: the "
                "function or event does not exist on this kernel")  # fmt: skip


def _attach_permission(f: Facts) -> Hit | None:
    if f.errno in (E.EPERM, E.EACCES):
        return _hit(_attach_line(f), detail="no lockdown in force")
    return None


def _attach_unsupported(f: Facts) -> Hit | None:
    if f.errno in (E.EOPNOTSUPP, ENOTSUPP, E.EINVAL, E.EPROTO, E.ENOSYS):
        return _hit(_attach_line(f))
    if f.errno == E.ENOENT and _via_tracefs(f) and _tracefs_missing(f):
        return _hit(_attach_line(f), detail="tracefs is not available in the guest")
    return None


# functional stage --------------------------------------------------------------------------


def _failed_test(f: Facts) -> dict[str, Any] | None:
    tests = [
        t for t in (f.result.get("functional") or {}).get("tests") or [] if isinstance(t, dict)
    ]
    failed = [t for t in tests if t.get("status") == "fail"]
    required = [t for t in failed if t.get("required", True)]
    return (required or failed or [None])[0]


def _test_output_line(test: dict[str, Any]) -> str | None:
    for key in ("stderr_tail", "stdout_tail"):
        lines = [ln.strip() for ln in str(test.get(key) or "").splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return None


def _functional_plan(f: Facts) -> Hit | None:
    test = _failed_test(f)
    if test and test.get("name") == "functional-plan":
        return _hit(str(test.get("error") or ""))
    return None


def _lockdown_functional(f: Facts) -> Hit | None:
    test = _failed_test(f)
    if not f.locked_down or not test:
        return None
    text = f"{test.get('stderr_tail') or ''}\n{test.get('stdout_tail') or ''}"
    for line in text.splitlines():
        if "Operation not permitted" in line and re.search(r"tracing|tracefs|perf", line):
            detail = f"kernel lockdown={f.lockdown} refuses tracefs/perf"
            return Hit(line.strip(), detail=_with_denials(detail, f, *_LOCKDOWN_FUNCTIONAL_TEXTS))
    return None


def _functional(f: Facts) -> Hit | None:
    test = _failed_test(f)
    if not test:
        return None
    error = str(test.get("error") or "") or None
    output = _test_output_line(test)
    line = output if output and (test.get("exit_code") or test.get("timed_out")) else error
    return _hit(line or error or output, detail=f"required test {test.get('name')!r}: {error}")


# the table ---------------------------------------------------------------------------------

_L = ("load",)
RULES: tuple[Rule, ...] = (
    Rule("artifact-unreadable", "INVALID_ARTIFACT", ("open",), _invalid_artifact, "high",
         "The file is not a BPF object libbpf can open.",
         "Not ELF, truncated, wrong machine, stripped of its symbol table, or built for a "
         "pre-1.0 libbpf (legacy 'maps' section).",
         "Rebuild with `clang -target bpf -g -O2` and check the file was copied whole.",
         (ELF_NOT_ELF, ELF_SHSTR, ELF_OPEN, ELF_NOT_64, ELF_NOT_BPF, ELF_SYMTAB, ELF_LEGACY_MAPS,
          BTF_REQUIRED, ELF_ANY), "load.stage elf/open; host ELF pre-check"),
    Rule("lockdown-helper", "POLICY_DENIED", _L, _lockdown_helper, "high",
         "Kernel lockdown withholds a helper the program calls; the verifier's words name "
         "the helper, the cause is the policy.",
         "lockdown=integrity/confidentiality (Secure Boot) with bpf_probe_read*/"
         "bpf_probe_read_kernel*/bpf_probe_write_user (LOCKDOWN_BPF_READ_KERNEL/WRITE_USER).",
         "Run without lockdown, or avoid kernel-memory reads (use BTF-typed direct access "
         "from fentry/tp_btf programs).",
         (HELPER_CANNOT_USE, HELPER_UNKNOWN_FUNC),
         "security.lockdown; helper id or discovery.programs[].helpers; "
         "security.lockdown_denials (detail)"),
    Rule("missing-btf", "MISSING_BTF", _L, _missing_btf, "high",
         "The kernel exposes no BTF and the object needs it (CO-RE, fentry/tp_btf/lsm, "
         "kfuncs, typed ksyms).",
         "A kernel built without CONFIG_DEBUG_INFO_BTF (no /sys/kernel/btf/vmlinux).",
         "Use a kernel with CONFIG_DEBUG_INFO_BTF=y, or give libbpf this kernel's BTF file "
         "for CO-RE (`matrix run --btf KERNEL_ID=PATH` or `btf:` in kernels.yaml: "
         "bpf_object_open_opts.btf_custom_path); fentry/fexit, tp_btf, LSM and kfunc "
         "programs need BTF inside the kernel itself and fail either way.",
         (KBTF_MISSING, KBTF_NONE, KBTF_READ, VMLINUX_LOAD, VMLINUX_NOT_FOUND),
         "btf.kernel_btf_available is not true"),
    Rule("core-relocation", "CORE_RELOCATION_FAILURE", _L, _core, "high",
         "A CO-RE relocation found no matching type or field in this kernel's BTF.",
         "The object reads a struct/field this kernel does not have (renamed, removed, "
         "or never existed) without guarding it.",
         "Guard the access with bpf_core_field_exists()/bpf_core_type_exists() and provide "
         "a fallback, or add a ___flavor struct for this kernel.",
         (CORE_RESOLVE, CORE_POISON_CALL, CORE_INVALID, CORE_PERFORM)),
    Rule("kfunc", "UNSUPPORTED_KFUNC", _L, _kfunc, "high",
         "The object calls a kernel function (kfunc) or uses a typed ksym this kernel "
         "does not export, or does not allow for this program type.",
         "A kfunc added in a newer kernel (e.g. bpf_task_from_pid, 6.2), or a renamed one.",
         "Declare the kfunc __weak and test bpf_ksym_exists() before calling it, or require "
         "the kernel that added it.",
         (KFUNC_NOT_FOUND, KFUNC_UNRESOLVED, KFUNC_POISON_CALL, KFUNC_PROTO, KSYM_VAR,
          KFUNC_NOT_ALLOWED)),
    Rule("load-attach-target", "MISSING_ATTACH_TARGET", _L, _load_attach_target, "high",
         "The kernel function a BTF-attached program (fentry/fexit/tp_btf/lsm) names does "
         "not exist in this kernel.",
         "The traced function was renamed, inlined or never existed on this release.",
         "Attach to a function this kernel has (check its BTF) or make the program optional "
         "(bpf_program__set_autoload false).",
         (ATTACH_BTF_ID, ATTACH_NOT_IN_VMLINUX, ATTACH_NO_ADDRESS)),
    Rule("transport-map", "UNSUPPORTED_TRANSPORT", _L, _map_transport, "high",
         "The event transport map (BPF ring buffer) cannot be created on this kernel.",
         "BPF_MAP_TYPE_RINGBUF (5.8) / USER_RINGBUF (6.1) on an older kernel.",
         "Fall back to a perf event array (perf buffer) where the ring buffer is missing.",
         (MAP_CREATE,), "capabilities.map_types; discovery.maps[].type"),
    Rule("map-permission", "CAPABILITY_FAILURE", _L, _map_permission, "medium",
         "Map creation was refused for lack of privilege or memory, not because of its type.",
         "RLIMIT_MEMLOCK too low on pre-5.11 kernels, or a map too large for the guest.",
         "Raise RLIMIT_MEMLOCK (libbpf >= 1.0 does on its own) or shrink max_entries.",
         (MAP_CREATE, MAP_INNER, PERM_MEMLOCK), "errno EPERM/ENOMEM; capabilities.map_types"),
    Rule("map-needs-sizing", "INVALID_ARTIFACT", _L, _map_sizing, "medium",
         "A map is declared with max_entries 0 and nothing sized it: no kernel can create it.",
         "A runtime-sized map (per-CPU count, ring buffer size) loaded without its fixup.",
         "Give the manifest a max_entries / inner_ringbuf_bytes fixup for the map.",
         (MAP_CREATE,), "discovery.maps[].max_entries; errno EINVAL"),
    Rule("map-type", "UNSUPPORTED_MAP_TYPE", _L, _map_type, "high",
         "A map could not be created because this kernel does not support its type (or, "
         "at lower confidence, its flags).",
         "A map type newer than the kernel (BLOOM_FILTER 5.16, CGRP_STORAGE 6.2, ...).",
         "Make the map optional (bpf_map__set_autocreate false) with a fallback, or require "
         "the kernel that added the type.",
         (MAP_CREATE, MAP_INNER), "capabilities.map_types; discovery.maps[].type; errno"),
    Rule("license", "LICENSE_INCOMPATIBLE", _L, _license, "high",
         "A GPL-only helper is called from a program whose license is not GPL-compatible.",
         "SEC(\"license\") is not GPL-compatible and the program calls e.g. "
         "bpf_get_current_task or bpf_probe_read_kernel.",
         "Use a GPL-compatible license string (\"GPL\", \"Dual BSD/GPL\") or avoid the helper.",
         (GPL_ONLY, GPL_ONLY_OLD)),
    Rule("helper-not-allowed", "HELPER_NOT_ALLOWED", _L, _helper_not_allowed, "high",
         "The kernel knows the helper (the verifier names it) but not for this program type.",
         "e.g. bpf_skb_load_bytes from a tracepoint; sleepable helpers from a non-sleepable "
         "program.",
         "Call the helper from a program type that may use it, or use another helper.",
         (HELPER_CANNOT_USE, HELPER_UNKNOWN_FUNC, HELPER_IN_PROBE, HELPER_SLEEPS),
         "discovery.programs[].helpers; capabilities.helper_program_types / helpers "
         "(when recorded)"),
    Rule("transport-helper", "UNSUPPORTED_TRANSPORT", _L, _transport_helper, "high",
         "A ring-buffer / perf-output helper is missing from this kernel.",
         "bpf_ringbuf_* (5.8) or its dynptr variants (5.19) on an older kernel.",
         "Fall back to bpf_perf_event_output and a perf event array.",
         (HELPER_INVALID_FUNC, HELPER_UNKNOWN_FUNC), "helper id"),
    Rule("unknown-helper", "UNSUPPORTED_HELPER", _L, _unknown_helper, "high",
         "The program calls a BPF helper this kernel does not have.",
         "A helper newer than the kernel (the verifier prints it as unknown#<id>).",
         "Probe with libbpf_probe_bpf_helper() and load a fallback variant "
         "(manifest program_variants).",
         (HELPER_INVALID_FUNC, HELPER_UNKNOWN_FUNC), "helper id"),
    Rule("callback-helper", "UNSUPPORTED_HELPER", _L, _callback_helper, "high",
         "The program passes a callback to a helper (bpf_loop, bpf_for_each_map_elem, "
         "bpf_timer, ...) and this kernel predates callback arguments, so it has none of "
         "those helpers.",
         "bpf_loop (5.17) on 5.10: the verifier refuses the callback reference before it "
         "ever looks at the call.",
         "Provide a variant without the callback helper (manifest program_variants) or "
         "require the kernel that added it.",
         (FUNC_INFO_MISMATCH, LD_IMM64_UNKNOWN),
         "kernel release < 5.13, or discovery.programs[].helpers (when recorded)"),
    Rule("helper-probe", "UNSUPPORTED_HELPER", _L, _helper_probe, "high",
         "The validator's helper probe says the program's helper is usable by no program "
         "type here (medium confidence when neither bpftool's per-type lists nor the verifier's "
         "instruction dump say whether the kernel has it).",
         "A helper newer than the kernel, hidden behind an earlier verifier error.",
         "Probe with libbpf_probe_bpf_helper() and load a fallback variant.", (),
         "discovery.programs[].helpers; capabilities.helper_program_types / helpers"),
    Rule("prog-type", "UNSUPPORTED_PROGRAM_TYPE", _L, _prog_type, "high",
         "The kernel (or the guest's libbpf) does not know this program type.",
         "A program type newer than the kernel (e.g. NETFILTER, 6.4): BPF_PROG_LOAD fails "
         "with EINVAL before the verifier runs, so there is no verifier log.",
         "Require a kernel that has the program type, or ship an alternative program.",
         (PROG_LOAD_FAILED, PROG_TYPE_MISSING),
         "capabilities.program_types; errno; empty verifier log"),
    Rule("verifier-limit", "VERIFIER_LIMIT", _L, _verifier_limit, "high",
         "The verifier gave up on a complexity or size limit, not on a safety violation.",
         "Too many branches explored (8192-jump sequence), over 1M processed instructions, "
         "512-byte combined stack, or call chains over 8 frames.",
         "Reduce branching, bound loops tighter, use bpf_loop or split with tail calls.",
         _LIMIT_MSGS, "the failing program's own verifier log"),
    Rule("verifier", "VERIFIER_REJECTION", _L, _verifier, "high",
         "The verifier rejected the program; its own reason line is the evidence.",
         "An unchecked pointer, an out-of-bounds access, a missing NULL check, an "
         "uninitialised read...",
         "Fix the access the verifier names (bounds checks, NULL checks, pointer types).",
         (), "any errno (EACCES, EINVAL, ...) with a verifier log"),
    Rule("capability", "CAPABILITY_FAILURE", ("load",), _capability, "medium",
         "The load was refused for lack of privilege, with no verifier log and no policy.",
         "Missing CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN, or RLIMIT_MEMLOCK on old kernels.",
         "Run the loader as root or with CAP_BPF + CAP_PERFMON, and raise RLIMIT_MEMLOCK.",
         (PERM_MEMLOCK, PROG_LOAD_FAILED), "errno EPERM; no verifier log"),
    Rule("load-attach-type", "UNSUPPORTED_ATTACH_TYPE", _L, _load_attach_type, "low",
         "The program type is supported but BPF_PROG_LOAD refused the program before the "
         "verifier ran: most likely its expected attach type is unknown to this kernel.",
         "A section whose attach type is newer than the kernel (e.g. cgroup/sock_* variants).",
         "Use an attach type this kernel supports, or require a newer kernel.",
         (PROG_LOAD_FAILED,), "capabilities.program_types true; errno EINVAL; no verifier log"),
    Rule("lockdown-attach", "POLICY_DENIED", ("attach",), _lockdown_attach, "high",
         "Kernel lockdown refused the attachment (perf/kprobe or tracefs).",
         "lockdown=confidentiality: EPERM from perf_event_open/kprobes, or tracefs not "
         "available so tracepoint ids cannot be read.",
         "Run without lockdown, or attach through BTF links (tp_btf/fentry) that need "
         "neither tracefs nor kprobes.",
         (KPROBE_CREATE, TP_CREATE, KPROBE_LEGACY),
         "security.lockdown; attach errno; capabilities.attach_prereqs; "
         "security.lockdown_denials (detail)"),
    Rule("attach-target-missing", "MISSING_ATTACH_TARGET", ("attach",), _attach_target_missing,
         "high", "The kernel function, tracepoint or symbol to attach to does not exist here.",
         "A kprobe on a function this kernel lacks (renamed, inlined, static) or a "
         "tracepoint it does not define: ENOENT from perf_event_open.",
         "Attach to a symbol this kernel has (/proc/kallsyms, BTF) or make the attach optional.",
         (KPROBE_CREATE, KPROBE_LEGACY, TP_CREATE),
         "attach errno ENOENT/ESRCH/ENXIO; capabilities.attach_prereqs"),
    Rule("attach-permission", "CAPABILITY_FAILURE", ("attach",), _attach_permission, "medium",
         "The attachment was refused for lack of privilege (no lockdown in force).",
         "perf_event_paranoid or missing CAP_PERFMON/CAP_SYS_ADMIN.",
         "Attach as root or with CAP_PERFMON.", (), "attach errno EPERM/EACCES"),
    Rule("attach-unsupported", "UNSUPPORTED_ATTACH_TYPE", ("attach",), _attach_unsupported,
         "medium", "This kernel (or guest) cannot attach this kind of program here.",
         "The attach mechanism is missing (EOPNOTSUPP/EINVAL), or its prerequisite is "
         "(tracefs for tracepoints, kprobe_events without the kprobe PMU).",
         "Use an attach type this kernel supports or make the attachment optional.",
         (KPROBE_CREATE, TP_CREATE), "attach errno; capabilities.attach_prereqs"),
    Rule("functional-plan", "INFRA_ERROR", ("functional",), _functional_plan, "high",
         "The functional-test plan could not be used; nothing about the kernel is known.",
         "A malformed functional_tests entry in the manifest.",
         "Fix the manifest's functional_tests.", (), "functional.tests[functional-plan]"),
    Rule("lockdown-functional", "POLICY_DENIED", ("functional",), _lockdown_functional, "medium",
         "A functional test was refused tracefs/perf by kernel lockdown.",
         "lockdown=confidentiality and a test reading trace_pipe or perf events.",
         "Run the test without lockdown or read events through a ring buffer instead.",
         (), "security.lockdown; test output 'Operation not permitted'; "
         "security.lockdown_denials (detail)"),
    Rule("functional", "FUNCTIONAL_TEST_FAILURE", ("functional",), _functional, "high",
         "The object loaded (and attached as far as required), but a required functional "
         "test failed.",
         "The program never saw the event (attach was best-effort and failed, or the event "
         "did not fire), or the test's expectation is wrong for this kernel.",
         "Read the test's output; check the attach warnings of the cell.",
         (), "functional.tests[] status, exit code, output"),
)  # fmt: skip

UNKNOWN_RULE = Rule(
    "unknown", "UNKNOWN", (), lambda f: None, "low", "No rule matched the evidence.",
    "A failure this classifier has no rule for yet.",
    "Read the cell's libbpf log; report the line so a rule can be added.",
)  # fmt: skip
OUTCOME_RULES: tuple[Rule, ...] = (
    Rule("kernel-crash", "KERNEL_CRASH", ("guest",), lambda f: None, "high",
         "The guest kernel panicked or oopsed while validating this artifact.",
         "A kernel bug triggered by the object, or an unstable guest kernel.",
         "Read the console tail; try the kernel's newest point release.", (),
         "stored crash flag; console tail"),
    Rule("infra", "INFRA_ERROR", ("infra",), lambda f: None, "high",
         "The guest, QEMU, SSH or the validator itself failed: inconclusive, says nothing "
         "about compatibility.",
         "A boot failure, a lost connection, libbpf missing in the guest, or a validator "
         "step that crashed.",
         "Rerun; if it persists, check the console log and the kernel cache entry.", (),
         "infra_error; validator errors[] in core steps; no result"),
    Rule("validator-signal", "INVALID_ARTIFACT", ("open",), lambda f: None, "medium",
         "The validator was killed by a signal while libbpf parsed an object the host "
         "already flagged as malformed.",
         "libbpf crashing on a corrupt ELF.",
         "Rebuild the object; libbpf could not parse it safely.", (),
         "signal + host ELF pre-check"),
    UNKNOWN_RULE,
)  # fmt: skip

# Steps of the validator whose crash makes the result inconclusive (validator CORE_STEPS),
# in pipeline order, with the stage a crash there stands for.
_STEP_STAGE = {"libbpf": 0, "open": 1, "discovery": 1, "variants": 2, "fixups": 2, "load": 2,
               "attach": 3, "functional": 4}  # fmt: skip
_STAGE_ORDER = {"infra": 0, "open": 1, "load": 2, "attach": 3, "functional": 4, "pass": 5}


def _stage(result: dict[str, Any]) -> str:
    load = result.get("load") or {}
    if load.get("status") == "fail":
        stage = load.get("stage")
        if stage in ("elf", "open"):
            return "open"
        return "load" if stage == "load" else "infra"
    if (result.get("attach") or {}).get("status") == "fail":
        return "attach"
    if (result.get("functional") or {}).get("status") == "fail":
        return "functional"
    return "pass" if result.get("status") == "pass" else "infra"


def facts_from(result: dict[str, Any], release: str = "",
               artifact_problem: str | None = None) -> Facts:  # fmt: skip
    """Flatten one validator result (validator.v0.4) for the rules."""
    stage = _stage(result)
    load = result.get("load") or {}
    programs = [
        p for p in (result.get("discovery") or {}).get("programs") or [] if isinstance(p, dict)
    ]
    by_name = {p.get("name"): p for p in programs}
    program: str | None = load.get("failed_program")
    errno_value = abs(int(load.get("error_code") or 0))
    messages = [str(m) for m in load.get("libbpf_messages") or []]
    if stage == "attach":
        required = set((result.get("attach") or {}).get("required_failed") or [])
        failed = [p for p in programs if p.get("attach_status") == "fail"]
        chosen = [p for p in failed if p.get("name") in required] or failed
        program = chosen[0].get("name") if chosen else None
        errno_value = abs(int(chosen[0].get("attach_errno") or 0)) if chosen else 0
        messages = (
            [str(chosen[0].get("attach_error"))] if chosen and chosen[0].get("attach_error") else []
        )
    elif program is None and stage == "load" and not load.get("failed_map"):
        failing = [
            p for p in programs if p.get("load_status") == "fail" and p.get("autoload", True)
        ]
        hinted = [p for p in failing if any(m in (p.get("load_log") or "") for m in messages)]
        program = (hinted or failing or [{}])[0].get("name")
    entry = by_name.get(program)
    prog_log = ""
    if entry and stage == "load" and entry.get("load_status") == "fail":
        prog_log = str(entry.get("load_log") or "")
    logs = result.get("logs") or {}
    caps = result.get("capabilities") or {}
    return Facts(
        result=result, stage=stage, errno=errno_value, program=program, entry=entry,
        prog_log=prog_log, object_log=str(load.get("verifier_log") or ""), messages=messages,
        libbpf_log=str(logs.get("libbpf_load") or ""),
        lockdown=(result.get("security") or {}).get("lockdown"),
        kernel_btf=(result.get("btf") or {}).get("kernel_btf_available"),
        release=release or str((result.get("host") or {}).get("release") or ""),
        artifact_problem=artifact_problem,
        map_types={k: v for k, v in (caps.get("map_types") or {}).items() if isinstance(v, bool)},
        program_types={k: v for k, v in (caps.get("program_types") or {}).items()
                       if isinstance(v, bool)},
    )  # fmt: skip


def _crashed_steps(result: dict[str, Any]) -> list[dict[str, Any]]:
    errors = [e for e in result.get("errors") or [] if isinstance(e, dict)]
    return [e for e in errors if e.get("step") in _STEP_STAGE]


def _verdict(rule: Rule, hit: Hit, facts: Facts) -> Verdict:
    status = "error" if rule.code == "INFRA_ERROR" else "fail"
    return Verdict(status, rule.code, hit.confidence or rule.confidence, facts.stage,
                   hit.program or facts.program, hit.line[:1000], rule.remediation, rule.name,
                   hit.detail)  # fmt: skip


# What reading a result with wrong types raises (`.get` on an int, int("x"), set([[]]) ...).
_MALFORMED = (AttributeError, TypeError, ValueError, KeyError, IndexError, OverflowError)


def _tolerant(fallback: Callable[[Exception], Any]) -> Callable[[Callable[..., Any]], Any]:
    """The guest writes result.json after running the artifact under test as root: a buggy
    or hostile guest can give any field any JSON type. Such a result gets `fallback(exc)`
    instead of an exception (a traceback in the host's run)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def tolerant(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except _MALFORMED as exc:
                return fallback(exc)

        return tolerant

    return wrap


def _malformed_verdict(exc: Exception) -> Verdict:
    infra = OUTCOME_RULES[1]
    evidence = f"malformed validator result ({type(exc).__name__}: {exc})"[:1000]
    return Verdict("error", "INFRA_ERROR", "high", "infra", None, evidence, infra.remediation,
                   infra.name, "the result does not match validator.v0.4")  # fmt: skip


@_tolerant(_malformed_verdict)
def classify_result(result: dict[str, Any], release: str = "", *,
                    artifact_problem: str | None = None) -> Verdict:  # fmt: skip
    """The verdict for one raw validator result: first matching rule, else UNKNOWN."""
    facts = facts_from(result, release, artifact_problem)
    crashed = _crashed_steps(result)
    stage_rank = _STAGE_ORDER.get(facts.stage, 0)
    inconclusive = [e for e in crashed if _STEP_STAGE[str(e.get("step"))] <= stage_rank]
    if facts.stage == "infra" or inconclusive:
        why = (
            inconclusive[0]
            if inconclusive
            else {"message": (result.get("load") or {}).get("error")}
        )
        evidence = str(why.get("message") or "validator did not finish")
        infra = OUTCOME_RULES[1]
        step = f"validator step {why.get('step')!r} failed" if why.get("step") else "no verdict"
        return Verdict("error", "INFRA_ERROR", "high", "infra", facts.program, evidence[:1000],
                       infra.remediation, infra.name, step)  # fmt: skip
    if facts.stage == "pass":
        return Verdict("pass", None, None, None, None, None, None)
    for rule in RULES:
        if facts.stage not in rule.stages:
            continue
        hit = rule.match(facts)
        if hit:
            return _verdict(rule, hit, facts)
    fallback = (
        verifier_summary(facts.verifier_log())
        or _attach_line(facts)
        or next((m for m in reversed(facts.messages) if not is_noise(m)), None)
        or (result.get("load") or {}).get("error")
        or "no log line explains the failure"
    )
    return Verdict("fail", UNKNOWN_RULE.code, UNKNOWN_RULE.confidence, facts.stage,
                   facts.program, str(fallback)[:1000], UNKNOWN_RULE.remediation,
                   UNKNOWN_RULE.name)  # fmt: skip


def classify(stored: Any, *, artifact_problem: str | None = None, release: str = "") -> Verdict:
    """Verdict for a stored ValidatorResult (duck-typed so reclassify needs no VM)."""
    crash_rule, infra_rule, signal_rule = OUTCOME_RULES[:3]
    if stored.crash:
        console = str(getattr(stored, "console_tail", "") or "")
        evidence = crash_evidence(console) or stored.infra_error or "guest crashed"
        return Verdict("fail", "KERNEL_CRASH", "high", "guest", None, evidence[:1000],
                       crash_rule.remediation, crash_rule.name)  # fmt: skip
    if stored.signal:
        why = f"validator killed by signal {stored.signal}"
        oom = OOM_KILL.search(str(getattr(stored, "infra_error", "") or ""))
        if stored.signal == 9 and oom:
            return Verdict("error", "INFRA_ERROR", "high", "infra", None, oom.group()[:1000],
                           "Give this kernel more memory (memory_mb in kernels.yaml): the "
                           "validator ran the guest out of memory.", infra_rule.name,
                           "validator killed by the guest kernel's OOM killer")  # fmt: skip
        if artifact_problem:
            return Verdict("fail", "INVALID_ARTIFACT", "medium", "open", None, artifact_problem,
                           signal_rule.remediation, signal_rule.name, why)  # fmt: skip
        return Verdict("error", "INFRA_ERROR", "medium", "infra", None, why,
                       infra_rule.remediation, infra_rule.name)  # fmt: skip
    result = stored.result()
    if result is None:
        if artifact_problem:
            first = RULES[0]
            return Verdict("fail", "INVALID_ARTIFACT", "high", "open", None, artifact_problem,
                           first.remediation, first.name, "host ELF pre-check")  # fmt: skip
        return Verdict("error", "INFRA_ERROR", "high", "infra", None,
                       (stored.infra_error or "no validator result")[:1000],
                       infra_rule.remediation, infra_rule.name)  # fmt: skip
    verdict = classify_result(result, release, artifact_problem=artifact_problem)
    if artifact_problem and verdict.status != "pass" and verdict.code in (None, "UNKNOWN"):
        first = RULES[0]
        return Verdict("fail", "INVALID_ARTIFACT", "high", "open", None, artifact_problem,
                       first.remediation, first.name, "host ELF pre-check")  # fmt: skip
    return verdict


@_tolerant(lambda exc: [f"malformed validator result ({type(exc).__name__}: {exc})"[:300]])
def notes_for(result: dict[str, Any]) -> list[str]:
    """Variant choices, map fixups and attach warnings, in words, for reports."""
    notes: list[str] = []
    for v in result.get("program_variants") or []:
        if not isinstance(v, dict):
            continue
        disabled = ", ".join(v.get("disabled") or []) or "none"
        notes.append(
            f"variant group {v.get('group')}: chose {v.get('chosen')}, disabled {disabled}"
        )
    for m in result.get("map_fixups") or []:
        if not isinstance(m, dict):
            continue
        applied = m.get("applied_entries")
        notes.append(
            f"map fixup {m.get('name')}: requested {m.get('requested')}, "
            f"applied {applied if applied is not None else '-'} ({m.get('status')})"
            + (
                f", inner ringbuf {m['inner_ringbuf_bytes']} bytes"
                if m.get("inner_ringbuf_bytes")
                else ""
            )
        )
    btf = result.get("btf") or {}
    if btf.get("core_btf_source") == "custom":
        notes.append(f"external BTF ({btf.get('custom_btf_size')} bytes) given to libbpf as "
                     "btf_custom_path: CO-RE relocations use it instead of kernel BTF")  # fmt: skip
    attach = result.get("attach") or {}
    if attach.get("status") == "warn":
        failed = [p.get("name") for p in (result.get("discovery") or {}).get("programs") or []
                  if isinstance(p, dict) and p.get("attach_status") == "fail"]  # fmt: skip
        # Name a few; an object with thousands of programs must not make a 15 KB note.
        names = ", ".join(map(str, failed[:8])) or "some programs"
        more = f" and {len(failed) - 8} more" if len(failed) > 8 else ""
        notes.append(f"attach warning (best-effort): {names}{more} did not attach")
    return notes


def rule_table() -> list[dict[str, str]]:
    """Every rule in precedence order, then the outcome codes: the source of docs/codes.md."""
    rows = []
    for r in (*RULES, *OUTCOME_RULES):
        rows.append({
            "code": r.code, "rule": r.name, "stages": ", ".join(r.stages) or "-",
            "confidence": r.confidence, "meaning": r.meaning, "cause": r.cause,
            "fix": r.remediation, "inputs": r.inputs,
            "matches": "; ".join(f"`{m.fmt}` ({m.source})" for m in r.msgs),
        })  # fmt: skip
    return rows


def _as_list(value: Any) -> list[Any]:
    """A guest-written field that should be a list, or [] when it is not (see _tolerant)."""
    return value if isinstance(value, list) else []


def cell_fields(verdict: Verdict, result: dict[str, Any] | None) -> dict[str, Any]:
    """The judged part of a stored cell: the verdict, its notes, and the variant and
    map-fixup summaries reports show (one mapping for the runner and reclassify alike)."""
    result = result if isinstance(result, dict) else {}
    details = {
        "variants": [
            {"group": v.get("group"), "chosen": v.get("chosen"),
             "disabled": _as_list(v.get("disabled"))}
            for v in _as_list(result.get("program_variants"))
            if isinstance(v, dict)
        ],
        "map_fixups": [
            {"name": f.get("name"), "requested": f.get("requested"),
             "applied_entries": f.get("applied_entries"), "status": f.get("status")}
            for f in _as_list(result.get("map_fixups"))
            if isinstance(f, dict)
        ],
    }  # fmt: skip
    return {
        "status": verdict.status,
        "code": verdict.code,
        "evidence": verdict.evidence,
        "confidence": verdict.confidence,
        "stage": verdict.stage,
        "program": verdict.program,
        "remediation": verdict.remediation,
        "rule": verdict.rule,
        "detail": verdict.detail,
        "classifier_version": CLASSIFIER_VERSION,
        "notes_json": json.dumps(notes_for(result)),
        "details_json": json.dumps(details),
    }
