"""Classify one stored validator result into a precise code with the line that proves it.

The rules are data: an ordered table of small named predicates. Each reads a `Facts`
view of the evidence (errno of the failing step, the failing program's own verifier log,
the libbpf log, probe results, BTF facts, lockdown state, the stage that failed) and
returns the evidence line it matched, or None. The first rule that matches wins, so
the order encodes precedence: policy before the helper message it causes, CO-RE poison
before "unknown helper", a verifier log before a bare errno.
"""

from __future__ import annotations

import errno as errno_mod
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CLASSIFIER_VERSION = "1"

# The poison immediate libbpf writes into an instruction whose CO-RE relocation failed
# (0xbad2310 = 195896080); the verifier then reports it as an unknown helper.
CORE_POISON = "195896080"
# A failed kfunc/ksym resolution poisons with this instead (0xbad3...).
KFUNC_POISON_RE = re.compile(r"invalid func unknown#(?:2002000000|195896080)")


@dataclass(frozen=True)
class Verdict:
    status: str  # pass | fail | error
    code: str | None
    confidence: str | None
    stage: str | None
    program: str | None
    evidence: str | None
    remediation: str | None


@dataclass
class Facts:
    """The evidence of one cell, flattened for the rules."""

    result: dict[str, Any]
    stage: str  # open | load | attach | functional | pass
    errno: int
    program: str | None
    prog_log: str
    libbpf_log: str
    lockdown: str | None
    kernel_btf: bool | None
    release: str
    map_types: dict[str, bool] = field(default_factory=dict)
    program_types: dict[str, bool] = field(default_factory=dict)

    @property
    def logs(self) -> str:
        return self.prog_log + "\n" + self.libbpf_log

    def find(self, pattern: str, text: str | None = None) -> str | None:
        """The first whole line matching `pattern`, verbatim."""
        rx = re.compile(pattern)
        for line in (self.logs if text is None else text).splitlines():
            if rx.search(line):
                return line.strip()
        return None


@dataclass(frozen=True)
class Rule:
    name: str
    code: str
    stages: tuple[str, ...]
    match: Callable[[Facts], str | None]
    confidence: str
    meaning: str
    remediation: str


def _errno_is(*names: str) -> Callable[[Facts], bool]:
    values = {getattr(errno_mod, n) for n in names}
    return lambda f: f.errno in values


def _policy(f: Facts) -> str | None:
    if f.lockdown not in {"integrity", "confidentiality"}:
        return None
    line = f.find(r"cannot use helper|unknown func|invalid func|Operation not permitted|"
                  r"Permission denied|lockdown")  # fmt: skip
    if line is None and f.errno in (errno_mod.EPERM, errno_mod.EACCES):
        line = f"errno {errno_mod.errorcode.get(f.errno, f.errno)} while {f.stage}"
    return f"{line} (kernel lockdown={f.lockdown})" if line else None


def _core(f: Facts) -> str | None:
    return f.find(r"failed to resolve CO-RE relocation|relo #\d+: .*(no matching targets|"
                  r"failed)|unknown#" + CORE_POISON + r"|CO-RE relocating .* failed")  # fmt: skip


def _missing_btf(f: Facts) -> str | None:
    if f.kernel_btf:
        return None
    return f.find(r"failed to find valid kernel BTF|kernel BTF is missing|"
                  r"Error loading vmlinux BTF|failed to find kernel BTF type ID|"
                  r"vmlinux BTF is not found")  # fmt: skip


def _missing_attach_target(f: Facts) -> str | None:
    if f.stage == "load":
        return f.find(r"failed to find kernel BTF type ID of '[^']+'|"
                      r"failed to find BTF for extern|attach_btf_id .* not found")  # fmt: skip
    if f.stage == "attach":
        if f.errno in (errno_mod.ENOENT, errno_mod.ESRCH, errno_mod.EINVAL) or not f.errno:
            return f.find(r"failed to (create|attach).*(kprobe|uprobe|tracepoint|fentry).*"
                          r"(No such file|not found|Invalid argument|-2|-22)|"
                          r"No such file or directory|could not find|not found in kallsyms")  # fmt: skip
    return None


