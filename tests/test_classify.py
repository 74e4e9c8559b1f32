"""The classifier against real evidence.

Every (artifact, kernel) cell recorded from a real run (tests/data/recorded) must get
exactly the verdict examples/<artifact>/expect.yaml states for that kernel, and every
failing cell must carry an evidence line that appears verbatim in what was recorded.
The precedence tests below start from copies of recorded results and make the smallest
edit that creates the situation under test; no log is invented beyond those edits, and
each edit is described where it is made.
"""

from __future__ import annotations

import ast
import copy
import errno
import importlib.util
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from bpfcompat.analysis.inspect import inspect_object
from bpfcompat.matrix.classify import (
    CODES,
    NOISE,
    OUTCOME_RULES,
    REGISTRY,
    RULES,
    classify,
    classify_result,
    is_noise,
    kernel_failed,
    notes_for,
    rule_table,
    verifier_summary,
)
from bpfcompat.matrix.config import load_kernel_matrix
from bpfcompat.matrix.plan import elf_problem, manifest_for
from bpfcompat.matrix.statics import declared, matrix_kernels, summary
from bpfcompat.matrix.store import ValidatorResult
from bpfcompat.matrix.verdict import Verdict
from expectations import EXAMPLES, examples, expected

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "tests" / "data" / "recorded"
KERNELS = sorted(p.stem for p in RECORDED.glob("*.json"))


@cache
def recording(kernel_id: str) -> dict[str, Any]:
    return json.loads((RECORDED / f"{kernel_id}.json").read_text())


def cell(kernel_id: str, artifact: str) -> dict[str, Any]:
    for c in recording(kernel_id)["cells"]:
        if c["artifact"] == artifact:
            return c
    raise KeyError(f"{artifact} not recorded on {kernel_id}")


def result(kernel_id: str, artifact: str) -> dict[str, Any]:
    """A private copy of one recorded validator result, safe to edit."""
    return copy.deepcopy(cell(kernel_id, artifact)["result"])


CELLS = [(k, c["artifact"]) for k in KERNELS for c in recording(k)["cells"]]


@dataclass
class Stored:
    """The duck type classify() reads (a stored ValidatorResult row)."""

    raw: dict[str, Any] | None
    crash: bool = False
    signal: int | None = None
    infra_error: str | None = None
    console_tail: str | None = None

    def result(self) -> dict[str, Any] | None:
        return self.raw


def host_precheck(artifact: str) -> str | None:
    """What the runner passes as artifact_problem: the host's ELF header check."""
    for name in (f"{artifact}.bpf.o", f"{artifact}.bpf.o.src"):
        path = EXAMPLES / artifact / name
        if path.is_file():
            return elf_problem(path.read_bytes())
    return None


def recorded_texts(res: dict[str, Any]) -> list[str]:
    """Everything the validator recorded that a verdict may quote."""
    load = res.get("load") or {}
    logs = res.get("logs") or {}
    texts = [logs.get("libbpf") or "", logs.get("libbpf_load") or "",
             load.get("verifier_log") or "", load.get("error") or "",
             *(load.get("libbpf_messages") or [])]  # fmt: skip
    for p in (res.get("discovery") or {}).get("programs") or []:
        texts += [p.get("load_log") or "", p.get("attach_error") or ""]
    for t in (res.get("functional") or {}).get("tests") or []:
        texts += [t.get("stdout_tail") or "", t.get("stderr_tail") or "", t.get("error") or ""]
    return [t for t in texts if t]


@cache
def setup_of(artifact: str) -> tuple[dict[str, Any], ...]:
    """The loader-setup findings the runner would pass: the host's static reading of the
    built example against the matrix's cached kernels (fetched by scripts/setup.sh)."""
    path = EXAMPLES / artifact / f"{artifact}.bpf.o"
    if not path.is_file():
        return ()
    kernels = matrix_kernels(ROOT / "kernels.yaml")
    assert kernels.checked, "no kernel of kernels.yaml is cached: run scripts/setup.sh"
    manifest = manifest_for(path)
    return tuple(summary(inspect_object(path, kernels, declared(manifest)))["loader_setup"])


def classify_cell(kernel_id: str, artifact: str) -> Verdict:
    c = cell(kernel_id, artifact)
    stored = Stored(c["result"], signal=c.get("signal"), infra_error=c.get("infra_error"),
                    console_tail=c.get("console_tail"))  # fmt: skip
    # The static reading the recorded run kept with the cell; else the host's own now.
    analysis = c.get("analysis")
    return classify(stored, artifact_problem=host_precheck(artifact), release=c["release"],
                    analysis=analysis, setup=() if analysis else setup_of(artifact))  # fmt: skip


