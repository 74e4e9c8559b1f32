"""The HTML report in headless Chromium: real recorded data, clicks, filters, escaping.

Uses the system's chromium + chromedriver (scripts/setup.sh installs them). A missing
browser FAILS these tests: a report nobody could open must not pass CI as "skipped".
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpfcompat.matrix.store import Store
from bpfcompat.report.compare import compare_runs
from bpfcompat.report.html import build_view, render_html
from bpfcompat.report.view import RunView
from report_fixtures import REQUIRED_KERNELS, add_recorded_run, hostile_result, set_cell
from webdriver import BrowserError, Chromium

pytestmark = pytest.mark.browser

HOSTILE_PROGRAM = "<script>window.__pwned=1</script><b>x</b>"
HOSTILE_ARTIFACT = "a \"quoted\" 'name' <script>window.__pwned=5</script> ü"


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    try:
        session = Chromium(1600, 1100)
    except BrowserError as exc:
        pytest.fail(f"headless Chromium unavailable: {exc} (run scripts/setup.sh)", pytrace=False)
    with session:
        yield session


def _cell_id(run: RunView, artifact: str, kernel: str) -> str:
    view = build_view(run)
    row = next(r for r in view.rows if r.artifact == artifact)
    col = next(k.index for k in view.kernels if k.id == kernel)
    return row.cells[col].id


def _open(browser: Chromium, tmp_path: Path, html: str) -> None:
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    browser.open(page)
    assert browser.script("return document.readyState") == "complete"


def test_click_failing_cell_shows_evidence(browser: Chromium, tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    run_id = add_recorded_run(store)
    run = RunView.from_store(store, run_id)
    _open(browser, tmp_path, render_html(run))
    shot = browser.screenshot(tmp_path / "report.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    assert browser.displayed("#details-empty")
    assert (
        browser.script("return document.querySelectorAll('article.detail:not([hidden])').length")
        == 0
    )

    verdict = run.cell_map()[("helper-not-allowed", "debian-13-6.12")].verdict
    assert verdict.status == "fail" and verdict.evidence
    cell_id = _cell_id(run, "helper-not-allowed", "debian-13-6.12")
    detail = "#" + cell_id.replace("cell-", "detail-")
    assert not browser.displayed(detail)
    browser.click(f"#{cell_id}")
    assert browser.displayed(detail)
    assert not browser.displayed("#details-empty")
    assert browser.text(f"{detail} pre.evidence") == verdict.evidence
    assert verdict.remediation and verdict.remediation in browser.text(f"{detail} .fix")
    assert verdict.evidence.startswith(browser.text(f"{detail} mark.evidence-line"))
    assert "skb_helper_in_tracepoint" in browser.text(f"{detail} table.programs")
    assert browser.script("return location.hash") == f"#{cell_id}"
    browser.screenshot(tmp_path / "report-open.png")

    # another cell replaces it: one detail at a time
    other = _cell_id(run, "runtime-sized-maps", "debian-12-6.1")
    browser.click(f"#{other}")
    assert not browser.displayed(detail)
    other_detail = "#" + other.replace("cell-", "detail-")
    assert "cpus → 1" in browser.text(f"{other_detail} table.fixups")
    assert (
        browser.script("return document.querySelectorAll('article.detail:not([hidden])').length")
        == 1
    )

    # the filter hides rows without a failing cell, and brings them back
    passing_row = "#row-" + _cell_id(run, "simple-pass", REQUIRED_KERNELS[0]).split("-")[1]
    failing_row = "#row-" + cell_id.split("-")[1]
    assert browser.displayed(passing_row)
    browser.click("#only-failing")
    assert not browser.displayed(passing_row) and browser.displayed(failing_row)
    browser.click("#only-failing")
    assert browser.displayed(passing_row)


def test_deep_link_opens_cell(browser: Chromium, tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    run_id = add_recorded_run(store, REQUIRED_KERNELS)
    run = RunView.from_store(store, run_id)
    cell_id = _cell_id(run, "bloom-filter-map", "debian-11-5.10")
    page = tmp_path / "report.html"
    page.write_text(render_html(run), encoding="utf-8")
    browser.open(page.resolve().as_uri() + f"#{cell_id}")
    detail = "#" + cell_id.replace("cell-", "detail-")
    assert browser.displayed(detail)
    assert "UNSUPPORTED_MAP_TYPE" in browser.text(f"{detail} h2")
    needs = "needs >= 5.16 for map type bloom_filter (this kernel: 5.10)"
    assert browser.text(f"{detail} .needs") == f"Needs: {needs}"
    assert "Map seen_tgids is a bloom_filter map" in browser.text(f"{detail} .fix")
    row = "#row-" + cell_id.split("-")[1]
    assert browser.text(f"{row} th small.floor") == "floor 5.16 · oldest pass 6.1"
    # the verifier's pinpoint: program, instruction, source line, registers
    oob = _cell_id(run, "verifier-oob", "debian-13-6.12")
    browser.click(f"#{oob}")
    pin = browser.text("#" + oob.replace("cell-", "detail-") + " dl.pin")
    assert "read_past_value" in pin and "8: (79) r1 = *(u64 *)(r0 +8)" in pin
    assert "return *next != 0; @ verifier-oob.bpf.c:30" in pin
    assert "R0_w=map_value(map=counters,ks=4,vs=8)" in pin
    # per artifact, the loadable subset and its manifest
    assert "requires_helper: bpf_trace_vprintk" in browser.text("#artifacts pre.manifest")


def test_comparison_badges_and_links(browser: Chromium, tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    base = add_recorded_run(store, REQUIRED_KERNELS)
    head = add_recorded_run(store, REQUIRED_KERNELS)
    set_cell(
        store,
        head,
        "ringbuf",
        "debian-12-6.1",
        status="fail",
        code="UNKNOWN",
        evidence="something broke",
    )
    run = RunView.from_store(store, head)
    _open(browser, tmp_path, render_html(run, compare_runs(store, base, head)))
    cell_id = _cell_id(run, "ringbuf", "debian-12-6.1")
    assert browser.text(f"#{cell_id} .badge") == "regression"
    assert "regression" in browser.text("#changes-table")
    browser.click(f'#changes-table a[data-cell="{cell_id}"]')
    detail = "#" + cell_id.replace("cell-", "detail-")
    assert browser.displayed(detail)
    assert browser.text(f"{detail} pre.evidence") == "something broke"
    browser.click("#only-changed")
    untouched_row = "#row-" + _cell_id(run, "simple-pass", "debian-11-5.10").split("-")[1]
    assert not browser.displayed(untouched_row)
    assert browser.displayed("#row-" + cell_id.split("-")[1])


def test_hostile_names_and_logs_render_as_text(browser: Chromium, tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    run_id = add_recorded_run(
        store,
        REQUIRED_KERNELS,
        edit=hostile_result(HOSTILE_PROGRAM),
        rename={"verifier-oob": HOSTILE_ARTIFACT},
    )
    run = RunView.from_store(store, run_id)
    _open(browser, tmp_path, render_html(run))
    cell_id = _cell_id(run, HOSTILE_ARTIFACT, "debian-12-6.1")
    browser.click(f"#{cell_id}")
    detail = "#" + cell_id.replace("cell-", "detail-")
    assert browser.displayed(detail)
    # nothing from the data ran or became markup
    assert browser.script("return typeof window.__pwned") == "undefined"
    assert browser.script("return document.scripts.length") == 1
    assert browser.script("return document.images.length") == 0
    assert browser.script(f"return document.querySelectorAll('{detail} td b').length") == 0
    # ... and it is all visible, literally
    row = "#row-" + cell_id.split("-")[1]
    assert browser.text(f"{row} th .art-name") == HOSTILE_ARTIFACT
    assert HOSTILE_ARTIFACT in browser.text(f"{detail} h2")
    assert HOSTILE_PROGRAM in browser.text(f"{detail} table.programs")
    log = browser.text(f"{detail} details.verifier-log pre")
    assert "<script>window.__pwned=2</script>" in log
    assert '<img src=x onerror="window.__pwned=3">' in log
    assert "</pre><script>window.__pwned=4</script>" in log
    assert browser.script("return typeof window.__pwned") == "undefined"


def test_screenshot_script_writes_png(tmp_path: Path) -> None:
    """scripts/screenshot_report.py on a stored run: a PNG with a failing cell open."""
    store = Store(tmp_path / "db.sqlite")
    add_recorded_run(store, REQUIRED_KERNELS)
    out = tmp_path / "shot.png"
    script = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_report.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--db", str(store.path), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
