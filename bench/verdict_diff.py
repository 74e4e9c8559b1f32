"""What changed between two runs of the same objects, per code and per transition.

    .venv/bin/python bench/verdict_diff.py BEFORE.json AFTER.json [--examples 2]

Reads two run exports (`matrix run DIR --json RUN.json`, or `report --json`), made by any
two versions of bpfcompat over the same directory of objects, and matches their cells by
object name and kernel. Prints the cells per code before and after, then every transition
(`INVALID_ARTIFACT -> LOADER_SETUP_REQUIRED`) with its count and, as the why, the after
run's evidence (or first note) and detail of a few of its cells, beside the
before run's evidence; then the cells that only one run has.
Meant for a corpus of third-party objects, which is never committed: the figures go into
notes, the objects stay local.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

Key = tuple[str, str]


def load(path: Path) -> dict[Key, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        sys.exit(f"{path}: not a run export ({exc})")
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        sys.exit(f"{path}: not a run export (no cells)")
    cells: dict[Key, dict[str, Any]] = {}
    for cell in data["cells"]:
        name = Path(str(cell.get("artifact", ""))).name.removesuffix(".bpf.o")
        cells[(name, str(cell.get("kernel")))] = cell
    return cells


def code(cell: dict[str, Any]) -> str:
    if cell.get("status") == "pass":
        return "pass"
    return str(cell.get("code") or cell.get("status"))


def short(text: Any, limit: int = 150) -> str:
    line = " ".join(str(text or "").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--examples", type=int, default=2, help="cells shown per transition")
    args = parser.parse_args()
    before, after = load(args.before), load(args.after)
    both = sorted(set(before) & set(after))

    was = Counter(code(before[k]) for k in both)
    now = Counter(code(after[k]) for k in both)
    print(f"{len(both)} cells in both runs ({len(before)} before, {len(after)} after)\n")
    print(f"{'code':30} {'before':>7} {'after':>7} {'change':>7}")
    for name in sorted(set(was) | set(now), key=lambda c: (c != "pass", c)):
        print(f"{name:30} {was[name]:7} {now[name]:7} {now[name] - was[name]:+7}")

    moves: dict[tuple[str, str], list[Key]] = defaultdict(list)
    for key in both:
        old, new = code(before[key]), code(after[key])
        if old != new:
            moves[(old, new)].append(key)
    changed = sum(len(v) for v in moves.values())
    print(f"\n{changed} cells changed code:")
    for (old, new), keys in sorted(moves.items(), key=lambda kv: -len(kv[1])):
        objects = len({name for name, _ in keys})
        print(f"\n  {old} -> {new}: {len(keys)} cells, {objects} objects")
        for name, kernel in keys[: args.examples]:
            old_cell, cell = before[(name, kernel)], after[(name, kernel)]
            print(f"    {name} on {kernel}")
            print(f"      before: {short(old_cell.get('evidence')) or '-'}")
            notes = cell.get("notes") or []
            said = cell.get("evidence") or (notes[0] if notes else None)
            print(f"      after:  {short(said) or '-'}")
            if cell.get("detail"):
                print(f"      why:    {short(cell.get('detail'))}")

    for label, only in (("before", set(before) - set(after)), ("after", set(after) - set(before))):
        if only:
            print(f"\nonly {label}: {len(only)} cells, e.g. {sorted(only)[:3]}")
    print(
        f"\nRESULT cells={len(both)} changed={changed} "
        + " ".join(f"{c}={was[c]}->{now[c]}" for c in sorted(set(was) | set(now)))
    )


if __name__ == "__main__":
    main()
