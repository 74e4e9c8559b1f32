"""Time `bpfcompat matrix run` over a directory of objects (run by hand; boots real VMs).

    .venv/bin/python bench/corpus_bench.py DIR [DIR ...] [--kernel ID ...] [--db PATH]
    .venv/bin/python bench/corpus_bench.py --synthetic 150 [--kernel ID ...]

Runs the CLI as a user would (`bpfcompat matrix run DIR --no-cache`), then reads the
run's cells back from the store and prints: the wall time, cells per second, per-cell
p50/p90/max seconds (the guest's own time for the validator process of each cell), the
ten slowest cells with their program counts, and where the time went in the slowest
ones (the validator's `timings`: open, probes, load, attach, ...). It ends with

    RESULT corpus_s=... cells=... max_cell_s=... p50_cell_s=... p90_cell_s=...

`--synthetic N` also builds two objects of N tracepoint programs with the hostile-input
generator of the test suite (tests/hostile.py): one where every program loads and one
where every tenth is refused by the verifier, so the per-program probes have work to
do. The load average is printed before and after: under TCG every figure depends on
what else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hostile import compile_bpf, many_programs_source  # noqa: E402

SLOWEST = 10
EXPLAINED = 3  # slowest cells whose validator timings are broken down


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def synthetic(out: Path, programs: int) -> Path:
    """Two objects of `programs` programs: all loading, and one in ten refused."""
    out.mkdir(parents=True, exist_ok=True)
    for name, failing in ((f"many-{programs}-pass", 0), (f"many-{programs}-fail10", 10)):
        source = out / f"{name}.bpf.c"
        source.write_text(many_programs_source(programs, failing_every=failing))
        compile_bpf(source, out / f"{name}.bpf.o")
        source.unlink()
    return out


def percentile(values: list[float], fraction: float) -> float:
    """Linear-interpolated percentile of a non-empty list."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = fraction * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def read_cells(
    db: Path,
) -> tuple[int, list[dict[str, Any]], list[tuple[str, float | None, int | None]]]:
    """The last run's cells (artifact, kernel, seconds, status, code, raw result)."""
    conn = sqlite3.connect(db)
    try:
        (run_id,) = conn.execute("select max(id) from run").fetchone()
        rows = conn.execute(
            "select c.artifact, c.kernel_id, c.seconds, c.status, c.code, v.raw_json "
            "from cell c left join validatorresult v on v.id = c.result_id "
            "where c.run_id = ?",
            (run_id,),
        ).fetchall()
        boots = conn.execute(
            "select kernel_id, boot_seconds, helpers from runkernel where run_id = ?", (run_id,)
        ).fetchall()
    finally:
        conn.close()
    cells = []
    for artifact, kernel, seconds, status, code, raw in rows:
        try:
            result = json.loads(raw) if raw else {}
        except ValueError:
            result = {}
        cells.append(
            {
                "artifact": artifact,
                "kernel": kernel,
                "seconds": float(seconds or 0.0),
                "status": status,
                "code": code,
                "programs": (result.get("discovery") or {}).get("program_count"),
                "probe_loads": (result.get("discovery") or {}).get("probe_loads"),
                "timings": result.get("timings") or {},
            }
        )
    return run_id, cells, boots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", type=Path, help="directories of .bpf.o objects")
    parser.add_argument("--kernel", action="append", default=[], help="kernel id (repeatable)")
    parser.add_argument("--db", type=Path, help="store to use (default: a fresh temporary one)")
    parser.add_argument("--synthetic", type=int, metavar="N", help="add N-program objects")
    parser.add_argument("--concurrency", type=int, default=0, help="guests at once (0: auto)")
    parser.add_argument(
        "--no-share", action="store_true", help="one guest per kernel (the run's --no-share)"
    )
    args = parser.parse_args()
    result = bench(
        args.dirs,
        args.kernel,
        db=args.db,
        synthetic_programs=args.synthetic,
        concurrency=args.concurrency,
        no_share=args.no_share,
    )
    if result is None:
        return 1
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))
    return 0


