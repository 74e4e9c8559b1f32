"""The run view: one typed reading of a run that every report format and the terminal
render, built once per report call.

It comes from the store (`RunView.from_store`) or from a `bpfcompat.run.v1` JSON export
written by another job (`RunView.from_export`), and gives that export back with the same
keys and values (`RunView.export`). Keys are only ever added, never renamed: CI scripts
parse the export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bpfcompat.errors import ReportError, StoreError
from bpfcompat.matrix.result import ResultModel
from bpfcompat.matrix.statics import analysis_of
from bpfcompat.matrix.store import Cell, Store, ValidatorResult
from bpfcompat.matrix.verdict import VERDICT_FIELDS, Verdict

SCHEMA = "bpfcompat.run.v1"
TEXT_CHARS = 200  # a summary value that is not what it should be, as bounded text
STATUSES = ("pass", "fail", "error")


def _text(value: Any) -> str | None:
    """Text as is; anything else the guest put where text belongs as its JSON, bounded,
    so a malformed result is shown rather than breaking the report."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, default=str)[:TEXT_CHARS]


def _count(value: Any) -> int | str | None:
    """An entry count (or a word such as `cpus`) as is; anything else as bounded text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return _text(value)


def _texts(value: Any) -> Any:
    return [_text(v) or "" for v in value] if isinstance(value, list) else value


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")


class RunInfo(_Model):
    id: int
    started_at: str
    finished_at: str | None
    status: str  # running | completed | interrupted | failed
    exit_code: int | None
    accel: str
    tool_version: str
    error: str | None
    labels: dict[str, str] = {}
    attach_mode: str | None = None
    plan_digest: str | None = None  # shards of one plan share it
    shard: str | None = None  # "I/N" for one slice of a plan; "merged N" for a merge


class KernelInfo(_Model):
    id: str
    release: str
    required: bool
    btf: bool | None
    boot_seconds: float | None
    package: str
    package_version: str
    suite: str
    cmdline: str
    status: str  # pending | ok | cached | error
    error: str | None
    boots: int
    peak_rss_mb: float | None
    arch: str = ""
    accel: str = ""  # empty in runs stored before kernels had their own: the run's accel
    notes: list[str] = []
    # How the first guest got ready (boot | boot+snapshot | restore), and how many of its
    # guests were restored from a snapshot; None and 0 in older exports.
    ready_via: str | None = None
    restores: int = 0
    # More guests of the kernel that took over part of its work when a run slot was free.
    helpers: int = 0


class ArtifactInfo(_Model):
    name: str
    path: str
    sha256: str
    manifest: str | None
    # The host's static reading: the oldest upstream release with everything it needs.
    floor: str | None = None
    floor_reason: str | None = None

    texts = field_validator("floor", "floor_reason", mode="before")(_text)


class VariantSummary(_Model):
    """Which program of a variant group the validator kept on this kernel."""

    group: str | None
    chosen: str | None
    disabled: list[str]

    texts = field_validator("group", "chosen", mode="before")(_text)
    text_lists = field_validator("disabled", mode="before")(_texts)


class MapFixupSummary(_Model):
    """A map resized at load time (`requested` may be `cpus`, resolved in the guest)."""

    name: str | None
    requested: int | str | None
    applied_entries: int | str | None
    status: str | None

    texts = field_validator("name", "status", mode="before")(_text)
    counts = field_validator("requested", "applied_entries", mode="before")(_count)


class VerifierCost(_Model):
    """The verifier's summary of a program it accepted on one kernel."""

    insns: int = Field(ge=0)
    limit: int | None = Field(default=None, ge=0)
    states: int | None = Field(default=None, ge=0)
    peak_states: int | None = Field(default=None, ge=0)
    stack: list[int] | None = None  # bytes per subprogram, main program first
    usec: int | None = Field(default=None, ge=0)

    @property
    def share(self) -> float | None:
        """Instructions processed as a fraction of the kernel's limit (the headroom)."""
        return self.insns / self.limit if self.limit else None

    @property
    def share_text(self) -> str:
        return percent(self.share)

    @property
    def stack_bytes(self) -> int | None:
        return sum(self.stack) if self.stack else None

    def line(self) -> str:
        """`1,234 insns (0.1% of 1,000,000) · 12 states (peak 4) · stack 40+0 B · 0.8 ms`."""
        text = f"{self.insns:,} insns"
        if self.limit:
            text += f" ({percent(self.share)} of {self.limit:,})"
        if self.states is not None:
            text += f" · {self.states:,} states"
            text += f" (peak {self.peak_states:,})" if self.peak_states is not None else ""
        if self.stack:
            text += f" · stack {'+'.join(map(str, self.stack))} B"
        if self.usec is not None:
            text += f" · {self.usec / 1000:.1f} ms"
        return text


