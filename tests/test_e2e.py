"""End-to-end: real Debian kernels booted under QEMU, the real validator and libbpf in
each guest, a real SQLite store. Every cell of the default matrix is checked against
its example's expect.yaml: x86-64 and arm64 (emulated) Debian kernels and a kernel built
here without BTF."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bpfcompat.matrix.config import load_kernel_matrix
from bpfcompat.report.terminal import failure_line
from bpfcompat.report.view import RunView
from conftest import EXAMPLES, ROOT, require_tool, run_cli
from expectations import expected

pytestmark = pytest.mark.vm
MATRIX = load_kernel_matrix(ROOT / "kernels.yaml")


@pytest.fixture(scope="session")
def default_run(built_examples: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The README's main job: every kernel x every example, one boot per kernel."""
    require_tool("qemu-system-x86_64")
    require_tool("qemu-system-aarch64")
    tmp = tmp_path_factory.mktemp("default")
    db = tmp / "store.db"
    proc = run_cli(
        "matrix",
        "run",
        str(built_examples),
        "--db",
        str(db),
        "--out-dir",
        str(tmp / "out"),
        "--json",
        str(tmp / "run.json"),
    )
    assert (tmp / "run.json").is_file(), proc.stderr[-3000:]
    export = json.loads((tmp / "run.json").read_text())
    return {"proc": proc, "db": db, "tmp": tmp, "export": export}


def _cells(export: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["artifact"], c["kernel"]): c for c in export["cells"]}


def test_default_matrix_is_complete(default_run: dict[str, Any]) -> None:
    export = default_run["export"]
    kernel_ids = [k.id for k in MATRIX.kernels]
    examples = sorted(
        p.name for p in EXAMPLES.iterdir() if p.is_dir() and (p / "expect.yaml").is_file()
    )
    assert [k["id"] for k in export["kernels"]] == kernel_ids
    assert sorted(a["name"] for a in export["artifacts"]) == examples
    assert len(export["cells"]) == len(kernel_ids) * len(examples)
    assert export["run"]["status"] == "completed"
    # One boot for every artifact, plus a fresh guest for each artifact whose manifest runs
    # commands in it (they could tamper with whatever runs after them).
    boots = 1 + sum(
        1 for m in EXAMPLES.glob("*/manifest.yaml") if "functional_tests" in m.read_text()
    )
    specs = {k.id: k for k in MATRIX.kernels}
    for kernel in export["kernels"]:
        assert kernel["status"] == "ok", kernel
        assert kernel["boots"] == boots, f"{kernel['id']} booted {kernel['boots']} times"
        build = specs[kernel["id"]].build
        assert kernel["btf"] is not (
            build is not None and "CONFIG_DEBUG_INFO_BTF=n" in build.config
        )
        assert kernel["release"]
    assert (default_run["tmp"] / "out" / "report.html").is_file()
    assert "report.html" in default_run["proc"].stdout


def test_terminal_lists_every_failing_cell_whole(default_run: dict[str, Any]) -> None:
    """After the grid, one line per failing cell with its full code and evidence."""
    view = RunView.from_export(default_run["tmp"] / "run.json")
    printed = default_run["proc"].stdout.splitlines()
    failing = view.failing()
    assert failing
    for cell in failing:
        assert failure_line(view, cell) in printed
        assert f"{cell.verdict.code}: {cell.verdict.evidence}" in failure_line(view, cell)


def test_every_cell_matches_its_expectation(default_run: dict[str, Any]) -> None:
    mismatches = []
    for (artifact, kernel), cell in sorted(_cells(default_run["export"]).items()):
        want = expected(artifact, kernel)
        got = {"status": cell["status"], "code": cell["code"]}
        if got != {"status": want["status"], "code": want.get("code")}:
            mismatches.append(
                f"{artifact} on {kernel}: got {got}, expected {want} (evidence: {cell['evidence']})"
            )
        for group, chosen in (want.get("variants") or {}).items():
            chosen_now = {v["group"]: v["chosen"] for v in cell["variants"]}
            if chosen_now.get(group) != chosen:
                mismatches.append(
                    f"{artifact} on {kernel}: variant {group} chose "
                    f"{chosen_now.get(group)}, expected {chosen}"
                )
        if cell["status"] != "pass":
            assert cell["evidence"], f"{artifact} on {kernel}: failing cell without evidence"
    assert not mismatches, "\n".join(mismatches)


