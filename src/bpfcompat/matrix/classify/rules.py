"""The rules: every verdict the classifier can give, each a named row of one table.

`RULES` are the evidence rules over a validator result, in precedence order: the first
whose stage matches the failing stage and whose predicate holds wins. `OUTCOME_RULES`
are the verdicts decided from the stored row or the run itself before any evidence rule
(a kernel that crashed or never booted, a validator killed or without a usable result).
Every verdict, whichever path decides it, is made by `rule(name).verdict(...)`, so the
table (and docs/codes.md, generated from it) lists all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bpfcompat.matrix.verdict import Confidence, Status, Verdict

from . import matchers as m
from . import matchers_late as late
from .facts import Facts
from .matchers import Hit
from .messages import (
    ATTACH_BTF_ID,
    ATTACH_NO_ADDRESS,
    ATTACH_NOT_IN_VMLINUX,
    ATTACH_TARGET_UNSET,
    BTF_REQUIRED,
    BTF_VMLINUX_MALFORMED,
    CALLER_INVALID_ARGS,
    CORE_INVALID,
    CORE_PERFORM,
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
    KBTF_MISSING,
    KBTF_NONE,
    KBTF_READ,
    KCONFIG_OPEN,
    KFUNC_NOT_ALLOWED,
    KFUNC_NOT_FOUND,
    KFUNC_POISON_CALL,
    KFUNC_PROTO,
    KFUNC_UNRESOLVED,
    KPROBE_CREATE,
    KPROBE_LEGACY,
    KSYM_VAR,
    LD_IMM64_UNKNOWN,
    MAP_CREATE,
    MAP_INNER,
    PERM_MEMLOCK,
    PIN_INVALID,
    PROG_LOAD_FAILED,
    PROG_TYPE_MISSING,
    STATIC_PROGRAM,
    STRUCT_OPS_NOT_FOUND,
    TP_CREATE,
    VMLINUX_LOAD,
    VMLINUX_NOT_FOUND,
    Msg,
)

CODES: tuple[str, ...] = (
    "UNSUPPORTED_ATTACH_TYPE", "UNSUPPORTED_MAP_TYPE", "UNSUPPORTED_PROGRAM_TYPE",
    "MISSING_BTF", "CORE_RELOCATION_FAILURE", "POLICY_DENIED", "UNSUPPORTED_TRANSPORT",
    "UNSUPPORTED_HELPER", "HELPER_NOT_ALLOWED", "UNSUPPORTED_KFUNC", "MISSING_ATTACH_TARGET",
    "LICENSE_INCOMPATIBLE", "VERIFIER_REJECTION", "VERIFIER_LIMIT", "CAPABILITY_FAILURE",
    "INVALID_ARTIFACT", "FUNCTIONAL_TEST_FAILURE", "KERNEL_CRASH", "INFRA_ERROR", "UNKNOWN",
    "LOADER_SETUP_REQUIRED",
)  # fmt: skip

MAX_EVIDENCE_CHARS = 1000

Matcher = Callable[[Facts], Hit | None]


@dataclass(frozen=True)
class Rule:
    """One verdict the classifier can give: its code, when it applies, and what to do.

    `match` is None for an outcome rule: the stored row or the run decides those, in
    `classify`, and they read no log.
    """

    name: str
    code: str
    stages: tuple[str, ...]
    match: Matcher | None
    confidence: Confidence
    meaning: str
    cause: str
    remediation: str
    msgs: tuple[Msg, ...] = ()
    inputs: str = ""  # the non-log inputs the rule reads, for the docs

    @property
    def status(self) -> Status:
        """INFRA_ERROR is an error of ours (never final, never cached); the rest are fails."""
        return "error" if self.code == "INFRA_ERROR" else "fail"

    def verdict(
        self,
        *,
        evidence: str,
        detail: str | None = None,
        program: str | None = None,
        stage: str | None = None,
        confidence: Confidence | None = None,
        remediation: str | None = None,
    ) -> Verdict:
        """This rule's verdict; the stage defaults to the rule's first one, the
        remediation to the rule's own (a cell may have its own, e.g. manifest lines)."""
        return Verdict(
            status=self.status,
            code=self.code,
            confidence=confidence or self.confidence,
            stage=stage if stage is not None else next(iter(self.stages), None),
            program=program,
            evidence=evidence[:MAX_EVIDENCE_CHARS],
            remediation=remediation or self.remediation,
            rule=self.name,
            detail=detail,
        )