# --- every recorded cell -----------------------------------------------------------------


def test_recordings_cover_every_example_on_every_kernel() -> None:
    assert sorted(k.id for k in load_kernel_matrix(ROOT / "kernels.yaml").kernels) == KERNELS
    for kernel_id in KERNELS:
        assert sorted(c["artifact"] for c in recording(kernel_id)["cells"]) == examples()


@pytest.mark.parametrize(("kernel_id", "artifact"), CELLS, ids=[f"{k}:{a}" for k, a in CELLS])
def test_recorded_cell_matches_expectation(kernel_id: str, artifact: str) -> None:
    verdict = classify_cell(kernel_id, artifact)
    want = expected(artifact, kernel_id)
    assert (verdict.status, verdict.code) == (want["status"], want["code"]), verdict
    if verdict.status == "pass":
        assert verdict.evidence is None
        return
    assert verdict.evidence, verdict
    res = cell(kernel_id, artifact)["result"]
    quoted = any(verdict.evidence in text for text in recorded_texts(res))
    assert quoted or verdict.evidence == host_precheck(artifact), (
        f"evidence {verdict.evidence!r} is not a recorded line"
    )
    assert "\n" not in verdict.evidence
    assert not is_noise(verdict.evidence), verdict.evidence
    assert verdict.remediation and verdict.rule and verdict.confidence in ("high", "medium", "low")


@pytest.mark.parametrize("kernel_id", KERNELS)
def test_recorded_variant_choices_match_expectation(kernel_id: str) -> None:
    for artifact in examples():
        variants = cell(kernel_id, artifact)["result"].get("program_variants") or []
        chosen = {v["group"]: v["chosen"] for v in variants}
        assert chosen == expected(artifact, kernel_id)["variants"], artifact


# --- the evidence line is the one that proves it ------------------------------------------


def test_verifier_oob_evidence_is_the_reason_not_the_stats_line() -> None:
    for kernel_id in KERNELS:
        verdict = classify_cell(kernel_id, "verifier-oob")
        assert verdict.evidence == "invalid access to map value, value_size=8 off=8 size=8"
        assert verdict.program == "read_past_value"


def test_map_failure_evidence_is_the_create_line_not_the_btf_retry() -> None:
    verdict = classify_cell("debian-11-5.10", "bloom-filter-map")
    assert verdict.evidence == "map 'seen_tgids': failed to create: Invalid argument(-22)"
    assert "bloom_filter" in (verdict.detail or "")


def test_kfunc_evidence_is_libbpfs_line_and_names_the_program() -> None:
    for kernel_id in ("debian-11-5.10", "debian-12-6.1"):
        verdict = classify_cell(kernel_id, "kfunc-new")
        assert verdict.evidence == (
            "extern (func ksym) 'bpf_task_from_pid': not found in kernel or module BTFs"
        )
        assert verdict.program == "exec_lookup_task"


def test_invalid_artifact_evidence_is_the_host_precheck_when_libbpf_never_saw_it() -> None:
    verdict = classify_cell("debian-12-6.1", "invalid-object")
    assert verdict.evidence == host_precheck("invalid-object")
    assert verdict.evidence.startswith("not an ELF file")
    bare = classify_result(result("debian-12-6.1", "truncated-elf"))
    assert bare.code == "INVALID_ARTIFACT" and bare.evidence.startswith("not a valid BPF ELF")


def test_noise_lines_are_never_chosen() -> None:
    log = result("debian-sid-7.2", "core-relocation-fail")["load"]["verifier_log"]
    assert log.startswith("arg#0 reference type('UNKNOWN ') size cannot be determined")
    assert verifier_summary(log).startswith("failed to resolve CO-RE relocation")
    token = (
        "object 'artifact': failed (-95) to create BPF token from '/sys/fs/bpf', "
        "skipping optional step..."
    )
    assert is_noise(token) and verifier_summary(token) is None
    assert is_noise(
        "Error in bpf_create_map_xattr(seen_tgids):Invalid argument(-22). Retrying without BTF."
    )


# --- precedence, on minimally edited copies of recorded results ---------------------------


