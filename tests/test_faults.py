"""Faults survived: shared stores, locked stores, corrupt and full caches, interrupts.
Each run must end by itself, keep the store intact and leave no QEMU behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bpfcompat.errors import FetchError
from bpfcompat.matrix.config import load_kernel_matrix
from bpfcompat.vm.cache import cache_root
from bpfcompat.vm.kernels import cached_kernel, fetch_kernel, kernel_entry_dir
from conftest import ROOT, require_tool, run_cli

MATRIX = load_kernel_matrix(ROOT / "kernels.yaml")


def qemu_processes(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if "qemu-system" in ln and marker in ln]


def integrity(db: Path) -> str:
    return sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0]


@pytest.mark.vm
def test_two_runs_share_one_store(built_examples: Path, tmp_path: Path) -> None:
    require_tool("qemu-system-x86_64")
    db = tmp_path / "shared.db"
    arts = [str(built_examples / "simple-pass"), str(built_examples / "ringbuf"),
            str(built_examples / "bloom-filter-map")]  # fmt: skip
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bpfcompat",
                "matrix",
                "run",
                *arts,
                "--kernel",
                kernel,
                "--db",
                str(db),
                "--no-cache",
                "--out-dir",
                str(tmp_path / kernel),
                "--json",
                str(tmp_path / f"{kernel}.json"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CI": "1"},
        )
        for kernel in ("debian-11-5.10", "debian-12-6.1")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode in (0, 2), err[-2000:]
    assert integrity(db) == "ok"
    conn = sqlite3.connect(db)
    assert conn.execute("select count(*) from run where status = 'completed'").fetchone()[0] == 2
    assert conn.execute("select count(*) from cell").fetchone()[0] == 6
    for kernel in ("debian-11-5.10", "debian-12-6.1"):
        export = json.loads((tmp_path / f"{kernel}.json").read_text())
        assert len(export["cells"]) == 3


def test_locked_store_waits_for_the_other_writer(tmp_path: Path) -> None:
    """Another process holds the write lock for 3 s: our writes wait, then land."""
    from bpfcompat.matrix.store import Run, Store

    db = tmp_path / "locked.db"
    Store(db)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(3.0, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    run = Store(db).add(Run(accel="tcg"))
    assert run.id is not None and time.monotonic() - started >= 2.5
    release.join()
    assert integrity(db) == "ok"


def test_corrupt_kernel_cache_entry_is_refetched(tmp_path: Path) -> None:
    spec = MATRIX.select(["debian-12-6.1"])[0]
    real = kernel_entry_dir(spec)
    if cached_kernel(spec) is None:
        fetch_kernel(spec)
    cache = tmp_path / "cache"
    entry = kernel_entry_dir(spec, cache / "bpfcompat")
    shutil.copytree(real, entry)
    size = (entry / "vmlinuz").stat().st_size
    with (entry / "vmlinuz").open("r+b") as fh:
        fh.truncate(size // 2)
    assert cached_kernel(spec, cache / "bpfcompat") is None  # detected, not booted
    build = fetch_kernel(spec, cache / "bpfcompat")
    assert build.vmlinuz.stat().st_size == size
    # Same-size corruption is caught by the digest.
    with (entry / "vmlinuz").open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\xff" * 16)
    assert cached_kernel(spec, cache / "bpfcompat") is None


@pytest.mark.root
def test_full_disk_leaves_no_partial_entry(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root to mount a small tmpfs", pytrace=False)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(small)], check=True)
    try:
        spec = MATRIX.select(["debian-13-6.12"])[0]
        with pytest.raises(FetchError) as info:
            fetch_kernel(spec, small / "bpfcompat")
        assert "\n" not in str(info.value)
        kernels_dir = small / "bpfcompat" / "kernels"
        # Only the (empty) lock file may remain: no entry, no temp dir.
        found = list(kernels_dir.iterdir()) if kernels_dir.exists() else []
        leftovers = [p for p in found if not p.name.endswith(".lock")]
        assert leftovers == [], leftovers
        root_dir = small / "bpfcompat"
        scratch = [p for p in root_dir.iterdir() if p.name.startswith("bpfcompat-fetch")]
        assert scratch == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


@pytest.mark.vm
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_everything(built_examples: Path, tmp_path: Path, signum: int) -> None:
    require_tool("qemu-system-x86_64")
    out = tmp_path / "out"
    db = tmp_path / "db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bpfcompat", "matrix", "run", str(built_examples), "--db", str(db),
         "--no-cache", "--out-dir", str(out), "--kernel", "debian-12-6.1",
         "--kernel", "debian-13-6.12"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "CI": "1"},
    )  # fmt: skip
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if "validating 3/" in line:
            break
    else:
        proc.kill()
        pytest.fail(f"never started validating: {seen[-2000:]}")
    proc.send_signal(signum)
    sent = time.monotonic()
    proc.wait(timeout=60)
    assert time.monotonic() - sent < 30, "did not stop within 30 s"
    assert proc.returncode == 130
    assert qemu_processes(str(out)) == []
    conn = sqlite3.connect(db)
    assert conn.execute("select status from run").fetchone()[0] == "interrupted"
    assert conn.execute("select count(*) from cell").fetchone()[0] >= 2
    assert integrity(db) == "ok"
    assert not conn.execute("select 1 from cell where code = 'INFRA_ERROR'").fetchall()


def test_cache_root_honours_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "bpfcompat"


def test_unknown_kernel_leaves_store_untouched(tmp_path: Path) -> None:
    db = tmp_path / "db"
    proc = run_cli("matrix", "run", str(ROOT / "examples" / "simple-pass"), "--kernel", "nope",
                   "--db", str(db))  # fmt: skip
    assert proc.returncode == 1
    assert not db.exists()
