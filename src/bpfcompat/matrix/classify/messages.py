"""Every message a rule matches: the exact printf format its source prints, and where.

Data only. Formats are libbpf v1.5.0's (the guests' libbpf1 1.5.0) and the kernel's
(kernel/bpf/verifier.c, wording as of 5.10 .. 7.2); each names the function that prints
it, the way cilium/ebpf ties each matched string to its source. A format's conversions
(`%s`, `%d`, ...) match any value; `regex` overrides the derived pattern where a rule
needs named groups.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# Ids libbpf writes into instructions it had to poison; the verifier then prints them as
# unknown helpers. src/relo_core.c bpf_core_poison_insn() (0xbad2310, failed CO-RE
# relocation); src/libbpf.c POISON_LDIMM64_MAP_BASE (poison_map_ldimm64()) and
# POISON_CALL_KFUNC_BASE (poison_kfunc_call()).
CORE_POISON = 195896080
MAP_POISON_BASE = 2001000000
KFUNC_POISON_BASE = 2002000000

# --- the format language -------------------------------------------------------------

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
EXTERN_NO_BTF = Msg(
    "failed to find BTF for extern '%s': %d",
    f"{_LIBBPF} bpf_object__collect_externs() (also \"... '%s' [%d] section: %d\")",
    re.compile(r"failed to find BTF for extern '(?P<name>[^']+)'"),
)
PIN_INVALID = Msg("map '%s': invalid pinning value %u.", f"{_LIBBPF} parse_btf_map_def()")
STATIC_PROGRAM = Msg(
    "sec '%s': program '%s' is static and not supported",
    f"{_LIBBPF} bpf_object__add_programs()",
)
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
ATTACH_TARGET_UNSET = Msg(
    "prog '%s': no BTF-based attach target is specified, use bpf_program__set_attach_target()",
    f"{_LIBBPF} libbpf_prepare_prog_load()",
)
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
FREPLACE_NO_TARGET = Msg("prog '%s': attach program FD is not set",
                         f"{_LIBBPF} libbpf_prepare_prog_load()")  # fmt: skip
STRUCT_OPS_NOT_FOUND = Msg(
    "struct_ops init_kern: struct %s is not found in kernel BTF",
    f"{_LIBBPF} bpf_map__init_kern_struct_ops()",
    re.compile(r"struct_ops init_kern: struct (?P<struct>\S+) is not found in kernel BTF"),
)
KCONFIG_OPEN = Msg("failed to open system Kconfig", f"{_LIBBPF} bpf_object__read_kconfig_file()")
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
# A global (BTF-described) function's ctx argument is checked against vmlinux BTF; a
# kernel without it prints this, then refuses the call.
BTF_VMLINUX_MALFORMED = Msg(
    "btf_vmlinux is malformed", "kernel/bpf/btf.c btf_get_prog_ctx_type(), btf_prepare_func_args()"
)
CALLER_INVALID_ARGS = Msg("Caller passes invalid args into func#%d",
                          f"{_VERIFIER} check_func_call() / btf_check_subprog_call()")  # fmt: skip
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
NOISE_RX = tuple(m.rx for m in NOISE)

# Shapes of libbpf's own messages (as the validator stores them, "libbpf: " dropped), to
# tell a libbpf-only probe log from the kernel's verifier log.
LIBBPF_SHAPE = re.compile(
    r"^(?:prog '|map '|sec '|elf: |extern \(|object '|failed to |Error (?:in|loading) |"
    r"kfunc '|kernel BTF |vmlinux BTF |BTF is required|permission error |libbpf: |"
    r"-- (?:BEGIN|END) |bpfcompat: |load bpf program failed|\[\.\.\. )"
)
# Instruction trace and register-state lines of a verifier log (not reasons).
TRACE = re.compile(
    r"^(?:\d+: |\d+:$|;|R\d+(?:_[a-z]+)?=|from \d+ to \d+|last_idx |regs=|parent didn't|"
    r"mark_precise|frame\d+:|func#\d+ @|Func#\d+|Validating |propagating |Live regs|"
    r"\(\w\w\) |[0-9a-f]+: \(|caller:|callee:|returning from|-- (?:BEGIN|END))"
)
# A helper call in the verifier's instruction dump: "6: (85) call bpf_skb_load_bytes#26".
CALL_DUMP = re.compile(r"\(85\) call (\w{1,64})#(\d{1,10})\b")
# The level prefix the validator gives libbpf's lines, and libbpf's own prefix.
LEVEL_PREFIX = re.compile(r"^(?:(?:warn|info|debug|bpfcompat): )?(?:libbpf: )?")
# strerror(EPERM), for an EPERM failure whose libbpf line is lost.
EPERM_TEXT = Msg("%s", "errno text", re.compile(r"Operation not permitted"))