def test_lockdown_gated_helper_is_policy_and_the_same_words_without_lockdown_are_not() -> None:
    res = result("debian-13-6.12-lockdown", "lockdown-probe-read")
    verdict = classify_result(res)
    assert verdict.code == "POLICY_DENIED"
    assert verdict.evidence == "program of this type cannot use helper bpf_probe_read#4"
    res["security"]["lockdown"] = "none"  # edit: the same log on a kernel without lockdown
    assert classify_result(res).code == "HELPER_NOT_ALLOWED"


def test_lockdown_alone_does_not_make_policy() -> None:
    ld = "debian-13-6.12-lockdown"
    assert classify_result(result(ld, "helper-not-allowed")).code == "HELPER_NOT_ALLOWED"
    assert classify_result(result(ld, "verifier-oob")).code == "VERIFIER_REJECTION"
    assert classify_result(result(ld, "core-relocation-fail")).code == "CORE_RELOCATION_FAILURE"


def _replace_everywhere(res: dict[str, Any], old: str, new: str) -> None:
    """Replace text in every log field of a result (the same lines appear in several)."""
    load = res["load"]
    load["verifier_log"] = load["verifier_log"].replace(old, new)
    load["libbpf_messages"] = [m.replace(old, new) for m in load["libbpf_messages"]]
    for key in ("libbpf", "libbpf_load"):
        res["logs"][key] = res["logs"][key].replace(old, new)
    for p in res["discovery"]["programs"]:
        p["load_log"] = (p.get("load_log") or "").replace(old, new)


def test_core_poison_is_core_not_an_unknown_helper() -> None:
    res = result("debian-11-5.10", "core-relocation-fail")
    # edit: the raw verifier lines libbpf rewrites in fixup_log_failed_core_relo(); a libbpf
    # that does not rewrite them (0.x, or a truncated log) leaves exactly these.
    fixed = ("0: <invalid CO-RE relocation>\nfailed to resolve CO-RE relocation <byte_off> [5] "
             "struct bpfcompat_no_such_type___x.f (0:0 @ offset 0)")  # fmt: skip
    _replace_everywhere(
        res, fixed, "0: (85) call unknown#195896080\ninvalid func unknown#195896080"
    )
    verdict = classify_result(res)
    assert verdict.code == "CORE_RELOCATION_FAILURE"
    assert verdict.evidence == "invalid func unknown#195896080"


def test_unknown_helper_id_is_unsupported_helper() -> None:
    res = result("debian-11-5.10", "bpf-loop-no-fallback")
    # edit: what a kernel that understands callbacks (5.13-5.16) but lacks bpf_loop prints
    _replace_everywhere(res, "number of funcs in func_info doesn't match number of subprogs",
                        "invalid func unknown#181")  # fmt: skip
    verdict = classify_result(res)
    assert (verdict.code, verdict.evidence) == ("UNSUPPORTED_HELPER", "invalid func unknown#181")
    assert "bpf_loop" in (verdict.detail or "")


def _without_probe_fields(res: dict) -> dict:
    """Drop the helper-probe fields a recorded result carries, to test the rules that
    must work without them (results from older validators, or probes that could not run)."""
    for prog in res["discovery"]["programs"]:
        prog.pop("helpers", None)
    res["capabilities"].pop("helpers", None)
    res["capabilities"].pop("helper_program_types", None)
    return res


def test_callback_refusal_is_a_missing_helper_only_on_kernels_before_5_13() -> None:
    res = _without_probe_fields(result("debian-11-5.10", "bpf-loop-no-fallback"))
    verdict = classify_result(res)
    assert (verdict.code, verdict.confidence) == ("UNSUPPORTED_HELPER", "medium")
    assert verdict.evidence == "number of funcs in func_info doesn't match number of subprogs"
    res["host"]["release"] = "6.1.0-50-cloud-amd64"  # edit: same log on a kernel with callbacks
    assert classify_result(res).code == "VERIFIER_REJECTION"
    # edit: the per-program helper probe the validator is asked to record decides it
    res["discovery"]["programs"][0]["helpers"] = [
        {"id": 181, "name": "bpf_loop", "supported": False}
    ]
    verdict = classify_result(res)
    assert (verdict.code, verdict.confidence) == ("UNSUPPORTED_HELPER", "high")
    assert "bpf_loop" in (verdict.detail or "")