_L = ("load",)
_SETUP = "LOADER_SETUP_REQUIRED"
RULES: tuple[Rule, ...] = (
    Rule("artifact-unreadable", "INVALID_ARTIFACT", ("open",), m.invalid_artifact, "high",
         "The file is not a BPF object libbpf can open.",
         "Not ELF, truncated, wrong machine, stripped of its symbol table, built for a "
         "pre-1.0 libbpf (legacy 'maps' section), shipped unlinked (an extern without BTF), "
         "or built for another loader (static programs, a pinning value of its own).",
         "Rebuild with `clang -target bpf -g -O2` and check the file was copied whole; "
         "validate the linked object the project loads.",
         (ELF_NOT_ELF, ELF_SHSTR, ELF_OPEN, ELF_NOT_64, ELF_NOT_BPF, ELF_SYMTAB, ELF_LEGACY_MAPS,
          BTF_REQUIRED, ELF_ANY, EXTERN_NO_BTF, PIN_INVALID, STATIC_PROGRAM),
         "load.stage elf/open; host ELF pre-check; libbpf's last message at open"),
    Rule("global-func-btf", "MISSING_BTF", _L, m.global_func_kernel_btf, "high",
         "A global function takes the program's context; the verifier checks that argument "
         "against the kernel's own BTF, which this kernel does not have.",
         "A kernel without CONFIG_DEBUG_INFO_BTF verifying a non-static function with a ctx "
         "argument (freplace targets are such functions).",
         "Use a kernel with CONFIG_DEBUG_INFO_BTF=y; external BTF (--btf) does not help here, "
         "the verifier reads only the kernel's own. Where the function need not be global, "
         "make it static so the verifier checks it inline with its caller.",
         (BTF_VMLINUX_MALFORMED, CALLER_INVALID_ARGS), "btf.kernel_btf_available is not true"),
    Rule("loader-freplace", _SETUP, _L, m.freplace_target, "high",
         "An extension (freplace) program replaces a function of another, already loaded "
         "BPF program; its loader passes that program. A generic loader has none.",
         "SEC(\"freplace/...\") loaded without bpf_program__set_attach_target(prog, fd, ...).",
         "Declare the target in the manifest (programs[].attach_target and "
         "attach_target_program), or autoload: false to validate the rest of the object.",
         (FREPLACE_NO_TARGET,), "loader-setup finding freplace_target (host static reading)"),
    Rule("loader-attach-target", _SETUP, _L, m.placeholder_target, "high",
         "A BTF-attached program (fentry/fexit/fmod_ret/lsm/tp_btf) names a target no kernel "
         "of the matrix has, or names none: its loader sets the real target at run time; "
         "no newer kernel would help.",
         "A placeholder such as dummy_file_read, retargeted with "
         "bpf_program__set_attach_target().",
         "Declare the real target in the manifest (programs[].attach_target), or autoload: "
         "false.",
         (ATTACH_BTF_ID, ATTACH_TARGET_UNSET), "libbpf's own refusal, or the loader-setup "
         "finding attach_target_placeholder / _unset "
         "(the matrix kernels' BTF, read on the host)"),
    Rule("loader-struct-ops", _SETUP, _L, m.struct_ops_module, "high",
         "A struct_ops map implements a struct that no kernel of the matrix has in vmlinux: "
         "a kernel module defines it, which the project's loader loads first.",
         "struct_ops for a module's ops struct (a test module, a driver's hook table).",
         "Validate on a kernel whose guest loads that module, or leave the struct_ops map out "
         "(bpf_map__set_autocreate false, or its programs autoload: false).",
         (STRUCT_OPS_NOT_FOUND,), "loader-setup finding struct_ops (matrix kernels' BTF)"),
    Rule("struct-ops-type", "UNSUPPORTED_PROGRAM_TYPE", _L, m.struct_ops_newer, "high",
         "The kernel lacks the struct a struct_ops map implements; newer kernels of the "
         "matrix have it.",
         "A struct_ops interface added after this kernel (e.g. sched_ext_ops, 6.12).",
         "Require a kernel that has the struct, or make the struct_ops map optional.",
         (STRUCT_OPS_NOT_FOUND,), "loader-setup finding struct_ops (matrix kernels' BTF)"),
    Rule("loader-section", _SETUP, _L, m.loader_section, "high",
         "A program's section follows another loader's naming convention, which libbpf "
         "cannot type; the project's loader sets the program type itself.",
         "iproute2/cilium style sections such as socket/..., classifier/..., sk_lookup/....",
         "Declare the program type in the manifest (programs[].type).",
         (PROG_TYPE_MISSING,), "loader-setup finding untypable_section (libbpf's section table)"),
    Rule("kconfig-missing", "INFRA_ERROR", _L, m.kconfig_missing, "high",
         "libbpf could not read the kernel config to resolve the object's __kconfig externs: "
         "the guest lacks /boot/config-<release>.",
         "A kernel entry without a config file (a user-supplied vmlinuz without its config).",
         "Give the kernel entry its config (kernels.yaml source.config), then rerun.",
         (KCONFIG_OPEN,)),
    Rule("lockdown-helper", "POLICY_DENIED", _L, m.lockdown_helper, "high",
         "Kernel lockdown withholds a helper the program calls; the verifier's words name "
         "the helper, the cause is the policy.",
         "lockdown=integrity/confidentiality (Secure Boot) with bpf_probe_read*/"
         "bpf_probe_read_kernel*/bpf_probe_write_user (LOCKDOWN_BPF_READ_KERNEL/WRITE_USER).",
         "Run without lockdown, or avoid kernel-memory reads (use BTF-typed direct access "
         "from fentry/tp_btf programs).",
         (HELPER_CANNOT_USE, HELPER_UNKNOWN_FUNC),
         "security.lockdown; helper id or discovery.programs[].helpers; "
         "security.lockdown_denials (detail)"),
    Rule("missing-btf", "MISSING_BTF", _L, m.missing_btf, "high",
         "The kernel exposes no BTF and the object needs it (CO-RE, fentry/tp_btf/lsm, "
         "kfuncs, typed ksyms).",
         "A kernel built without CONFIG_DEBUG_INFO_BTF (no /sys/kernel/btf/vmlinux).",
         "Use a kernel with CONFIG_DEBUG_INFO_BTF=y, or give libbpf this kernel's BTF file "
         "for CO-RE (`matrix run --btf KERNEL_ID=PATH` or `btf:` in kernels.yaml: "
         "bpf_object_open_opts.btf_custom_path); fentry/fexit, tp_btf, LSM and kfunc "
         "programs need BTF inside the kernel itself and fail either way.",
         (KBTF_MISSING, KBTF_NONE, KBTF_READ, VMLINUX_LOAD, VMLINUX_NOT_FOUND),
         "btf.kernel_btf_available is not true"),
    Rule("core-relocation", "CORE_RELOCATION_FAILURE", _L, m.core, "high",
         "A CO-RE relocation found no matching type or field in this kernel's BTF.",
         "The object reads a struct/field this kernel does not have (renamed, removed, "
         "or never existed) without guarding it.",
         "Guard the access with bpf_core_field_exists()/bpf_core_type_exists() and provide "
         "a fallback, or add a ___flavor struct for this kernel.",
         (CORE_RESOLVE, CORE_POISON_CALL, CORE_INVALID, CORE_PERFORM)),
    Rule("kfunc", "UNSUPPORTED_KFUNC", _L, m.kfunc, "high",
         "The object calls a kernel function (kfunc) or uses a typed ksym this kernel "
         "does not export, or does not allow for this program type.",
         "A kfunc added in a newer kernel (e.g. bpf_task_from_pid, 6.2), or a renamed one.",
         "Declare the kfunc __weak and test bpf_ksym_exists() before calling it, or require "
         "the kernel that added it.",
         (KFUNC_NOT_FOUND, KFUNC_UNRESOLVED, KFUNC_POISON_CALL, KFUNC_PROTO, KSYM_VAR,
          KFUNC_NOT_ALLOWED)),
    Rule("load-attach-target", "MISSING_ATTACH_TARGET", _L, m.load_attach_target, "high",
         "The kernel function a BTF-attached program (fentry/fexit/tp_btf/lsm) names does "
         "not exist in this kernel.",
         "The traced function was renamed, inlined or never existed on this release.",
         "Attach to a function this kernel has (check its BTF) or make the program optional "
         "(bpf_program__set_autoload false).",
         (ATTACH_BTF_ID, ATTACH_NOT_IN_VMLINUX, ATTACH_NO_ADDRESS)),
    Rule("transport-map", "UNSUPPORTED_TRANSPORT", _L, m.map_transport, "high",
         "The event transport map (BPF ring buffer) cannot be created on this kernel.",
         "BPF_MAP_TYPE_RINGBUF (5.8) / USER_RINGBUF (6.1) on an older kernel.",
         "Fall back to a perf event array (perf buffer) where the ring buffer is missing.",
         (MAP_CREATE,), "capabilities.map_types; discovery.maps[].type"),
    Rule("map-permission", "CAPABILITY_FAILURE", _L, m.map_permission, "medium",
         "Map creation was refused for lack of privilege or memory, not because of its type.",
         "RLIMIT_MEMLOCK too low on pre-5.11 kernels, or a map too large for the guest.",
         "Raise RLIMIT_MEMLOCK (libbpf >= 1.0 does on its own) or shrink max_entries.",
         (MAP_CREATE, MAP_INNER, PERM_MEMLOCK), "errno EPERM/ENOMEM; capabilities.map_types"),
    Rule("map-needs-sizing", _SETUP, _L, m.map_sizing, "high",
         "A map is compiled with a zero size (max_entries or value_size) that its loader "
         "sets before load, and neither the manifest nor an automatic fixup set it (run with "
         "--no-auto-fixups, or an inner map, which cannot be resized).",
         "A runtime-sized map (per-CPU count, ring buffer size, stack depth).",
         "Declare the size in the manifest (maps[].max_entries / value_size / "
         "inner_ringbuf_bytes).",
         (MAP_CREATE,), "discovery.maps[].max_entries / value_size; errno EINVAL"),
    Rule("map-type", "UNSUPPORTED_MAP_TYPE", _L, m.map_type, "high",
         "A map could not be created because this kernel does not support its type (or, "
         "at lower confidence, its flags).",
         "A map type newer than the kernel (BLOOM_FILTER 5.16, CGRP_STORAGE 6.2, ...).",
         "Make the map optional (bpf_map__set_autocreate false) with a fallback, or require "
         "the kernel that added the type.",
         (MAP_CREATE, MAP_INNER), "capabilities.map_types; discovery.maps[].type; errno"),
    Rule("license", "LICENSE_INCOMPATIBLE", _L, m.license_, "high",
         "A GPL-only helper is called from a program whose license is not GPL-compatible.",
         "SEC(\"license\") is not GPL-compatible and the program calls e.g. "
         "bpf_get_current_task or bpf_probe_read_kernel.",
         "Use a GPL-compatible license string (\"GPL\", \"Dual BSD/GPL\") or avoid the helper.",
         (GPL_ONLY, GPL_ONLY_OLD)),
    Rule("helper-not-allowed", "HELPER_NOT_ALLOWED", _L, m.helper_not_allowed, "high",
         "The kernel knows the helper (the verifier names it) but not for this program type.",
         "e.g. bpf_skb_load_bytes from a tracepoint; sleepable helpers from a non-sleepable "
         "program.",
         "Call the helper from a program type that may use it, or use another helper.",
         (HELPER_CANNOT_USE, HELPER_UNKNOWN_FUNC, HELPER_IN_PROBE, HELPER_SLEEPS),
         "discovery.programs[].helpers; capabilities.helper_program_types / helpers "
         "(when recorded)"),
    Rule("transport-helper", "UNSUPPORTED_TRANSPORT", _L, m.transport_helper, "high",
         "A ring-buffer / perf-output helper is missing from this kernel.",
         "bpf_ringbuf_* (5.8) or its dynptr variants (5.19) on an older kernel.",
         "Fall back to bpf_perf_event_output and a perf event array.",
         (HELPER_INVALID_FUNC, HELPER_UNKNOWN_FUNC), "helper id"),
    Rule("unknown-helper", "UNSUPPORTED_HELPER", _L, m.unknown_helper, "high",
         "The program calls a BPF helper this kernel does not have.",
         "A helper newer than the kernel (the verifier prints it as unknown#<id>).",
         "Probe with libbpf_probe_bpf_helper() and load a fallback variant "
         "(manifest program_variants).",
         (HELPER_INVALID_FUNC, HELPER_UNKNOWN_FUNC), "helper id"),
    Rule("callback-helper", "UNSUPPORTED_HELPER", _L, m.callback_helper, "high",
         "The program passes a callback to a helper (bpf_loop, bpf_for_each_map_elem, "
         "bpf_timer, ...) and this kernel predates callback arguments, so it has none of "
         "those helpers.",
         "bpf_loop (5.17) on 5.10: the verifier refuses the callback reference before it "
         "ever looks at the call.",
         "Provide a variant without the callback helper (manifest program_variants) or "
         "require the kernel that added it.",
         (FUNC_INFO_MISMATCH, LD_IMM64_UNKNOWN),
         "kernel release < 5.13, or discovery.programs[].helpers (when recorded)"),
    Rule("helper-probe", "UNSUPPORTED_HELPER", _L, m.helper_probe, "high",
         "The validator's helper probe says the program's helper is usable by no program "
         "type here (medium confidence when neither bpftool's per-type lists nor the verifier's "
         "instruction dump say whether the kernel has it).",
         "A helper newer than the kernel, hidden behind an earlier verifier error.",
         "Probe with libbpf_probe_bpf_helper() and load a fallback variant.", (),
         "discovery.programs[].helpers; capabilities.helper_program_types / helpers"),
    Rule("prog-type", "UNSUPPORTED_PROGRAM_TYPE", _L, m.prog_type, "high",
         "The kernel (or the guest's libbpf) does not know this program type.",
         "A program type newer than the kernel (e.g. NETFILTER, 6.4): BPF_PROG_LOAD fails "
         "with EINVAL before the verifier runs, so there is no verifier log.",
         "Require a kernel that has the program type, or ship an alternative program.",
         (PROG_LOAD_FAILED, PROG_TYPE_MISSING),
         "capabilities.program_types; errno; empty verifier log"),
    Rule("verifier-limit", "VERIFIER_LIMIT", _L, m.verifier_limit, "high",
         "The verifier gave up on a complexity or size limit, not on a safety violation.",
         "Too many branches explored (8192-jump sequence), over 1M processed instructions, "
         "512-byte combined stack, or call chains over 8 frames.",
         "Reduce branching, bound loops tighter, use bpf_loop or split with tail calls.",
         m.LIMIT_MSGS, "the failing program's own verifier log"),
    Rule("verifier", "VERIFIER_REJECTION", _L, m.verifier, "high",
         "The verifier rejected the program; its own reason line is the evidence.",
         "An unchecked pointer, an out-of-bounds access, a missing NULL check, an "
         "uninitialised read...",
         "Fix the access the verifier names (bounds checks, NULL checks, pointer types).",
         (), "any errno (EACCES, EINVAL, ...) with a verifier log"),
    Rule("capability", "CAPABILITY_FAILURE", ("load",), m.capability, "medium",
         "The load was refused for lack of privilege, with no verifier log and no policy.",
         "Missing CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN, or RLIMIT_MEMLOCK on old kernels.",
         "Run the loader as root or with CAP_BPF + CAP_PERFMON, and raise RLIMIT_MEMLOCK.",
         (PERM_MEMLOCK, PROG_LOAD_FAILED), "errno EPERM; no verifier log"),
    Rule("load-attach-type", "UNSUPPORTED_ATTACH_TYPE", _L, m.load_attach_type, "low",
         "The program type is supported but BPF_PROG_LOAD refused the program before the "
         "verifier ran: most likely its expected attach type is unknown to this kernel.",
         "A section whose attach type is newer than the kernel (e.g. cgroup/sock_* variants).",
         "Use an attach type this kernel supports, or require a newer kernel.",
         (PROG_LOAD_FAILED,), "capabilities.program_types true; errno EINVAL; no verifier log"),
    Rule("lockdown-attach", "POLICY_DENIED", ("attach",), late.lockdown_attach, "high",
         "Kernel lockdown refused the attachment (perf/kprobe or tracefs).",
         "lockdown=confidentiality: EPERM from perf_event_open/kprobes, or tracefs not "
         "available so tracepoint ids cannot be read.",
         "Run without lockdown, or attach through BTF links (tp_btf/fentry) that need "
         "neither tracefs nor kprobes.",
         (KPROBE_CREATE, TP_CREATE, KPROBE_LEGACY),
         "security.lockdown; attach errno; capabilities.attach_prereqs; "
         "security.lockdown_denials (detail)"),
    Rule("attach-target-missing", "MISSING_ATTACH_TARGET", ("attach",), late.attach_target_missing,
         "high", "The kernel function, tracepoint or symbol to attach to does not exist here.",
         "A kprobe on a function this kernel lacks (renamed, inlined, static) or a "
         "tracepoint it does not define: ENOENT from perf_event_open.",
         "Attach to a symbol this kernel has (/proc/kallsyms, BTF) or make the attach optional.",
         (KPROBE_CREATE, KPROBE_LEGACY, TP_CREATE),
         "attach errno ENOENT/ESRCH/ENXIO; capabilities.attach_prereqs"),
    Rule("attach-permission", "CAPABILITY_FAILURE", ("attach",), late.attach_permission, "medium",
         "The attachment was refused for lack of privilege (no lockdown in force).",
         "perf_event_paranoid or missing CAP_PERFMON/CAP_SYS_ADMIN.",
         "Attach as root or with CAP_PERFMON.", (), "attach errno EPERM/EACCES"),
    Rule("attach-unsupported", "UNSUPPORTED_ATTACH_TYPE", ("attach",), late.attach_unsupported,
         "medium", "This kernel (or guest) cannot attach this kind of program here.",
         "The attach mechanism is missing (EOPNOTSUPP/EINVAL), or its prerequisite is "
         "(tracefs for tracepoints, kprobe_events without the kprobe PMU).",
         "Use an attach type this kernel supports or make the attachment optional.",
         (KPROBE_CREATE, TP_CREATE), "attach errno; capabilities.attach_prereqs"),
    Rule("functional-plan", "INFRA_ERROR", ("functional",), late.functional_plan, "high",
         "The functional-test plan could not be used; nothing about the kernel is known.",
         "A malformed functional_tests entry in the manifest.",
         "Fix the manifest's functional_tests.", (), "functional.tests[functional-plan]"),
    Rule("lockdown-functional", "POLICY_DENIED", ("functional",), late.lockdown_functional,
         "medium",
         "A functional test was refused tracefs/perf by kernel lockdown.",
         "lockdown=confidentiality and a test reading trace_pipe or perf events.",
         "Run the test without lockdown or read events through a ring buffer instead.",
         (), "security.lockdown; test output 'Operation not permitted'; "
         "security.lockdown_denials (detail)"),
    Rule("functional", "FUNCTIONAL_TEST_FAILURE", ("functional",), late.functional, "high",
         "The object loaded (and attached as far as required), but a required functional "
         "test failed.",
         "The program never saw the event (attach was best-effort and failed, or the event "
         "did not fire), or the test's expectation is wrong for this kernel.",
         "Read the test's output; check the attach warnings of the cell.",
         (), "functional.tests[] status, exit code, output"),
)  # fmt: skip


