"""Regenerate docs/report.png: the HTML report of a real stored run, one failing cell open.

Usage: .venv/bin/python scripts/screenshot_report.py [--db PATH] [--run ID]
                                                     [--cell ARTIFACT@KERNEL] [--out PNG]

Reads a run made by `bpfcompat matrix run` (default: the latest run in
.bpfcompat/bpfcompat.db), renders its HTML report, opens it in headless Chromium (the
system's chromium + chromedriver), clicks a failing cell on a required kernel and saves a
screenshot. It never invents data: with no stored run it stops with an error.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bpfcompat.errors import BpfcompatError
from bpfcompat.matrix.store import DEFAULT_DB, Store
from bpfcompat.report.html import build_view, render_html
from bpfcompat.report.view import RunView

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the WebDriver client lives with the tests
from webdriver import Chromium  # noqa: E402

# Cells that show most of the report (verifier log, probes) when they fail, in order.
PREFERRED = (("helper-not-allowed", "debian-13-6.12"), ("bloom-filter-map", "debian-11-5.10"))
WINDOW = (1600, 1250)


def pick_cell(run: RunView, wanted: str | None) -> str:
    """The element id of the cell to open."""
    view = build_view(run)
    names = {
        (row.artifact, k.id): c
        for row in view.rows
        for k, c in zip(view.kernels, row.cells, strict=True)
    }
    if wanted:
        artifact, _, kernel = wanted.rpartition("@")
        cell = names.get((artifact, kernel))
        if cell is None or cell.status == "none":
            raise BpfcompatError(f"run {run.run.id} has no cell {wanted!r}")
        return cell.id
    for key in PREFERRED:
        if key in names and names[key].status == "fail":
            return names[key].id
    failing = [c for c in names.values() if c.required and c.status == "fail"]
    if not failing:
        raise BpfcompatError(f"run {run.run.id} has no failing cell to show")
    return failing[0].id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=DEFAULT_DB)
    parser.add_argument("--run", type=int, default=None, help="run id (default: the latest)")
    parser.add_argument("--cell", default=None, help="ARTIFACT@KERNEL to open")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    args = parser.parse_args(argv)
    try:
        if not args.db.is_file():
            raise BpfcompatError(
                f"{args.db}: no such store; run `bpfcompat matrix run` first (or pass --db)"
            )
        store = Store(args.db)
        run = RunView.from_store(store, args.run)
        cell_id = pick_cell(run, args.cell)
        with tempfile.TemporaryDirectory(prefix="bpfcompat-shot-") as tmp:
            page = Path(tmp) / "report.html"
            page.write_text(render_html(run), encoding="utf-8")
            with Chromium(*WINDOW) as browser:
                browser.open(page)
                browser.click(f"#{cell_id}")
                browser.script("window.scrollTo(0, 0);")
                browser.screenshot(args.out)
    except BpfcompatError as exc:
        print(f"screenshot_report: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} (run {run.run.id}, {cell_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