def percent(share: float | None) -> str:
    if share is None:
        return "?"
    pct = share * 100
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.1f}%" if pct >= 0.1 else "<0.1%"


class ProgramSummary(_Model):
    """One program's load status on a kernel (pass, fail or skipped) and, where the
    verifier accepted it, what that cost; kept with the cell for the reports' loadable
    subset and verifier cost."""

    name: str | None
    load_status: str | None
    autoload: bool | None = None
    variant_group: str | None = None
    section: str | None = None
    verifier: VerifierCost | None = None

    @field_validator("verifier", mode="before")
    @classmethod
    def _lenient(cls, value: Any) -> Any:
        # A stored summary of the wrong shape is no cost, not an unreadable run.
        if value is None or isinstance(value, VerifierCost):
            return value
        try:
            return VerifierCost.model_validate(value)
        except ValidationError:
            return None

    texts = field_validator("name", "load_status", "variant_group", "section", mode="before")(_text)


class RawEvidence(_Model):
    """What the guest produced for a cell, for the HTML report's details. `result` is the
    validator's raw JSON: only report/result_view.py reads it."""

    result: dict[str, Any] | None = None
    console_tail: str | None = None
    infra_error: str | None = None
    exit_code: int | None = None
    signal: int | None = None


class CellInfo(_Model):
    artifact: str
    kernel: str
    verdict: Verdict
    notes: list[str]
    variants: list[VariantSummary]
    map_fixups: list[MapFixupSummary]
    seconds: float
    cached: bool
    classifier_version: str
    raw: RawEvidence | None = None  # loaded only when asked for (the HTML report)
    flaky: bool = False  # a functional test passed only on a retry
    expectation: str | None = None  # what the project expects here (`fail CODE`, `pass`)
    expected: bool | None = None  # whether it held; None: no expectation stated
    programs: list[ProgramSummary] = []
    programs_left_out: int = 0  # programs beyond what a cell keeps

    text_lists = field_validator("notes", mode="before")(_texts)

    @property
    def unexpected(self) -> bool:
        return self.expected is False

    @property
    def failing(self) -> bool:
        return self.verdict.status != "pass"

    def export(self, *, include_results: bool = False) -> dict[str, Any]:
        """This cell as the export writes it (today's key order)."""
        v = self.verdict
        entry: dict[str, Any] = {
            "artifact": self.artifact,
            "kernel": self.kernel,
            "status": v.status,
            "code": v.code,
            "evidence": v.evidence,
            "notes": list(self.notes),
            "seconds": self.seconds,
            "cached": self.cached,
            "confidence": v.confidence,
            "stage": v.stage,
            "program": v.program,
            "remediation": v.remediation,
            "rule": v.rule,
            "detail": v.detail,
            "classifier_version": self.classifier_version,
            "variants": [s.model_dump() for s in self.variants],
            "map_fixups": [s.model_dump() for s in self.map_fixups],
            "attached": v.attached,
            "flaky": self.flaky,
            "expectation": self.expectation,
            "expected": self.expected,
            "needs": v.needs,
            "pinpoint": v.pinpoint.model_dump() if v.pinpoint else None,
            "programs": [p.model_dump() for p in self.programs],
            "programs_left_out": self.programs_left_out,
        }
        if include_results:
            if self.raw is None:
                raise ValueError("this run view was built without the raw results")
            entry.update(self.raw.model_dump())
        return entry