def test_helper_probe_with_per_type_table_tells_not_allowed_from_missing() -> None:
    res = _without_probe_fields(result("debian-11-5.10", "bpf-loop-no-fallback"))
    res["host"]["release"] = ""  # edit: no release to lean on
    res["discovery"]["programs"][0]["helpers"] = [
        {"id": 181, "name": "bpf_loop", "supported": False}
    ]
    res["capabilities"]["helpers"] = {"tracepoint": ["bpf_map_lookup_elem"], "xdp": ["bpf_loop"]}
    assert classify_result(res).code == "HELPER_NOT_ALLOWED"
    res["capabilities"]["helpers"] = {"tracepoint": ["bpf_map_lookup_elem"]}
    assert classify_result(res).code == "UNSUPPORTED_HELPER"


def test_helper_probe_fields_decide_when_the_refusal_line_is_lost() -> None:
    res = _without_probe_fields(result("debian-sid-7.2", "helper-not-allowed"))
    refusal = "program of this type cannot use helper bpf_skb_load_bytes#26"
    # edit: the verifier's reason line lost (a log cut short), so no log line names the cause
    _replace_everywhere(res, refusal + "\n", "")
    assert classify_result(res).code not in ("HELPER_NOT_ALLOWED", "UNSUPPORTED_HELPER")
    # edit: what the validator now records: the program's own call of helper 26, probed
    # unusable for its type (tracepoint), and the types bpftool lists it for
    prog = res["discovery"]["programs"][0]
    prog["helpers"] = [{"id": 26, "name": "bpf_skb_load_bytes", "supported": False}]
    res["capabilities"]["helper_program_types"] = {"bpf_skb_load_bytes": ["socket_filter"]}
    verdict = classify_result(res)
    assert (verdict.code, verdict.confidence) == ("HELPER_NOT_ALLOWED", "high")
    assert (
        verdict.evidence
        == "prog 'skb_helper_in_tracepoint': BPF program load failed: Invalid argument"
    )
    assert "refused for tracepoint" in (verdict.detail or "")
    res["capabilities"]["helper_program_types"] = {"bpf_skb_load_bytes": []}
    assert classify_result(res).code == "UNSUPPORTED_HELPER"  # usable from no type at all
    # without bpftool's lists, the verifier's own dump of the call names the helper ...
    del res["capabilities"]["helper_program_types"]
    assert classify_result(res).code == "HELPER_NOT_ALLOWED"
    # ... or, on a kernel that lacks it, prints it as unknown (edit: that kernel's dump)
    _replace_everywhere(res, "call bpf_skb_load_bytes#26", "call unknown#26")
    verdict = classify_result(res)
    assert (verdict.code, verdict.confidence) == ("UNSUPPORTED_HELPER", "high")


def test_lockdown_denials_are_quoted_in_policy_details() -> None:
    res = result("debian-13-6.12-lockdown", "lockdown-probe-read")
    # edit: the kernel log lines the validator now records during the run
    read = (
        "Lockdown: python3: use of bpf to read kernel RAM is restricted; see man kernel_lockdown.7"
    )
    perf = "Lockdown: python3: unsafe use of perf is restricted; see man kernel_lockdown.7"
    res["security"]["lockdown_denials"] = [perf, read]
    verdict = classify_result(res)
    assert verdict.code == "POLICY_DENIED"
    assert f"kernel: {read}" in (verdict.detail or "")
    # edit: the refusal line lost; the helper probe of the program's own call still shows
    # the withheld helper (libbpf only rewrites 113 into 4 at load)
    _replace_everywhere(res, "program of this type cannot use helper bpf_probe_read#4\n", "")
    res["discovery"]["programs"][0]["helpers"] = [
        {"id": 35, "name": "bpf_get_current_task", "supported": True},
        {"id": 113, "name": "bpf_probe_read_kernel", "supported": False},
    ]
    res["capabilities"]["helper_program_types"] = {"bpf_probe_read_kernel": []}
    verdict = classify_result(res)
    assert verdict.code == "POLICY_DENIED"  # not UNSUPPORTED_HELPER: lockdown withholds it
    assert "bpf_probe_read_kernel#113" in (verdict.detail or "") and read in verdict.detail

    base = result("debian-12-6.1", "unsupported-attach-required")
    line = base["discovery"]["programs"][0]["attach_error"]
    # edit: the attach refused with EPERM under lockdown, with the kernel's line for it
    _required_attach_failure(
        base, errno.EPERM, line.replace("No such file or directory", "Operation not permitted")
    )
    base["security"].update(lockdown="confidentiality", lockdown_denials=[read, perf])
    verdict = classify_result(base)
    assert verdict.code == "POLICY_DENIED"
    assert (verdict.detail or "").endswith(f"kernel: {perf}")  # the attach's own reason
    base["security"]["lockdown_denials"] = [read]  # unrelated to attaching: not quoted
    assert "kernel:" not in (classify_result(base).detail or "")


