"""The validator for real on the host kernel: root, real BPF, the examples built by make.

These tests fail (never skip) without root or clang: a skipped BPF test looks green while
proving nothing. The host kernel has no kprobes and no BPF trampolines, so kprobe
attaches fail here exactly as the unsupported-attach example expects.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bpfcompat.matrix.classify import classify_result
from bpfcompat.validator.limits import MAX_SHARED_PROGRAMS
from hostile import compile_bpf, many_programs_source

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
VALIDATOR = [sys.executable, "-m", "bpfcompat.validator"]  # as the guests run it
RUNTIME_FIXUPS = (
    "--set-map-max-entries",
    "auxiliary_maps=cpus",
    "--set-map-max-entries",
    "ringbuf_maps=cpus",
    "--set-map-inner-ringbuf",
    "ringbuf_maps=8388608",
)
# The validator.v0.4 key list, plus the keys this implementation adds.
TOP_LEVEL_KEYS = {
    "schema_version", "timestamp", "status", "host", "input", "map_fixups",
    "auto_sized_maps", "auto_typed_programs", "program_type_overrides", "program_variants",
    "btf", "capabilities", "discovery", "load", "attach", "functional", "logs",
    # additions
    "validator_version", "artifact", "security", "timings", "errors", "warnings", "program_setup",
    "globals_set",
}  # fmt: skip
PROGRAM_KEYS = {
    "name", "section", "attach_status", "attach_error", "load_status", "load_errno", "load_log",
}  # fmt: skip
VERIFIER_STATS_KEYS = {
    "insns_processed", "insn_limit", "max_states_per_insn", "states_total", "states_peak",
    "stack_depth", "verify_usec",
}  # fmt: skip
STEP_TIMINGS = {
    "host", "libbpf", "btf", "capabilities", "open", "discovery", "type_probes",
    "helper_probes", "probes", "variants", "fixups", "load", "attach", "functional", "cleanup",
    "kernel_log", "total",
}  # fmt: skip


@pytest.fixture(scope="session")
def examples() -> Path:
    """Build every example once; anything missing is a failure, not a skip."""
    if os.geteuid() != 0:
        pytest.fail("test_validator_host needs root (real BPF on the host kernel)")
    if shutil.which("clang") is None:
        pytest.fail("clang not found: install clang (Debian: apt-get install clang libbpf-dev)")
    proc = subprocess.run(
        ["make", "-C", str(EXAMPLES)], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"make -C examples failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return EXAMPLES


@pytest.fixture(scope="session")
def tracefs() -> Path:
    """Tracepoint attach reads event ids from tracefs; the host does not mount it."""
    path = Path("/sys/kernel/tracing")
    if not (path / "events").is_dir():
        proc = subprocess.run(
            ["mount", "-t", "tracefs", "tracefs", str(path)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            pytest.fail(f"cannot mount tracefs at {path}: {proc.stderr.strip()}")
    return path


def example(examples: Path, name: str) -> Path:
    path = examples / name / f"{name}.bpf.o"
    assert path.is_file(), f"example {name} was not built: {path}"
    return path


def possible_cpus() -> int:
    """Count /sys/devices/system/cpu/possible, e.g. "0-3,8" -> 5."""
    total = 0
    for part in Path("/sys/devices/system/cpu/possible").read_text().strip().split(","):
        low, _, high = part.partition("-")
        total += int(high or low) - int(low) + 1
    return total


def run_validator(
    tmp_path: Path, artifact: Path, *args: str, log_dir: bool = True
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the validator as the guests do and return the process and its parsed result."""
    out = tmp_path / "result.json"
    cmd = [*VALIDATOR, "--artifact", str(artifact), "--out", str(out)]
    if log_dir:
        cmd += ["--log-dir", str(tmp_path / "logs")]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert out.is_file(), f"no result written (exit {proc.returncode}): {proc.stderr}"
    result = json.loads(out.read_text())
    assert result["errors"] == [], result["errors"]
    return proc, result


def programs(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in result["discovery"]["programs"]}


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


# --- passing objects --------------------------------------------------------------------------


