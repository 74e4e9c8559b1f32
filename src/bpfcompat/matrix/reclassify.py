"""Reclassify stored cells from their raw validator results: no VM, no network, and no
artifact files (they may be gone, or changed since the run): the host's ELF pre-check is
read from the cell, where the runner stored it.
"""

from __future__ import annotations

from sqlmodel import Session, select

from bpfcompat.matrix.classify import HOST_PRECHECK, cell_fields, classify, kernel_failed
from bpfcompat.matrix.statics import analysis_of
from bpfcompat.matrix.store import Cell, RunKernel, Store, ValidatorResult

# The judged fields of a cell: a change in any of them is reported.
JUDGED = ("status", "code", "evidence", "confidence", "stage", "program", "remediation",
          "rule", "detail", "notes_json", "details_json", "needs", "pinpoint_json")  # fmt: skip
_FIELD_NAMES = {"notes_json": "notes", "details_json": "details", "pinpoint_json": "pinpoint"}


def _legacy_problem(cell: Cell) -> str | None:
    """The pre-check's finding for a cell stored before the column existed: recoverable
    exactly when it decided the verdict, which then quotes it as the evidence."""
    from_precheck = cell.rule == "validator-signal" or (
        cell.rule == "artifact-unreadable" and (cell.detail or "").startswith(HOST_PRECHECK)
    )
    return cell.evidence if from_precheck else None


def _label(status: str | None, code: str | None) -> str:
    return f"{status} {code}" if code else str(status)


def _one_line(text: str) -> str:
    """Names come from file names, which may hold any character but '/' and NUL."""
    return text.encode("unicode_escape").decode("ascii")


def reclassify_run(store: Store, run_id: int) -> list[str]:
    """Judge every cell of the run again; return one line per cell whose verdict, notes or
    details changed, naming the fields that did."""
    changed: list[str] = []

    def _apply(session: Session) -> None:
        releases = {
            k.kernel_id: k.release
            for k in session.exec(select(RunKernel).where(RunKernel.run_id == run_id))
        }
        cells = session.exec(select(Cell).where(Cell.run_id == run_id).order_by(Cell.id))  # type: ignore[arg-type]
        for cell in cells:
            if cell.artifact_problem is None:
                cell.artifact_problem = _legacy_problem(cell)
            if cell.result_id is None:  # the kernel never ran it: the runner's message
                fields = cell_fields(kernel_failed(cell.evidence or "kernel failed"), None)
            else:
                stored = session.get(ValidatorResult, cell.result_id)
                if stored is None:
                    continue
                verdict = classify(
                    stored,
                    artifact_problem=cell.artifact_problem,
                    release=releases.get(cell.kernel_id, ""),
                    analysis=analysis_of(cell.analysis_json),
                )
                fields = cell_fields(verdict, stored.result())
            before = _label(cell.status, cell.code)
            diff = [_FIELD_NAMES.get(k, k) for k in JUDGED if getattr(cell, k) != fields[k]]
            for key, value in fields.items():
                setattr(cell, key, value)
            session.add(cell)
            if diff:
                changed.append(
                    f"{_one_line(cell.artifact)} on {_one_line(cell.kernel_id)}: {before} -> "
                    f"{_label(cell.status, cell.code)} (changed: {', '.join(diff)})"
                )

    store.write(_apply)
    return changed
