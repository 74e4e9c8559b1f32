"""The on-disk cache (kernels, guest images), written atomically.

Entries are built in a temporary sibling directory and renamed into place, so an
interrupted or failed build (Ctrl-C, disk full) never leaves a half entry behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bpfcompat"


@contextlib.contextmanager
def entry_lock(entry: Path) -> Iterator[None]:
    """Serialise builders of one entry, across threads and processes (flock)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp dir that becomes `final` only if the block completes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(entry: Path, meta: dict, files: list[str]) -> None:
    """Record size and sha256 of each file so a truncated or corrupt entry is detected."""
    meta = dict(meta)
    meta["files"] = {
        name: {"size": (entry / name).stat().st_size, "sha256": sha256_file(entry / name)}
        for name in files
    }
    (entry / "entry.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def read_verified_manifest(entry: Path, *, deep: bool = True) -> dict | None:
    """The entry's metadata, or None when it is missing, truncated or corrupt."""
    try:
        meta = json.loads((entry / "entry.json").read_text())
        for name, info in meta["files"].items():
            path = entry / name
            if path.stat().st_size != info["size"]:
                return None
            if deep and sha256_file(path) != info["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta
