"""HTML report: one self-contained, autoescaped file (no external assets, works offline).

`build_view` lays a RunView out as the page's grid and per-cell details so the template
only places them; report/result_view.py turns each cell's raw evidence into what the
details show. Everything from a guest or an artifact (program names, logs, command
output) reaches the page through Jinja's autoescaping, and the script never builds
markup from data; element ids are row/column indices, never names, so any artifact name
is safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from jinja2 import Environment, PackageLoader, select_autoescape

from bpfcompat.matrix.policy import EXIT_MEANINGS
from bpfcompat.matrix.verdict import Verdict
from bpfcompat.report.compare import CellChange, Comparison
from bpfcompat.report.cost import CostChange, CostRow, cost_rows
from bpfcompat.report.insight import FloorCheck, Subset, floor_check, loadable_subset
from bpfcompat.report.result_view import ResultView, result_view
from bpfcompat.report.view import CellInfo, KernelInfo, RunInfo, RunView

TOOLTIP_CHARS = 300

CHANGE_BADGES = {  # kind -> (badge text, css class)
    "new_failure": ("new failure", "ch-bad"),
    "changed": ("code changed", "ch-warn"),
    "fixed": ("fixed", "ch-good"),
    "only_head": ("new cell", "ch-info"),
    "only_base": ("removed", "ch-info"),
}


@dataclass
class KernelColumn:
    index: int
    id: str
    release: str
    required: bool
    btf: str  # yes | no | unknown
    accel: str
    arch: str
    boot_seconds: float | None
    status: str
    error: str | None
    cmdline: str
    package_version: str
    ready_via: str | None = None


@dataclass
class ChangeView:
    kind: str
    badge: str
    css: str
    artifact: str
    kernel: str
    required: bool
    regression: bool
    base: str
    head: str
    base_status: str
    base_code: str | None
    head_status: str
    head_code: str | None
    evidence: str | None
    anchor: str | None  # id of the head cell, when the head run has one


@dataclass
class GridCell:
    row: int
    col: int
    status: str  # pass | fail | error | none
    code: str | None
    required: bool
    tooltip: str
    change: ChangeView | None = None
    expectation: str | None = None  # what the project expects here, when it says
    expected: bool | None = None  # whether that held; None: nothing expected

    @property
    def id(self) -> str:
        return f"cell-{self.row}-{self.col}"

    @property
    def detail_id(self) -> str:
        return f"detail-{self.row}-{self.col}"


@dataclass
class GridRow:
    index: int
    artifact: str
    path: str
    sha256: str
    cells: list[GridCell]
    floor: FloorCheck | None = None
    subset: Subset | None = None

    @property
    def failing(self) -> bool:
        return any(c.status in ("fail", "error") for c in self.cells)

    @property
    def changed(self) -> bool:
        return any(c.change for c in self.cells)


@dataclass
class DetailView:
    """One cell's panel: where it sits, its verdict and summaries, its raw evidence."""

    cell: GridCell
    kernel: KernelColumn
    info: CellInfo
    result: ResultView

    @property
    def artifact(self) -> str:
        return self.info.artifact

    @property
    def verdict(self) -> Verdict:
        return self.info.verdict

    @property
    def alone(self) -> tuple[list[str], list[str]] | None:
        """Where the whole object failed to load: the programs that load on their own here
        and those that fail (None when it loaded, or has one program)."""
        v = self.info.verdict
        progs = [p for p in self.info.programs if p.name and p.autoload]
        if v.status != "fail" or v.stage != "load" or len(progs) < 2:
            return None
        return (
            [str(p.name) for p in progs if p.load_status == "pass"],
            [str(p.name) for p in progs if p.load_status == "fail"],
        )


@dataclass
class ComparisonSummary:
    base_id: int
    head_id: int
    regressions: int
    unchanged: int


@dataclass
class ReportView:
    run: RunInfo
    duration: str | None
    exit_meaning: str
    interrupted: bool
    counts: dict[str, int]
    required_failing: int
    kernels: list[KernelColumn]
    rows: list[GridRow]
    details: list[DetailView]
    kernel_errors: list[KernelColumn] = field(default_factory=list)
    comparison: ComparisonSummary | None = None
    changes: list[ChangeView] = field(default_factory=list)
    cost_rows: list[CostRow] = field(default_factory=list)
    cost_changes: list[CostChange] = field(default_factory=list)

    @property
    def heaviest(self) -> CostRow | None:
        return max(self.cost_rows, key=lambda r: r.peak_share, default=None)

    @property
    def expectations(self) -> tuple[int, int]:
        """(cells whose stated expectation held, cells where it did not)."""
        cells = [c for row in self.rows for c in row.cells if c.expected is not None]
        held = sum(1 for c in cells if c.expected)
        return held, len(cells) - held


def _yes_no(value: bool | None) -> str:
    return "yes" if value is True else "no" if value is False else "unknown"


