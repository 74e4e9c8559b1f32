"""The explanations in every report: needs and the verifier's pinpoint in each format, the
artifact's floor against what the run observed, and the loadable subset with the
manifest that would make the object load on every kernel. Stores are built from the
recorded real run (tests/data/recorded), with the host's static reading it kept."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from bpfcompat.matrix.manifest import Manifest
from bpfcompat.matrix.reclassify import reclassify_run
from bpfcompat.matrix.store import Store
from bpfcompat.report.html import render_html
from bpfcompat.report.insight import KernelLoad, floor_check, loadable_subset
from bpfcompat.report.junit import render_junit
from bpfcompat.report.markdown import render_markdown
from bpfcompat.report.terminal import failure_line
from bpfcompat.report.view import RunView
from report_fixtures import add_recorded_run, set_cell

BLOOM_NEEDS = "needs >= 5.16 for map type bloom_filter (this kernel: 5.10)"
OOB_WHERE = "verifier-oob.bpf.c:30 `return *next != 0;` (insn 8)"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "bpfcompat.db")


@pytest.fixture
def run_id(store: Store) -> int:
    return add_recorded_run(store)


def _view(store: Store, run_id: int, *, results: bool = False) -> RunView:
    return RunView.from_store(store, run_id, with_results=results)


def _cell(view: RunView, artifact: str, kernel: str):  # type: ignore[no-untyped-def]
    return view.cell_map()[(artifact, kernel)]


# --- needs and pinpoint in every format ----------------------------------------------------------


def test_needs_and_pinpoint_reach_every_format(store: Store, run_id: int) -> None:
    view = _view(store, run_id, results=True)
    bloom = _cell(view, "bloom-filter-map", "debian-11-5.10")
    oob = _cell(view, "verifier-oob", "debian-13-6.12")
    assert bloom.verdict.needs == BLOOM_NEEDS
    assert oob.verdict.pinpoint is not None and oob.verdict.pinpoint.where == OOB_WHERE
    export = {(c["artifact"], c["kernel"]): c for c in view.export()["cells"]}
    assert export[("bloom-filter-map", "debian-11-5.10")]["needs"] == BLOOM_NEEDS
    pin = export[("verifier-oob", "debian-13-6.12")]["pinpoint"]
    assert (pin["source"], pin["location"], pin["insn"]) == (
        "return *next != 0;", "verifier-oob.bpf.c:30", 8
    )  # fmt: skip
    html = render_html(view)
    assert BLOOM_NEEDS.replace(">", "&gt;") in html
    assert "Where the verifier stopped" in html
    assert '<span class="src">return *next != 0;</span>' in html
    assert "@ verifier-oob.bpf.c:30" in html
    assert "registers before it" in html
    assert BLOOM_NEEDS.replace(">", "&gt;") in render_markdown(view)
    assert failure_line(view, bloom).endswith(f" — {BLOOM_NEEDS}")
    assert failure_line(view, oob).endswith(f" — at {OOB_WHERE}")
    junit = ET.fromstring(render_junit(view))
    cases = {(c.get("classname"), c.get("name")): c for c in junit.iter("testcase")}
    failure = cases[("bloom-filter-map", "debian-11-5.10")].find("failure")
    assert failure is not None and failure.get("message") == (
        f"UNSUPPORTED_MAP_TYPE: map 'seen_tgids': failed to create: Invalid argument(-22) "
        f"({BLOOM_NEEDS})"
    )
    body = cases[("verifier-oob", "debian-13-6.12")].find("failure").text or ""
    assert f"where: read_past_value {OOB_WHERE}" in body
    assert "registers before it: R0_w=map_value(map=counters,ks=4,vs=8)" in body


def test_a_damaged_stored_pinpoint_reads_as_none(store: Store, run_id: int) -> None:
    for damaged in ("{not json", "[1, 2]", json.dumps({"insn": "eight"})):
        set_cell(store, run_id, "verifier-oob", "debian-13-6.12", pinpoint_json=damaged)
        cell = _cell(_view(store, run_id), "verifier-oob", "debian-13-6.12")
        assert cell.verdict.pinpoint is None, damaged


def test_reclassify_fills_needs_and_pinpoint(store: Store, run_id: int) -> None:
    set_cell(store, run_id, "bloom-filter-map", "debian-11-5.10", needs=None)
    set_cell(store, run_id, "verifier-oob", "debian-sid-7.2", pinpoint_json=None)
    changed = reclassify_run(store, run_id)
    assert changed == [
        "bloom-filter-map on debian-11-5.10: fail UNSUPPORTED_MAP_TYPE -> fail "
        "UNSUPPORTED_MAP_TYPE (changed: needs)",
        "verifier-oob on debian-sid-7.2: fail VERIFIER_REJECTION -> fail VERIFIER_REJECTION "
        "(changed: pinpoint)",
    ]
    view = _view(store, run_id)
    assert _cell(view, "bloom-filter-map", "debian-11-5.10").verdict.needs == BLOOM_NEEDS
    assert _cell(view, "verifier-oob", "debian-sid-7.2").verdict.pinpoint is not None


# --- floor vs observed ----------------------------------------------------------------------------


def test_floor_against_the_oldest_pass(store: Store, run_id: int) -> None:
    view = _view(store, run_id)
    bloom = floor_check(view, "bloom-filter-map")
    assert (bloom.floor, bloom.oldest_pass, bloom.oldest_pass_release) == (
        "5.16", "debian-12-6.1", "6.1"
    )  # fmt: skip
    assert bloom.floor_reason == "map type bloom_filter needs Linux 5.16 (program bloom_execve)"
    assert bloom.verdict == "agree" and not bloom.pass_below and not bloom.fail_above
    # the newest of equal releases is not chosen over the required kernel of the same one
    assert floor_check(view, "cgrp-storage-map").oldest_pass == "debian-13-6.12"
    variants = floor_check(view, "program-variants")
    assert variants.pass_below and variants.flags == [
        "passes on debian-11-5.10, below its floor 5.17 (helper bpf_loop needs Linux 5.17 "
        "(program loop_x)): its manifest's program variants leave out loop_x there"
    ]
    oob = floor_check(view, "verifier-oob")
    assert oob.fail_above and oob.oldest_pass is None
    assert oob.flags == [
        "fails on every kernel of the run at or above its floor 4.7 (VERIFIER_REJECTION): not "
        "a missing upstream feature"
    ]
    lockdown = floor_check(view, "lockdown-probe-read")
    assert lockdown.flags == [
        "fails on debian-13-6.12-lockdown at or above its floor 5.4 (POLICY_DENIED): not a "
        "missing upstream feature"
    ]


def test_floor_disagreements_from_edited_cells(store: Store, run_id: int) -> None:
    # edit: the cell below the floor passes (what a vendor backport of bloom filters gives)
    set_cell(store, run_id, "bloom-filter-map", "debian-11-5.10", status="pass", code=None,
             needs=None)  # fmt: skip
    # edit: a failure above the floor for a feature the static reading did not count
    set_cell(store, run_id, "ringbuf", "debian-12-6.1", status="fail",
             code="UNSUPPORTED_HELPER", stage="load",
             needs="needs >= 9.9 for helper bpf_future (this kernel: 6.1)")  # fmt: skip
    for name in ("simple-pass",):  # edit: every cell an infrastructure error
        for kernel in [k.id for k in _view(store, run_id).kernels]:
            set_cell(store, run_id, name, kernel, status="error", code="INFRA_ERROR")
    view = _view(store, run_id)
    bloom = floor_check(view, "bloom-filter-map")
    assert bloom.oldest_pass == "debian-11-5.10" and bloom.flags == [
        "passes on debian-11-5.10, below its floor 5.16 (map type bloom_filter needs Linux 5.16 "
        "(program bloom_execve)): a vendor backport, or a feature the object does not really "
        "need"
    ]
    ringbuf = floor_check(view, "ringbuf")
    assert ringbuf.flags == [
        "fails on debian-12-6.1 at or above its floor 5.8 (UNSUPPORTED_HELPER): a requirement "
        "the static reading did not count (needs >= 9.9 for helper bpf_future (this kernel: "
        "6.1))"
    ]
    assert floor_check(view, "simple-pass").verdict == "no cell was judged (errors only)"


def test_floor_and_oldest_pass_are_shown(store: Store, run_id: int) -> None:
    view = _view(store, run_id)
    html = render_html(view)
    assert '<small class="floor">floor 5.16 · oldest pass 6.1</small>' in html
    assert 'id="floors"' in html and "fails above floor" in html and "pass below floor" in html
    text = render_markdown(view)
    assert "### Floor vs observed" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| bloom-filter-map | 5.16 "))
    assert row.endswith("| 6.1 (debian-12-6.1) | agree |")
    oob = next(ln for ln in text.splitlines() if ln.startswith("| verifier-oob | 4.7 "))
    assert "| none | ⚠️ fails on every kernel of the run" in oob


# --- loadable subset ----------------------------------------------------------------------------


def _manifest(text: str) -> Manifest:
    return Manifest.model_validate(yaml.safe_load(text))


def test_the_programs_that_load_where_the_object_does_not(store: Store, run_id: int) -> None:
    view = _view(store, run_id)
    subset = loadable_subset(view, "printk-many-args")
    assert subset is not None
    assert subset.kernels == [KernelLoad("debian-11-5.10", ["print_three"], ["print_four"], [])]
    assert subset.manifest is not None
    (group,) = _manifest(subset.manifest).program_variants
    assert (group.group, [(p.name, p.requires_helper) for p in group.programs]) == (
        "print_four", [("print_four", "bpf_trace_vprintk"), ("print_three", None)]
    )  # fmt: skip
    assert subset.effect.startswith(
        "With this manifest the object should load on every kernel of the run (loads "
        "print_four where bpf_trace_vprintk exists and print_three instead elsewhere)"
    )
    # objects that load everywhere, or have one program, have no subset to show
    assert loadable_subset(view, "simple-pass") is None
    assert loadable_subset(view, "bloom-filter-map") is None
    html = render_html(view)
    assert "Loadable subset: <span" in html and "requires_helper: bpf_trace_vprintk" in html
    assert "<b>Each program on its own here:</b>" in html
    text = render_markdown(view)
    assert "### Loadable subsets" in text
    fenced = re.search(r"```yaml\n(.*?)\n```", text, re.S)
    assert fenced and _manifest(fenced.group(1)) == _manifest(subset.manifest)


def test_autoload_false_when_no_program_can_stand_in(store: Store, run_id: int) -> None:
    # edit: a failure that names no missing helper, so no variant can be suggested
    set_cell(store, run_id, "printk-many-args", "debian-11-5.10", needs=None)
    subset = loadable_subset(_view(store, run_id), "printk-many-args")
    assert subset is not None and subset.manifest == (
        "programs:\n  - {name: print_four, autoload: false}"
    )
    assert _manifest(subset.manifest).programs[0].autoload is False
    assert "(turns print_four off on every kernel)" in subset.effect


def test_no_subset_when_every_program_fails_alone(store: Store) -> None:
    def both_fail(artifact: str, kernel: str, result: dict) -> dict:
        # edit: the second program's own probe fails too on 5.10
        if artifact == "printk-many-args" and kernel == "debian-11-5.10":
            for p in result["discovery"]["programs"]:
                p["load_status"] = "fail"
        return result

    run_id = add_recorded_run(store, edit=both_fail)
    subset = loadable_subset(_view(store, run_id), "printk-many-args")
    assert subset is not None and subset.manifest is None
    assert subset.effect == (
        "No subset of its programs loads on every kernel of the run: every program fails on "
        "its own there: the cause is the object's, not one program's."
    )


def test_hostile_program_names_stay_data(store: Store, run_id: int) -> None:
    hostile = "evil: {x}\n```<script>window.__pwned=9</script>"
    cell = _cell(_view(store, run_id), "printk-many-args", "debian-11-5.10")
    programs = [p.model_dump() for p in cell.programs]
    programs[0]["name"] = hostile  # edit: print_four renamed (a name from the artifact)
    set_cell(store, run_id, "printk-many-args", "debian-11-5.10",
             details_json=json.dumps({"programs": programs}))  # fmt: skip
    view = _view(store, run_id)
    subset = loadable_subset(view, "printk-many-args")
    assert subset is not None and subset.manifest is not None
    # YAML keeps it as one quoted scalar (a manifest then refuses its ':' by name)
    assert yaml.safe_load(subset.manifest)["programs"][0]["name"] == hostile
    html = render_html(view)
    assert "<script>window.__pwned=9" not in html
    text = render_markdown(view)
    fence = re.search(r"^(`{3,})yaml$", text, re.M)
    assert fence and len(fence.group(1)) > 3  # longer than the backticks in the name
    body = text.split(fence.group(0) + "\n", 1)[1].split("\n" + fence.group(1) + "\n", 1)[0]
    assert yaml.safe_load(body)["programs"][0]["name"] == hostile
