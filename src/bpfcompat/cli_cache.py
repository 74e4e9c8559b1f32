"""The `cache` commands: what the cache holds, and removing the saved guests.

Kernels and guest images cost downloads or a build to get back; snapshots cost one boot
per kernel, so they are what `cache clean` removes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from bpfcompat.vm.cache import cache_root

cache_app = typer.Typer(no_args_is_help=True, help="The cache: kernels, guest images, snapshots.")


def _bytes(path: Path) -> int:
    if not path.is_dir():
        return 0
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


@cache_app.command("list")
def cache_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Where the cache is, the size of each part, and every snapshot with what it was made
    from."""
    from bpfcompat.vm.snapshot import SnapshotCache

    root = cache_root()
    parts = {name: _bytes(root / name) for name in ("kernels", "images", "snapshots")}
    snapshots = SnapshotCache().entries()
    if as_json:
        typer.echo(json.dumps({"root": str(root), "bytes": parts, "snapshots": snapshots}))
        return
    typer.echo(f"cache: {root}")
    for name, size in parts.items():
        typer.echo(f"  {name:10} {_mib(size)}")
    for entry in snapshots:
        key = entry.get("key") if isinstance(entry.get("key"), dict) else {}
        kernel = entry.get("kernel", "?")
        typer.echo(
            f"snapshot {Path(entry['path']).name[:12]}  {kernel}  {key.get('arch', '?')}  "
            f"{key.get('memory_mb', '?')} MiB x{key.get('cpus', '?')} {key.get('accel', '?')}  "
            f"{_mib(entry['bytes'])}  {entry.get('created', '?')}"
        )


@cache_app.command("clean")
def cache_clean(
    snapshots: Annotated[
        bool, typer.Option("--snapshots", help="Remove every saved guest (snapshot).")
    ] = False,
) -> None:
    """Remove cached snapshots; the next run saves each kernel's again (one boot each)."""
    from bpfcompat.errors import ConfigError
    from bpfcompat.vm.snapshot import SnapshotCache

    if not snapshots:
        raise ConfigError("cache clean: say what to remove (--snapshots)")
    count, size = SnapshotCache().clean()
    typer.echo(f"removed {count} snapshot(s), {_mib(size)}")
