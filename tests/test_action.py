"""The GitHub Action (action.yml, a composite action over scripts/action/): every input
used and documented, the cache key against its documented formula, the fail-on mapping,
and the run step run end to end with the environment GitHub gives it, on a real kernel."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpfcompat import __version__
from bpfcompat.matrix.config import default_kernels_file, load_kernel_matrix
from conftest import ROOT, require_tool
from expectations import expected

ACTION = yaml.safe_load((ROOT / "action.yml").read_text())
ACTION_TEXT = (ROOT / "action.yml").read_text()
SCRIPTS = ROOT / "scripts" / "action"
CI_DOC = (ROOT / "docs" / "ci.md").read_text()
STEPS: list[dict[str, Any]] = ACTION["runs"]["steps"]
KERNEL = "debian-12-6.1"
OBJECTS = ("simple-pass", "verifier-oob")


def _script(step: dict[str, Any]) -> Path | None:
    match = re.fullmatch(
        r'bash "\$GITHUB_ACTION_PATH/(scripts/action/[\w.-]+)"', step.get("run", "")
    )
    return ROOT / match.group(1) if match else None


def _parse_outputs(path: Path) -> dict[str, str]:
    """A GITHUB_OUTPUT file as GitHub reads it: name=value and name<<DELIM ... DELIM."""
    out: dict[str, str] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            end = lines.index(delim, i + 1)
            out[name] = "\n".join(lines[i + 1 : end])
            i = end + 1
        else:
            name, _, value = line.partition("=")
            out[name] = value
            i += 1
    return out


# --- action.yml ------------------------------------------------------------------------------


def test_action_is_a_thin_composite_over_tested_scripts() -> None:
    assert ACTION["runs"]["using"] == "composite"
    for step in STEPS:
        if "run" in step:
            script = _script(step)
            assert script is not None, f"keep shell logic in scripts/action/: {step['run']!r}"
            assert script.is_file(), script
            assert step["shell"] == "bash"
        else:
            action, _, version = step["uses"].partition("@")
            assert action in {
                "actions/setup-python",
                "actions/cache/restore",
                "actions/cache/save",
                "actions/upload-artifact",
            }, action
            assert re.fullmatch(r"v\d+", version), step["uses"]
    ids = [s["id"] for s in STEPS if "id" in s]
    assert len(ids) == len(set(ids))
    for step_id, _ in re.findall(r"steps\.([\w-]+)\.outputs\.([\w-]+)", ACTION_TEXT):
        assert step_id in ids, step_id


def test_every_input_is_used_and_documented() -> None:
    inputs: dict[str, dict[str, Any]] = ACTION["inputs"]
    used = set(re.findall(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}", ACTION_TEXT))
    assert used == set(inputs), used ^ set(inputs)
    for name, spec in inputs.items():
        assert spec.get("description", "").strip(), name
        assert "default" in spec or spec.get("required"), name
        assert re.search(rf"^\| `{re.escape(name)}` \|", CI_DOC, re.M), f"{name} not in docs/ci.md"
    assert set(ACTION["outputs"]) <= set(re.findall(r"^\| `([\w-]+)` \|", CI_DOC, re.M))
    for name in (
        "artifacts",
        "kernels-file",
        "kernels",
        "manifest",
        "attach-mode",
        "out-dir",
        "base",
        "shard",
        "fail-on",
        "labels",
    ):
        assert name in inputs, name


def test_every_variable_a_script_reads_is_given_by_its_step() -> None:
    lib = (SCRIPTS / "lib.sh").read_text()
    for step in STEPS:
        script = _script(step)
        if script is None:
            continue
        wanted = set(
            re.findall(
                r"\b(INPUT_[A-Z_]+|STEP_EXIT_CODE|TOOL_EXIT_CODE|STATUS"
                r"|FAIL_ON|ARTIFACT_NAME)\b",
                script.read_text(),
            )
        )
        wanted -= {"FAIL_ON_VALUES"}
        given = set(step.get("env", {}))
        assert wanted <= given, (script.name, wanted - given)
        for name in given:
            if name.startswith("INPUT_") or name in {"STEP_EXIT_CODE", "TOOL_EXIT_CODE"}:
                assert name in script.read_text() + lib, (script.name, name)


def test_outputs_named_in_action_yml_are_written_by_their_scripts() -> None:
    by_id = {s["id"]: s for s in STEPS if "id" in s}
    for step_id, name in set(re.findall(r"steps\.([\w-]+)\.outputs\.([\w-]+)", ACTION_TEXT)):
        step = by_id[step_id]
        script = _script(step)
        if script is None:
            assert (step_id, name) in {("restore", "cache-hit")}, (step_id, name)
            continue
        texts = script.read_text()
        if step_id == "install":
            texts += (SCRIPTS / "cache_key.py").read_text()
        assert re.search(rf'(output |_write_output\("){re.escape(name)}\b', texts) or (
            step_id == "run" and name in {"run-json", "html", "junit", "markdown"}
        ), (step_id, name)


def test_scripts_pass_shellcheck() -> None:
    shellcheck = require_tool("shellcheck")
    scripts = [*sorted(SCRIPTS.glob("*.sh")), ROOT / "scripts" / "install.sh"]
    proc = subprocess.run(
        [shellcheck, "-x", "-P", str(SCRIPTS), *map(str, scripts)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout


def _doc_yaml_blocks() -> list[Any]:
    blocks = re.findall(r"^```yaml\n(.*?)^```", CI_DOC, re.M | re.S)
    assert len(blocks) >= 5
    return [yaml.safe_load(block) for block in blocks]


def _uses_of_the_action(node: Any) -> list[dict[str, Any]]:
    """Every step of a workflow in the docs that uses this action."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if str(node.get("uses", "")).startswith("OWNER/bpfcompat@"):
            found.append(node)
        for value in node.values():
            found += _uses_of_the_action(value)
    elif isinstance(node, list):
        for value in node:
            found += _uses_of_the_action(value)
    return found