def bench(
    dirs: list[Path],
    kernels: list[str],
    *,
    db: Path | None = None,
    synthetic_programs: int | None = None,
    concurrency: int = 0,
    no_share: bool = False,
) -> dict[str, Any] | None:
    """Run the corpus, print its figures; the RESULT keys, or None (said why) on failure."""
    tmp = Path(tempfile.mkdtemp(prefix="bpfcompat-corpus-bench-"))
    dirs = list(dirs)
    for d in dirs:
        if not d.is_dir():
            print(f"corpus_bench: {d}: not a directory", file=sys.stderr)
            return None
    if synthetic_programs:
        dirs.append(synthetic(tmp / "synthetic", synthetic_programs))
    if not dirs:
        print("corpus_bench: give a directory or --synthetic N", file=sys.stderr)
        return None
    db = db or tmp / "bench.db"
    cmd = [sys.executable, "-m", "bpfcompat", "matrix", "run", *map(str, dirs), "--no-cache"]
    cmd += ["--db", str(db), "--out-dir", str(tmp / "out"), "--concurrency", str(concurrency)]
    for kernel in kernels:
        cmd += ["--kernel", kernel]
    if no_share:
        cmd.append("--no-share")
    print(f"load average before: {load_average()} ({os.cpu_count()} CPUs)")
    started = time.monotonic()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env={**os.environ, "CI": "1"}
    )
    wall = time.monotonic() - started
    print(f"load average after:  {load_average()}")
    (tmp / "matrix.out").write_text(proc.stdout + proc.stderr)
    print(f"matrix run exit {proc.returncode} (output in {tmp / 'matrix.out'})")
    if proc.returncode not in (0, 1, 2):
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    run_id, cells, boots = read_cells(db)
    if not cells:
        print(f"corpus_bench: run {run_id} recorded no cells", file=sys.stderr)
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    seconds = [c["seconds"] for c in cells]
    p50, p90, worst = percentile(seconds, 0.5), percentile(seconds, 0.9), max(seconds)
    print(f"run {run_id}: {len(cells)} cells in {wall:.1f} s ({len(cells) / wall:.2f} cells/s)")
    print(f"per cell: p50 {p50:.2f} s, p90 {p90:.2f} s, max {worst:.2f} s, "
          f"sum {sum(seconds):.1f} s")  # fmt: skip
    print("boot-to-ready: " + ", ".join(f"{k} {s:.1f} s" for k, s, _ in boots if s is not None))
    helpers = sum(h or 0 for _, _, h in boots)
    print("guests that joined a kernel's work: "
          + (", ".join(f"{k} {h}" for k, _, h in boots if h) or "none"))  # fmt: skip
    by_kernel: dict[str, list[float]] = {}
    for cell in cells:
        by_kernel.setdefault(cell["kernel"], []).append(cell["seconds"])
    for kernel, values in sorted(by_kernel.items()):
        print(f"  {kernel:27} {len(values):4} cells, sum {sum(values):7.1f} s, "
              f"median {statistics.median(values):.2f} s, max {max(values):.2f} s")  # fmt: skip
    slowest = sorted(cells, key=lambda c: -c["seconds"])[:SLOWEST]
    print(f"slowest {len(slowest)} cells:")
    for cell in slowest:
        progs = "?" if cell["programs"] is None else str(cell["programs"])
        verdict = f"{cell['status']} {cell['code'] or ''}".strip()
        print(f"  {cell['seconds']:7.2f} s {progs:>5} progs  {cell['kernel']:24} "
              f"{cell['artifact']}  {verdict}")  # fmt: skip
    explained = [c for c in slowest if c["timings"]][:EXPLAINED]  # infra errors have none
    for cell in explained:
        steps = {k: v for k, v in cell["timings"].items() if isinstance(v, int | float)}
        top = sorted(((v, k) for k, v in steps.items() if k != "total"), reverse=True)[:6]
        loads = "" if cell["probe_loads"] is None else f", {cell['probe_loads']} probe loads"
        print(f"  where {cell['artifact']} on {cell['kernel']} went: "
              + ", ".join(f"{k} {v:.2f}" for v, k in top)
              + f" (validator total {steps.get('total', 0):.2f} s{loads})")  # fmt: skip
    result = {
        "corpus_s": round(wall, 1),
        "cells": len(cells),
        "max_cell_s": round(worst, 2),
        "p50_cell_s": round(p50, 2),
        "p90_cell_s": round(p90, 2),
        "helpers": helpers,
    }
    return result


if __name__ == "__main__":
    sys.exit(main())
