"""Verifier cost: stored per accepted program, shown with its headroom, and compared.

The runs are the recorded real runs; the head run's verifier statistics are scaled for a
few programs, as a compiler or code change would move them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from bpfcompat.matrix.store import Store
from bpfcompat.report.compare import compare_views
from bpfcompat.report.cost import cost_rows, heaviest, program_costs
from bpfcompat.report.html import render_html
from bpfcompat.report.markdown import render_markdown
from bpfcompat.report.view import RunView
from conftest import run_cli
from report_fixtures import add_recorded_run

# (artifact, program, kernel) -> factor applied to instructions processed in the head run
GROWTH = {
    ("program-variants", "loop_old_x", "debian-11-5.10"): 3.0,  # 73 -> 219 insns: reported
    ("ringbuf", "ringbuf_execve", "debian-12-6.1"): 2.0,  # 20 -> 40: too small by default
    ("zero-sized-maps", "count_execs", "debian-12-6.1"): 1.1,  # +10%: under the threshold
    ("ringbuf", "ringbuf_execve", "debian-13-6.12-lockdown"): 10.0,  # 200 insns, optional
}


def _grow(artifact: str, kernel: str, result: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(result)
    for p in result["discovery"]["programs"]:
        factor = GROWTH.get((artifact, p["name"], kernel))
        if factor and p.get("verifier_stats"):
            stats = p["verifier_stats"]
            stats["insns_processed"] = int(stats["insns_processed"] * factor)
    return result


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "bpfcompat.db")


@pytest.fixture
def runs(store: Store) -> tuple[RunView, RunView]:
    base = add_recorded_run(store)
    head = add_recorded_run(store, edit=_grow)
    return RunView.from_store(store, base), RunView.from_store(store, head)


def test_every_accepted_program_has_its_cost_and_no_refused_one_does(
    runs: tuple[RunView, RunView],
) -> None:
    base, _ = runs
    costs = program_costs(base)
    for cell in base.cells:
        for p in cell.programs:
            has = (cell.artifact, p.name, cell.kernel) in costs
            assert has == (p.load_status == "pass"), (cell.artifact, cell.kernel, p)
    ring = costs[("ringbuf", "ringbuf_execve", "debian-12-6.1")]
    assert ring.insns == 20 and ring.limit == 1_000_000 and ring.share == 20 / 1_000_000
    assert "20 insns (<0.1% of 1,000,000)" in ring.line()
    # The refused program of verifier-limit processed 16k insns, which is not its cost.
    assert not any(k[0] == "verifier-limit" for k in costs)


def test_compare_lists_growth_beyond_the_threshold_and_gates_only_when_asked(
    runs: tuple[RunView, RunView],
) -> None:
    base, head = runs
    comparison = compare_views(base, head)
    got = {(c.artifact, c.program, c.kernel): c for c in comparison.cost}
    assert set(got) == {
        ("program-variants", "loop_old_x", "debian-11-5.10"),
        ("ringbuf", "ringbuf_execve", "debian-13-6.12-lockdown"),
    }
    grown = got[("program-variants", "loop_old_x", "debian-11-5.10")]
    assert (grown.base.insns, grown.head.insns, grown.growth_text) == (73, 219, "+200%")
    assert comparison.exit_code == 0  # listed, not gating
    gated = compare_views(base, head, gate_cost=True)
    assert gated.exit_code == 2
    assert [(c.program, c.kernel) for c in gated.cost_regressions] == [
        ("loop_old_x", "debian-11-5.10")
    ]  # the optional lockdown kernel never gates
    small = compare_views(base, head, cost_min_insns=0)
    assert ("ringbuf", "ringbuf_execve", "debian-12-6.1") in {
        (c.artifact, c.program, c.kernel) for c in small.cost
    }
    loose = compare_views(base, head, cost_threshold=0.05, cost_min_insns=0)
    assert ("zero-sized-maps", "count_execs", "debian-12-6.1") in {
        (c.artifact, c.program, c.kernel) for c in loose.cost
    }
    assert compare_views(base, base, gate_cost=True).cost == []


def test_compare_cli_flags_a_cost_jump(store: Store, runs: tuple[RunView, RunView]) -> None:
    base, head = (str(v.run.id) for v in runs)
    db = str(store.path)
    proc = run_cli("compare", "--base", base, "--head", head, "--db", db)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = "COST          program-variants:loop_old_x on debian-11-5.10 (required): 73 -> 219"
    assert line in proc.stdout
    assert "2 program(s) whose verifier cost grew over 20%" in proc.stdout.splitlines()[0]
    proc = run_cli("compare", "--base", base, "--head", head, "--db", db, "--fail-on-cost")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    proc = run_cli(
        "compare", "--base", base, "--head", head, "--db", db, "--fail-on-cost",
        "--cost-threshold", "250",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_reports_show_cost_headroom_and_growth(runs: tuple[RunView, RunView]) -> None:
    base, head = runs
    comparison = compare_views(base, head)
    page = render_html(head, comparison)
    assert 'id="verifier-cost"' in page and 'id="cost-changes"' in page
    assert '<td class="verifier">20 insns (&lt;0.1% of 1,000,000)' in page
    top = heaviest(head, 1)[0]
    assert f"{top.artifact}:{top.program}" in page
    assert len(cost_rows(head)) >= 20
    md = render_markdown(head, comparison)
    assert "### Verifier cost (closest to the limit)" in md
    assert "**Verifier cost grew** over 20% (2 program(s)):" in md
    assert "| program-variants:loop_old_x |" in md and "| 73 | 219 (<0.1% of limit) | +200% |" in md