def test_documented_workflows_parse_and_use_real_inputs() -> None:
    blocks = _doc_yaml_blocks()
    steps = [s for block in blocks for s in _uses_of_the_action(block)]
    assert len(steps) >= 4
    for step in steps:
        given = set(step.get("with", {}))
        assert "artifacts" in given
        assert given <= set(ACTION["inputs"]), given - set(ACTION["inputs"])
        if "fail-on" in given:
            assert step["with"]["fail-on"] in {"never", "error", "regression", "fail"}
    gitlab = next(b for b in blocks if isinstance(b, dict) and "bpfcompat" in b)
    job = gitlab["bpfcompat"]
    assert job["artifacts"]["reports"]["junit"] == "bpfcompat-out/junit.xml"
    assert job["cache"]["key"]["prefix"] == f"bpfcompat-v1-{__version__}-trixie"
    assert any("scripts/install.sh" in line for line in job["before_script"])


# --- the cache key ---------------------------------------------------------------------------


def _documented_formula() -> str:
    match = re.search(r"`(bpfcompat-v1-<[^`]+>)`", CI_DOC)
    assert match, "docs/ci.md must state the cache key formula in backticks"
    return match.group(1)


def _cache_key(
    tmp_path: Path, kernels_file: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    out = tmp_path / "github_output"
    out.unlink(missing_ok=True)
    env = dict(
        os.environ, GITHUB_OUTPUT=str(out), RUNNER_OS="Linux", XDG_CACHE_HOME=str(tmp_path / "xdg")
    )
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "cache_key.py"), kernels_file],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    return proc, _parse_outputs(out)


