"""The typer app: thin commands over the core. One error boundary: a BpfcompatError
becomes one line on stderr and exit 1, never a traceback."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from bpfcompat import __version__
from bpfcompat.cli_cache import cache_app
from bpfcompat.cli_kernels import KernelsOpt, image_app, kernels_app, with_btf
from bpfcompat.errors import BpfcompatError, ConfigError
from bpfcompat.matrix.config import default_kernels_file, load_kernel_matrix
from bpfcompat.matrix.plan import Plan, discover_artifacts, load_artifact, parse_shard
from bpfcompat.matrix.store import DEFAULT_DB, Store
from bpfcompat.matrix.verdict import Verdict
from bpfcompat.report.terminal import printable

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="On which kernels does this .bpf.o load, verify and attach — and if not, why?",
)
matrix_app = typer.Typer(no_args_is_help=True, help="Run artifacts across kernels.")
runs_app = typer.Typer(no_args_is_help=True, help="Stored runs.")
manifest_app = typer.Typer(no_args_is_help=True, help="Artifact manifests.")
app.add_typer(kernels_app, name="kernels")
app.add_typer(matrix_app, name="matrix")
app.add_typer(runs_app, name="runs")
app.add_typer(image_app, name="image")
app.add_typer(manifest_app, name="manifest")
app.add_typer(cache_app, name="cache")

DbOpt = Annotated[Path, typer.Option("--db", help="SQLite store.")]
HtmlOpt = Annotated[Path | None, typer.Option("--html", help="Write the HTML report here.")]
JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Write the run as bpfcompat.run.v1 JSON.")
]
MdOpt = Annotated[Path | None, typer.Option("--markdown", help="Write a Markdown summary.")]
JunitOpt = Annotated[Path | None, typer.Option("--junit", help="Write JUnit XML.")]


class AttachMode(StrEnum):
    disabled = "disabled"
    best_effort = "best-effort"
    required = "required"


AttachOpt = Annotated[
    AttachMode,
    typer.Option(
        "--attach-mode",
        help="disabled: load only; best-effort: show programs that did not attach; "
        "required: a program that does not attach fails the cell.",
    ),
]
NoAutoOpt = Annotated[
    bool,
    typer.Option(
        "--no-auto-fixups",
        help="Do not size maps compiled with a zero size (the loader's job) when the manifest "
        "does not: such objects then fail with LOADER_SETUP_REQUIRED.",
    ),
]
NoSnapshotOpt = Annotated[
    bool,
    typer.Option(
        "--no-snapshot",
        help="Boot every guest instead of restoring it from the kernel's cached snapshot "
        "(also: BPFCOMPAT_SNAPSHOT=0).",
    ),
]
LabelOpt = Annotated[
    list[str] | None,
    typer.Option("--label", help="KEY=VALUE recorded with the run (repeatable), e.g. git=abc123."),
]


def _labels(values: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values or []:
        key, sep, text = value.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", key) or len(text) > 256:
            raise ConfigError(
                f"--label {value!r}: expected KEY=VALUE (KEY: letters, digits, _ . -; "
                "VALUE: at most 256 characters)"
            )
        labels[key] = text
    return labels


def _out(line: str) -> None:
    """Print one line to stdout. Every line goes through `printable`: names, codes and
    evidence come from file names, manifests and guests, and must not drive the terminal."""
    typer.echo(printable(line))


def _say(line: str) -> None:
    """Print one line to stderr, escaped like `_out`."""
    typer.echo(printable(line), err=True)


def _matrix(path: Path | None):  # type: ignore[no-untyped-def]
    return load_kernel_matrix(path or default_kernels_file())


class _Printer:
    """Progress as plain timestamped lines (CI) or a live rich table (terminal)."""

    def __init__(self, kernel_ids: list[str]) -> None:
        self.live = None
        self.state: dict[str, str] = dict.fromkeys(kernel_ids, "waiting")
        if sys.stderr.isatty() and not os.environ.get("CI"):
            from rich.live import Live

            self.live = Live(self._table(), refresh_per_second=4, transient=True)
            self.live.start()

    def _table(self):  # type: ignore[no-untyped-def]
        from rich.table import Table
        from rich.text import Text

        table = Table(title="bpfcompat matrix")
        table.add_column("kernel")
        table.add_column("state")
        for kid, state in self.state.items():
            # Text, not str: rich would read "[...]" in a kernel id or detail as markup.
            table.add_row(Text(printable(kid)), Text(printable(state)))
        return table

    def __call__(self, kernel: str, stage: str, detail: str = "") -> None:
        text = f"{stage} {detail}".strip()
        if self.live is not None:
            if kernel in self.state:
                self.state[kernel] = text
            self.live.update(self._table())
        else:
            stamp = datetime.now(UTC).strftime("%H:%M:%S")
            _say(f"[{stamp}] {kernel}: {text}")

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


@matrix_app.command("run")
def matrix_run(
    artifacts: Annotated[
        list[Path],
        typer.Argument(help="Artifacts (.bpf.o) or directories of them."),
    ],
    kernels: KernelsOpt = None,
    kernel: Annotated[
        list[str] | None, typer.Option("--kernel", help="Only these kernel ids (repeatable).")
    ] = None,
    db: DbOpt = DEFAULT_DB,
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Where report.html and logs go.")
    ] = Path(".bpfcompat/out"),
    json_path: JsonOpt = None,
    html: HtmlOpt = None,
    markdown: MdOpt = None,
    junit: JunitOpt = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Validate even where a stored result matches.")
    ] = False,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=0, help="Kernels at once (0: from CPUs and memory).")
    ] = 0,
    boot_per_artifact: Annotated[
        bool,
        typer.Option(
            "--boot-per-artifact",
            help="Cold-boot for every cell (the slow approach, for benchmarks).",
        ),
    ] = False,
    attach_mode: AttachOpt = AttachMode.best_effort,
    no_auto_fixups: NoAutoOpt = False,
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", help="Apply this manifest to every artifact given."),
    ] = None,
    label: LabelOpt = None,
    no_snapshot: NoSnapshotOpt = False,
    btf: Annotated[
        list[str] | None,
        typer.Option(
            "--btf",
            help="KERNEL_ID=PATH: a BTF file libbpf relocates CO-RE against on that kernel "
            "(btf_custom_path); PATH `build` is a built kernel's own detached BTF. Repeatable.",
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="I/N: run only the I-th of N slices of the cells (merge the exports with "
            "`bpfcompat merge`).",
        ),
    ] = None,
) -> None:
    """Validate every artifact on every kernel: each kernel booted once for all artifacts."""
    from bpfcompat.matrix.policy import EXIT_MEANINGS
    from bpfcompat.matrix.runner import RunOptions, run_plan
    from bpfcompat.report import write_view
    from bpfcompat.report.terminal import terminal_lines
    from bpfcompat.report.view import RunView

    labels = _labels(label)
    slice_ = parse_shard(shard) if shard is not None else None
    matrix = _matrix(kernels)
    specs = with_btf(matrix.select(kernel), btf or [])
    found = discover_artifacts(artifacts, manifest)
    plan = Plan(specs, found, matrix.guest_suite, attach_mode.value, not no_auto_fixups, slice_)
    store = Store(db)
    printer = _Printer([s.id for s in specs])
    options = RunOptions(
        concurrency=concurrency,
        use_cache=not no_cache,
        workdir=work_dir(db, out_dir),
        boot_per_artifact=boot_per_artifact,
        progress=printer,
        labels=labels,
    )
    options.snapshots = options.snapshots and not no_snapshot
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        with _one_interrupt():
            _, summary = run_plan(plan, store, options)
    finally:
        printer.close()
        signal.signal(signal.SIGTERM, previous)
    for message in summary.messages:
        _say(f"bpfcompat: {message}")
    view = RunView.from_store(store, summary.run_id, with_results=True)
    for line in terminal_lines(view):
        _out(line)
    written = write_view(
        view,
        html=html or out_dir / "report.html",
        json_path=json_path,
        markdown=markdown,
        junit=junit,
    )
    for path in written:
        _out(f"wrote {path}")
    meaning = EXIT_MEANINGS.get(summary.exit_code)
    _out(
        f"run {summary.run_id}: {summary.status}, exit code {summary.exit_code}"
        + (f" ({meaning})" if meaning else "")
    )
    raise typer.Exit(summary.exit_code)


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _one_interrupt() -> Iterator[None]:
    """The first Ctrl-C stops the run; later ones while it winds down (killing guests,
    recording the interrupted run, writing reports) are acknowledged, not obeyed, so the
    interrupted line and the reports are never lost."""
    state = {"count": 0}

    def handler(signum: int, frame: Any) -> None:
        state["count"] += 1
        if state["count"] == 1:
            raise KeyboardInterrupt
        _say("bpfcompat: still stopping: finishing the record of this run and its reports")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        if state["count"]:
            signal.signal(signal.SIGINT, handler)  # stays until the reports are written
        else:
            signal.signal(signal.SIGINT, previous)


def work_dir(db: Path, out_dir: Path) -> Path:
    """Guest consoles and logs: beside the store, one directory per store, so two stores
    in one output directory never mix their files."""
    digest = hashlib.sha256(str(db.resolve()).encode()).hexdigest()[:12]
    return out_dir / "work" / f"{db.stem}-{digest}"


@app.command("validate")
def validate(
    artifact: Annotated[Path, typer.Argument(help="The .bpf.o to validate.")],
    kernel: Annotated[
        str, typer.Option("--kernel", help="'host' for the running kernel, or a kernel id.")
    ] = "host",
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="Manifest YAML (default: <name>.manifest.yaml, else manifest.yaml beside it).",
        ),
    ] = None,
    kernels: KernelsOpt = None,
    db: DbOpt = DEFAULT_DB,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the validator result JSON here.")
    ] = None,
    attach_mode: AttachOpt = AttachMode.best_effort,
    no_auto_fixups: NoAutoOpt = False,
    allow_host_commands: Annotated[
        bool,
        typer.Option(
            "--allow-host-commands",
            help="Let the manifest's functional tests run as root on this host (--kernel host).",
        ),
    ] = False,
    label: LabelOpt = None,
    no_snapshot: NoSnapshotOpt = False,
) -> None:
    """Validate one artifact on the host kernel (root) or on one kernel in a VM."""
    from bpfcompat.matrix.policy import cell_exit_code

    loaded = load_artifact(artifact, manifest)
    if loaded.invalid_reason:
        raise ConfigError(f"{artifact}: {loaded.invalid_reason}")
    if kernel != "host":
        from bpfcompat.matrix.runner import RunOptions, run_plan

        matrix = _matrix(kernels)
        plan = Plan(
            matrix.select([kernel]),
            [loaded],
            matrix.guest_suite,
            attach_mode.value,
            not no_auto_fixups,
        )
        store = Store(db)
        options = RunOptions(
            use_cache=False, workdir=work_dir(db, Path(".bpfcompat/out")), labels=_labels(label)
        )
        options.snapshots = options.snapshots and not no_snapshot
        with _one_interrupt():
            _, summary = run_plan(plan, store, options)
        for message in summary.messages:
            _say(f"bpfcompat: {message}")
        for cell in summary.cells:
            _out(
                f"{cell.artifact} on {cell.kernel_id}: {cell.status}"
                + (f" {cell.code}: {cell.evidence}" if cell.code else "")
            )
            _explained(Verdict.stored(cell))
            for note in cell.notes:
                _out(f"  note: {note}")
            if out is not None:
                stored = store.result(cell.result_id)
                if stored is None or stored.raw_json is None:
                    raise BpfcompatError(f"{out}: no validator result to write ({cell.evidence})")
                _write_text(out, stored.raw_json)
                _out(f"wrote {out}")
        raise typer.Exit(summary.exit_code)
    from bpfcompat.matrix.classify import classify_result
    from bpfcompat.matrix.host import host_commands, validate_on_host

    if allow_host_commands:
        for command in host_commands(loaded):
            _say(f"bpfcompat: will run as root on this host: {command}")
    ran = validate_on_host(
        loaded,
        out=out,
        attach_mode=attach_mode.value,
        auto_fixups=not no_auto_fixups,
        allow_commands=allow_host_commands,
    )
    verdict = classify_result(ran.result, ran.release)
    _out(
        f"{loaded.name} on host {ran.release}: {verdict.status}"
        + (f" {verdict.code}: {verdict.evidence}" if verdict.code else "")
    )
    _explained(verdict)
    raise typer.Exit(cell_exit_code(verdict.status))


def _explained(verdict: Verdict) -> None:
    """What a failing cell needs and where the verifier stopped, under its line."""
    if verdict.needs:
        _out(f"  {verdict.needs}")
    if verdict.pinpoint and verdict.pinpoint.where:
        _out(f"  at {verdict.pinpoint.where}")


def _write_text(path: Path, text: str) -> None:
    """Write atomically; errors as one line naming the file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise BpfcompatError(f"{path}: cannot write: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


@app.command("report")
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
    store = _existing_store(db)
    run_id = store.run(run).id
    assert run_id is not None
    for path in write_reports(
        store, run_id, html=html, json_path=json_path, markdown=markdown, junit=junit, base_run=base
    ):
        _out(f"wrote {path}")


@app.command("compare")
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
    """List cells that newly fail, were fixed or changed code between two runs, and
    programs whose verifier cost grew.

    Exits 2 when a required cell passed in --base and fails or errors in --head (or, with
    --fail-on-cost, when a program's cost grew beyond the threshold on a required kernel).

    A new code on a cell that already failed is listed but does not gate."""
    from bpfcompat.report import base_view
    from bpfcompat.report.compare import compare_views

    needs_store = base.strip().isdigit() or head is None or head.strip().isdigit()
    store = _existing_store(db) if needs_store else None
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
        _out(line)
    # SystemExit, not typer.Exit: with standalone_mode=False typer returns an Exit's code
    # from app() instead of raising it, and main() drops that return value.
    raise SystemExit(comparison.exit_code)


@app.command("merge")
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
        _out(f"wrote {path}")
    run = store.run(run_id)
    _out(f"run {run_id}: merged {len(views)} shards, exit code {run.exit_code}")
    raise typer.Exit(run.exit_code or 0)


def _existing_store(db: Path) -> Store:
    if not db.is_file():
        raise ConfigError(f"{db}: no such store (run `bpfcompat matrix run` first)")
    return Store(db)


@runs_app.command("list")
def runs_list(db: DbOpt = DEFAULT_DB) -> None:
    """List stored runs, newest first."""
    store = _existing_store(db)
    runs = store.runs()
    if not runs:
        _say(f"bpfcompat: {db}: no runs yet")
    for run in runs:
        cells = store.cells(run.id or 0)
        counts = {s: sum(1 for c in cells if c.status == s) for s in ("pass", "fail", "error")}
        n_kernels = len(store.kernels(run.id or 0))
        shape = f"{len({c.artifact for c in cells})} artifacts x {n_kernels} kernels"
        exit_code = "-" if run.exit_code is None else run.exit_code
        labels = " ".join(f"{k}={v}" for k, v in run.labels.items())
        _out(
            f"{run.id:5}  {run.started_at}  {run.status:11} exit {exit_code:<3}  {shape}  "
            f"pass {counts['pass']} fail {counts['fail']} error {counts['error']}"
            + (f"  {labels}" if labels else "")
        )


@app.command("reclassify")
def reclassify(
    db: DbOpt = DEFAULT_DB,
    run: Annotated[int | None, typer.Option("--run", help="Run id (default: the latest).")] = None,
) -> None:
    """Re-run the classifier over stored raw results; boots nothing."""
    from bpfcompat.matrix.reclassify import reclassify_run

    store = _existing_store(db)
    run_id = store.run(run).id
    assert run_id is not None
    changed = reclassify_run(store, run_id)
    _out(f"run {run_id}: {len(changed)} cell(s) changed")
    for line in changed:
        _out(f"  {line}")


@app.command("inspect")
def inspect(
    objects: Annotated[list[Path], typer.Argument(help="BPF objects (.bpf.o) to read.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    kernels: KernelsOpt = None,
) -> None:
    """Read objects statically (no VM): what each needs from a kernel and from its loader."""
    from bpfcompat.analysis.inspect import run_inspect

    text, code = run_inspect(objects, kernels, json_out)
    typer.echo(text)
    raise typer.Exit(code)


@manifest_app.command("suggest")
def manifest_suggest(
    obj: Annotated[Path, typer.Argument(help="The BPF object (.bpf.o).")],
    kernels: KernelsOpt = None,
) -> None:
    """Print a starting manifest (YAML with comments) from the object's loader findings."""
    from bpfcompat.analysis.inspect import run_suggest

    typer.echo(run_suggest(obj, kernels), nl=False)


@app.command("doctor")
def doctor(
    kernels: KernelsOpt = None,
    kernel: Annotated[
        list[str] | None, typer.Option("--kernel", help="Only these kernel ids (repeatable).")
    ] = None,
) -> None:
    """Check this host for a matrix run (QEMU, KVM, image tools, disk, cache); print what
    is missing with the command that fixes it. Exits 1 when something needed is missing."""
    from bpfcompat.doctor import run_doctor

    path = kernels or default_kernels_file()
    matrix = load_kernel_matrix(path)
    code = run_doctor(matrix, path, matrix.select(kernel), kernels is not None, _out)
    raise typer.Exit(code)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        _out(f"bpfcompat {__version__}")
        raise typer.Exit(0)


def _click_exceptions():  # type: ignore[no-untyped-def]
    """Click's exception module: bundled inside typer since 0.2x, separate before."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer depends on click itself
        from click import exceptions  # type: ignore[no-redef]
    return exceptions


def main() -> None:
    """The one error boundary: our errors and usage errors are one line and exit 1."""
    click_exc = _click_exceptions()
    try:
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except BpfcompatError as exc:
        _say(f"bpfcompat: error: {exc}")
        code = 1
    except (KeyboardInterrupt, typer.Abort):
        _say("bpfcompat: interrupted")
        code = 130
    except click_exc.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # the help text itself
        else:
            ctx = getattr(exc, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            _say(f"bpfcompat: error: {where}{exc.format_message()}")
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
