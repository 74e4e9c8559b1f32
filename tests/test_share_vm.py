"""Sharing a kernel's work on a real kernel: with a free slot a second guest joins, the
first guest's driver hands over what it has not started, and every example gets the
verdict it gets when one guest does everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpfcompat.matrix.config import load_kernel_matrix
from bpfcompat.matrix.options import RunOptions
from bpfcompat.matrix.plan import Plan, discover_artifacts
from bpfcompat.matrix.runner import run_plan
from bpfcompat.matrix.share import SplitPolicy
from bpfcompat.matrix.store import Store
from conftest import ROOT

MATRIX = load_kernel_matrix(ROOT / "kernels.yaml")
KERNEL = "debian-12-6.1"


def _run(tmp_path: Path, examples: Path, split: SplitPolicy | None) -> tuple[dict, object]:
    artifacts = discover_artifacts([examples])
    plan = Plan(MATRIX.select([KERNEL]), artifacts, MATRIX.guest_suite)
    options = RunOptions(use_cache=False, workdir=tmp_path / "work", concurrency=2, split=split)
    _, summary = run_plan(plan, Store(tmp_path / "store.db"), options)
    verdicts = {c.artifact: (c.status, c.code, c.expected) for c in summary.cells}
    return verdicts, summary.kernels[0]


@pytest.mark.vm
def test_a_second_guest_shares_the_work_and_changes_no_verdict(
    tmp_path: Path, built_examples: Path
) -> None:
    alone, one = _run(tmp_path / "alone", built_examples, None)
    shared, kernel = _run(tmp_path / "shared", built_examples, SplitPolicy(2, 0.0))
    assert one.helpers == 0 and kernel.helpers >= 1, kernel  # type: ignore[attr-defined]
    assert kernel.status == "ok" and not kernel.notes, kernel  # type: ignore[attr-defined]
    # The second guest really ran: its own console log is there beside the first's.
    consoles = sorted(p.name for p in (tmp_path / "shared" / "work").rglob("console-*.log"))
    assert any(f"{KERNEL}+1" in name for name in consoles), consoles
    assert shared == alone
    assert all(expected is not False for _, _, expected in shared.values()), shared