def _kfunc(f: Facts) -> str | None:
    return f.find(r"extern \(func ksym\) '[^']+': not found in kernel BTF|"
                  r"calling kernel function .* is not allowed|kernel function .* not found|"
                  r"failed to find BTF ID .* for extern|unknown func.*kfunc|"
                  r"invalid kernel function call|kfunc .* not found")  # fmt: skip


def _map_type(f: Facts) -> str | None:
    line = f.find(r"map '[^']+': failed to create|failed to create map|"
                  r"Error in bpf_create_map_xattr|map '[^']+': failed to create:")  # fmt: skip
    if line is None:
        return None
    unsupported = [t for t, ok in f.map_types.items() if ok is False]
    if unsupported or f.errno in (errno_mod.EINVAL, errno_mod.EOPNOTSUPP, errno_mod.E2BIG):
        return line + (f" (map types not supported here: {', '.join(unsupported)})" if unsupported else "")
    return None


def _transport(f: Facts) -> str | None:
    line = _map_type(f)
    if line and re.search(r"ringbuf|ring_buf|perf_event_array|events", line, re.I):
        if any(t in ("ringbuf", "perf_event_array") for t, ok in f.map_types.items() if ok is False):
            return line
    return f.find(r"unknown func bpf_ringbuf_|invalid func unknown#13[0-4]\b")


def _prog_type(f: Facts) -> str | None:
    unsupported = [t for t, ok in f.program_types.items() if ok is False]
    verifier_said = f.find(r"unknown program type|invalid program type|prog type .* not supported")
    if verifier_said:
        return verifier_said
    if unsupported and f.errno == errno_mod.EINVAL and not _has_verifier_text(f.prog_log):
        line = f.find(r"BPF program load failed|failed to load program|load bpf program failed")
        return f"{line or 'program load failed with EINVAL'} (program type not supported: " \
               f"{', '.join(unsupported)})"
    return None


def _license(f: Facts) -> str | None:
    return f.find(r"cannot call GPL-restricted function from non-GPL compatible program|"
                  r"GPL-incompatible|requires a GPL compatible license")  # fmt: skip


def _helper_not_allowed(f: Facts) -> str | None:
    return f.find(r"program of this type cannot use helper|helper call is not allowed|"
                  r"cannot call .* from this program type|not allowed in this context|"
                  r"helper access to .* not allowed")  # fmt: skip


def _unknown_helper(f: Facts) -> str | None:
    line = f.find(r"invalid func unknown#\d+|unknown func \w+#\d+|invalid func \w+#\d+")
    if line and CORE_POISON in line:
        return None
    return line


_LIMIT_RE = (r"BPF program is too large|too many states|The sequence of \d+ jumps is too complex|"
             r"complexity limit|combined stack size|stack depth .* exceeds|"
             r"processed \d+ insns \(limit \d+\).*exceeded|loop is not bounded|back-edge|"
             r"infinite loop detected|max_states_per_insn|too many (instructions|subprogs)")  # fmt: skip


def _verifier_limit(f: Facts) -> str | None:
    return f.find(_LIMIT_RE, f.prog_log) or f.find(_LIMIT_RE)


def _has_verifier_text(log: str) -> bool:
    return any(line.strip() and not line.startswith("libbpf:") for line in log.splitlines())


_VERIFIER_NOISE = re.compile(
    r"^(processed \d+ insns|verification time|stack depth|; |\d+: |from \d+ to \d+|"
    r"func#\d+ @|last_idx|regs=|parent didn't|-- (BEGIN|END)|libbpf: |Validating|"
    r"arg#\d|mark_precise|\(\w+\) )"
)