def test_simple_pass(examples: Path, tracefs: Path, tmp_path: Path) -> None:
    proc, result = run_validator(tmp_path, example(examples, "simple-pass"))
    assert proc.returncode == 0, proc.stderr
    assert set(result) == TOP_LEVEL_KEYS
    assert result["schema_version"] == "validator.v0.4"
    assert result["status"] == "pass"
    assert result["load"]["status"] == "pass"
    assert result["load"]["error_code"] == 0
    attach = result["attach"]
    assert attach["status"] == "pass"
    assert (attach["mode"], attach["attempted"], attach["passed"], attach["failed"]) == (
        "best-effort", 1, 1, 0,
    )  # fmt: skip
    (prog,) = result["discovery"]["programs"]
    assert set(prog) >= PROGRAM_KEYS
    assert prog["name"] == "simple_pass"
    assert prog["section"] == "tracepoint/syscalls/sys_enter_execve"
    assert prog["type"] == "tracepoint"
    assert (prog["load_status"], prog["attach_status"]) == ("pass", "pass")
    assert result["discovery"]["program_count"] == 1

    uname = os.uname()
    assert result["host"]["release"] == uname.release
    assert result["host"]["machine"] == uname.machine
    assert result["host"]["libbpf_version"]
    assert result["timestamp"].endswith("Z")
    assert result["btf"]["kernel_btf_available"] is True
    assert result["btf"]["kernel_btf_size"] > 0
    assert result["btf"]["artifact_has_btf"] is True
    assert result["btf"]["artifact_has_btf_ext"] is True

    assert "lockdown" in result["security"]
    assert result["security"]["lockdown"] in (None, "none", "integrity", "confidentiality")
    if result["security"]["lockdown"] is not None:
        assert f"[{result['security']['lockdown']}]" in result["security"]["lockdown_raw"]

    caps = result["capabilities"]
    assert caps["bpftool_available"] is True
    assert caps["bpftool_probe_ok"] is True
    assert json.loads(Path(caps["bpftool_probe_output_path"]).read_text())["map_types"]
    assert caps["map_types"]["ringbuf"] is True
    assert caps["program_types"]["tracepoint"] is True
    assert caps["attach_prereqs"]["tracefs"] is True
    assert caps["attach_prereqs"]["tracepoint_events"] is True
    assert prog["helpers"] == [] and prog["kfuncs"] == []  # `return 0` calls nothing
    # the whole-object load passed: it settles the program, with the verifier's summary
    assert result["discovery"]["probe_loads"] == 0
    stats = prog["verifier_stats"]
    assert set(stats) == VERIFIER_STATS_KEYS
    assert stats["insns_processed"] >= 1 and stats["insn_limit"] >= 4096
    assert stats["stack_depth"] == [0] and stats["verify_usec"] >= 0
    assert isinstance(caps["helpers"]["tracepoint"], list) and caps["helpers"]["tracepoint"]
    assert caps["helper_program_types"] == {}
    assert result["security"]["lockdown_denials_error"] is None

    assert set(result["timings"]) >= STEP_TIMINGS
    assert all(isinstance(t, float) and t >= 0 for t in result["timings"].values())
    log_file = Path(result["logs"]["libbpf_log_path"])
    assert log_file == tmp_path / "logs" / "libbpf.log"
    assert log_file.stat().st_size > 0
    assert "libbpf: " in result["logs"]["libbpf"]


def test_ringbuf_passes(examples: Path, tracefs: Path, tmp_path: Path) -> None:
    proc, result = run_validator(tmp_path, example(examples, "ringbuf"))
    assert proc.returncode == 0
    assert result["status"] == "pass"
    assert result["attach"]["status"] == "pass"
    maps = {m["name"]: m for m in result["discovery"]["maps"]}
    assert maps["exec_events"]["type"] == "ringbuf"
    assert maps["exec_events"]["max_entries"] == 256 * 1024


# --- map fixups -------------------------------------------------------------------------------


def test_runtime_sized_maps_fail_without_fixups(examples: Path, tmp_path: Path) -> None:
    proc, result = run_validator(tmp_path, example(examples, "runtime-sized-maps"))
    assert proc.returncode == 2
    assert result["status"] == "fail"
    load = result["load"]
    assert (load["status"], load["error_code"], load["errno_name"]) == ("fail", 22, "EINVAL")
    assert load["error"] == os.strerror(22)
    assert load["failed_map"] in ("auxiliary_maps", "ringbuf_maps")
    assert result["attach"]["status"] == "skipped"
    assert result["map_fixups"] == []
    prog = programs(result)["runtime_sized_execve"]
    assert (prog["load_status"], prog["load_errno"]) == ("fail", 22)
    assert "failed to create" in prog["load_log"]


def test_runtime_sized_maps_pass_with_fixups(examples: Path, tracefs: Path, tmp_path: Path) -> None:
    proc, result = run_validator(tmp_path, example(examples, "runtime-sized-maps"), *RUNTIME_FIXUPS)
    assert proc.returncode == 0, result["load"]
    assert result["status"] == "pass"
    cpus = possible_cpus()
    fixups = {f["name"]: f for f in result["map_fixups"]}
    assert fixups["auxiliary_maps"] == {
        "name": "auxiliary_maps",
        "requested": "cpus",
        "applied_entries": cpus,
        "inner_ringbuf_bytes": None,
        "value_size": None,
        "key_size": None,
        "status": "applied",
        "error": None,
    }
    assert fixups["ringbuf_maps"]["applied_entries"] == cpus
    assert fixups["ringbuf_maps"]["inner_ringbuf_bytes"] == 8388608
    assert fixups["ringbuf_maps"]["status"] == "applied"
    # the isolated probe gets the same fixups, so it passes too
    assert programs(result)["runtime_sized_execve"]["load_status"] == "pass"