class RunView(_Model):
    run: RunInfo
    kernels: list[KernelInfo]
    artifacts: list[ArtifactInfo]
    cells: list[CellInfo]

    # --- building -----------------------------------------------------------------------

    @classmethod
    def from_store(
        cls, store: Store, run_id: int | None = None, *, with_results: bool = True
    ) -> RunView:
        """The stored run (default: the latest) in one read of its run, kernels and cells;
        `with_results` also loads every cell's raw evidence, in a few bulk queries."""
        run = store.run(run_id)
        assert run.id is not None
        kernels = store.kernels(run.id)
        cells = store.cells(run.id)
        results = (
            store.results(c.result_id for c in cells if c.result_id is not None)
            if with_results
            else None
        )
        artifacts: dict[str, ArtifactInfo] = {}
        try:
            for cell in cells:
                if cell.artifact not in artifacts:
                    statics = analysis_of(cell.analysis_json)
                    artifacts[cell.artifact] = ArtifactInfo(
                        name=cell.artifact,
                        path=cell.artifact_path,
                        sha256=cell.artifact_sha256,
                        manifest=cell.manifest_path,
                        floor=statics.get("floor"),
                        floor_reason=statics.get("floor_reason"),
                    )
            return cls(
                run=RunInfo(
                    id=run.id,
                    started_at=run.started_at,
                    finished_at=run.finished_at,
                    status=run.status,
                    exit_code=run.exit_code,
                    accel=run.accel or "",
                    tool_version=run.tool_version or "",
                    error=run.error,
                    labels=run.labels,
                    attach_mode=run.attach_mode,
                    plan_digest=run.plan_digest,
                    shard=run.shard,
                ),
                kernels=[
                    KernelInfo(
                        id=k.kernel_id,
                        release=k.release or "",
                        required=bool(k.required),
                        btf=k.btf,
                        boot_seconds=k.boot_seconds,
                        package=k.package or "",
                        package_version=k.package_version or "",
                        suite=k.suite or "",
                        cmdline=k.cmdline or "",
                        status=k.status or "",
                        error=k.error,
                        boots=k.boots or 0,
                        peak_rss_mb=k.peak_rss_mb,
                        notes=k.notes,
                        arch=k.arch or "",
                        accel=k.accel or "",
                        ready_via=k.ready_via,
                        restores=k.restores or 0,
                        helpers=k.helpers or 0,
                    )
                    for k in kernels
                ],
                artifacts=list(artifacts.values()),
                cells=[_stored_cell(c, results) for c in cells],
            )
        except (ValidationError, ValueError) as exc:
            raise StoreError(f"{store.path}: run {run.id}: {_reason(exc)}") from None

    @classmethod
    def from_export(cls, path: Path) -> RunView:
        """A `bpfcompat.run.v1` export file; anything else is refused in one line."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ReportError(f"{path}: cannot read the run export: {exc.strerror}") from None
        except ValueError as exc:
            raise ReportError(f"{path}: not a bpfcompat run export: not JSON ({exc})") from None
        try:
            return cls.from_export_data(data)
        except ValueError as exc:
            raise ReportError(f"{path}: not a {SCHEMA} run export: {_reason(exc)}") from None

    @classmethod
    def from_export_data(cls, data: Any) -> RunView:
        """The parsed export (ValueError naming what is wrong when it is not one)."""
        if not isinstance(data, dict):
            raise ValueError(f"the top level is a JSON {type(data).__name__}, not an object")
        if data.get("schema") != SCHEMA:
            schema = repr(data.get("schema"))[:TEXT_CHARS]
            raise ValueError(f"schema is {schema}, expected {SCHEMA!r}")
        cells = data.get("cells")
        if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
            raise ValueError("cells: expected a list of objects")
        return cls.model_validate(
            {
                "run": data.get("run"),
                "kernels": data.get("kernels"),
                "artifacts": data.get("artifacts"),
                "cells": [_exported_cell(c) for c in cells],
            }
        )

    # --- reading ------------------------------------------------------------------------

    def export(self, *, include_results: bool = False) -> dict[str, Any]:
        """The `bpfcompat.run.v1` export; `include_results` adds each cell's raw evidence."""
        return {
            "schema": SCHEMA,
            "run": self.run.model_dump(),
            "kernels": [k.model_dump() for k in self.kernels],
            "artifacts": [a.model_dump() for a in self.artifacts],
            "cells": [c.export(include_results=include_results) for c in self.cells],
        }

    @property
    def has_results(self) -> bool:
        return all(c.raw is not None for c in self.cells)

    def artifact_names(self) -> list[str]:
        """Row order: the listed artifacts, then any a cell names that the list lacks."""
        names = [a.name for a in self.artifacts] + [c.artifact for c in self.cells]
        return list(dict.fromkeys(names))

    def artifact(self, name: str) -> ArtifactInfo | None:
        return next((a for a in self.artifacts if a.name == name), None)

    def cell_map(self) -> dict[tuple[str, str], CellInfo]:
        return {(c.artifact, c.kernel): c for c in self.cells}

    def required(self, kernel_id: str) -> bool:
        """Whether a kernel gates the exit code (a kernel the run does not list does)."""
        return next((k.required for k in self.kernels if k.id == kernel_id), True)

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for c in self.cells if c.verdict.status == s) for s in STATUSES}

    def failing(self) -> list[CellInfo]:
        """Failing and erroring cells, required kernels first, then by artifact and kernel."""
        bad = [c for c in self.cells if c.failing]
        return sorted(bad, key=lambda c: (not self.required(c.kernel), c.artifact, c.kernel))