def _duration(start: str | None, end: str | None) -> str | None:
    try:
        seconds = datetime.fromisoformat(end or "") - datetime.fromisoformat(start or "")
    except ValueError:
        return None
    minutes, secs = divmod(round(seconds.total_seconds()), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _kernel_column(index: int, k: KernelInfo, accel: str) -> KernelColumn:
    return KernelColumn(
        index=index,
        id=k.id,
        release=k.release,
        required=k.required,
        btf=_yes_no(k.btf),
        accel=k.accel or accel,
        arch=k.arch,
        boot_seconds=k.boot_seconds,
        status=k.status,
        error=k.error,
        cmdline=k.cmdline,
        package_version=k.package_version,
        ready_via=k.ready_via,
    )


def _change_view(change: CellChange, anchor: str | None) -> ChangeView:
    badge, css = CHANGE_BADGES[change.kind]
    if change.regression:
        badge = "regression"
    return ChangeView(
        kind=change.kind,
        badge=badge,
        css=css,
        artifact=change.artifact,
        kernel=change.kernel,
        required=change.required,
        regression=change.regression,
        base=change.base_verdict,
        head=change.head_verdict,
        base_status=change.base_status or "absent",
        base_code=change.base_code,
        head_status=change.head_status or "absent",
        head_code=change.head_code,
        evidence=change.evidence,
        anchor=anchor,
    )


def _grid_cell(row: int, k: KernelColumn, cell: CellInfo | None) -> GridCell:
    if cell is None:
        return GridCell(row, k.index, "none", None, k.required, "not run")
    v = cell.verdict
    tip = v.label + (f": {v.evidence or ''}" if v.code else "")
    tip += f" — {v.needs}" if v.needs else ""
    if cell.expected is not None:
        tip = (
            f"expected ({cell.expectation}) · {tip}"
            if cell.expected
            else f"UNEXPECTED: expected {cell.expectation} · {tip}"
        )
    return GridCell(
        row,
        k.index,
        v.status,
        v.code,
        k.required,
        tip[:TOOLTIP_CHARS],
        expectation=cell.expectation,
        expected=cell.expected,
    )


def build_view(run: RunView, comparison: Comparison | None = None) -> ReportView:
    """The report's view model: everything the template shows, precomputed."""
    kernels = [_kernel_column(i, k, run.run.accel) for i, k in enumerate(run.kernels)]
    cells = run.cell_map()
    rows: list[GridRow] = []
    details: list[DetailView] = []
    anchors: dict[tuple[str, str], str] = {}
    for r, name in enumerate(run.artifact_names()):
        row_cells = []
        for k in kernels:
            cell = cells.get((name, k.id))
            grid = _grid_cell(r, k, cell)
            row_cells.append(grid)
            if cell is not None:
                anchors[(name, k.id)] = grid.id
                detail = result_view(cell, with_libbpf_log=cell.failing)
                details.append(DetailView(grid, k, cell, detail))
        art = run.artifact(name)
        rows.append(
            GridRow(
                r,
                name,
                art.path if art else "",
                art.sha256 if art else "",
                row_cells,
                floor_check(run, name),
                loadable_subset(run, name),
            )
        )
    change_views = []
    if comparison:
        change_views = [
            _change_view(ch, anchors.get((ch.artifact, ch.kernel))) for ch in comparison.changes
        ]
        by_anchor = {cv.anchor: cv for cv in change_views if cv.anchor}
        for row in rows:
            for c in row.cells:
                c.change = by_anchor.get(c.id)
    counts: dict[str, int] = dict(run.counts())
    counts["not run"] = sum(1 for row in rows for c in row.cells if c.status == "none")
    exit_code = run.run.exit_code
    return ReportView(
        run=run.run,
        duration=_duration(run.run.started_at, run.run.finished_at),
        exit_meaning="not finished"
        if exit_code is None
        else EXIT_MEANINGS.get(exit_code, "unknown"),
        interrupted=run.run.status == "interrupted",
        counts=counts,
        required_failing=sum(
            1 for row in rows for c in row.cells if c.required and c.status in ("fail", "error")
        ),
        kernels=kernels,
        rows=rows,
        details=details,
        kernel_errors=[k for k in kernels if k.error],
        comparison=ComparisonSummary(
            comparison.base_id,
            comparison.head_id,
            len(comparison.regressions),
            comparison.unchanged,
        )
        if comparison
        else None,
        changes=change_views,
        cost_rows=cost_rows(run),
        cost_changes=comparison.cost if comparison else [],
    )


def _env() -> Environment:
    return Environment(
        loader=PackageLoader("bpfcompat.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(run: RunView, comparison: Comparison | None = None) -> str:
    """Render a run (with its raw results for the full details), optionally against a
    base run."""
    view = build_view(run, comparison)
    return _env().get_template("report.html.j2").render(view=view)