def test_eperm_without_a_verifier_log_is_capability() -> None:
    res = result("debian-11-5.10", "netfilter-prog")
    # edit: the same verifier-less failure, but EPERM, for a program type the kernel has
    _replace_everywhere(res, "BPF program load failed: Invalid argument",
                        "BPF program load failed: Operation not permitted")  # fmt: skip
    _replace_everywhere(res, "failed to load: -22", "failed to load: -1")
    res["load"].update(error_code=errno.EPERM, errno_name="EPERM", error="Operation not permitted")
    res["discovery"]["programs"][0].update(load_errno=errno.EPERM, load_errno_name="EPERM")
    res["capabilities"]["program_types"]["netfilter"] = True
    verdict = classify_result(res)
    assert verdict.code == "CAPABILITY_FAILURE"
    assert (
        verdict.evidence == "prog 'nf_accept_all': BPF program load failed: Operation not permitted"
    )


def test_eacces_with_a_verifier_log_is_a_verifier_rejection() -> None:
    for kernel_id in KERNELS:
        res = result(kernel_id, "verifier-oob")
        assert res["load"]["errno_name"] == "EACCES"
        assert classify_result(res).code == "VERIFIER_REJECTION"


def test_unsupported_program_type_needs_the_probe() -> None:
    res = result("debian-12-6.1", "netfilter-prog")
    assert classify_result(res).code == "UNSUPPORTED_PROGRAM_TYPE"
    del res["capabilities"]["program_types"]["netfilter"]  # edit: no probe result
    assert classify_result(res).code == "UNKNOWN"  # a bare EINVAL proves nothing more


def test_map_failure_on_a_btf_less_kernel_is_still_the_map_type() -> None:
    res = result("debian-11-5.10", "bloom-filter-map")
    res["btf"]["kernel_btf_available"] = False  # edit: the same failure on a kernel without BTF
    assert classify_result(res).code == "UNSUPPORTED_MAP_TYPE"


def test_missing_btf_needs_libbpfs_own_words() -> None:
    res = result("debian-11-5.10", "fentry-missing-target")
    res["btf"]["kernel_btf_available"] = False
    assert classify_result(res).code == "MISSING_ATTACH_TARGET"  # BTF flag alone proves nothing
    # edit: what libbpf 1.5 prints instead when /sys/kernel/btf/vmlinux is absent
    # (src/btf.c btf__load_vmlinux_btf(), src/libbpf.c bpf_object__load_vmlinux_btf())
    lines = [
        "kernel BTF is missing at '/sys/kernel/btf/vmlinux', was CONFIG_DEBUG_INFO_BTF enabled?",
        "failed to find valid kernel BTF",
        "Error loading vmlinux BTF: -3",
        "failed to load object '/tmp/bpfc/a/4/artifact.bpf.o'",
    ]
    res["load"].update(libbpf_messages=lines, failed_program=None)
    res["discovery"]["programs"][0]["load_log"] = "\n".join(lines) + "\n"
    head = res["logs"]["libbpf_load"].split("libbpf: loaded kernel BTF")[0]
    res["logs"]["libbpf_load"] = head + "".join(f"libbpf: {ln}\n" for ln in lines)
    verdict = classify_result(res)
    assert verdict.code == "MISSING_BTF"
    assert verdict.evidence == lines[0]


def test_runtime_sized_map_without_fixup_is_the_loaders_job() -> None:
    res = result("debian-13-6.12", "runtime-sized-maps")
    # edit: the load without the manifest's fixups, as examples/README.md records it on the host
    line = "map 'auxiliary_maps': failed to create: Invalid argument(-22)"
    res["map_fixups"] = []
    res["status"] = "fail"
    res["load"].update(status="fail", stage="load", error_code=22, errno_name="EINVAL",
                       error="Invalid argument", failed_map="auxiliary_maps",
                       libbpf_messages=[line])  # fmt: skip
    verdict = classify_result(res)
    assert (verdict.code, verdict.evidence) == ("LOADER_SETUP_REQUIRED", line)
    assert "max_entries: cpus" in (verdict.remediation or "")
    res["capabilities"]["map_types"]["percpu_array"] = False  # edit: the type itself missing
    assert classify_result(res).code == "UNSUPPORTED_MAP_TYPE"