def test_cache_key_is_the_documented_formula(tmp_path: Path) -> None:
    formula = _documented_formula()
    assert formula == (
        "bpfcompat-v1-<runner os>-<arch>-<tool version>-<guest suite>-<sha256 of the kernels file>"
    )
    for given, path in (("", default_kernels_file()), ("mine.yaml", tmp_path / "mine.yaml")):
        if given:
            path.write_text(
                "guest_suite: bookworm\nkernels:\n"
                "  - {id: k1, suite: bookworm, package: linux-image-x}\n"
            )
        proc, outputs = _cache_key(tmp_path, given)
        assert proc.returncode == 0, proc.stderr
        want = (
            formula.replace("<runner os>", "Linux")
            .replace("<arch>", platform.machine())
            .replace("<tool version>", __version__)
            .replace("<guest suite>", load_kernel_matrix(path).guest_suite)
            .replace("<sha256 of the kernels file>", hashlib.sha256(path.read_bytes()).hexdigest())
        )
        assert outputs["cache-key"] == want
        restore = outputs["cache-restore-keys"].splitlines()
        assert restore[0] == want.rsplit("-", 1)[0] + "-"
        assert all(want.startswith(r) for r in restore)
        assert restore[-1] == f"bpfcompat-v1-Linux-{platform.machine()}-"
        cache = tmp_path / "xdg" / "bpfcompat"
        assert outputs["cache-path"].splitlines() == [str(cache / "kernels"), str(cache / "images")]
    # one byte more in the kernels file, another key
    first = outputs["cache-key"]
    with (tmp_path / "mine.yaml").open("a") as fh:
        fh.write("\n")
    assert _cache_key(tmp_path, "mine.yaml")[1]["cache-key"] != first


def test_cache_key_of_a_bad_kernels_file_is_one_line(tmp_path: Path) -> None:
    proc, outputs = _cache_key(tmp_path, "missing.yaml")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "bpfcompat action: kernels-file: missing.yaml: file not found"
    assert outputs == {}


# --- fail-on ---------------------------------------------------------------------------------


