"""Build real stores for report tests from tests/data/recorded (no VM needed).

Each recorded file holds what the guest's validator produced for every example on one
kernel, and the host's static reading of each artifact that run kept. A run made here
stores both and classifies the results with today's classifier, the way the matrix runner
does, so reports are tested on real evidence.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from sqlmodel import Session

from bpfcompat.matrix.classify import cell_fields, classify
from bpfcompat.matrix.store import Cell, Run, RunKernel, Store, ValidatorResult
from bpfcompat.matrix.verdict import Verdict

T = TypeVar("T")
RECORDED = Path(__file__).resolve().parent / "data" / "recorded"
REQUIRED_KERNELS = ("debian-11-5.10", "debian-12-6.1", "debian-13-6.12", "debian-sid-7.2")
OPTIONAL_KERNELS = ("debian-13-6.12-lockdown",)
ALL_KERNELS = REQUIRED_KERNELS + OPTIONAL_KERNELS

# edit(artifact, kernel_id, raw_result) -> raw_result: change a recorded result before storing.
Edit = Callable[[str, str, dict[str, Any]], dict[str, Any]]


@cache
def _recorded(kernel_id: str) -> dict[str, Any]:
    return json.loads((RECORDED / f"{kernel_id}.json").read_text())


def recorded(kernel_id: str) -> dict[str, Any]:
    """A fresh copy of one kernel's recorded file (callers may mutate it)."""
    return copy.deepcopy(_recorded(kernel_id))


class _Stored:
    """Duck-typed ValidatorResult for classify()."""

    def __init__(self, row: ValidatorResult) -> None:
        self.crash, self.signal, self.infra_error = row.crash, row.signal, row.infra_error
        self.result = row.result


_VERDICTS: dict[tuple[str, str], Verdict] = {}


def _precheck(result: Any) -> str | None:
    """The ELF check the recorded validator made: stands in for the host's pre-check,
    which the runner stores with each cell."""
    return ((result or {}).get("artifact") or {}).get("elf_error")


def _classify(
    row: ValidatorResult,
    problem: str | None,
    release: str,
    analysis: dict[str, Any] | None,
    *,
    cache: bool,
) -> Verdict:
    """Today's verdict for a recorded result; unedited results are classified once per
    session (the classifier is the slow part of building a store)."""
    key = (row.kernel_id, row.cache_key)
    if cache and key in _VERDICTS:
        return _VERDICTS[key]
    verdict = classify(_Stored(row), artifact_problem=problem, release=release, analysis=analysis)
    if cache:
        _VERDICTS[key] = verdict
    return verdict


def add_recorded_run(
    store: Store,
    kernels: tuple[str, ...] = ALL_KERNELS,
    *,
    edit: Edit | None = None,
    skip: set[tuple[str, str]] | None = None,
    status: str = "completed",
    rename: dict[str, str] | None = None,
) -> int:
    """Store one run of the recorded examples on `kernels`; returns its id.

    `skip` leaves (artifact, kernel) cells out, as an interrupted run would; `rename`
    stores artifacts under other names (hostile names for escaping tests).
    """

    def _build(session: Session) -> int:
        def add(obj: T) -> T:
            session.add(obj)
            session.flush()
            return obj

        first = recorded(kernels[0])["recorded_from_run"]
        run = add(
            Run(
                started_at=first["started_at"],
                finished_at=first["finished_at"],
                status=status,
                accel=first["accel"],
                tool_version=first["tool_version"],
            )
        )
        assert run.id is not None
        cells: list[Cell] = []
        for kernel_id in kernels:
            data = recorded(kernel_id)
            k = data["kernel"]
            add(
                RunKernel(
                    run_id=run.id,
                    kernel_id=k["id"],
                    release=k["release"],
                    package=k["package"],
                    package_version=k["package_version"],
                    suite=k["suite"],
                    cmdline=k["cmdline"],
                    required=k["required"],
                    btf=k["btf"],
                    boot_seconds=k["boot_seconds"],
                    boots=k["boots"],
                    status=k["status"],
                    error=k["error"],
                )
            )
            for c in data["cells"]:
                if skip and (c["artifact"], kernel_id) in skip:
                    continue
                result = c["result"]
                if edit is not None and result is not None:
                    result = edit(c["artifact"], kernel_id, result)
                row = add(
                    ValidatorResult(
                        cache_key=f"recorded:{c['artifact']}:{kernel_id}",
                        artifact_sha256="",
                        kernel_id=kernel_id,
                        exit_code=c["exit_code"],
                        signal=c["signal"],
                        raw_json=json.dumps(result) if result is not None else None,
                        infra_error=c["infra_error"],
                        console_tail=c["console_tail"],
                        seconds=float((result or {}).get("timings", {}).get("total") or 0.0),
                    )
                )
                problem = _precheck(result)
                analysis = c.get("analysis")  # the host's static reading the run kept
                verdict = _classify(row, problem, c["release"], analysis, cache=edit is None)
                name = (rename or {}).get(c["artifact"], c["artifact"])
                cells.append(
                    add(
                        Cell(
                            run_id=run.id,
                            artifact=name,
                            artifact_path=f"examples/{name}/{name}.bpf.o",
                            artifact_sha256="",
                            kernel_id=kernel_id,
                            seconds=row.seconds,
                            cached=False,
                            result_id=row.id,
                            artifact_problem=problem,
                            analysis_json=json.dumps(analysis) if analysis else None,
                            **cell_fields(verdict, result),
                        )
                    )
                )
        required = {k for k in kernels if recorded(k)["kernel"]["required"]}
        req_cells = [c for c in cells if c.kernel_id in required]
        if status == "interrupted":
            exit_code = 130
        elif any(c.status == "error" or c.code == "INVALID_ARTIFACT" for c in req_cells):
            exit_code = 1
        elif any(c.status == "fail" for c in req_cells):
            exit_code = 2
        else:
            exit_code = 0
        run.exit_code = exit_code
        session.add(run)
        return run.id

    return store.write(_build)  # one transaction: fast, and all or nothing


def set_cell(store: Store, run_id: int, artifact: str, kernel: str, /, **fields: Any) -> None:
    """Overwrite fields of one stored cell (status, code, evidence, program, ...)."""

    def _apply(session: Any) -> None:
        from sqlmodel import select

        stmt = select(Cell).where(
            Cell.run_id == run_id, Cell.artifact == artifact, Cell.kernel_id == kernel
        )
        cell = session.exec(stmt).one()
        for key, value in fields.items():
            setattr(cell, key, value)
        session.add(cell)

    store.write(_apply)


def hostile_result(name: str = "<script>window.__pwned=1</script><b>x</b>") -> Edit:
    """An edit that puts markup into a program name and its verifier log, to test escaping."""

    def _edit(artifact: str, kernel: str, result: dict[str, Any]) -> dict[str, Any]:
        if artifact != "verifier-oob":
            return result
        result = copy.deepcopy(result)
        log = (
            '<script>window.__pwned=2</script>\n<img src=x onerror="window.__pwned=3">\n'
            "invalid access to map value </pre><script>window.__pwned=4</script>"
        )
        for p in result["discovery"]["programs"]:
            p["name"], p["load_log"] = name, log
        result["load"]["failed_program"] = name
        result["load"]["verifier_log"] = log
        return result

    return _edit
