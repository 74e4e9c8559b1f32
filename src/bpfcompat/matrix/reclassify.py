"""Reclassify stored cells from their raw validator results: no VM, no network."""

from __future__ import annotations

from sqlmodel import Session, select

from bpfcompat.matrix.classify import cell_fields, classify
from bpfcompat.matrix.plan import elf_problem
from bpfcompat.matrix.store import Cell, RunKernel, Store, ValidatorResult


def reclassify_run(store: Store, run_id: int) -> list[str]:
    """Update every cell of the run whose verdict changed; return what changed."""
    changed: list[str] = []

    def _apply(session: Session) -> None:
        releases = {
            k.kernel_id: k.release
            for k in session.exec(select(RunKernel).where(RunKernel.run_id == run_id))
        }
        for cell in session.exec(select(Cell).where(Cell.run_id == run_id)):
            if cell.result_id is None:
                continue
            stored = session.get(ValidatorResult, cell.result_id)
            if stored is None:
                continue
            problem = None
            try:
                with open(cell.artifact_path, "rb") as fh:
                    problem = elf_problem(fh.read(1 << 26))
            except OSError:
                problem = None
            verdict = classify(
                stored, artifact_problem=problem, release=releases.get(cell.kernel_id, "")
            )
            before = (cell.status, cell.code)
            for key, value in cell_fields(verdict, stored.result()).items():
                setattr(cell, key, value)
            session.add(cell)
            if before != (cell.status, cell.code):
                changed.append(
                    f"{cell.artifact} on {cell.kernel_id}: {before[0]} {before[1]} "
                    f"-> {cell.status} {cell.code}"
                )

    store.write(_apply)
    return changed