def _bash_step_exit_code(fail_on: str, tool: int, compare: str) -> str:
    proc = subprocess.run(
        [
            "bash",
            "-c",
            f'. "{SCRIPTS}/lib.sh"; step_exit_code "$@"',
            "-",
            fail_on,
            str(tool),
            compare,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else f"refused {proc.returncode}"


def _ladder(fail_on: str, tool: int, compare: str) -> int:
    """docs/ci.md's rule: each value fails on its outcome and every more serious one."""
    errored = tool not in (0, 2) or compare not in ("", "0", "2")
    regressed = compare == "2"
    failed = tool == 2 or regressed
    outcome = 1 if errored else 2 if {"regression": regressed, "fail": failed}.get(fail_on) else 0
    return 0 if fail_on == "never" or (fail_on == "error" and not errored) else outcome


@pytest.mark.parametrize("fail_on", ["never", "error", "regression", "fail"])
def test_fail_on_maps_the_tools_exit_code(fail_on: str) -> None:
    for tool in (0, 1, 2, 130):
        for compare in ("", "0", "1", "2"):
            got = _bash_step_exit_code(fail_on, tool, compare)
            assert got == str(_ladder(fail_on, tool, compare)), (fail_on, tool, compare, got)
    assert f"| `{fail_on}` |" in CI_DOC


def test_fail_on_spot_checks() -> None:
    assert _bash_step_exit_code("fail", 2, "") == "2"  # the tool's own code
    assert _bash_step_exit_code("error", 2, "") == "0"  # compatibility failures reported only
    assert _bash_step_exit_code("error", 1, "") == "1"
    assert _bash_step_exit_code("regression", 2, "0") == "0"  # failed before too
    assert _bash_step_exit_code("regression", 2, "2") == "2"
    assert _bash_step_exit_code("never", 1, "1") == "0"
    assert _bash_step_exit_code("sometimes", 0, "") == "refused 1"


# --- the run step ---------------------------------------------------------------------------


def _github_env(tmp: Path, **inputs: str) -> dict[str, str]:
    """What a runner gives the run step: action.yml's INPUT_* variables and GitHub's files."""
    workspace = tmp / "workspace"
    runner_temp = tmp / "runner-temp"
    workspace.mkdir(exist_ok=True)
    runner_temp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INPUT_", "GITHUB_"))}
    env.update(
        CI="true",
        GITHUB_ACTIONS="true",
        GITHUB_WORKSPACE=str(workspace),
        GITHUB_OUTPUT=str(tmp / "github_output"),
        GITHUB_STEP_SUMMARY=str(tmp / "summary.md"),
        RUNNER_TEMP=str(runner_temp),
        RUNNER_OS="Linux",
        GITHUB_SHA="0123456789abcdef",
        GITHUB_RUN_ID="4242",
        GITHUB_RUN_ATTEMPT="1",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    run_env = next(s["env"] for s in STEPS if s.get("id") == "run")
    for name in run_env:
        if name.startswith("INPUT_"):
            key = name.removeprefix("INPUT_").lower().replace("_", "-")
            default = ACTION["inputs"][key].get("default", "")
            env[name] = inputs.get(key, default)
    return env


def _run_step(tmp: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    (tmp / "github_output").unlink(missing_ok=True)
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "run.sh")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        check=False,
    )
    return proc, time.monotonic() - started


def _gate(env: dict[str, str], outputs: dict[str, str]) -> subprocess.CompletedProcess[str]:
    gate_env = next(s["env"] for s in STEPS if _script(s) == SCRIPTS / "gate.sh")
    values = {
        "STEP_EXIT_CODE": outputs.get("step-exit-code", ""),
        "TOOL_EXIT_CODE": outputs.get("exit-code", ""),
        "STATUS": outputs.get("status", ""),
        "FAIL_ON": env["INPUT_FAIL_ON"],
        "ARTIFACT_NAME": outputs.get("artifact-name", ""),
    }
    assert set(values) == set(gate_env)
    return subprocess.run(
        ["bash", str(SCRIPTS / "gate.sh")],
        capture_output=True,
        text=True,
        env={**env, **values},
        check=False,
    )


@pytest.mark.vm
def test_run_step_end_to_end(built_examples: Path, tmp_path: Path) -> None:
    """The example matrix on a real kernel: outputs, the job summary and the exit code."""
    require_tool("qemu-system-x86_64")
    env = _github_env(
        tmp_path,
        artifacts=" ".join(f"bpf/{n}.bpf.o" for n in OBJECTS),
        kernels=KERNEL,
        labels="team=ebpf",
    )
    # The objects alone: the examples' expect.yaml would turn the expected failure into an
    # expected cell, and this test wants a failing run to map.
    (tmp_path / "workspace" / "bpf").mkdir(parents=True)
    for name in OBJECTS:
        shutil.copy(built_examples / name / f"{name}.bpf.o", tmp_path / "workspace" / "bpf")
    (tmp_path / "summary.md").write_text("output of an earlier step\n")

    proc, took = _run_step(tmp_path, env)
    print(f"run step (warm cache): {took:.1f} s")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    outputs = _parse_outputs(tmp_path / "github_output")
    want = {n: expected(n, KERNEL) for n in OBJECTS}
    tool = 2 if any(w["status"] == "fail" for w in want.values()) else 0
    assert outputs["exit-code"] == str(tool)
    assert outputs["status"] == {0: "pass", 2: "fail"}[tool]
    assert outputs["step-exit-code"] == str(tool)  # fail-on fail: the tool's code
    assert outputs["compare-exit-code"] == ""
    assert outputs["artifact-name"] == "bpfcompat-report"
    out = tmp_path / "workspace" / "bpfcompat-out"
    files = {
        k: tmp_path / "workspace" / v
        for k, v in outputs.items()
        if k in {"run-json", "html", "junit", "markdown"}
    }
    assert files == {
        "run-json": out / "run.json",
        "html": out / "report.html",
        "junit": out / "junit.xml",
        "markdown": out / "summary.md",
    }
    assert outputs["upload-paths"].splitlines() == [
        f"bpfcompat-out/{f}" for f in ("run.json", "report.html", "junit.xml", "summary.md")
    ]
    export = json.loads(files["run-json"].read_text())
    cells = {c["artifact"]: (c["kernel"], c["status"], c["code"]) for c in export["cells"]}
    assert cells == {n: (KERNEL, w["status"], w["code"]) for n, w in want.items()}
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("output of an earlier step\n")  # appended, not overwritten
    assert files["markdown"].read_text() in summary
    assert "VERIFIER_REJECTION" in summary
    # workflow commands are off while bpfcompat prints
    stdout = proc.stdout.splitlines()
    token = stdout[0].removeprefix("::stop-commands::")
    assert len(token) == 32 and f"::{token}::" in stdout
    runs = subprocess.run(
        ["bpfcompat", "runs", "list", "--db", str(tmp_path / "runner-temp/bpfcompat/bpfcompat.db")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "team=ebpf git=0123456789abcdef github_run=4242.1" in runs

    gate = _gate(env, outputs)
    assert gate.returncode == tool
    if tool:
        assert gate.stdout.startswith("::error title=bpfcompat::matrix run exit code 2 (fail)")

    # the same matrix with fail-on error: the failing cell is reported, the step passes
    env["INPUT_FAIL_ON"] = "error"
    proc, took_cached = _run_step(tmp_path, env)
    print(f"run step again (stored results): {took_cached:.1f} s")
    outputs = _parse_outputs(tmp_path / "github_output")
    assert (outputs["exit-code"], outputs["step-exit-code"]) == (str(tool), "0")
    assert _gate(env, outputs).returncode == 0
    assert (tmp_path / "summary.md").read_text().count("## bpfcompat run") == 2

    # against the first run's export as base: nothing regressed, so fail-on regression passes
    shutil.copy(files["run-json"], tmp_path / "workspace" / "base.json")
    env.update(INPUT_BASE="base.json", INPUT_FAIL_ON="regression")
    proc, _ = _run_step(tmp_path, env)
    outputs = _parse_outputs(tmp_path / "github_output")
    assert outputs["compare-exit-code"] == "0", proc.stdout + proc.stderr[-2000:]
    assert (outputs["exit-code"], outputs["step-exit-code"]) == (str(tool), "0")
    assert "comparison with the base run failed" not in (tmp_path / "summary.md").read_text()


@pytest.mark.vm
def test_sharded_run_steps_merge_into_the_whole_run(built_examples: Path, tmp_path: Path) -> None:
    """docs/ci.md's sharded workflow: two shard jobs (run step with shard I/2, fail-on never,
    each with its own runner), then the merge job's command over their exports."""
    require_tool("qemu-system-x86_64")
    exports = []
    for index in (1, 2):
        job = tmp_path / f"job{index}"
        job.mkdir()
        env = _github_env(job, artifacts="bpf", kernels=KERNEL, shard=f"{index}/2",
                          **{"fail-on": "never"})  # fmt: skip
        (job / "workspace" / "bpf").mkdir()
        for name in OBJECTS:
            shutil.copy(built_examples / name / f"{name}.bpf.o", job / "workspace" / "bpf")
        proc, _ = _run_step(job, env)
        outputs = _parse_outputs(job / "github_output")
        assert outputs["step-exit-code"] == "0", proc.stdout + proc.stderr[-2000:]
        assert outputs["artifact-name"] == f"bpfcompat-report-shard-{index}-of-2"
        assert outputs["exit-code"] in {"0", "2"}, proc.stderr[-2000:]
        exports.append(job / "workspace" / outputs["run-json"])
    cells = [c for e in exports for c in json.loads(e.read_text())["cells"]]
    assert sorted(c["artifact"] for c in cells) == sorted(OBJECTS)  # each cell in one shard
    merged = tmp_path / "merged"
    proc = subprocess.run(
        ["bpfcompat", "merge", *map(str, exports), "--db", str(tmp_path / "merge.db"),
         "--json", str(merged / "run.json"), "--html", str(merged / "report.html"),
         "--markdown", str(merged / "summary.md"), "--junit", str(merged / "junit.xml")],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    want = {n: expected(n, KERNEL) for n in OBJECTS}
    assert proc.returncode == (2 if any(w["status"] == "fail" for w in want.values()) else 0)
    export = json.loads((merged / "run.json").read_text())
    assert {c["artifact"]: (c["status"], c["code"]) for c in export["cells"]} == {
        n: (w["status"], w["code"]) for n, w in want.items()
    }
    for name in ("report.html", "summary.md", "junit.xml"):
        assert (merged / name).stat().st_size > 0


def test_run_step_tool_error_goes_to_the_summary(tmp_path: Path) -> None:
    """A missing artifact: bpfcompat exits 1 before booting anything; the summary has its
    one-line error, and fail-on never keeps the step green."""
    env = _github_env(tmp_path, artifacts="no/such.bpf.o", kernels=KERNEL)
    proc, _ = _run_step(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    outputs = _parse_outputs(tmp_path / "github_output")
    assert (outputs["exit-code"], outputs["status"], outputs["step-exit-code"]) == (
        "1",
        "error",
        "1",
    )
    assert outputs["upload-paths"] == ""
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("### bpfcompat wrote no report (exit code 1)\n")
    assert re.search(r"^    bpfcompat: error: .*no/such\.bpf\.o", summary, re.M), summary
    assert _gate(env, outputs).returncode == 1
    env["INPUT_FAIL_ON"] = "never"
    _run_step(tmp_path, env)
    outputs = _parse_outputs(tmp_path / "github_output")
    assert (outputs["exit-code"], outputs["step-exit-code"]) == ("1", "0")
    assert _gate(env, outputs).returncode == 0


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            {"artifacts": "x.bpf.o", "fail-on": "sometimes"},
            "fail-on: 'sometimes' is not one of: never error regression fail",
        ),
        ({"artifacts": "x.bpf.o", "fail-on": "regression"}, "fail-on: regression needs the base"),
        ({"artifacts": "  "}, "artifacts: no artifact given"),
        (
            {"artifacts": "x.bpf.o", "base": "b.json", "cost-gate": "lots"},
            "cost-gate: 'lots' is not a percentage",
        ),
        ({"artifacts": "x.bpf.o", "cost-gate": "20"}, "cost-gate: needs the base input"),
    ],
)
def test_run_step_refuses_bad_inputs(tmp_path: Path, inputs: dict[str, str], message: str) -> None:
    env = _github_env(tmp_path, **inputs)
    env["BPFCOMPAT"] = str(tmp_path / "must-not-run")
    proc, _ = _run_step(tmp_path, env)
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"::error title=bpfcompat::{message}"), proc.stdout
    outputs = _parse_outputs(tmp_path / "github_output")
    assert (outputs["status"], outputs["step-exit-code"]) == ("error", "1")
    assert message in (tmp_path / "summary.md").read_text()
    assert _gate(env, outputs).returncode == 1


STUB = """#!/usr/bin/env bash
# Stands in for bpfcompat to check the arguments the run step passes.
printf '%s\\n' "$*" >>"$STUB_LOG"
case "$1" in
  matrix)
    echo '::error::forged by an artifact name'
    while (($#)); do
      case "$1" in
        --json) echo '{}' >"$2" ;;
        --markdown) echo '## stub summary' >"$2" ;;
      esac
      shift
    done
    exit "${STUB_RUN_EXIT:-0}" ;;
  compare) exit "${STUB_COMPARE_EXIT:-0}" ;;
esac
"""


def test_run_step_passes_every_input_through(tmp_path: Path) -> None:
    """Orchestration only (a stub bpfcompat): --shard, --base to report and compare, kernels
    split on commas, labels one per line with spaces in a value, fail-on regression."""
    stub = tmp_path / "bpfcompat-stub"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = _github_env(
        tmp_path,
        artifacts="a.bpf.o\ndir with space\n",
        kernels="k1,k2 k3",
        **{
            "kernels-file": "matrix.yaml",
            "manifest": "m.yaml",
            "attach-mode": "required",
            "out-dir": "reports",
            "base": "base/run.json",
            "shard": "2/4",
            "fail-on": "regression",
            "labels": "team=ebpf\nnote=two words\ngit=cafe",
        },
    )
    env.update(
        BPFCOMPAT=str(stub),
        STUB_LOG=str(tmp_path / "argv"),
        STUB_RUN_EXIT="2",
        STUB_COMPARE_EXIT="2",
    )
    proc, _ = _run_step(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "argv").read_text().splitlines()
    db = tmp_path / "runner-temp" / "bpfcompat" / "bpfcompat.db"
    assert calls == [
        f"matrix run a.bpf.o dir with space --db {db} --out-dir reports "
        "--json reports/run.json --html reports/report.html --markdown reports/summary.md "
        "--junit reports/junit.xml --attach-mode required --kernels matrix.yaml "
        "--kernel k1 --kernel k2 --kernel k3 --manifest m.yaml --shard 2/4 "
        "--label team=ebpf --label note=two words --label git=cafe --label github_run=4242.1",
        f"report --db {db} --base base/run.json --html reports/report.html "
        "--markdown reports/summary.md",
        f"compare --db {db} --base base/run.json",
    ]
    outputs = _parse_outputs(tmp_path / "github_output")
    assert outputs["artifact-name"] == "bpfcompat-report-shard-2-of-4"
    assert (outputs["exit-code"], outputs["compare-exit-code"]) == ("2", "2")
    assert outputs["step-exit-code"] == "2"
    # a forged workflow command is printed only while commands are stopped
    lines = proc.stdout.splitlines()
    token = lines[0].removeprefix("::stop-commands::")
    forged = lines.index("::error::forged by an artifact name")
    assert 0 < forged < lines.index(f"::{token}::")
    # no regression against the base: fail-on regression passes though cells fail
    env["STUB_COMPARE_EXIT"] = "0"
    _run_step(tmp_path, env)
    assert _parse_outputs(tmp_path / "github_output")["step-exit-code"] == "0"
    # the comparison itself failing (an unreadable base) is an error
    env["STUB_COMPARE_EXIT"] = "1"
    _run_step(tmp_path, env)
    assert _parse_outputs(tmp_path / "github_output")["step-exit-code"] == "1"
    assert "comparison with the base run failed" in (tmp_path / "summary.md").read_text()
    # a cost gate goes to compare
    env.update(INPUT_COST_GATE="12.5", STUB_COMPARE_EXIT="2")
    (tmp_path / "argv").unlink()
    _run_step(tmp_path, env)
    calls = (tmp_path / "argv").read_text().splitlines()
    assert (
        calls[-1] == f"compare --db {db} --base base/run.json --fail-on-cost --cost-threshold 12.5"
    )
    assert _parse_outputs(tmp_path / "github_output")["step-exit-code"] == "2"


# --- the other steps -----------------------------------------------------------------------


def test_python_step_accepts_this_python(tmp_path: Path) -> None:
    env = _github_env(tmp_path)
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "python.sh")], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    python3 = shutil.which("python3", path=env["PATH"])
    assert python3
    version = subprocess.run(
        [python3, "-c", "import sys; print(sys.version_info >= (3, 11))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    want = "true" if version == "True" else "false"
    assert _parse_outputs(tmp_path / "github_output") == {"python-ok": want}


def test_prefetch_step_on_a_warm_cache(tmp_path: Path) -> None:
    """Kernels and image already cached (scripts/setup.sh): verified, nothing downloaded,
    and doctor finds everything."""
    env = _github_env(tmp_path)
    env["INPUT_KERNELS"] = KERNEL
    env["INPUT_KERNELS_FILE"] = ""
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "prefetch.sh")], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(rf"^{KERNEL}: .* in \d+\.\d s -> ", proc.stdout, re.M), proc.stdout
    assert re.search(r"^guest image trixie [0-9a-f]{16}: ", proc.stdout, re.M), proc.stdout
    assert proc.stdout.splitlines()[-1] == "everything a run needs is here"
    assert "::warning" not in proc.stdout
