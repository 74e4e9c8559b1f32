"""The commands over stored runs: report, compare, merge, reclassify, runs list.

Kept apart from cli.py (which runs kernels) so neither file mixes running with reading
back; every line printed goes through `printable`, since ids and paths come from inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bpfcompat.errors import ConfigError
from bpfcompat.matrix.store import DEFAULT_DB, Store
from bpfcompat.report.terminal import printable

DbOpt = Annotated[Path, typer.Option("--db", help="SQLite store.")]
HtmlOpt = Annotated[Path | None, typer.Option("--html", help="Write the HTML report here.")]
JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Write the run as bpfcompat.run.v1 JSON.")
]
MdOpt = Annotated[Path | None, typer.Option("--markdown", help="Write a Markdown summary.")]
JunitOpt = Annotated[Path | None, typer.Option("--junit", help="Write JUnit XML.")]


def out(line: str) -> None:
    typer.echo(printable(line))


def say(line: str) -> None:
    typer.echo(printable(line), err=True)


def report(
    db: DbOpt = DEFAULT_DB,
    run: Annotated[int | None, typer.Option("--run", help="Run id (default: the latest).")] = None,
    html: HtmlOpt = None,
    json_path: JsonOpt = None,
    markdown: MdOpt = None,
    junit: JunitOpt = None,
    base: Annotated[
        str | None,
        typer.Option(
            "--base", help="Show changes since this run: a run id or a run export (JSON)."
        ),
    ] = None,
) -> None:
    """Render a stored run."""
    from bpfcompat.report import write_reports

    if not any((html, json_path, markdown, junit)):
        raise ConfigError("report: give at least one of --html, --json, --markdown, --junit")
    store = existing_store(db)
    run_id = store.run(run).id
    assert run_id is not None
    for path in write_reports(
        store, run_id, html=html, json_path=json_path, markdown=markdown, junit=junit, base_run=base
    ):
        out(f"wrote {path}")


def compare(
    base: Annotated[
        str, typer.Option("--base", help="The earlier run: a run id, or a run export (JSON).")
    ],
    head: Annotated[
        str | None,
        typer.Option("--head", help="The later run: a run id or export (default: the latest)."),
    ] = None,
    db: DbOpt = DEFAULT_DB,
    cost_threshold: Annotated[
        float,
        typer.Option(
            "--cost-threshold",
            min=0,
            help="List programs whose verifier instructions processed grew more than this "
            "many percent.",
        ),
    ] = 20.0,
    cost_min_insns: Annotated[
        int,
        typer.Option("--cost-min-insns", min=0, help="Ignore programs smaller than this."),
    ] = 100,
    fail_on_cost: Annotated[
        bool,
        typer.Option(
            "--fail-on-cost", help="Exit 2 also when such a growth is on a required kernel."
        ),
    ] = False,
) -> None:
    """List what changed between two runs: cells newly failing, fixed or recoded, and cost.

    Cost: programs whose verifier instructions processed grew beyond --cost-threshold.

    Exits 2 when a required cell passed in --base and fails or errors in --head (or, with
    --fail-on-cost, when a program's cost grew beyond the threshold on a required kernel).

    A new code on a cell that already failed is listed but does not gate."""
    from bpfcompat.report import base_view
    from bpfcompat.report.compare import compare_views

    needs_store = base.strip().isdigit() or head is None or head.strip().isdigit()
    store = existing_store(db) if needs_store else None
    if head is None:
        assert store is not None
        head_view = base_view(store, str(store.run(None).id))
    else:
        head_view = base_view(store, head)
    comparison = compare_views(
        base_view(store, base),
        head_view,
        cost_threshold=cost_threshold / 100,
        cost_min_insns=cost_min_insns,
        gate_cost=fail_on_cost,
    )
    for line in comparison.lines():
        out(line)
    # SystemExit, not typer.Exit: with standalone_mode=False typer returns an Exit's code
    # from app() instead of raising it, and main() drops that return value.
    raise SystemExit(comparison.exit_code)


def merge(
    exports: Annotated[
        list[Path], typer.Argument(help="The run exports (--json) of every shard of one plan.")
    ],
    db: DbOpt = DEFAULT_DB,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where report.html goes.")] = Path(
        ".bpfcompat/out"
    ),
    json_path: JsonOpt = None,
    html: HtmlOpt = None,
    markdown: MdOpt = None,
    junit: JunitOpt = None,
) -> None:
    """Build one run (store and every report) from the exports of a plan's shards."""
    from bpfcompat.report import write_reports
    from bpfcompat.report.merge import load_shards, merge_into

    views = load_shards(exports)
    store = Store(db)
    run_id = merge_into(store, views)
    for path in write_reports(
        store,
        run_id,
        html=html or out_dir / "report.html",
        json_path=json_path,
        markdown=markdown,
        junit=junit,
    ):
        out(f"wrote {path}")
    run = store.run(run_id)
    out(f"run {run_id}: merged {len(views)} shards, exit code {run.exit_code}")
    raise typer.Exit(run.exit_code or 0)


def existing_store(db: Path) -> Store:
    if not db.is_file():
        raise ConfigError(f"{db}: no such store (run `bpfcompat matrix run` first)")
    return Store(db)


def runs_list(db: DbOpt = DEFAULT_DB) -> None:
    """List stored runs, newest first."""
    store = existing_store(db)
    runs = store.runs()
    if not runs:
        say(f"bpfcompat: {db}: no runs yet")
    for run in runs:
        cells = store.cells(run.id or 0)
        counts = {s: sum(1 for c in cells if c.status == s) for s in ("pass", "fail", "error")}
        n_kernels = len(store.kernels(run.id or 0))
        shape = f"{len({c.artifact for c in cells})} artifacts x {n_kernels} kernels"
        exit_code = "-" if run.exit_code is None else run.exit_code
        labels = " ".join(f"{k}={v}" for k, v in run.labels.items())
        out(
            f"{run.id:5}  {run.started_at}  {run.status:11} exit {exit_code:<3}  {shape}  "
            f"pass {counts['pass']} fail {counts['fail']} error {counts['error']}"
            + (f"  {labels}" if labels else "")
        )


def reclassify(
    db: DbOpt = DEFAULT_DB,
    run: Annotated[int | None, typer.Option("--run", help="Run id (default: the latest).")] = None,
) -> None:
    """Re-run the classifier over stored raw results; boots nothing."""
    from bpfcompat.matrix.reclassify import reclassify_run

    store = existing_store(db)
    run_id = store.run(run).id
    assert run_id is not None
    changed = reclassify_run(store, run_id)
    out(f"run {run_id}: {len(changed)} cell(s) changed")
    for line in changed:
        out(f"  {line}")
