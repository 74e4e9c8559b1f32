"""The run view every report renders: built from a real store of recorded results, or
loaded from a `bpfcompat.run.v1` export; both give the same view and the same export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bpfcompat.errors import ReportError
from bpfcompat.matrix.store import Store
from bpfcompat.report import write_reports
from bpfcompat.report.view import SCHEMA, RunView
from export_reference import reference_export
from report_fixtures import add_recorded_run


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "bpfcompat.db")


@pytest.fixture
def run_id(store: Store) -> int:
    return add_recorded_run(store)


# Keys the export gained after the first release (keys are only ever added).
ADDED = {
    "run": {"labels", "attach_mode", "plan_digest", "shard"},
    "kernels": {"notes", "arch", "accel", "ready_via", "restores", "helpers"},
    "artifacts": {"floor", "floor_reason"},
    "cells": {
        "attached",
        "flaky",
        "expectation",
        "expected",
        "needs",
        "pinpoint",
        "programs",
        "programs_left_out",
    },
}


def _without_added(export: dict) -> dict:
    out = dict(export)
    out["run"] = {k: v for k, v in export["run"].items() if k not in ADDED["run"]}
    for part in ("kernels", "artifacts", "cells"):
        out[part] = [{k: v for k, v in e.items() if k not in ADDED[part]} for e in export[part]]
    return out


@pytest.mark.parametrize("include_results", [False, True])
def test_export_is_todays_run_export(store: Store, run_id: int, include_results: bool) -> None:
    """Same keys, same order, same values as the export CI scripts already parse, plus
    only the keys added since (never renamed, never removed)."""
    view = RunView.from_store(store, run_id, with_results=include_results)
    export = view.export(include_results=include_results)
    expected = json.dumps(
        reference_export(store, run_id, include_results=include_results), indent=2
    )
    assert json.dumps(_without_added(export), indent=2) == expected
    assert set(export["run"]) >= ADDED["run"]
    assert all(set(c) >= ADDED["cells"] for c in export["cells"])


@pytest.mark.parametrize("with_results", [False, True])
def test_view_from_export_equals_view_from_store(
    store: Store, run_id: int, tmp_path: Path, with_results: bool
) -> None:
    view = RunView.from_store(store, run_id, with_results=with_results)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(view.export(include_results=with_results), indent=2) + "\n")
    loaded = RunView.from_export(path)
    assert loaded == view
    assert loaded.has_results is with_results
    assert loaded.export(include_results=with_results) == view.export(include_results=with_results)


def _export(store: Store, run_id: int) -> dict:
    return RunView.from_store(store, run_id, with_results=False).export()


def _mangle_status(data: dict) -> None:
    data["cells"][3]["status"] = "maybe"


def _drop_kernel_id(data: dict) -> None:
    del data["kernels"][1]["id"]


def _cells_not_list(data: dict) -> None:
    data["cells"] = {"a": 1}


def _wrong_schema(data: dict) -> None:
    data["schema"] = "bpfcompat.run.v0"


def _string_seconds(data: dict) -> None:
    data["cells"][0]["seconds"] = "1.5"


@pytest.mark.parametrize(
    ("mangle", "why"),
    [
        (_mangle_status, "cells.3.status: Input should be 'pass', 'fail' or 'error'"),
        (_drop_kernel_id, "kernels.1.id: Field required"),
        (_cells_not_list, "cells: expected a list of objects"),
        (_wrong_schema, "schema is 'bpfcompat.run.v0', expected 'bpfcompat.run.v1'"),
        (_string_seconds, "cells.0.seconds: Input should be a valid number"),
    ],
)
def test_from_export_refuses_what_is_not_a_run_export(
    store: Store, run_id: int, tmp_path: Path, mangle, why: str
) -> None:
    data = _export(store, run_id)
    mangle(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError) as info:
        RunView.from_export(path)
    message = str(info.value)
    assert message == f"{path}: not a {SCHEMA} run export: {why}"
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "cannot read the run export: No such file or directory"),
        ("{not json", "not a bpfcompat run export: not JSON (Expecting property name"),
        ("[1, 2]", f"not a {SCHEMA} run export: the top level is a JSON list, not an object"),
        ('{"schema": "x"}', f"not a {SCHEMA} run export: schema is 'x', expected"),
    ],
)
def test_from_export_refuses_files(tmp_path: Path, content: str | None, why: str) -> None:
    path = tmp_path / "x.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ReportError) as info:
        RunView.from_export(path)
    assert str(info.value).startswith(f"{path}: {why}")
    assert "\n" not in str(info.value)


def test_malformed_summaries_become_text(store: Store, run_id: int, tmp_path: Path) -> None:
    """A guest that wrote odd types into a variant or fixup cannot break the view."""
    data = _export(store, run_id)
    cell = data["cells"][0]
    cell["variants"] = [{"group": 7, "chosen": None, "disabled": ["a", {"b": 1}]}]
    cell["map_fixups"] = [
        {"name": "m", "requested": "cpus", "applied_entries": [1], "status": False}
    ]
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(data))
    loaded = RunView.from_export(path).cells[0]
    assert loaded.variants[0].model_dump() == {
        "group": "7",
        "chosen": None,
        "disabled": ["a", '{"b": 1}'],
    }
    assert loaded.map_fixups[0].model_dump() == {
        "name": "m",
        "requested": "cpus",
        "applied_entries": "[1]",
        "status": "false",
    }


def _count_reads(store: Store, monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Record every call of the store's read methods (with its arguments)."""
    calls: dict[str, list] = {}
    for name in ("run", "runs", "kernels", "cells", "result", "results"):
        original = getattr(store, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls.setdefault(_name, []).append(args)
            return _original(*args, **kwargs)

        monkeypatch.setattr(store, name, counted)
    return calls


def test_write_reports_reads_the_store_once(
    store: Store, run_id: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_reads(store, monkeypatch)
    paths = write_reports(
        store,
        run_id,
        html=tmp_path / "r.html",
        json_path=tmp_path / "r.json",
        markdown=tmp_path / "r.md",
        junit=tmp_path / "r.xml",
    )
    assert len(paths) == 4
    assert {name: len(args) for name, args in calls.items()} == {
        "run": 1,
        "kernels": 1,
        "cells": 1,
        "results": 1,  # every raw result in one bulk read, never one query per cell
    }


def test_write_reports_with_base_reads_each_run_once(
    store: Store, run_id: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = add_recorded_run(store)
    calls = _count_reads(store, monkeypatch)
    write_reports(
        store, head, markdown=tmp_path / "r.md", json_path=tmp_path / "r.json", base_run=run_id
    )
    assert sorted(calls["cells"]) == sorted([(head,), (run_id,)])
    assert "results" not in calls and "result" not in calls  # no HTML: no raw results
