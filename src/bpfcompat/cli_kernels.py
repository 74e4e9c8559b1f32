"""The `kernels` and `image` commands: list, fetch and build kernels; build guest images.

Kept apart from cli.py (the run and report commands) so neither grows past a screenful of
concerns; both print through `printable`, since kernel ids and paths come from configs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from bpfcompat.errors import BpfcompatError, ConfigError
from bpfcompat.matrix.config import KernelMatrix, default_kernels_file, load_kernel_matrix
from bpfcompat.report.terminal import printable
from bpfcompat.vm.spec import KernelSpec

kernels_app = typer.Typer(
    no_args_is_help=True, help="The kernel matrix: list, fetch and build kernels."
)
image_app = typer.Typer(no_args_is_help=True, help="The guest images.")

KernelsOpt = Annotated[
    Path | None,
    typer.Option("--kernels", help="Kernel matrix YAML (default: the embedded kernels.yaml)."),
]


def _out(line: str) -> None:
    typer.echo(printable(line))


def _say(line: str) -> None:
    typer.echo(printable(line), err=True)


def _matrix(path: Path | None) -> KernelMatrix:
    return load_kernel_matrix(path or default_kernels_file())


@kernels_app.command("list")
def kernels_list(
    kernels: KernelsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List the kernels of the matrix and whether they are cached."""
    from bpfcompat.vm.kernels import cached_kernel

    matrix = _matrix(kernels)
    rows = []
    for spec in matrix.kernels:
        hit = cached_kernel(spec, deep=False)
        rows.append(
            {
                "id": spec.id,
                "arch": spec.arch,
                "release": hit.release if hit else None,
                "btf": hit.has_btf if hit else None,  # unknown until fetched
                "source": spec.source_kind,
                "required": spec.required,
                "cached": hit is not None,
                "location": spec.source_label,
                "external_btf": spec.btf,
                "detached_btf": str(hit.detached_btf) if hit and hit.detached_btf else None,
                "cmdline": spec.cmdline,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))  # JSON escapes control characters itself
        return
    for row in rows:
        state = f"cached {row['release']}" if row["cached"] else "not fetched"
        req = "required" if row["required"] else "optional"
        _out(
            f"{row['id']:28} {row['arch']:8} {req:9} {row['location']}  [{state}]"
            + (f"  cmdline: {row['cmdline']}" if row["cmdline"] else "")
        )


def _obtain_kernels(specs: list[KernelSpec]) -> None:
    """Fetch or build each kernel; a failure is one line naming the kernel and the rest go on."""
    from bpfcompat.vm.kernels import fetch_kernel

    failed = 0
    for spec in specs:
        started = time.monotonic()

        def step(what: str, kid: str = spec.id) -> None:
            _say(f"{kid}: {what}")

        try:
            build = fetch_kernel(spec, progress=step)
        except BpfcompatError as exc:
            _say(f"bpfcompat: error: kernel {spec.id}: {exc}")
            failed += 1
            continue
        took = time.monotonic() - started
        _out(f"{spec.id}: {build.release} ({build.version}) in {took:.1f} s -> {build.entry}")
    if failed:
        raise typer.Exit(1)


@kernels_app.command("fetch")
def kernels_fetch(
    ids: Annotated[list[str] | None, typer.Argument(help="Kernel ids (default: all).")] = None,
    kernels: KernelsOpt = None,
) -> None:
    """Download (or build, for `source: build`) kernels into the cache; cached ones cost nothing."""
    _obtain_kernels(_matrix(kernels).select(ids))


@kernels_app.command("build")
def kernels_build(
    ids: Annotated[
        list[str] | None, typer.Argument(help="Kernel ids (default: every `source: build` one).")
    ] = None,
    kernels: KernelsOpt = None,
) -> None:
    """Build kernels from Debian source packages (`source: build`) into the cache."""
    matrix = _matrix(kernels)
    specs = matrix.select(ids) if ids else [k for k in matrix.kernels if k.source_kind == "build"]
    for spec in specs:
        if spec.source_kind != "build":
            raise ConfigError(f"kernel {spec.id}: source is {spec.source_kind}, not build")
    _obtain_kernels(specs)


@image_app.command("build")
def image_build(
    kernels: KernelsOpt = None,
    kernel: Annotated[
        list[str] | None,
        typer.Option("--kernel", help="Only the architectures of these kernels (repeatable)."),
    ] = None,
    arch: Annotated[
        list[str] | None,
        typer.Option(
            "--arch", help="Only these architectures (default: every one the matrix uses)."
        ),
    ] = None,
) -> None:
    """Build (or find cached) the guest image for the matrix's guest suite, per architecture."""
    from bpfcompat.vm.arch import ARCH_NAMES
    from bpfcompat.vm.image import build_image

    matrix = _matrix(kernels)
    suite = matrix.guest_suite
    arches = arch or list(dict.fromkeys(k.arch for k in matrix.select(kernel)))
    for name in arches:
        if name not in ARCH_NAMES:
            raise ConfigError(f"--arch {name!r}: unknown (known: {', '.join(ARCH_NAMES)})")
        started = time.monotonic()
        image = build_image(suite, arch=name)
        label = suite if name == "x86_64" else f"{suite} ({name})"
        _out(
            f"guest image {label} {image.digest}: {image.rootfs_cpio} "
            f"({image.rootfs_cpio.stat().st_size // 1024} KiB) "
            f"in {time.monotonic() - started:.1f} s"
        )


def with_btf(specs: list[KernelSpec], options: list[str]) -> list[KernelSpec]:
    """Apply `--btf KERNEL_ID=PATH` options: the kernel's external BTF for this run."""
    from bpfcompat.vm.spec import BTF_FROM_BUILD

    by_id = {spec.id: spec for spec in specs}
    for option in options:
        kid, sep, value = option.partition("=")
        if not sep or not kid or not value:
            raise ConfigError(f"--btf {option!r}: expected KERNEL_ID=PATH")
        if kid not in by_id:
            raise ConfigError(f"--btf {option!r}: kernel {kid!r} is not in this run")
        if value == BTF_FROM_BUILD:
            if by_id[kid].source_kind != "build":
                raise ConfigError(f"--btf {option!r}: only a `source: build` kernel has one")
        else:
            path = Path(value).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"--btf {option!r}: {path} is not a file")
            value = str(path)
        by_id[kid] = by_id[kid].model_copy(update={"btf": value})
    return [by_id[spec.id] for spec in specs]