def test_ring_buffer_map_missing_is_a_transport_problem() -> None:
    res = result("debian-11-5.10", "ringbuf")
    # edit: a kernel before 5.8: the ring buffer probe fails and so does the map
    line = "map 'exec_events': failed to create: Invalid argument(-22)"
    res["capabilities"]["map_types"]["ringbuf"] = False
    res["status"] = "fail"
    res["load"].update(status="fail", stage="load", error_code=22, errno_name="EINVAL",
                       error="Invalid argument", failed_map="exec_events",
                       libbpf_messages=[line])  # fmt: skip
    assert classify_result(res).code == "UNSUPPORTED_TRANSPORT"


def _required_attach_failure(res: dict[str, Any], code: int, text: str) -> None:
    prog = res["discovery"]["programs"][0]
    prog.update(attach_status="fail", attach_errno=code, attach_error=text, attach_required=True)
    res["attach"].update(status="fail", required_failed=[prog["name"]], failed=1)
    res["status"] = "fail"


def test_attach_enoent_is_a_missing_target_whatever_the_lockdown() -> None:
    for kernel_id in KERNELS:
        verdict = classify_cell(kernel_id, "unsupported-attach-required")
        assert verdict.code == "MISSING_ATTACH_TARGET"
        assert verdict.evidence.endswith("perf event: No such file or directory")


def test_attach_errno_decides_the_attach_code() -> None:
    base = result("debian-12-6.1", "unsupported-attach-required")
    line = base["discovery"]["programs"][0]["attach_error"]
    for code, text, lockdown, want in (
        (errno.EINVAL, "Invalid argument", "none", "UNSUPPORTED_ATTACH_TYPE"),
        (errno.EOPNOTSUPP, "Operation not supported", "none", "UNSUPPORTED_ATTACH_TYPE"),
        (errno.EPERM, "Operation not permitted", "none", "CAPABILITY_FAILURE"),
        (errno.EPERM, "Operation not permitted", "confidentiality", "POLICY_DENIED"),
    ):
        res = copy.deepcopy(base)
        # edit: the same attach, failing with another errno (libbpf prints its strerror)
        _required_attach_failure(res, code, line.replace("No such file or directory", text))
        res["security"]["lockdown"] = lockdown
        verdict = classify_result(res)
        assert verdict.code == want, (code, lockdown, verdict)
        assert verdict.evidence.endswith(text)


def test_tracepoint_attach_without_tracefs() -> None:
    res = result("debian-13-6.12-lockdown", "simple-pass")
    line = res["discovery"]["programs"][0]["attach_error"]
    assert line.startswith("prog 'simple_pass': failed to create tracepoint")
    _required_attach_failure(res, errno.ENOENT, line)  # edit: the same attach, but required
    assert classify_result(res).code == "POLICY_DENIED"  # lockdown took tracefs away
    res["security"]["lockdown"] = "none"  # edit: tracefs missing for another reason
    assert classify_result(res).code == "UNSUPPORTED_ATTACH_TYPE"
    res["capabilities"]["attach_prereqs"]["tracefs"] = True  # edit: tracefs there, event not
    assert classify_result(res).code == "MISSING_ATTACH_TARGET"


def test_functional_failure_quotes_the_tests_output() -> None:
    verdict = classify_cell("debian-13-6.12-lockdown", "functional-execve")
    assert verdict.code == "FUNCTIONAL_TEST_FAILURE"
    assert verdict.evidence == "grep: /sys/kernel/tracing/trace_pipe: No such file or directory"


def test_a_crashed_validator_step_is_inconclusive() -> None:
    res = result("debian-13-6.12", "simple-pass")
    res["errors"] = [{"step": "attach", "message": "OSError: [Errno 5] Input/output error"}]
    verdict = classify_result(res)
    assert (verdict.status, verdict.code) == ("error", "INFRA_ERROR")
    res = result("debian-13-6.12", "verifier-oob")
    # a crash after the failing load leaves the load's verdict conclusive
    res["errors"] = [{"step": "attach", "message": "boom"}]
    assert classify_result(res).code == "VERIFIER_REJECTION"