_INFRA_FIX = "Rerun; if it persists, check the console log and the kernel cache entry."
OUTCOME_RULES: tuple[Rule, ...] = (
    Rule("boot-failure", "INFRA_ERROR", ("boot",), None, "high",
         "The kernel could not be fetched or booted (or its worker failed), so nothing was "
         "validated on it: inconclusive.",
         "A package the mirror no longer has, a kernel that panics or hangs at boot, or a "
         "guest that never answered SSH.",
         "Check the console log and the kernel entry; rerun.", (),
         "the runner's fetch/boot error"),
    Rule("kernel-crash", "KERNEL_CRASH", ("guest",), None, "high",
         "The guest kernel panicked or oopsed while validating this artifact.",
         "A kernel bug triggered by the object, or an unstable guest kernel.",
         "Read the console tail; try the kernel's newest point release.", (),
         "stored crash flag; console tail"),
    Rule("oom-kill", "INFRA_ERROR", ("infra",), None, "high",
         "The guest kernel's OOM killer killed the validator, also when the job ran again "
         "in a guest with four times the kernel's memory (at most 4096 MB): "
         "inconclusive.",
         "The object's verification (or the validator probing it) needs more memory than "
         "that guest has.",
         "Give this kernel more memory (memory_mb in kernels.yaml).", (),
         "signal 9; the console's OOM-killer line"),
    Rule("validator-signal", "INVALID_ARTIFACT", ("open",), None, "medium",
         "The validator was killed by a signal while libbpf parsed an object the host "
         "already flagged as malformed.",
         "libbpf crashing on a corrupt ELF.",
         "Rebuild the object; libbpf could not parse it safely.", (),
         "signal + host ELF pre-check"),
    Rule("validator-killed", "INFRA_ERROR", ("infra",), None, "medium",
         "The validator was killed by a signal and the object passed the host's ELF check: "
         "inconclusive.",
         "A crash in the guest's libbpf or Python, or a kill from outside the validator.",
         _INFRA_FIX, (), "signal; host ELF pre-check"),
    Rule("malformed-result", "INFRA_ERROR", ("infra",), None, "high",
         "The validator's result could not be read: over the size or nesting cap, not JSON, "
         "or not an object.",
         "A validator that crashed while writing, or a guest that altered its output.",
         _INFRA_FIX, (), "raw result size, nesting depth and JSON syntax"),
    Rule("infra", "INFRA_ERROR", ("infra",), None, "high",
         "The guest, QEMU, SSH or the validator itself failed: inconclusive, says nothing "
         "about compatibility.",
         "A lost connection, a validator timeout, libbpf missing in the guest, or a "
         "validator step that crashed.",
         _INFRA_FIX, (), "infra_error; validator errors[] in core steps; no result"),
    Rule("unknown", "UNKNOWN", (), None, "low", "No rule matched the evidence.",
         "A failure this classifier has no rule for yet.",
         "Read the cell's libbpf log; report the line so a rule can be added."),
)  # fmt: skip

REGISTRY: dict[str, Rule] = {r.name: r for r in (*RULES, *OUTCOME_RULES)}


def rule(name: str) -> Rule:
    """The rule called `name` (KeyError for a name the table does not have)."""
    return REGISTRY[name]


def rule_table() -> list[dict[str, str]]:
    """Every rule in precedence order, then the outcome rules: the source of docs/codes.md."""
    rows = []
    for r in (*RULES, *OUTCOME_RULES):
        rows.append({
            "code": r.code, "rule": r.name, "stages": ", ".join(r.stages) or "-",
            "confidence": r.confidence, "meaning": r.meaning, "cause": r.cause,
            "fix": r.remediation, "inputs": r.inputs,
            "matches": "; ".join(f"`{msg.fmt}` ({msg.source})" for msg in r.msgs),
        })  # fmt: skip
    return rows