def verifier_summary(log: str) -> str | None:
    """The verifier's own reason: the last line that is not instruction trace or stats."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for line in reversed(lines):
        if not _VERIFIER_NOISE.match(line):
            return line
    return None


def _verifier(f: Facts) -> str | None:
    if f.stage != "load" or not _has_verifier_text(f.prog_log):
        return None
    return verifier_summary(f.prog_log)


def _capability(f: Facts) -> str | None:
    if f.errno != errno_mod.EPERM or _has_verifier_text(f.prog_log):
        return None
    line = f.find(r"Operation not permitted")
    return line or "EPERM with no verifier log"


def _attach_unsupported(f: Facts) -> str | None:
    if f.stage != "attach":
        return None
    prereqs = (f.result.get("capabilities") or {}).get("attach_prereqs") or {}
    missing = [k for k, ok in prereqs.items() if ok is False]
    line = f.find(r"failed to (create|attach)|can't attach|attach .* failed|not supported")
    if f.errno in (errno_mod.EOPNOTSUPP, errno_mod.ENOTSUP if hasattr(errno_mod, "ENOTSUP") else 95):
        return line or "attach not supported (EOPNOTSUPP)"
    if missing and line:
        return f"{line} (missing: {', '.join(missing)})"
    return line


def _functional(f: Facts) -> str | None:
    if f.stage != "functional":
        return None
    for test in (f.result.get("functional") or {}).get("tests") or []:
        if isinstance(test, dict) and test.get("status") == "fail" and test.get("required", True):
            why = test.get("error") or (
                f"exit {test.get('exit_code')}, expected {test.get('expected_exit_code')}"
            )
            return f"functional test {test.get('name')!r} failed: {why}"
    return "a required functional test failed"


def _invalid(f: Facts) -> str | None:
    if f.stage != "open":
        return None
    return f.find(r"elf: |not an ELF|invalid ELF|failed to open|Invalid ELF|"
                  r"corrupted|BTF is required|failed to find '.BTF'|no BPF programs|"
                  r"Invalid argument|LIBBPF_ERRNO") or "libbpf could not open the object"


RULES: tuple[Rule, ...] = (
    Rule("artifact-unreadable", "INVALID_ARTIFACT", ("open",), _invalid, "high",
         "The file is not a BPF ELF object libbpf can open (not ELF, wrong machine, corrupt).",
         "Rebuild the object with clang -target bpf and check the file was not truncated."),
    Rule("lockdown-policy", "POLICY_DENIED", ("load", "attach", "functional"), _policy, "high",
         "A security policy (kernel lockdown) refused the operation, whatever the verifier says.",
         "Run on a kernel without lockdown=integrity/confidentiality or avoid the restricted helper."),
    Rule("missing-btf", "MISSING_BTF", ("load",), _missing_btf, "high",
         "The kernel has no BTF (/sys/kernel/btf/vmlinux) and the object needs it (CO-RE, fentry, kfuncs).",
         "Use a kernel built with CONFIG_DEBUG_INFO_BTF=y or ship BTF for it (BTFHub)."),
    Rule("core-relocation", "CORE_RELOCATION_FAILURE", ("load",), _core, "high",
         "A CO-RE relocation found no matching type or field in this kernel's BTF.",
         "Guard the access with bpf_core_field_exists()/bpf_core_type_exists() or add a fallback."),
    Rule("kfunc", "UNSUPPORTED_KFUNC", ("load",), _kfunc, "high",
         "The object calls a kernel function (kfunc) this kernel does not export.",
         "Declare the kfunc __weak and check bpf_ksym_exists(), or require a newer kernel."),
    Rule("attach-target-missing", "MISSING_ATTACH_TARGET", ("load", "attach"),
         _missing_attach_target, "high",
         "The kernel function or event the program attaches to does not exist on this kernel.",
         "Attach to a function that exists here (check /proc/kallsyms or BTF) or make the program optional."),
    Rule("transport", "UNSUPPORTED_TRANSPORT", ("load",), _transport, "medium",
         "The event transport (ring buffer or perf buffer) is not available on this kernel.",
         "Fall back to a perf event array where BPF ring buffers are missing (before 5.8)."),
    Rule("map-type", "UNSUPPORTED_MAP_TYPE", ("load",), _map_type, "high",
         "A map of a type this kernel does not know failed to be created.",
         "Make the map optional (bpf_map__set_autocreate false) or require the kernel that added it."),
    Rule("license", "LICENSE_INCOMPATIBLE", ("load",), _license, "high",
         "A GPL-only helper is called from a program whose license is not GPL-compatible.",
         "Use a GPL-compatible license string or avoid the GPL-only helper."),
    Rule("helper-not-allowed", "HELPER_NOT_ALLOWED", ("load",), _helper_not_allowed, "high",
         "The helper exists but is not allowed for this program type.",
         "Use a program type that may call the helper, or a different helper."),
    Rule("prog-type", "UNSUPPORTED_PROGRAM_TYPE", ("load",), _prog_type, "high",
         "The kernel does not know this program type.",
         "Require a kernel that has the program type or ship an alternative program."),
    Rule("unknown-helper", "UNSUPPORTED_HELPER", ("load",), _unknown_helper, "high",
         "The program calls a BPF helper this kernel does not have.",
         "Probe with libbpf_probe_bpf_helper() and load a fallback variant (program_variants)."),
    Rule("verifier-limit", "VERIFIER_LIMIT", ("load",), _verifier_limit, "high",
         "The verifier hit a complexity or size limit.",
         "Reduce branching or loop bounds, split the program with tail calls or bpf_loop."),
    Rule("verifier", "VERIFIER_REJECTION", ("load",), _verifier, "high",
         "The verifier rejected the program; its own message is the evidence.",
         "Fix the access the verifier names (bounds checks, NULL checks, pointer types)."),
    Rule("capability", "CAPABILITY_FAILURE", ("load", "attach"), _capability, "medium",
         "The operation was refused for lack of privilege, with no policy or verifier reason.",
         "Run the loader with CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN (root in the guest)."),
    Rule("attach-unsupported", "UNSUPPORTED_ATTACH_TYPE", ("attach",), _attach_unsupported,
         "medium", "The kernel cannot attach this kind of program here.",
         "Use an attach type this kernel supports or make the attachment optional."),
    Rule("functional", "FUNCTIONAL_TEST_FAILURE", ("functional",), _functional, "high",
         "The object loaded and attached, but a required functional test failed.",
         "Read the test's output; the program may not see the events it should."),
)

UNKNOWN = Rule("unknown", "UNKNOWN", (), lambda f: None, "low",
               "No rule matched the evidence.", "Read the libbpf log of this cell.")  # fmt: skip
INFRA_RULES = {
    "KERNEL_CRASH": ("The guest kernel panicked or oopsed while validating this artifact.",
                     "Read the console tail; the object may trigger a kernel bug on this release."),
    "INFRA_ERROR": ("The guest, QEMU or SSH failed; this says nothing about compatibility.",
                    "Rerun; if it persists, check the console log and the kernel cache entry."),
}  # fmt: skip


def _stage(result: dict[str, Any]) -> str:
    load = result.get("load") or {}
    if load.get("status") == "fail":
        return "open" if load.get("stage") == "open" else "load"
    if (result.get("attach") or {}).get("status") == "fail":
        return "attach"
    if (result.get("functional") or {}).get("status") == "fail":
        return "functional"
    return "pass" if result.get("status") == "pass" else "load"


def facts_from(result: dict[str, Any], release: str = "") -> Facts:
    stage = _stage(result)
    load = result.get("load") or {}
    programs = [p for p in (result.get("discovery") or {}).get("programs") or [] if isinstance(p, dict)]
    program = load.get("failed_program")
    errno_value = int(load.get("error_code") or 0)
    prog_log = ""
    by_name = {p.get("name"): p for p in programs}
    if stage == "attach":
        failed = [p for p in programs if p.get("attach_status") == "fail"]
        if failed:
            program = failed[0].get("name")
            errno_value = int(failed[0].get("attach_errno") or 0)
            prog_log = str(failed[0].get("attach_error") or "")
    else:
        if program is None:
            failing = [p for p in programs if p.get("load_status") == "fail"]
            program = failing[0].get("name") if failing else None
        if program in by_name:
            prog_log = str(by_name[program].get("load_log") or "")
    caps = result.get("capabilities") or {}
    return Facts(
        result=result, stage=stage, errno=abs(errno_value), program=program, prog_log=prog_log,
        libbpf_log=str((result.get("logs") or {}).get("libbpf") or ""),
        lockdown=(result.get("security") or {}).get("lockdown"),
        kernel_btf=(result.get("btf") or {}).get("kernel_btf_available"),
        release=release or (result.get("host") or {}).get("release", ""),
        map_types={k: v for k, v in (caps.get("map_types") or {}).items() if isinstance(v, bool)},
        program_types={k: v for k, v in (caps.get("program_types") or {}).items()
                       if isinstance(v, bool)},  # fmt: skip
    )


def classify_result(result: dict[str, Any], release: str = "") -> Verdict:
    facts = facts_from(result, release)
    if facts.stage == "pass":
        return Verdict("pass", None, None, None, None, None, None)
    for rule in RULES:
        if facts.stage not in rule.stages:
            continue
        evidence = rule.match(facts)
        if evidence:
            return Verdict("fail", rule.code, rule.confidence, facts.stage, facts.program,
                           evidence[:1000], rule.remediation)  # fmt: skip
    fallback = verifier_summary(facts.prog_log) or facts.find(r"libbpf: .*(fail|error|Error)")
    return Verdict("fail", UNKNOWN.code, UNKNOWN.confidence, facts.stage, facts.program,
                   (fallback or "no log line explains the failure")[:1000], UNKNOWN.remediation)  # fmt: skip


def classify(stored: Any, *, artifact_problem: str | None = None, release: str = "") -> Verdict:
    """Verdict for a stored ValidatorResult (duck-typed so reclassify needs no VM)."""
    if stored.crash:
        evidence = stored.infra_error or "guest crashed"
        return Verdict("fail", "KERNEL_CRASH", "high", "guest", None, evidence[:1000],
                       INFRA_RULES["KERNEL_CRASH"][1])  # fmt: skip
    if stored.signal:
        code = "INVALID_ARTIFACT" if artifact_problem else "INFRA_ERROR"
        why = f"validator killed by signal {stored.signal} (libbpf crashed on this object)"
        return Verdict("fail" if artifact_problem else "error", code, "medium", "open", None,
                       why, "Rebuild the object; libbpf could not parse it safely.")  # fmt: skip
    result = stored.result()
    if result is None:
        if artifact_problem:
            return Verdict("fail", "INVALID_ARTIFACT", "high", "open", None, artifact_problem,
                           RULES[0].remediation)  # fmt: skip
        return Verdict("error", "INFRA_ERROR", "high", "infra", None,
                       (stored.infra_error or "no validator result")[:1000],
                       INFRA_RULES["INFRA_ERROR"][1])  # fmt: skip
    verdict = classify_result(result, release)
    if artifact_problem and verdict.status != "pass" and verdict.code in (None, "UNKNOWN"):
        return Verdict("fail", "INVALID_ARTIFACT", "high", "open", None, artifact_problem,
                       RULES[0].remediation)  # fmt: skip
    return verdict


def notes_for(result: dict[str, Any]) -> list[str]:
    """Variant choices, map fixups and attach warnings, in words, for reports."""
    notes: list[str] = []
    for v in result.get("program_variants") or []:
        if not isinstance(v, dict):
            continue
        disabled = ", ".join(v.get("disabled") or []) or "none"
        notes.append(f"variant group {v.get('group')}: chose {v.get('chosen')}, disabled {disabled}")
    for m in result.get("map_fixups") or []:
        if not isinstance(m, dict):
            continue
        applied = m.get("applied_entries")
        notes.append(
            f"map fixup {m.get('name')}: requested {m.get('requested')}, "
            f"applied {applied if applied is not None else '-'} ({m.get('status')})"
            + (f", inner ringbuf {m['inner_ringbuf_bytes']} bytes" if m.get("inner_ringbuf_bytes") else "")
        )
    attach = result.get("attach") or {}
    if attach.get("status") == "warn":
        failed = [p.get("name") for p in (result.get("discovery") or {}).get("programs") or []
                  if isinstance(p, dict) and p.get("attach_status") == "fail"]  # fmt: skip
        notes.append(f"attach warning (best-effort): {', '.join(map(str, failed)) or 'some programs'} did not attach")
    return notes


def rule_table() -> list[dict[str, str]]:
    """Codes with meaning, cause and fix, for the generated docs table."""
    rows = [{"code": r.code, "rule": r.name, "meaning": r.meaning, "fix": r.remediation}
            for r in RULES]  # fmt: skip
    rows += [{"code": code, "rule": code.lower(), "meaning": m, "fix": fix}
             for code, (m, fix) in INFRA_RULES.items()]  # fmt: skip
    rows.append({"code": UNKNOWN.code, "rule": UNKNOWN.name, "meaning": UNKNOWN.meaning,
                 "fix": UNKNOWN.remediation})  # fmt: skip
    return rows