def test_exit_code_reflects_invalid_inputs(default_run: dict[str, Any]) -> None:
    # examples/ deliberately holds a text file and a truncated ELF: each is named on one
    # line, every other cell is still validated and stored, and since their expect.yaml
    # says INVALID_ARTIFACT and every other cell is what its expect.yaml says, exit 0.
    proc = default_run["proc"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "invalid-object.bpf.o: not an ELF file" in proc.stderr
    assert "truncated-elf.bpf.o: truncated ELF" in proc.stderr
    assert default_run["export"]["run"]["exit_code"] == 0
    cells = _cells(default_run["export"])
    for name in ("invalid-object", "truncated-elf"):
        for (artifact, _), cell in cells.items():
            if artifact == name:
                assert (cell["code"], cell["expected"]) == ("INVALID_ARTIFACT", True), cell


def test_an_invalid_input_nobody_expected_exits_1(built_examples: Path, tmp_path: Path) -> None:
    """Without an expectation, an unusable input is bad input: exit 1, named on one line,
    and the valid object beside it is still validated."""
    shutil.copy(built_examples / "truncated-elf" / "truncated-elf.bpf.o", tmp_path / "cut.bpf.o")
    shutil.copy(built_examples / "simple-pass" / "simple-pass.bpf.o", tmp_path / "ok.bpf.o")
    proc = run_cli(
        "matrix", "run", str(tmp_path / "cut.bpf.o"), str(tmp_path / "ok.bpf.o"),
        "--kernel", "debian-12-6.1", "--db", str(tmp_path / "db"), "--out-dir", str(tmp_path),
        "--json", str(tmp_path / "run.json"),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "cut.bpf.o: truncated ELF" in proc.stderr
    got = {c["artifact"]: c for c in json.loads((tmp_path / "run.json").read_text())["cells"]}
    assert got["cut"]["code"] == "INVALID_ARTIFACT" and got["cut"]["expected"] is None
    assert got["ok"]["status"] == "pass"


def test_store_holds_every_cell(default_run: dict[str, Any]) -> None:
    conn = sqlite3.connect(default_run["db"])
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("select artifact, kernel_id, status, code from cell").fetchall()
    stored = {(a, k): (s, c) for a, k, s, c in rows}
    exported = {key: (c["status"], c["code"]) for key, c in _cells(default_run["export"]).items()}
    assert stored == exported
    raw = conn.execute("select count(*) from validatorresult where raw_json is not null").fetchone()
    assert raw[0] == len(rows)


def test_validator_fields_per_example(default_run: dict[str, Any]) -> None:
    cells = _cells(default_run["export"])
    cpus = {k.id: k.cpus for k in MATRIX.kernels}
    for kernel in cpus:
        fixups = {f["name"]: f for f in cells[("runtime-sized-maps", kernel)]["map_fixups"]}
        for name in ("auxiliary_maps", "ringbuf_maps"):
            assert fixups[name]["status"] == "applied", (kernel, fixups)
            assert fixups[name]["requested"] == "cpus"
            assert fixups[name]["applied_entries"] == cpus[kernel], (kernel, fixups[name])
        notes = " ".join(cells[("runtime-sized-maps", kernel)]["notes"])
        assert f"applied {cpus[kernel]}" in notes
    old = cells[("program-variants", "debian-11-5.10")]["variants"]
    new = cells[("program-variants", "debian-12-6.1")]["variants"]
    assert old == [{"group": "loop_x", "chosen": "loop_old_x", "disabled": ["loop_x"]}]
    assert new == [{"group": "loop_x", "chosen": "loop_x", "disabled": ["loop_old_x"]}]
    assert cells[("functional-execve", "debian-12-6.1")]["status"] == "pass"
    attach_warn = cells[("unsupported-attach", "debian-13-6.12")]
    assert attach_warn["status"] == "pass" and any(
        "attach warning" in n for n in attach_warn["notes"]
    )


def test_each_guest_runs_its_kernels_architecture(default_run: dict[str, Any]) -> None:
    """arm64 kernels boot arm64 guests: the validator in each reports uname -m."""
    conn = sqlite3.connect(default_run["db"])
    rows = conn.execute(
        "select c.kernel_id, v.raw_json from cell c join validatorresult v on v.id = c.result_id "
        "where c.artifact = 'simple-pass'"
    ).fetchall()
    arches = {k.id: k.arch for k in MATRIX.kernels}
    assert {kid for kid, _ in rows} == set(arches)
    for kernel_id, raw in rows:
        host = json.loads(raw)["host"]
        assert host["machine"] == arches[kernel_id], (kernel_id, host)
    releases = {k["id"]: k["release"] for k in default_run["export"]["kernels"]}
    assert releases["debian-12-6.1-arm64"].endswith("-cloud-arm64")


def test_raw_results_carry_contract_fields(default_run: dict[str, Any]) -> None:
    conn = sqlite3.connect(default_run["db"])
    row = conn.execute(
        "select v.raw_json from cell c join validatorresult v on v.id = c.result_id "
        "where c.artifact = 'functional-execve' and c.kernel_id = 'debian-12-6.1'"
    ).fetchone()
    result = json.loads(row[0])
    assert result["schema_version"] == "validator.v0.4"
    for key in (
        "status",
        "host",
        "input",
        "btf",
        "capabilities",
        "discovery",
        "load",
        "attach",
        "functional",
        "logs",
        "map_fixups",
        "program_variants",
    ):
        assert key in result, key
    test = result["functional"]["tests"][0]
    assert test["status"] == "pass" and "bpfcompat-execve-marker" in test["stdout_tail"]
    assert result["btf"]["kernel_btf_available"] is True
    assert result["host"]["release"].startswith("6.1.")


def test_rerun_is_served_from_cache(default_run: dict[str, Any]) -> None:
    tmp = default_run["tmp"]
    proc = run_cli(
        "matrix",
        "run",
        str(EXAMPLES),
        "--db",
        str(default_run["db"]),
        "--out-dir",
        str(tmp / "out2"),
        "--json",
        str(tmp / "run2.json"),
    )
    export = json.loads((tmp / "run2.json").read_text())
    # Final verdicts come from the cache; a failed functional test is never final (it may
    # be flaky) and runs again, alone, on its own boot.
    rerun = {(c["artifact"], c["kernel"]) for c in export["cells"] if not c["cached"]}
    not_final = {
        key
        for key, c in _cells(default_run["export"]).items()
        if c["status"] == "error" or c["code"] in ("FUNCTIONAL_TEST_FAILURE", "KERNEL_CRASH")
    }
    assert rerun == not_final, proc.stderr[-2000:]
    # An artifact with functional tests runs alone, in a guest of its own.
    alone = {d.name for d in EXAMPLES.iterdir() if "functional_tests" in _manifest_text(d)}
    for kernel in export["kernels"]:
        mine = [k[0] for k in rerun if k[1] == kernel["id"]]
        boots = sum(1 for a in mine if a in alone) + any(a not in alone for a in mine)
        assert kernel["boots"] == boots, (kernel, mine)
        ran = bool(mine)
        assert kernel["status"] == ("ok" if ran else "cached"), kernel
    before = {k: (c["status"], c["code"]) for k, c in _cells(default_run["export"]).items()}
    after = {k: (c["status"], c["code"]) for k, c in _cells(export).items()}
    assert before == after


def test_two_examples_on_one_kernel_exit_zero(built_examples: Path, tmp_path: Path) -> None:
    """The smallest real run: two examples on one kernel, on a fresh store."""
    out = tmp_path / "out.json"
    proc = run_cli(
        "matrix",
        "run",
        str(built_examples / "simple-pass"),
        str(built_examples / "ringbuf"),
        "--kernel",
        "debian-12-6.1",
        "--json",
        str(out),
        "--db",
        str(tmp_path / "db"),
        "--out-dir",
        str(tmp_path / "o"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    export = json.loads(out.read_text())
    assert [(c["artifact"], c["status"]) for c in export["cells"]] == [
        ("simple-pass", "pass"),
        ("ringbuf", "pass"),
    ]
    assert export["kernels"][0]["boot_seconds"] > 0


def test_guest_panic_costs_one_cell(built_examples: Path, tmp_path: Path) -> None:
    """A functional test that panics the guest: the artifact runs again alone on a fresh
    boot, panics again, so its cell is KERNEL_CRASH with the console line as evidence;
    the others (in a boot of their own) pass normally."""
    src = built_examples / "simple-pass" / "simple-pass.bpf.o"
    for name in ("a-first", "b-panic", "c-after"):
        (tmp_path / name).mkdir()
        shutil.copy(src, tmp_path / name / f"{name}.bpf.o")
    (tmp_path / "b-panic" / "manifest.yaml").write_text(
        "functional_tests:\n  - name: panic\n"
        "    command: \"sh -c 'echo c > /proc/sysrq-trigger'\"\n    timeout: 20s\n"
    )
    out = tmp_path / "out.json"
    proc = run_cli(
        "matrix",
        "run",
        str(tmp_path / "a-first"),
        str(tmp_path / "b-panic"),
        str(tmp_path / "c-after"),
        "--kernel",
        "debian-12-6.1",
        "--json",
        str(out),
        "--db",
        str(tmp_path / "db"),
        "--out-dir",
        str(tmp_path / "o"),
    )
    export = json.loads(out.read_text())
    verdicts = {c["artifact"]: (c["status"], c["code"]) for c in export["cells"]}
    assert verdicts == {
        "a-first": ("pass", None),
        "b-panic": ("fail", "KERNEL_CRASH"),
        "c-after": ("pass", None),
    }, proc.stderr[-2000:]
    crash = next(c for c in export["cells"] if c["artifact"] == "b-panic")
    assert "sysrq" in crash["evidence"].lower() or "panic" in crash["evidence"].lower()
    assert export["kernels"][0]["boots"] == 3  # the others; b-panic; b-panic again, alone
    assert proc.returncode == 2


def test_cells_explain_themselves(default_run: dict[str, Any]) -> None:
    """A live run gives the same explanations as the recorded one: what a missing feature
    needs, and where the verifier stopped in the source."""
    cells = _cells(default_run["export"])
    assert cells[("bloom-filter-map", "debian-11-5.10")]["needs"] == (
        "needs >= 5.16 for map type bloom_filter (this kernel: 5.10)"
    )
    assert cells[("printk-many-args", "debian-11-5.10")]["needs"] == (
        "needs >= 5.16 for helper bpf_trace_vprintk (this kernel: 5.10)"
    )
    for kernel in MATRIX.kernels:
        pin = cells[("verifier-oob", kernel.id)]["pinpoint"]
        assert pin and (pin["insn"], pin["source"]) == (8, "return *next != 0;"), kernel.id
    # where the whole object fails, each program's own load probe
    programs = cells[("printk-many-args", "debian-11-5.10")]["programs"]
    assert {p["name"]: p["load_status"] for p in programs} == {
        "print_four": "fail",
        "print_three": "pass",
    }


def _manifest_text(example: Path) -> str:
    manifest = example / "manifest.yaml"
    return manifest.read_text() if manifest.is_file() else ""
