"""Reports from real recorded validator results: JSON export, HTML, Markdown, JUnit,
run comparison and the `report` / `compare` / `runs list` commands. No VM, no browser."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from junitparser import Error, Failure, JUnitXml, Skipped

from bpfcompat.matrix.store import Store
from bpfcompat.report import write_reports
from bpfcompat.report.compare import CHANGED, FIXED, NEW_FAILURE, ONLY_BASE, compare_runs
from bpfcompat.report.html import build_view, render_html
from bpfcompat.report.junit import render_junit
from bpfcompat.report.markdown import md_cell, render_markdown
from bpfcompat.report.view import SCHEMA, RunView
from conftest import run_cli
from report_fixtures import (
    ALL_KERNELS,
    OPTIONAL_KERNELS,
    REQUIRED_KERNELS,
    add_recorded_run,
    hostile_result,
    recorded,
    set_cell,
)

ARTIFACTS = sorted(c["artifact"] for c in recorded(REQUIRED_KERNELS[0])["cells"])
HOSTILE_NAME = "a \"quoted\" 'name' <script>window.__pwned=5</script> ü"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "bpfcompat.db")


@pytest.fixture
def run_id(store: Store) -> int:
    return add_recorded_run(store)


def _view(store: Store, run_id: int, *, results: bool = False) -> RunView:
    return RunView.from_store(store, run_id, with_results=results)


def json_export(store: Store, run_id: int) -> dict[str, Any]:
    """The JSON export, as `report --json` writes it."""
    return _view(store, run_id).export()


def _cells(export: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["artifact"], c["kernel"]): c for c in export["cells"]}


# --- the JSON export --------------------------------------------------------------------------


def test_export_schema_keys(store: Store, run_id: int) -> None:
    export = json_export(store, run_id)
    assert export["schema"] == SCHEMA == "bpfcompat.run.v1"
    assert {"id", "started_at", "finished_at", "status", "exit_code", "accel"} <= set(export["run"])
    assert [k["id"] for k in export["kernels"]] == list(ALL_KERNELS)
    for kernel in export["kernels"]:
        assert {"id", "release", "required", "btf", "boot_seconds"} <= set(kernel)
    assert sorted(a["name"] for a in export["artifacts"]) == ARTIFACTS
    for artifact in export["artifacts"]:
        assert {"name", "path", "sha256"} <= set(artifact)
    cell_keys = {
        "artifact",
        "kernel",
        "status",
        "code",
        "evidence",
        "notes",
        "seconds",
        "cached",
        "variants",
        "map_fixups",
    }
    assert len(export["cells"]) == len(ARTIFACTS) * len(ALL_KERNELS)
    for cell in export["cells"]:
        assert cell_keys <= set(cell), cell_keys - set(cell)
        assert "result" not in cell  # raw results only with include_results
    json.dumps(export)  # plain data


def test_export_carries_variants_and_map_fixups(store: Store, run_id: int) -> None:
    cells = _cells(json_export(store, run_id))
    old = cells[("program-variants", "debian-11-5.10")]["variants"]
    new = cells[("program-variants", "debian-12-6.1")]["variants"]
    assert old == [{"group": "loop_x", "chosen": "loop_old_x", "disabled": ["loop_x"]}]
    assert new == [{"group": "loop_x", "chosen": "loop_x", "disabled": ["loop_old_x"]}]
    fixups = cells[("runtime-sized-maps", "debian-12-6.1")]["map_fixups"]
    # `cpus` resolved in the guest: the default matrix boots one CPU (kernels.yaml cpus: 1)
    assert {f["name"]: (f["requested"], f["applied_entries"]) for f in fixups} == {
        "auxiliary_maps": ("cpus", 1),
        "ringbuf_maps": ("cpus", 1),
    }


# --- JUnit ------------------------------------------------------------------------------------


def _junit(store: Store, run_id: int, tmp_path: Path) -> JUnitXml:
    path = tmp_path / "junit.xml"
    path.write_text(render_junit(_view(store, run_id)), encoding="utf-8")
    return JUnitXml.fromfile(str(path))


def test_junit_counts_and_messages(store: Store, run_id: int, tmp_path: Path) -> None:
    export = json_export(store, run_id)
    cells = _cells(export)
    xml = _junit(store, run_id, tmp_path)
    required_fail = [
        c for c in export["cells"] if c["kernel"] in REQUIRED_KERNELS and c["status"] == "fail"
    ]
    optional_bad = [
        c for c in export["cells"] if c["kernel"] in OPTIONAL_KERNELS and c["status"] != "pass"
    ]
    assert required_fail and optional_bad
    xml.update_statistics()
    assert xml.tests == len(ARTIFACTS) * len(ALL_KERNELS)
    required_error = [
        c for c in export["cells"] if c["kernel"] in REQUIRED_KERNELS and c["status"] == "error"
    ]
    assert xml.failures == len(required_fail)
    assert xml.errors == len(required_error)
    assert xml.skipped == len(optional_bad)
    suites = {suite.name: suite for suite in xml}
    assert list(suites) == list(ALL_KERNELS)
    seen = 0
    for kernel_id, suite in suites.items():
        for case in suite:
            seen += 1
            assert case.name == kernel_id
            cell = cells[(case.classname, kernel_id)]
            results = case.result
            if cell["status"] == "pass":
                assert results == []
                continue
            (result,) = results
            message = f"{cell['code']}: {' '.join(cell['evidence'].split())}"
            if cell["needs"]:
                message += f" ({cell['needs']})"
            if kernel_id in OPTIONAL_KERNELS:
                assert isinstance(result, Skipped)
                assert result.message.startswith(f"optional kernel: {cell['status']} {message}")
            elif cell["status"] == "error":
                assert isinstance(result, Error) and result.message == message
            else:
                assert isinstance(result, Failure)
                assert result.type == cell["code"]
                assert result.message == message
                assert f"remediation: {cell['remediation']}" in result.text
                if cell["pinpoint"] and cell["pinpoint"]["source"]:
                    assert cell["pinpoint"]["source"] in result.text
    assert seen == xml.tests


def test_junit_error_cells_and_unparseable_text(store: Store, run_id: int, tmp_path: Path) -> None:
    """An infrastructure error is <error>; control characters in evidence still give XML."""
    before = _junit(store, run_id, tmp_path)
    before.update_statistics()
    set_cell(
        store,
        run_id,
        "simple-pass",
        "debian-12-6.1",
        status="error",
        code="INFRA_ERROR",
        evidence="guest vanished \x00\x07\x1b[0m <&> ]]>",
    )
    xml = _junit(store, run_id, tmp_path)
    xml.update_statistics()
    assert xml.errors == before.errors + 1
    case = next(
        c for s in xml for c in s if c.classname == "simple-pass" and c.name == "debian-12-6.1"
    )
    (result,) = case.result
    assert isinstance(result, Error)
    assert result.type == "INFRA_ERROR"
    assert result.message.startswith("INFRA_ERROR: guest vanished")
    assert "<&> ]]>" in result.message


def test_junit_not_run_cells_are_skipped(store: Store, tmp_path: Path) -> None:
    run_id = add_recorded_run(
        store, REQUIRED_KERNELS, status="interrupted", skip={("ringbuf", "debian-sid-7.2")}
    )
    xml = _junit(store, run_id, tmp_path)
    case = next(
        c for s in xml for c in s if c.classname == "ringbuf" and c.name == "debian-sid-7.2"
    )
    (result,) = case.result
    assert isinstance(result, Skipped) and result.message.startswith("not run")


# --- Markdown ---------------------------------------------------------------------------------


def _table_rows(text: str, header_start: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header_start))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        # split on pipes that are not escaped
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_markdown_matrix_shape(store: Store, run_id: int) -> None:
    export = json_export(store, run_id)
    text = render_markdown(_view(store, run_id))
    assert text.startswith(f"## bpfcompat run {run_id}: completed, exit code ")
    rows = _table_rows(text, "| artifact | debian-11-5.10")
    header, sep, body = rows[0], rows[1], rows[2:]
    assert len(header) == 1 + len(ALL_KERNELS)
    assert all(set(c) == {"-"} for c in sep) and len(sep) == len(header)
    assert [r[0] for r in body] == [md_cell(a["name"]) for a in export["artifacts"]]
    assert all(len(r) == len(header) for r in body)
    assert "debian-13-6.12-lockdown (optional)" in header[-1]
    bloom = next(r for r in body if r[0] == "bloom-filter-map")
    assert "UNSUPPORTED_MAP_TYPE" in bloom[1] and "pass" in bloom[2]
    head = "| artifact | kernel | status | code | expected | evidence | needs | where |"
    failing = _table_rows(text, head)
    n_fail = sum(1 for c in export["cells"] if c["status"] != "pass")
    assert len(failing) == 2 + n_fail
    assert all(len(r) == 8 for r in failing)
    by_cell = {(r[0], r[1]): r for r in failing[2:]}
    bloom_510 = by_cell[("bloom-filter-map", "debian-11-5.10")]
    assert bloom_510[6] == md_cell("needs >= 5.16 for map type bloom_filter (this kernel: 5.10)")
    oob = by_cell[("verifier-oob", "debian-13-6.12")]
    assert oob[7] == md_cell("verifier-oob.bpf.c:30 `return *next != 0;` (insn 8)")


def test_markdown_escapes_cells(store: Store) -> None:
    run_id = add_recorded_run(store, REQUIRED_KERNELS, rename={"verifier-oob": "a|b`c<i>"})
    set_cell(
        store,
        run_id,
        "a|b`c<i>",
        "debian-12-6.1",
        evidence="x | y `z` <script>alert(1)</script>\nnext line **bold** [l](http://e)",
    )
    text = render_markdown(_view(store, run_id))
    assert "<script>" not in text and "<i>" not in text
    assert "a\\|b\\`c&lt;i&gt;" in text
    assert (
        "x \\| y \\`z\\` &lt;script&gt;alert(1)&lt;/script&gt; next line \\*\\*bold\\*\\*" in text
    )
    for row in _table_rows(text, "| artifact | kernel | status | code | expected | evidence |")[2:]:
        assert len(row) == 8
    assert md_cell("CORE_RELOCATION_FAILURE") == "CORE_RELOCATION_FAILURE"
    assert md_cell("_emph_") == "\\_emph\\_"


# --- HTML (structure; the browser test checks behaviour) --------------------------------------


def test_html_is_self_contained_and_small(store: Store, run_id: int) -> None:
    html = render_html(_view(store, run_id, results=True))
    assert html.startswith("<!doctype html>")
    assert not re.search(r"<(link|img|iframe|object|embed)\b", html)
    assert not re.search(r"\b(src|href)\s*=\s*\"(?!#)", html), "no external or file references"
    assert "url(" not in html and "@import" not in html
    assert len(html.encode()) < 1_000_000
    assert html.count("<script>") == 1


def test_html_view_model_from_real_results(store: Store, run_id: int) -> None:
    view = build_view(_view(store, run_id, results=True))
    details = {(d.artifact, d.kernel.id): d for d in view.details}
    assert view.counts["pass"] + view.counts["fail"] + view.counts["error"] == len(details)
    assert [k.id for k in view.kernels] == list(ALL_KERNELS)
    assert not view.kernels[-1].required and view.kernels[0].required
    # classification and the evidence line marked inside the verifier log
    helper = details[("helper-not-allowed", "debian-13-6.12")]
    assert helper.verdict.code == "HELPER_NOT_ALLOWED"
    assert helper.verdict.program == "skb_helper_in_tracepoint"
    (prog,) = helper.result.programs
    assert prog.load_status == "fail" and prog.errno == "EINVAL (22)"
    (marked,) = [ln for ln, hit in prog.log.lines if hit]  # the evidence line, highlighted
    assert helper.verdict.evidence.startswith(marked.strip())
    # variants, map fixups with cpus resolved, functional output, probes, timings
    variants = details[("program-variants", "debian-11-5.10")].result.variants
    assert variants[0].chosen == "loop_old_x" and variants[0].disabled == ["loop_x"]
    fixups = details[("runtime-sized-maps", "debian-12-6.1")].result.map_fixups
    assert [f.applied for f in fixups] == ["cpus → 1", "cpus → 1"]
    assert fixups[1].inner_ringbuf_bytes == 8388608
    functional = details[("functional-execve", "debian-13-6.12-lockdown")]
    assert functional.verdict.code == "FUNCTIONAL_TEST_FAILURE"
    (test,) = functional.result.tests
    assert test.status == "fail" and test.exit_code == 2
    assert "trace_pipe: No such file or directory" in test.stderr.text
    probes = details[("bloom-filter-map", "debian-11-5.10")].result.probes
    assert probes is not None and "bloom_filter" in probes.map_unsupported
    lockdown = details[("lockdown-probe-read", "debian-13-6.12-lockdown")].result.probes
    assert lockdown is not None and lockdown.lockdown == "confidentiality"
    assert details[("simple-pass", "debian-12-6.1")].result.timing_total is not None
    assert all(not d.info.cached for d in details.values())
    # logs are tails, never whole logs
    for d in details.values():
        log = d.result.libbpf_log
        assert log.text.count("\n") < 40 and all(len(ln) <= 300 for ln, _ in log.lines)


def test_html_escapes_hostile_names_and_logs(store: Store) -> None:
    run_id = add_recorded_run(
        store, REQUIRED_KERNELS, edit=hostile_result(), rename={"verifier-oob": HOSTILE_NAME}
    )
    html = render_html(_view(store, run_id, results=True))
    assert html.count("<script") == 1  # only the report's own
    assert "<img" not in html and "<b>x</b>" not in html
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;" in html
    assert "a &#34;quoted&#34; &#39;name&#39; &lt;script&gt;" in html
    ids = re.findall(r'\bid="([^"]*)"', html)
    assert ids and all(re.fullmatch(r"[a-z][a-z0-9-]*", i) for i in ids), ids
    assert len(ids) == len(set(ids))


def test_html_interrupted_run(store: Store) -> None:
    run_id = add_recorded_run(
        store,
        REQUIRED_KERNELS,
        status="interrupted",
        skip={("ringbuf", k) for k in REQUIRED_KERNELS[2:]},
    )
    run = _view(store, run_id, results=True)
    view = build_view(run)
    assert view.interrupted and view.counts["not run"] == 2
    html = render_html(run)
    assert 'id="interrupted"' in html and "exit <b>130</b>" in html
    assert html.count('class="cell st-none') == 2


# --- comparison -------------------------------------------------------------------------------


@pytest.fixture
def two_runs(store: Store) -> tuple[int, int]:
    base = add_recorded_run(store)
    head = add_recorded_run(store)
    return base, head


def test_compare_identical_runs(store: Store, two_runs: tuple[int, int]) -> None:
    comparison = compare_runs(store, *two_runs)
    assert comparison.changes == [] and comparison.exit_code == 0
    assert comparison.unchanged == len(ARTIFACTS) * len(ALL_KERNELS)


def test_compare_kinds(store: Store, two_runs: tuple[int, int]) -> None:
    base, head = two_runs
    set_cell(
        store,
        head,
        "simple-pass",
        "debian-12-6.1",
        status="fail",
        code="VERIFIER_REJECTION",
        evidence="R1 invalid mem access 'scalar'",
    )
    set_cell(
        store,
        head,
        "ringbuf",
        "debian-13-6.12-lockdown",
        status="error",
        code="INFRA_ERROR",
        evidence="boot failed",
    )
    set_cell(store, head, "verifier-limit", "debian-11-5.10", code="VERIFIER_REJECTION")
    set_cell(
        store, head, "bloom-filter-map", "debian-11-5.10", status="pass", code=None, evidence=None
    )
    set_cell(store, head, "tail-calls", "debian-sid-7.2", artifact="tail-calls-renamed")
    comparison = compare_runs(store, base, head)
    by = {(c.kind, c.artifact, c.kernel): c for c in comparison.changes}
    regression = by[(NEW_FAILURE, "simple-pass", "debian-12-6.1")]
    assert regression.regression and regression.head_verdict == "fail VERIFIER_REJECTION"
    optional = by[(NEW_FAILURE, "ringbuf", "debian-13-6.12-lockdown")]
    assert not optional.regression and not optional.required
    changed = by[(CHANGED, "verifier-limit", "debian-11-5.10")]
    assert changed.base_verdict == "fail VERIFIER_LIMIT" and not changed.regression
    assert (FIXED, "bloom-filter-map", "debian-11-5.10") in by
    assert ("only_head", "tail-calls-renamed", "debian-sid-7.2") in by
    assert (ONLY_BASE, "tail-calls", "debian-sid-7.2") in by
    assert [c.artifact for c in comparison.regressions] == ["simple-pass"]
    assert comparison.exit_code == 2
    assert comparison.changes[0] is regression  # regressions are listed first
    lines = comparison.lines()
    assert lines[1].startswith("REGRESSION    simple-pass on debian-12-6.1 (required): pass -> ")


def test_compare_cli_exit_codes(store: Store, two_runs: tuple[int, int]) -> None:
    base, head = two_runs
    db = str(store.path)
    set_cell(store, head, "verifier-limit", "debian-11-5.10", code="VERIFIER_REJECTION")
    set_cell(store, head, "ringbuf", "debian-13-6.12-lockdown", status="fail", code="UNKNOWN")
    proc = run_cli("compare", "--base", str(base), "--head", str(head), "--db", db)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "changed code  verifier-limit on debian-11-5.10 (required)" in proc.stdout
    assert "new failure   ringbuf on debian-13-6.12-lockdown (optional)" in proc.stdout
    set_cell(
        store,
        head,
        "ringbuf",
        "debian-12-6.1",
        status="fail",
        code="UNKNOWN",
        evidence="something broke",
    )
    proc = run_cli("compare", "--base", str(base), "--head", str(head), "--db", db)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        "REGRESSION    ringbuf on debian-12-6.1 (required): pass -> fail UNKNOWN: something broke"
        in proc.stdout
    )
    assert "1 required regression(s)" in proc.stdout.splitlines()[0]
    proc = run_cli("compare", "--base", "99", "--head", str(head), "--db", db)
    assert proc.returncode == 1 and "no run with id 99" in proc.stderr


def test_report_with_base_shows_changes(
    store: Store, two_runs: tuple[int, int], tmp_path: Path
) -> None:
    base, head = two_runs
    set_cell(
        store,
        head,
        "ringbuf",
        "debian-12-6.1",
        status="fail",
        code="UNKNOWN",
        evidence="something broke",
    )
    out = tmp_path / "out"
    proc = run_cli(
        "report",
        "--db",
        str(store.path),
        "--run",
        str(head),
        "--base",
        str(base),
        "--html",
        str(out / "r.html"),
        "--markdown",
        str(out / "r.md"),
        "--junit",
        str(out / "r.xml"),
        "--json",
        str(out / "r.json"),
    )
    assert proc.returncode == 0, proc.stderr
    html = (out / "r.html").read_text()
    assert 'id="changes"' in html and "Changes since run" in html
    view = build_view(_view(store, head, results=True), compare_runs(store, base, head))
    changed = [c for row in view.rows for c in row.cells if c.change]
    assert [(view.rows[c.row].artifact, c.change.kind) for c in changed] == [
        ("ringbuf", NEW_FAILURE)
    ]
    assert f'href="#{changed[0].id}"' in html
    md = (out / "r.md").read_text()
    assert f"### Changes since run {base}" in md and "| **regression** | ringbuf |" in md
    assert json.loads((out / "r.json").read_text())["run"]["id"] == head
    JUnitXml.fromfile(str(out / "r.xml"))


def test_write_reports_all_formats(store: Store, run_id: int, tmp_path: Path) -> None:
    paths = write_reports(
        store,
        run_id,
        html=tmp_path / "a.html",
        json_path=tmp_path / "a.json",
        markdown=tmp_path / "a.md",
        junit=tmp_path / "a.xml",
    )
    assert [p.name for p in paths] == ["a.json", "a.html", "a.md", "a.xml"]
    assert not list(tmp_path.glob(".*tmp*"))


def test_runs_list(store: Store, two_runs: tuple[int, int]) -> None:
    proc = run_cli("runs", "list", "--db", str(store.path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [int(ln.split()[0]) for ln in lines] == sorted(two_runs, reverse=True)
    export = json_export(store, two_runs[0])
    n = {s: sum(1 for c in export["cells"] if c["status"] == s) for s in ("pass", "fail", "error")}
    assert f"{len(ARTIFACTS)} artifacts x {len(ALL_KERNELS)} kernels" in lines[0]
    assert lines[0].endswith(f"pass {n['pass']} fail {n['fail']} error {n['error']}")


def test_runs_list_empty_store(tmp_path: Path) -> None:
    Store(tmp_path / "empty.db")
    proc = run_cli("runs", "list", "--db", str(tmp_path / "empty.db"))
    assert proc.returncode == 0 and proc.stdout == "" and "no runs yet" in proc.stderr


def test_html_without_raw_results(store: Store, run_id: int) -> None:
    """An export without raw results still renders every cell from the stored verdicts."""
    html = render_html(_view(store, run_id))
    assert html.count('<article class="detail"') == len(ARTIFACTS) * len(ALL_KERNELS)
    assert "cpus → 1" in html  # map fixups from the cell summary


def test_screenshot_script_needs_a_store(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_report.py"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "--db",
            str(tmp_path / "none.db"),
            "--out",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "no such store" in proc.stderr and not (tmp_path / "x.png").exists()