def test_stored_rows_without_a_usable_result() -> None:
    panic = "[  1.0] Kernel panic - not syncing: Fatal exception"
    crash = classify(Stored(None, crash=True, infra_error="guest died", console_tail=panic + "\n"))
    assert (crash.code, crash.evidence) == ("KERNEL_CRASH", panic)
    infra = classify(Stored(None, infra_error="ssh: connection reset"))
    assert (infra.status, infra.code, infra.evidence) == (
        "error",
        "INFRA_ERROR",
        "ssh: connection reset",
    )
    bad = classify(Stored(None), artifact_problem="not an ELF file (starts with 'hello')")
    assert (bad.status, bad.code) == ("fail", "INVALID_ARTIFACT")
    sig = classify(Stored(None, signal=11), artifact_problem="truncated ELF")
    assert sig.code == "INVALID_ARTIFACT"
    assert classify(Stored(None, signal=11)).code == "INFRA_ERROR"


def test_an_oom_kill_quotes_the_kernel_and_points_at_memory() -> None:
    # The line as a 6.1 guest printed it in tests/test_hostile.py's OOM case.
    line = (
        "[    5.246816] Out of memory: Killed process 106 (python3) total-vm:42568kB, "
        "anon-rss:29260kB, file-rss:4kB, shmem-rss:6872kB, UID:0 pgtables:120kB oom_score_adj:1000"
    )
    oom = classify(Stored(None, signal=9, infra_error=f"validator killed by SIGKILL: {line}"))
    assert (oom.status, oom.code, oom.confidence) == ("error", "INFRA_ERROR", "high")
    assert oom.evidence is not None and oom.evidence.startswith("Out of memory: Killed process 106")
    assert oom.remediation is not None and "memory_mb" in oom.remediation
    plain = classify(Stored(None, signal=9, infra_error="validator killed by SIGKILL"))
    assert plain.evidence == "validator killed by signal 9"


# --- the rule table and its generated documentation ---------------------------------------


def test_rule_table_covers_every_code_and_nothing_else() -> None:
    produced = {r.code for r in (*RULES, *OUTCOME_RULES)}
    assert produced == set(CODES)
    names = [r.name for r in (*RULES, *OUTCOME_RULES)]
    assert len(names) == len(set(names))
    for rule in (*RULES, *OUTCOME_RULES):
        assert rule.meaning and rule.cause and rule.remediation, rule.name
        for msg in rule.msgs:
            assert msg.source.startswith(("libbpf src/", "kernel/")), (rule.name, msg)
    assert all(m.source for m in NOISE)
    assert [row["rule"] for row in rule_table()] == names