def test_fixup_of_unknown_map_is_reported_not_fatal(examples: Path, tmp_path: Path) -> None:
    proc, result = run_validator(
        tmp_path,
        example(examples, "simple-pass"),
        "--set-map-max-entries",
        "no_such_map=16",
        "--set-map-inner-ringbuf",
        "no_such_map=4096",
        "--attach-mode",
        "disabled",
    )
    assert proc.returncode == 0
    (fixup,) = result["map_fixups"]
    assert fixup["status"] == "not_found"
    assert fixup["requested"] == "16"
    assert any("no_such_map" in w["message"] for w in result["warnings"])


# --- program variants -------------------------------------------------------------------------


def test_program_variants_choose_loop_x(examples: Path, tracefs: Path, tmp_path: Path) -> None:
    proc, result = run_validator(
        tmp_path,
        example(examples, "program-variants"),
        "--prog-variants",
        "loop_x=loop_x:bpf_loop,loop_old_x",
    )
    assert proc.returncode == 0
    (group,) = result["program_variants"]
    assert group["group"] == "loop_x"
    assert group["status"] == "selected"
    assert group["chosen"] == "loop_x"
    assert group["disabled"] == ["loop_old_x"]
    assert group["probes"][0] == {
        "program": "loop_x",
        "helper": "bpf_loop",
        "helper_id": 181,
        "supported": True,
    }
    assert group["probes"][1]["helper_id"] == 0
    progs = programs(result)
    # each program's own calls, probed for its own type (tracepoint)
    assert progs["loop_x"]["helpers"] == [
        {"id": 14, "name": "bpf_get_current_pid_tgid", "supported": True},
        {"id": 181, "name": "bpf_loop", "supported": True},
        {"id": 2, "name": "bpf_map_update_elem", "supported": True},
    ]
    assert [h["id"] for h in progs["loop_old_x"]["helpers"]] == [14, 2]
    assert progs["loop_x"]["helper_probe_error"] is None
    assert progs["loop_x"]["kfuncs"] == []
    assert progs["loop_x"]["autoload"] is True
    assert progs["loop_old_x"]["autoload"] is False
    assert progs["loop_x"]["attach_status"] == "pass"
    assert progs["loop_old_x"]["attach_status"] == "skipped"
    # isolated probes still report each variant's own result
    assert progs["loop_old_x"]["load_status"] == "pass"
    assert result["attach"]["passed"] == 1


def test_program_variants_unknown_program_is_a_group_error(
    examples: Path, tracefs: Path, tmp_path: Path
) -> None:
    proc, result = run_validator(
        tmp_path,
        example(examples, "program-variants"),
        "--prog-variants",
        "ghost=no_such_prog:181,loop_old_x",
        "--attach-mode",
        "disabled",
    )
    assert proc.returncode == 0
    (group,) = result["program_variants"]
    assert group["status"] == "error"
    assert "no_such_prog" in group["error"]
    assert group["chosen"] is None and group["disabled"] == []
    assert all(p["autoload"] for p in result["discovery"]["programs"])


# --- helpers and kfuncs each program calls ----------------------------------------------------


def test_helper_not_allowed_is_probed_for_the_programs_own_type(
    examples: Path, tmp_path: Path
) -> None:
    """bpf_skb_load_bytes exists, but not for tracepoint programs.

    The host's libbpf (< 1.5) does not know the verifier's 6.10 wording and calls the helper
    supported; the validator reads the verifier's answer itself in that case.
    """
    artifact = example(examples, "helper-not-allowed")
    for sub in ("a", "b"):  # the second run answers from the per-boot cache
        (tmp_path / sub).mkdir()
        proc, result = run_validator(tmp_path / sub, artifact, "--attach-mode", "disabled")
        assert proc.returncode == 2
        prog = programs(result)["skb_helper_in_tracepoint"]
        assert prog["type"] == "tracepoint"
        assert prog["helpers"] == [{"id": 26, "name": "bpf_skb_load_bytes", "supported": False}]
        assert prog["helper_probe_error"] is None
        assert prog["kfuncs"] is None  # never loaded
        caps = result["capabilities"]
        assert list(caps["helpers"]) == ["tracepoint"]  # only the artifact's program types
        assert "bpf_skb_load_bytes" not in caps["helpers"]["tracepoint"]
        usable = caps["helper_program_types"]["bpf_skb_load_bytes"]
        assert "sched_cls" in usable and "tracepoint" not in usable
        verdict = classify_result(result)
        assert verdict.code == "HELPER_NOT_ALLOWED"
        assert verdict.evidence == "program of this type cannot use helper bpf_skb_load_bytes#26"


