"""Time `bpfcompat inspect`'s core over a set of objects (run by hand; no VM).

    .venv/bin/python bench/inspect_bench.py [DIR_OR_OBJ ...] [--json OUT]

Default: examples/*/*.bpf.o. Prints per object the seconds inspect_object() took, the
floor and the number of loader findings, then the slowest objects, the objects that could
not be read (with the reason), findings counted by kind, and a RESULT line. The feature
facts and kernel BTF names are loaded once before timing (as one CLI run does), so
per-object figures are the analysis alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from bpfcompat.analysis import features
from bpfcompat.analysis.inspect import inspect_object
from bpfcompat.matrix.statics import matrix_kernels

ROOT = Path(__file__).resolve().parents[1]


def objects(args: list[str]) -> list[Path]:
    if not args:
        return sorted(ROOT.glob("examples/*/*.bpf.o"))
    out: list[Path] = []
    for arg in args:
        path = Path(arg)
        out += sorted(path.rglob("*.o")) if path.is_dir() else [path]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--json", type=Path, help="write every report here")
    opts = parser.parse_args()
    started = time.monotonic()
    features.helper(1)  # features.yaml is parsed once per process
    print(f"features.yaml: {time.monotonic() - started:.2f} s")
    started = time.monotonic()
    kernels = matrix_kernels(None).load()
    print(f"kernel BTF names: {len(kernels.kernels)} kernels in {time.monotonic() - started:.2f} s")
    reports = []
    for path in objects(opts.paths):
        t0 = time.monotonic()
        report = inspect_object(path, kernels)
        took = time.monotonic() - t0
        reports.append((path, took, report))
        state = report["floor"] if report["readable"] else "UNREADABLE"
        print(
            f"{took:8.4f} s  {state or '-':>10}  {len(report['loader_setup']):3} findings  {path}"
        )
    times = [t for _p, t, _r in reports]
    kinds = Counter(f["kind"] for _p, _t, r in reports for f in r["loader_setup"])
    levels = Counter(f["level"] for _p, _t, r in reports for f in r["loader_setup"])
    print("\nslowest:")
    for path, took, _r in sorted(reports, key=lambda x: -x[1])[:5]:
        print(f"  {took:.3f} s  {path}")
    unreadable = [(p, r["error"]) for p, _t, r in reports if not r["readable"]]
    partial = [(p, r["problems"]) for p, _t, r in reports if r["readable"] and r["problems"]]
    print(f"\nunreadable: {len(unreadable)}")
    for path, error in unreadable:
        print(f"  {path}: {error}")
    print(f"read with problems: {len(partial)}")
    for path, problems in partial:
        print(f"  {path}: {'; '.join(problems)[:200]}")
    print("\nfindings by kind:", dict(kinds.most_common()))
    print("findings by level:", dict(levels))
    floors = Counter(r["floor"] for _p, _t, r in reports if r["readable"])
    print("floors:", dict(sorted(floors.items(), key=lambda kv: str(kv[0]))))
    if opts.json:
        opts.json.write_text(json.dumps([r for _p, _t, r in reports], indent=1, default=str))
    if times:
        print(
            f"RESULT objects={len(times)} median_s={statistics.median(times):.4f} "
            f"max_s={max(times):.4f} total_s={sum(times):.2f} unreadable={len(unreadable)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