def _loads(text: str | None, default: Any) -> Any:
    if not text:
        return default
    value = json.loads(text)
    return value if isinstance(value, type(default)) else default


def _stored_cell(cell: Cell, results: dict[int, ValidatorResult] | None) -> CellInfo:
    details = _loads(cell.details_json, {})
    raw = None
    if results is not None:
        stored = results.get(cell.result_id) if cell.result_id is not None else None
        raw = RawEvidence(
            result=_result_data(stored),
            console_tail=stored.console_tail if stored else None,
            infra_error=stored.infra_error if stored else None,
            exit_code=stored.exit_code if stored else None,
            signal=stored.signal if stored else None,
        )
    return CellInfo(
        artifact=cell.artifact,
        kernel=cell.kernel_id,
        verdict=Verdict.stored(cell),
        notes=_loads(cell.notes_json, []),
        variants=_dicts(details.get("variants")),
        map_fixups=_dicts(details.get("map_fixups")),
        seconds=float(cell.seconds or 0.0),
        cached=bool(cell.cached),
        classifier_version=cell.classifier_version or "",
        raw=raw,
        flaky=bool(cell.flaky),
        expectation=cell.expectation,
        expected=cell.expected,
        programs=_dicts(details.get("programs")),
        programs_left_out=_count_of(details.get("programs_left_out")),
    )


def _count_of(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _result_data(stored: ValidatorResult | None) -> dict[str, Any] | None:
    """The stored result as the typed model normalised it (every field of its own type,
    bounded), so no renderer meets a guest's wrong types; None when it is unusable."""
    result = stored.result() if stored else None
    return result.as_dict() if isinstance(result, ResultModel) else None


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


_RAW_KEYS = tuple(RawEvidence.model_fields)


def _exported_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """An export's cell in the view's shape (the verdict's fields gathered into one)."""
    return {
        "artifact": cell.get("artifact"),
        "kernel": cell.get("kernel"),
        "verdict": {f: cell.get(f) for f in VERDICT_FIELDS},
        "notes": cell.get("notes"),
        "variants": cell.get("variants"),
        "map_fixups": cell.get("map_fixups"),
        "seconds": cell.get("seconds"),
        "cached": cell.get("cached"),
        "classifier_version": cell.get("classifier_version"),
        "raw": {k: cell.get(k) for k in _RAW_KEYS} if "result" in cell else None,
        "flaky": cell.get("flaky", False),
        "expectation": cell.get("expectation"),
        "expected": cell.get("expected"),
        "programs": cell.get("programs") or [],
        "programs_left_out": cell.get("programs_left_out") or 0,
    }


def _reason(exc: Exception) -> str:
    """The first problem of a validation error as `where: what`, on one line."""
    if not isinstance(exc, ValidationError):
        return " ".join(str(exc).split())
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if p not in ("verdict", "raw"))
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where or 'top level'}: {first['msg']}{more}"