def _gen_codes_doc() -> Any:
    spec = importlib.util.spec_from_file_location(
        "gen_codes_doc", ROOT / "scripts" / "gen_codes_doc.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_codes_doc_is_generated_from_the_rule_table() -> None:
    gen = _gen_codes_doc()
    assert (ROOT / "docs" / "codes.md").read_text() == gen.render(), (
        "docs/codes.md is stale: run .venv/bin/python scripts/gen_codes_doc.py"
    )
    for code in CODES:
        assert f"`{code}`" in gen.render()


def test_every_registered_rule_is_documented() -> None:
    doc = (ROOT / "docs" / "codes.md").read_text()
    for name, r in REGISTRY.items():
        assert f"| `{r.code}` | {name} |" in doc, name


def _calls(name: str) -> list[tuple[str, ast.Call]]:
    """Every call of the bare name `name` in src/bpfcompat, with its module's path."""
    src = ROOT / "src" / "bpfcompat"
    found = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                found.append((path.relative_to(src).as_posix(), node))
    return found


def test_every_verdict_the_code_can_produce_names_a_registered_rule() -> None:
    # Only Rule.verdict() makes verdicts (verdict.py makes the one PASS), and it always
    # names its rule; every rule looked up by name is in the registry.
    assert {path for path, _ in _calls("Verdict")} == {
        "matrix/classify/rules.py",
        "matrix/verdict.py",
    }
    named = set()
    for path, call in _calls("rule"):
        arg = call.args[0] if call.args else None
        assert isinstance(arg, ast.Constant) and arg.value in REGISTRY, (path, ast.unparse(call))
        named.add(arg.value)
    assert {r.name for r in OUTCOME_RULES} <= named  # the evidence rules run from RULES


def test_each_outcome_is_a_verdict_of_its_own_rule() -> None:
    oom = "Out of memory: Killed process 106 (python3) total-vm:42568kB"
    truncated = ValidatorResult(cache_key="k", artifact_sha256="", kernel_id="k",
                                raw_json='{"status": "pass", "load": {')  # fmt: skip
    outcomes = {
        "kernel-crash": classify(Stored(None, crash=True, console_tail="Kernel panic - x\n")),
        "oom-kill": classify(Stored(None, signal=9, infra_error=f"killed by SIGKILL: {oom}")),
        "validator-signal": classify(Stored(None, signal=11), artifact_problem="truncated ELF"),
        "validator-killed": classify(Stored(None, signal=11)),
        "artifact-unreadable": classify(Stored(None), artifact_problem="empty file"),
        "malformed-result": classify(truncated),
        "infra": classify(Stored(None, infra_error="ssh: connection reset")),
        "boot-failure": kernel_failed("boot failed: no login prompt within 300 s"),
        "unknown": classify_result({"load": {"status": "fail", "stage": "load"}}),
    }
    for name, verdict in outcomes.items():
        r = REGISTRY[name]
        assert (verdict.rule, verdict.code, verdict.remediation) == (name, r.code, r.remediation)
        assert verdict.status == r.status and verdict.evidence, verdict
    boot = outcomes["boot-failure"]
    assert (boot.status, boot.stage, boot.evidence) == (
        "error",
        "boot",
        "boot failed: no login prompt within 300 s",
    )
    assert outcomes["malformed-result"].evidence.startswith("validator result is not JSON")
    assert outcomes["oom-kill"].evidence == oom


def test_invalid_artifact_prefers_libbpfs_own_line() -> None:
    res = result("debian-12-6.1", "invalid-object")
    # edit: a validator without its own ELF check hands the file to libbpf, which refuses it
    # with this line (bpf_object__elf_init(), seen for this file on the host, examples/README.md)
    line = "elf: '/tmp/bpfc/a/8/artifact.bpf.o' is not a proper ELF object"
    res["load"].update(stage="open", error_code=errno.EINVAL, libbpf_messages=[line])
    res["logs"]["libbpf"] += "debug: libbpf: elf: section(2) .text, size 56\nwarn: libbpf: " + line
    verdict = classify(Stored(res), artifact_problem=host_precheck("invalid-object"))
    assert (verdict.code, verdict.evidence) == ("INVALID_ARTIFACT", line)


def test_notes_say_what_the_loader_contract_set_and_how_to_declare_it() -> None:
    """Automatic fixups carry the manifest lines that would declare them; what the
    manifest set on programs and globals is listed with whether it took (real results)."""
    stacks = notes_for(result("debian-12-6.1", "stack-trace-map"))
    assert (
        "automatic fixup stacks: value_size 0 -> 1016 (applied); compiled with value_size 0 "
        "(its loader sizes it): 127 stack frames of 8 bytes (PERF_MAX_STACK_DEPTH); "
        "to declare it: {maps: [{name: stacks, value_size: 1016}]}"
    ) in stacks, stacks
    assert any(n.startswith("automatic fixup stacks: max_entries 0 -> 1 ") for n in stacks)
    assert notes_for(result("debian-12-6.1", "fentry-retarget")) == [
        "program trace_read: attach target vfs_read from the manifest (applied)"
    ]
    assert "global marker in .rodata set to 4242 (applied)" in notes_for(
        result("debian-12-6.1", "rodata-globals")
    )
    assert notes_for(result("debian-12-6.1", "simple-pass")) == []


@pytest.mark.parametrize(
    ("line", "words"),
    [
        # libbpf's exact words (bpf_object__collect_externs, parse_btf_map_def,
        # bpf_object__add_programs), as real third-party objects made it print them.
        ("failed to find BTF for extern 'memcmp': -2", "shipped unlinked"),
        ("failed to find BTF for extern 'cel_expr_1' [1806] section: -2", "shipped unlinked"),
        ("map 'ongoing_goroutines': invalid pinning value 100.", "another loader's own"),
        ("sec 'kprobe/unwind': program 'kprobe_unwind' is static and not supported", "static"),
    ],
)
def test_an_object_refused_at_open_says_what_it_was_built_for(line: str, words: str) -> None:
    """The evidence is libbpf's own line, never the errno it ended in, and the detail says
    what the object was built for (a link step, another loader)."""
    res = result("debian-12-6.1", "simple-pass")
    # edit: the open fails as it did for those objects; the rest of the result is real
    res["status"] = "fail"
    res["load"].update(
        status="fail", stage="open", error_code=errno.ENOENT, error="No such file or directory",
        errno_name="ENOENT", libbpf_messages=[line],
    )  # fmt: skip
    verdict = classify(Stored(res))
    assert (verdict.code, verdict.evidence) == ("INVALID_ARTIFACT", line)
    assert words in (verdict.detail or ""), verdict.detail
