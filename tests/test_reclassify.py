"""Reclassify: a real SQLite store, a run of real recorded results, and no artifact files.

reclassify must judge every cell from what the store holds (the raw result, and the host's
ELF pre-check stored with the cell), never from the artifact files, which may be gone; and
it must report every cell whose verdict, notes or details changed, one line each.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from bpfcompat.matrix.classify import cell_fields, classify, kernel_failed, rule
from bpfcompat.matrix.reclassify import reclassify_run
from bpfcompat.matrix.store import Cell, Store, ValidatorResult
from conftest import EXAMPLES, run_cli
from report_fixtures import add_recorded_run, set_cell

KERNEL = "debian-12-6.1"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "bpfcompat.db")


def cells(store: Store, run_id: int) -> dict[tuple[str, str], Cell]:
    return {(c.artifact, c.kernel_id): c for c in store.cells(run_id)}


def run_without_artifacts(store: Store, tmp_path: Path) -> int:
    """A run whose cells point at artifact copies that are then deleted."""
    run_id = add_recorded_run(store)
    gone = tmp_path / "artifacts"
    for (artifact, kernel), _ in cells(store, run_id).items():
        copy = gone / artifact / f"{artifact}.bpf.o"
        copy.parent.mkdir(parents=True, exist_ok=True)
        source = EXAMPLES / artifact / f"{artifact}.bpf.o"
        copy.write_bytes(source.read_bytes() if source.is_file() else b"not an ELF")
        set_cell(store, run_id, artifact, kernel, artifact_path=str(copy))
    shutil.rmtree(gone)
    return run_id


def add_signal_cell(store: Store, run_id: int, problem: str | None, **old: Any) -> None:
    """A validator killed by SIGSEGV while libbpf parsed an object, stored as the runner
    stores it, its verdict as the rule `old["rule"]` of an older classifier gave it."""
    row = store.add(ValidatorResult(cache_key="sig", artifact_sha256="", kernel_id=KERNEL,
                                    exit_code=139, signal=11))  # fmt: skip
    store.add(Cell(run_id=run_id, artifact="segv-object", artifact_path="/nonexistent/x.bpf.o",
                   artifact_sha256="", kernel_id=KERNEL, result_id=row.id,
                   artifact_problem=problem, **old))  # fmt: skip


def judged(rule_name: str, evidence: str, **changes: Any) -> dict[str, Any]:
    """The cell fields of a verdict of `rule_name`, with `changes` as an older version
    of the classifier differed."""
    return cell_fields(rule(rule_name).verdict(evidence=evidence), None) | changes


def test_an_unchanged_classifier_reports_nothing_and_reads_no_artifact(
    store: Store, tmp_path: Path
) -> None:
    run_id = run_without_artifacts(store, tmp_path)
    before = cells(store, run_id)
    assert not any(Path(c.artifact_path).exists() for c in before.values())
    assert reclassify_run(store, run_id) == []
    after = cells(store, run_id)
    for key, cell in before.items():
        assert (after[key].code, after[key].evidence, after[key].notes) == (
            cell.code,
            cell.evidence,
            cell.notes,
        ), key


def test_changed_evidence_rule_and_notes_are_each_reported(store: Store, tmp_path: Path) -> None:
    run_id = run_without_artifacts(store, tmp_path)
    real = cells(store, run_id)
    oob, variant = real[("verifier-oob", KERNEL)], real[("program-variants", KERNEL)]
    assert variant.notes, "program-variants records its variant choice as a note"
    # what an older classifier stored: the same code with other evidence and rule name,
    # and a cell whose notes were not written
    set_cell(store, run_id, "verifier-oob", KERNEL, evidence="R0 invalid mem access", rule="old")
    set_cell(store, run_id, "program-variants", KERNEL, notes_json="[]")
    report = reclassify_run(store, run_id)
    assert report == [  # in the run's cell order
        f"program-variants on {KERNEL}: pass -> pass (changed: notes)",
        f"verifier-oob on {KERNEL}: fail VERIFIER_REJECTION -> fail VERIFIER_REJECTION "
        "(changed: evidence, rule)",
    ]
    after = cells(store, run_id)
    assert after[("verifier-oob", KERNEL)].evidence == oob.evidence
    assert after[("program-variants", KERNEL)].notes == variant.notes
    assert reclassify_run(store, run_id) == []  # applied: a second pass finds nothing


def test_the_stored_precheck_decides_without_the_file(store: Store, tmp_path: Path) -> None:
    run_id = run_without_artifacts(store, tmp_path)
    # judged without the pre-check (as reading a deleted file would leave it): inconclusive
    old = judged("validator-killed", "validator killed by signal 11", rule="infra")
    add_signal_cell(store, run_id, "truncated ELF header (12 bytes)", **old)
    report = reclassify_run(store, run_id)
    assert report == [
        f"segv-object on {KERNEL}: error INFRA_ERROR -> fail INVALID_ARTIFACT (changed: "
        "status, code, evidence, stage, remediation, rule, detail)"
    ]
    cell = cells(store, run_id)[("segv-object", KERNEL)]
    assert (cell.rule, cell.evidence) == ("validator-signal", "truncated ELF header (12 bytes)")


def test_cells_of_a_kernel_that_never_booted_get_the_boot_failure_rule(store: Store) -> None:
    run_id = add_recorded_run(store, (KERNEL,))
    message = "boot failed: guest did not answer SSH within 300 s"
    old = cell_fields(kernel_failed(message), None) | {"rule": None}  # no rule before
    store.add(Cell(run_id=run_id, artifact="simple-pass", artifact_path="x", artifact_sha256="",
                   kernel_id="debian-99", **old))  # fmt: skip
    assert reclassify_run(store, run_id) == [
        "simple-pass on debian-99: error INFRA_ERROR -> error INFRA_ERROR (changed: rule)"
    ]
    assert cells(store, run_id)[("simple-pass", "debian-99")].rule == "boot-failure"


def test_a_store_from_before_the_precheck_column(store: Store, tmp_path: Path) -> None:
    """Old stores get the column as NULL; a verdict that came from the pre-check still
    carries it as its evidence, so reclassify keeps that verdict and fills the column."""
    run_id = run_without_artifacts(store, tmp_path)
    problem = "truncated ELF header (12 bytes)"
    old = judged("validator-signal", problem, detail="validator killed by signal 11")
    add_signal_cell(store, run_id, problem, **old)
    assert reclassify_run(store, run_id) == []
    db = sqlite3.connect(store.path)
    db.execute("ALTER TABLE cell DROP COLUMN artifact_problem")
    db.commit()
    db.close()
    old = Store(store.path)  # adds the column back, NULL everywhere
    assert all(c.artifact_problem is None for c in old.cells(run_id))
    assert reclassify_run(old, run_id) == []
    cell = cells(old, run_id)[("segv-object", KERNEL)]
    assert (cell.code, cell.artifact_problem) == ("INVALID_ARTIFACT", cell.evidence)


def test_reclassify_reads_the_model_not_the_artifact(store: Store) -> None:
    """The row's JSON is all it reads: a row whose JSON is cut short is a malformed
    result, named by its own rule."""
    run_id = add_recorded_run(store, (KERNEL,))
    with store.session() as session:
        cell = session.exec(select(Cell).where(Cell.artifact == "simple-pass")).one()
        row = session.get(ValidatorResult, cell.result_id)
        assert row is not None and row.raw_json
    cut = row.raw_json[: len(row.raw_json) // 2]

    def _cut(session) -> None:  # type: ignore[no-untyped-def]
        stored = session.get(ValidatorResult, row.id)
        stored.raw_json = cut
        session.add(stored)

    store.write(_cut)
    report = reclassify_run(store, run_id)
    # details: the programs whose own load probes the cell kept are gone with the result
    assert report == [f"simple-pass on {KERNEL}: pass -> error INFRA_ERROR (changed: "
                      "status, code, evidence, confidence, stage, remediation, rule, "
                      "details)"]  # fmt: skip
    verdict = classify(store.result(cell.result_id))  # type: ignore[arg-type]
    assert verdict.rule == "malformed-result"


def test_the_cli_prints_one_line_per_changed_cell(store: Store, tmp_path: Path) -> None:
    run_id = run_without_artifacts(store, tmp_path)
    set_cell(store, run_id, "verifier-oob", KERNEL, detail="stale detail")
    proc = run_cli("reclassify", "--db", str(store.path), "--run", str(run_id))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"run {run_id}: 1 cell(s) changed",
        f"  verifier-oob on {KERNEL}: fail VERIFIER_REJECTION -> fail VERIFIER_REJECTION "
        "(changed: detail)",
    ]
