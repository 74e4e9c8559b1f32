"""Restore-to-ready against the bare-boot floor and boot-to-ready, per kernel (run by hand;
matrix_bench.py calls it too).

    .venv/bin/python bench/restore_bench.py [--kernel ID ...] [--boots N]

Per kernel, in a private snapshot cache (the shared one is left alone):
- take: the first guest boots in agent mode and is saved once it waits (what a clean CI
  machine pays once per kernel), with the save's own seconds and the snapshot's size;
- restore: QEMU start until SSH answers for a guest restored from that snapshot (median of
  --boots), with where the time went (stream loaded, handoff sent, guest ready);
- floor and boot: as in matrix_bench.py (bare busybox boot; plain boot to SSH).
Prints a RESULT line with restore_ratio (median over kernels of restore / floor) and
restore_ratio_max.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from matrix_bench import bare_boot, ready_boot  # the script's directory is on sys.path

from bpfcompat.matrix.config import default_kernels_file, load_kernel_matrix
from bpfcompat.matrix.guest import GuestSession
from bpfcompat.vm.image import build_image
from bpfcompat.vm.kernels import fetch_kernel
from bpfcompat.vm.snapshot import SnapshotCache


def _session(kernel_spec, tmp: Path, cache: SnapshotCache) -> GuestSession:  # type: ignore[no-untyped-def]
    build = fetch_kernel(kernel_spec)
    suite = load_kernel_matrix(default_kernels_file()).guest_suite
    image = build_image(suite, arch=build.arch)
    return GuestSession(kernel_spec, build, image, tmp, threading.Event(), set(), snapshots=cache)


def _ready_once(kernel_spec, tmp: Path, cache: SnapshotCache, via: str, what: str):  # type: ignore[no-untyped-def]
    """One guest got ready as `via` says (else the bench stops): its seconds, its marks and
    the session that made it."""
    session = _session(kernel_spec, tmp, cache)
    try:
        seconds = session.boot()
        marks = dict(session.vm.marks) if session.vm else {}
    finally:
        session.shutdown()
    if session.ready_via != [via]:
        sys.exit(f"bench: {kernel_spec.id}: {what}: {session.notes}")
    return seconds, marks, session


def take(kernel_spec, tmp: Path, cache: SnapshotCache) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The first guest: booted in agent mode, saved, handed its keys."""
    seconds, marks, session = _ready_once(
        kernel_spec, tmp, cache, "boot+snapshot", "no snapshot taken"
    )
    if not session.snapshot_info:
        sys.exit(f"bench: {kernel_spec.id}: no snapshot taken: {session.notes}")
    return {"seconds": seconds, "marks": marks, **session.snapshot_info}


def restore(kernel_spec, tmp: Path, cache: SnapshotCache) -> tuple[float, dict[str, float]]:  # type: ignore[no-untyped-def]
    seconds, marks, _ = _ready_once(kernel_spec, tmp, cache, "restore", "not restored")
    return seconds, marks


def kernel_figures(kernel_spec, tmp: Path, boots: int, cache: SnapshotCache) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Floor, boot, take and restore for one kernel, the boots interleaved so the machine's
    load hits each alike."""
    floors, readies, restores, marks, rss = [], [], [], [], []
    taken = take(kernel_spec, tmp, cache)
    for _ in range(boots):
        floors.append(bare_boot(kernel_spec, tmp))
        seconds, peak = ready_boot(kernel_spec, tmp)
        readies.append(seconds)
        rss.append(peak)
        seconds, mark = restore(kernel_spec, tmp, cache)
        restores.append(seconds)
        marks.append(mark)
    floor = statistics.median(floors)
    restored = statistics.median(restores)
    steps = {k: statistics.median(m[k] for m in marks) for k in ("loaded", "handed", "ready")}
    return {
        "floor": floor,
        "boot": statistics.median(readies),
        "restore": restored,
        "ratio": restored / floor,
        "boot_ratio": statistics.median(readies) / floor,
        "steps": steps,
        "take": taken,
        "rss_mb": max(rss),
    }


HEADER = (
    "kernel                      floor_s  boot_s  restore_s  restore/floor  boot/floor"
    "  loaded/handed/ready_s   take_s  save_s  snapshot_mb"
)


def line(kernel_id: str, f: dict[str, Any]) -> str:
    steps = "/".join(f"{f['steps'][k]:.2f}" for k in ("loaded", "handed", "ready"))
    take = f["take"]
    return (
        f"{kernel_id:27} {f['floor']:7.2f}  {f['boot']:6.2f}  {f['restore']:9.2f}  "
        f"{f['ratio']:13.2f}  {f['boot_ratio']:10.2f}  {steps:>21}  {take['seconds']:7.2f}  "
        f"{take['save_seconds']:6.2f}  {take['bytes'] / 1e6:11.1f}"
    )


def result(figures: dict[str, dict[str, Any]]) -> dict[str, float]:
    ratios = [f["ratio"] for f in figures.values()]
    return {
        "restore_ratio": round(statistics.median(ratios), 2),
        "restore_ratio_max": round(max(ratios), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", action="append", help="limit to these kernel ids")
    parser.add_argument("--boots", type=int, default=5, help="boots per kernel for the medians")
    args = parser.parse_args()
    kernels = load_kernel_matrix(default_kernels_file()).select(args.kernel)
    tmp = Path(tempfile.mkdtemp(prefix="bpfcompat-restore-bench-"))
    cache = SnapshotCache(tmp / "snapshots")
    print(f"{HEADER}  (medians of {args.boots})")
    figures = {}
    for spec in kernels:
        figures[spec.id] = kernel_figures(spec, tmp, args.boots, cache)
        print(line(spec.id, figures[spec.id]), flush=True)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result(figures).items()))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
