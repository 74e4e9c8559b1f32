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

from bpfcompat import __version__, cli_store
from bpfcompat.cli_cache import cache_app
from bpfcompat.cli_kernels import KernelsOpt, image_app, kernels_app, with_btf
from bpfcompat.cli_store import DbOpt, HtmlOpt, JsonOpt, JunitOpt, MdOpt
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
        int,
        typer.Option(
            "--concurrency",
            min=0,
            help="Guests at once (0: from CPUs and memory). A slot no kernel waits for lets "
            "another guest of a busy kernel take over part of its work.",
        ),
    ] = 0,
    no_share: Annotated[
        bool,
        typer.Option(
            "--no-share",
            help="One guest per kernel at a time: never split a kernel's work over a second "
            "guest when a slot is free.",
        ),
    ] = False,
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
    from bpfcompat.matrix.options import RunOptions
    from bpfcompat.matrix.policy import EXIT_MEANINGS
    from bpfcompat.matrix.runner import run_plan
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
    if no_share:
        options.split = None
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
        from bpfcompat.matrix.options import RunOptions
        from bpfcompat.matrix.runner import run_plan

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


# Reading stored runs back (cli_store.py), listed after `validate` in --help.
app.command("report")(cli_store.report)
app.command("compare")(cli_store.compare)
app.command("merge")(cli_store.merge)
app.command("reclassify")(cli_store.reclassify)
runs_app.command("list")(cli_store.runs_list)


@app.command("inspect")
def inspect(
    objects: Annotated[list[Path], typer.Argument(help="BPF objects (.bpf.o) to read.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    kernels: KernelsOpt = None,
) -> None:
    """Read objects statically (no VM): what each needs from a kernel and from its loader."""
    from bpfcompat.cli_inspect import run_inspect

    text, code = run_inspect(objects, kernels, json_out)
    typer.echo(text)
    raise typer.Exit(code)


@manifest_app.command("suggest")
def manifest_suggest(
    obj: Annotated[Path, typer.Argument(help="The BPF object (.bpf.o).")],
    kernels: KernelsOpt = None,
) -> None:
    """Print a starting manifest (YAML with comments) from the object's loader findings."""
    from bpfcompat.cli_inspect import run_suggest

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