def test_kfuncs_are_read_back_after_load(examples: Path, tmp_path: Path) -> None:
    proc, result = run_validator(
        tmp_path, example(examples, "kfunc-new"), "--attach-mode", "disabled"
    )
    assert proc.returncode == 0
    prog = programs(result)["exec_lookup_task"]
    assert prog["type"] == "tracing"
    # bpf_task_from_pid, bpf_task_release: kernel BTF ids libbpf wrote into the calls
    assert len(prog["kfuncs"]) == 2
    assert all(isinstance(i, int) and i > 0 for i in prog["kfuncs"])
    # libbpf cannot probe helpers for tracing programs: recorded, not guessed
    assert prog["helpers"] == [{"id": 1, "name": "bpf_map_lookup_elem", "supported": None}]
    assert prog["helper_probe_error"]


def test_lockdown_denials_of_the_run_are_recorded(examples: Path, tmp_path: Path) -> None:
    """A functional test opens a debugfs file, which lockdown (integrity and up) refuses.

    debugfs is mounted in a private mount namespace, so the host's mounts are untouched.
    """
    plan = write_json(
        tmp_path / "plan.json",
        {
            "tests": [
                {
                    "name": "debugfs",
                    "command": "unshare -m sh -c 'mount -t debugfs none /sys/kernel/debug && "
                    "cat /sys/kernel/debug/clear_warn_once'",
                    "required": False,
                }
            ]
        },
    )
    proc, result = run_validator(
        tmp_path,
        example(examples, "simple-pass"),
        "--functional-plan",
        str(plan),
        "--attach-mode",
        "disabled",
    )
    assert proc.returncode == 0
    security = result["security"]
    assert security["lockdown_denials_error"] is None
    if security["lockdown"] in ("integrity", "confidentiality"):
        line = "Lockdown: cat: debugfs access is restricted; see man kernel_lockdown.7"
        assert line in security["lockdown_denials"]
    else:
        assert security["lockdown_denials"] == []


# --- isolated probes --------------------------------------------------------------------------


def test_tail_calls_whole_load_passes_every_program(
    examples: Path, tracefs: Path, tmp_path: Path
) -> None:
    """The whole object loads, so both programs did, with no load of one alone (which
    for tail_dispatch would fail to fill the slot pointing at tail_callee)."""
    proc, result = run_validator(tmp_path, example(examples, "tail-calls"))
    assert proc.returncode == 0
    assert result["load"]["status"] == "pass"
    assert result["discovery"]["probe_loads"] == 0
    for prog in result["discovery"]["programs"]:
        assert (prog["load_status"], prog["load_skip_reason"]) == ("pass", None)
        assert prog["verifier_stats"]["insns_processed"] > 0


def test_verifier_failure_names_program_and_keeps_log(examples: Path, tmp_path: Path) -> None:
    proc, result = run_validator(tmp_path, example(examples, "verifier-oob"))
    assert proc.returncode == 2
    load = result["load"]
    assert (load["status"], load["errno_name"], load["error_code"]) == ("fail", "EACCES", 13)
    assert load["failed_program"] == "read_past_value"
    assert "processed" in load["verifier_log"]
    prog = programs(result)["read_past_value"]
    assert (prog["load_status"], prog["load_errno_name"]) == ("fail", "EACCES")
    assert prog["load_log"].endswith("\n") and len(prog["load_log"]) <= 8192
    assert Path(prog["load_log_path"]).read_text().strip()
    # its own probe has the full log: the whole-object load kept only the statistics
    assert "invalid access to map value" in load["verifier_log"]
    assert load["verifier_log"].splitlines()[-1] == prog["load_log"].splitlines()[-1]
    assert result["discovery"]["probe_loads"] == 1
    # a level-1 log has the "processed" line, not the time and stack depth
    stats = prog["verifier_stats"]
    assert stats["insns_processed"] > 0 and stats["states_total"] is not None
    assert (stats["verify_usec"], stats["stack_depth"]) == (None, None)


def test_too_small_log_buffer_still_reports_real_errno(examples: Path, tmp_path: Path) -> None:
    """ENOSPC from a full verifier buffer must not replace the kernel's EACCES."""
    out = tmp_path / "r.json"
    script = (
        "import sys; from bpfcompat.validator import programs, run; "
        "programs.VERIFIER_BUF_BYTES = 256; sys.exit(run.main(sys.argv[1:]))"
    )
    artifact = example(examples, "verifier-oob")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "--artifact",
            str(artifact),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    prog = programs(json.loads(out.read_text()))["read_past_value"]
    assert prog["load_errno_name"] == "EACCES"
    assert "processed" in prog["load_log"]


def test_an_overflowing_statistics_log_never_decides_the_load(
    examples: Path, tracefs: Path, tmp_path: Path
) -> None:
    """A statistics slice too small for the summary makes the kernel refuse the load with
    ENOSPC: that is our buffer, not the kernel's verdict, so the object is loaded again
    without logs, and attached from that load."""
    out = tmp_path / "r.json"
    script = (
        "import sys; from bpfcompat.validator import run, vstats; "
        "vstats.STATS_SLICE_MIN = vstats.STATS_SLICE_MAX = 128; "
        "sys.exit(run.main(sys.argv[1:]))"
    )
    artifact = example(examples, "simple-pass")
    proc = subprocess.run(
        [sys.executable, "-c", script, "--artifact", str(artifact), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["load"]["status"] == "pass" and result["errors"] == []
    assert result["attach"]["status"] == "pass"
    assert any("statistics log overflowed" in w["message"] for w in result["warnings"])
    (prog,) = result["discovery"]["programs"]
    assert (prog["load_status"], prog["verifier_stats"]) == ("pass", None)


def test_probe_features_off_and_attach_disabled(examples: Path, tmp_path: Path) -> None:
    proc, result = run_validator(
        tmp_path,
        example(examples, "simple-pass"),
        "--probe-features",
        "false",
        "--attach-mode",
        "disabled",
    )
    assert proc.returncode == 0
    assert result["input"]["probe_features"] is False
    assert result["capabilities"]["map_types"] == {}
    assert result["capabilities"]["bpftool_probe_ok"] is False
    prog = programs(result)["simple_pass"]
    assert prog["load_status"] == "skipped"
    assert prog["load_skip_reason"] == "feature probing disabled"
    assert result["capabilities"]["helpers"] == {}
    assert "helper_probes" not in result["timings"]
    assert result["attach"]["status"] == "skipped"
    assert prog["attach_skip_reason"] == "attach mode disabled"
    sub = tmp_path / "helpers"
    sub.mkdir()
    _, result = run_validator(
        sub, example(examples, "helper-not-allowed"), "--probe-features", "false"
    )
    prog = programs(result)["skb_helper_in_tracepoint"]
    assert prog["helpers"] == [{"id": 26, "name": "bpf_skb_load_bytes", "supported": None}]
    assert prog["helper_probe_error"] == "feature probing disabled"


def test_bpftool_probe_is_cached_per_boot(examples: Path, tmp_path: Path) -> None:
    artifact = example(examples, "simple-pass")
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    run_validator(tmp_path / "a", artifact, "--attach-mode", "disabled")
    _, result = run_validator(tmp_path / "b", artifact, "--attach-mode", "disabled")
    caps = result["capabilities"]
    assert caps["bpftool_probe_cached"] is True
    assert caps["bpftool_probe_ok"] is True
    assert Path(caps["bpftool_probe_output_path"]).stat().st_size > 0


# --- per-program results of many programs -----------------------------------------------------

PROBE_SECTION = "tracepoint/syscalls/sys_enter_sync"
# Verifier words for a load from a constant address (the generator's refused programs).
REFUSED_TEXT = "invalid mem access 'scalar'"


def build(tmp_path: Path, name: str, source: str) -> Path:
    """Compile ``source`` as the hostile-input generator compiles its objects."""
    if shutil.which("clang") is None:
        pytest.fail("clang not found: install clang (Debian: apt-get install clang libbpf-dev)")
    src = tmp_path / f"{name}.bpf.c"
    src.write_text(source)
    out = tmp_path / f"{name}.bpf.o"
    compile_bpf(src, out)
    return out


def refused(index: int, every: int) -> bool:
    return every > 0 and index % every == every - 1


@pytest.mark.parametrize(("count", "every"), [(300, 10), (40, 1), (2000, 0)])
def test_every_program_gets_its_own_result_in_linear_loads(
    tmp_path: Path, count: int, every: int
) -> None:
    """Per-program results cost about one load per refused program, never one per program:
    each refused program still gets its own errno and log (from a load of it alone), each
    loaded one its verifier statistics. 300 programs with every tenth refused, 40 all
    refused (a run of refusals: one load each), 2000 all loading (the whole load alone)."""
    artifact = build(tmp_path, f"many-{count}", many_programs_source(count, failing_every=every))
    proc, result = run_validator(tmp_path, artifact, "--attach-mode", "disabled")
    assert proc.returncode == (2 if every else 0)
    progs = result["discovery"]["programs"]
    assert len(progs) == count
    failures = sum(refused(i, every) for i in range(count))
    for index, prog in enumerate(progs):
        assert prog["name"] == f"p{index}"
        assert prog["load_skip_reason"] is None, prog
        if refused(index, every):
            assert (prog["load_status"], prog["load_errno_name"]) == ("fail", "EACCES"), prog
            assert REFUSED_TEXT in prog["load_log"] and "processed" in prog["load_log"]
            assert prog["verifier_stats"]["insns_processed"] >= 1
        else:
            assert prog["load_status"] == "pass", prog
            assert prog["verifier_stats"]["insns_processed"] >= 1, prog
            assert prog["kfuncs"] == []
    loads = result["discovery"]["probe_loads"]
    assert loads <= 2 * failures + count // MAX_SHARED_PROGRAMS, (loads, failures)
    if every == 1:
        assert loads <= count + 1  # a run of refusals: each probed alone, once
    if every:
        assert result["load"]["failed_program"] == f"p{every - 1}"
        assert REFUSED_TEXT in result["load"]["verifier_log"]
    marks = Path(result["logs"]["libbpf_log_path"]).read_text().count("load probe of")
    assert marks == loads


def test_a_failure_of_the_object_is_every_programs_in_one_probe(tmp_path: Path) -> None:
    """A map the kernel cannot create fails every program's load the same way: one probe
    of one program alone shows it, and every program gets that result."""
    source = "\n".join(
        [
            "#include <linux/bpf.h>",
            "#include <bpf/bpf_helpers.h>",
            "struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 0);",
            '  __type(key, __u32); __type(value, __u32); } zero SEC(".maps");',
            *(
                f'SEC("{PROBE_SECTION}") int p{i}(void *ctx) '
                "{ __u32 k = 0; return bpf_map_lookup_elem(&zero, &k) != 0; }"
                for i in range(30)
            ),
            'char LICENSE[] SEC("license") = "GPL";',
        ]
    )
    artifact = build(tmp_path, "zero-map", source)
    proc, result = run_validator(
        tmp_path, artifact, "--attach-mode", "disabled", "--no-auto-fixups"
    )
    assert proc.returncode == 2
    assert (result["load"]["failed_map"], result["load"]["errno_name"]) == ("zero", "EINVAL")
    assert result["discovery"]["probe_loads"] == 1
    progs = result["discovery"]["programs"]
    assert {(p["load_status"], p["load_errno_name"], p["load_log"]) for p in progs} == {
        ("fail", "EINVAL", progs[0]["load_log"])
    }
    assert "map 'zero': failed to create" in progs[0]["load_log"]


def test_programs_after_a_refusal_that_fill_no_slot_are_skipped(tmp_path: Path) -> None:
    """A prog-array slot pointing at a program loaded before the refused one: the
    programs after it load together, then libbpf cannot fill the slot (its target is
    not in that load), as a probe of one program alone could not."""
    source = "\n".join(
        [
            "#include <linux/types.h>",
            "#include <linux/bpf.h>",
            "#include <bpf/bpf_helpers.h>",
            f'SEC("{PROBE_SECTION}") int callee(void *ctx) {{ return 0; }}',
            "struct { __uint(type, BPF_MAP_TYPE_PROG_ARRAY); __uint(max_entries, 1);",
            "  __uint(key_size, sizeof(__u32)); __array(values, int (void *)); }",
            '  jmp SEC(".maps") = { .values = { [0] = (void *)&callee } };',
            f'SEC("{PROBE_SECTION}") int refused(void *ctx) {{ return *(volatile int *)0x1000; }}',
            f'SEC("{PROBE_SECTION}") int dispatch(void *ctx) '
            "{ bpf_tail_call(ctx, &jmp, 0); return 0; }",
            'char LICENSE[] SEC("license") = "GPL";',
        ]
    )
    artifact = build(tmp_path, "slots", source)
    proc, result = run_validator(tmp_path, artifact, "--attach-mode", "disabled")
    assert proc.returncode == 2
    progs = programs(result)
    assert progs["callee"]["load_status"] == "pass"
    assert (progs["refused"]["load_status"], progs["refused"]["load_errno_name"]) == (
        "fail", "EACCES",
    )  # fmt: skip
    assert progs["dispatch"]["load_status"] == "skipped"
    assert "prog-array" in progs["dispatch"]["load_skip_reason"]


def test_probes_stop_at_their_verifier_budget(tmp_path: Path) -> None:
    """Past the instruction budget the remaining programs are reported as not probed,
    with the reason; the refused program the verdict names is always probed."""
    artifact = build(tmp_path, "budget", many_programs_source(20, failing_every=5))
    out = tmp_path / "r.json"
    script = (
        "import sys; from bpfcompat.validator import programs, run; "
        "programs.MAX_PROBE_INSNS = 1; sys.exit(run.main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "--artifact", str(artifact), "--out", str(out),
         "--attach-mode", "disabled"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    result = json.loads(out.read_text())
    progs = result["discovery"]["programs"]
    assert [p["load_status"] for p in progs[:5]] == ["pass"] * 4 + ["fail"]
    assert result["discovery"]["probe_loads"] == 1
    for prog in progs[5:]:
        assert prog["load_status"] == "skipped"
        assert "verifier processed 1 instructions" in prog["load_skip_reason"]
    assert any("not probed" in w["message"] for w in result["warnings"])


# --- attach -----------------------------------------------------------------------------------


def test_unsupported_attach_modes(examples: Path, tmp_path: Path) -> None:
    artifact = example(examples, "unsupported-attach")
    for sub in ("best", "required", "manifest"):
        (tmp_path / sub).mkdir()

    proc, result = run_validator(tmp_path / "best", artifact)
    assert proc.returncode == 0
    assert result["status"] == "pass"
    assert result["attach"]["status"] == "warn"
    prog = programs(result)["kprobe_missing"]
    assert prog["load_status"] == "pass"
    assert prog["attach_status"] == "fail"
    assert prog["attach_errno"] > 0 and prog["attach_error"]

    proc, result = run_validator(tmp_path / "required", artifact, "--attach-mode", "required")
    assert proc.returncode == 2
    assert (result["status"], result["attach"]["status"]) == ("fail", "fail")

    manifest = write_json(
        tmp_path / "manifest.json",
        {"programs": [{"name": "kprobe_missing", "attach": {"required": True}},
                      {"name": "not_in_object", "attach": {"required": True}}]},
    )  # fmt: skip
    proc, result = run_validator(tmp_path / "manifest", artifact, "--manifest", str(manifest))
    assert proc.returncode == 2
    assert result["attach"]["status"] == "fail"
    assert result["attach"]["required_failed"] == ["kprobe_missing"]
    assert programs(result)["kprobe_missing"]["attach_required"] is True
    assert any("not_in_object" in w["message"] for w in result["warnings"])


# --- functional tests -------------------------------------------------------------------------

MARKER_COMMAND = (
    "sh -c '/bin/true; timeout 3 grep -m1 bpfcompat-execve-marker /sys/kernel/tracing/trace_pipe'"
)


def test_functional_execve_sees_marker(examples: Path, tracefs: Path, tmp_path: Path) -> None:
    plan = write_json(
        tmp_path / "plan.json",
        {
            "tests": [
                {
                    "name": "execve-marker",
                    "command": MARKER_COMMAND,
                    "timeout_seconds": 5,
                    "expect_exit_code": 0,
                    "expect_stdout_contains": "bpfcompat-execve-marker",
                },
                {"name": "optional", "command": "false", "required": False},
            ]
        },
    )
    proc, result = run_validator(
        tmp_path, example(examples, "functional-execve"), "--functional-plan", str(plan)
    )
    assert proc.returncode == 0, result["functional"]
    assert result["attach"]["status"] == "pass"
    functional = result["functional"]
    assert functional["status"] == "pass"
    marker, optional = functional["tests"]
    assert marker["status"] == "pass", marker
    assert "bpfcompat-execve-marker" in marker["stdout_tail"]
    assert (marker["exit_code"], marker["timed_out"], marker["required"]) == (0, False, True)
    assert (optional["status"], optional["exit_code"], optional["required"]) == ("fail", 1, False)


def test_functional_failures(examples: Path, tracefs: Path, tmp_path: Path) -> None:
    plan = write_json(
        tmp_path / "plan.json",
        {
            "tests": [
                {"name": "wrong-output", "command": "echo hello", "expect_stdout_contains": "bye"},
                {"name": "hang", "command": "sleep 30", "timeout_seconds": 0.5},
                {"name": "stderr", "command": "sh -c 'echo oops >&2; exit 3'",
                 "expect_exit_code": 3, "expect_stderr_contains": "oops"},
            ]
        },
    )  # fmt: skip
    proc, result = run_validator(
        tmp_path, example(examples, "simple-pass"), "--functional-plan", str(plan)
    )
    assert proc.returncode == 2
    assert result["status"] == "fail"
    wrong, hang, stderr = result["functional"]["tests"]
    assert wrong["status"] == "fail" and "bye" in wrong["error"]
    assert hang["status"] == "fail" and hang["timed_out"] is True
    assert hang["timeout_seconds"] == 0.5
    assert stderr["status"] == "pass" and stderr["stderr_tail"] == "oops\n"
    assert result["functional"]["status"] == "fail"


def test_invalid_plan_is_a_failing_required_test(examples: Path, tmp_path: Path) -> None:
    plan = write_json(tmp_path / "plan.json", {"tests": [{"name": "x", "cmd": "true"}]})
    proc, result = run_validator(
        tmp_path, example(examples, "simple-pass"), "--functional-plan", str(plan)
    )
    assert proc.returncode == 2
    (test,) = result["functional"]["tests"]
    assert (test["name"], test["required"], test["status"]) == ("functional-plan", True, "fail")
    assert "unknown key 'cmd'" in test["error"]


def test_functional_tests_skipped_when_load_fails(examples: Path, tmp_path: Path) -> None:
    plan = write_json(tmp_path / "plan.json", {"tests": [{"name": "t", "command": "true"}]})
    proc, result = run_validator(
        tmp_path, example(examples, "runtime-sized-maps"), "--functional-plan", str(plan)
    )
    assert proc.returncode == 2
    assert result["functional"]["status"] == "skipped"
    assert result["functional"]["tests"][0]["status"] == "skipped"


# --- broken artifacts -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["invalid-object", "truncated-elf"])
def test_broken_examples_fail_cleanly(examples: Path, tmp_path: Path, name: str) -> None:
    proc, result = run_validator(tmp_path, example(examples, name))
    assert proc.returncode == 2
    assert set(result) == TOP_LEVEL_KEYS
    assert result["status"] == "fail"
    load = result["load"]
    assert (load["status"], load["stage"], load["errno_name"]) == ("fail", "open", "ENOEXEC")
    assert "not a valid BPF ELF object" in load["error"]
    assert result["artifact"]["elf_valid"] is False
    assert result["attach"]["status"] == "skipped"
    assert Path(result["logs"]["libbpf_log_path"]).is_file()


def test_text_and_cut_objects_fail_cleanly(examples: Path, tmp_path: Path) -> None:
    text = tmp_path / "text.bpf.o"
    text.write_text("this is a text file, not an ELF object\n")
    data = example(examples, "ringbuf").read_bytes()
    cut = tmp_path / "cut.bpf.o"
    cut.write_bytes(data[: len(data) - 100])  # the section header table loses its tail
    for artifact, needle in ((text, "no ELF magic"), (cut, "truncated ELF")):
        sub = tmp_path / artifact.stem
        sub.mkdir()
        proc, result = run_validator(sub, artifact, log_dir=False)
        assert proc.returncode == 2
        assert result["status"] == "fail"
        assert needle in result["load"]["error"]
        assert Path(f"{sub / 'result.json'}.libbpf.log").is_file()


def test_crashing_step_is_recorded_and_exits_1(
    examples: Path, tracefs: Path, tmp_path: Path
) -> None:
    """A bug in one step must not lose the result: errors[] plus exit 1 (inconclusive)."""
    out = tmp_path / "r.json"
    script = (
        "import sys; from bpfcompat.validator import run\n"
        "def boom(self): raise RuntimeError('boom')\n"
        "run.Validator.step_attach = boom\n"
        "sys.exit(run.main(sys.argv[1:]))\n"
    )
    artifact = example(examples, "simple-pass")
    proc = subprocess.run(
        [sys.executable, "-c", script, "--artifact", str(artifact),
         "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    result = json.loads(out.read_text())
    (error,) = result["errors"]
    assert error["step"] == "attach"
    assert "RuntimeError: boom" in error["message"]
    assert result["load"]["status"] == "pass"
    assert "attach" in result["timings"]


def test_globals_reach_the_kernel_only_when_set(
    examples: Path, tracefs: Path, tmp_path: Path
) -> None:
    """rodata-globals' program is off until its loader sets `enabled`: with the manifest's
    globals its functional test sees the marker in trace_pipe, without them it cannot."""
    artifact = example(examples, "rodata-globals")
    plan = write_json(tmp_path / "plan.json", {"tests": [{
        "name": "marker", "timeout_seconds": 10, "expect_stdout_contains": "bpfcompat-global-7-x",
        "command": "sh -c '/bin/true; timeout 3 grep -m1 bpfcompat-global-7-x "
                   f"{tracefs}/trace_pipe'"}]})  # fmt: skip
    (tmp_path / "with").mkdir()
    _, result = run_validator(tmp_path / "with", artifact, "--functional-plan", str(plan),
                                 "--set-global", "enabled=true", "--set-global", "marker=7",
                                 "--set-global", 'tag="x"')  # fmt: skip
    assert result["functional"]["status"] == "pass", result["functional"]
    assert [g["status"] for g in result["globals_set"]] == ["applied"] * 3
    assert {g["name"]: g["offset"] for g in result["globals_set"]} == {
        "enabled": 0,
        "marker": 4,
        "tag": 8,
    }
    (tmp_path / "without").mkdir()
    plan_once = write_json(tmp_path / "plan1.json", {"tests": [{
        **json.loads(plan.read_text())["tests"][0], "retries": 0}]})  # fmt: skip
    _, result = run_validator(tmp_path / "without", artifact, "--functional-plan",
                                 str(plan_once))  # fmt: skip
    assert result["functional"]["status"] == "fail"
