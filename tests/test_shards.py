"""Shards and merge, and comparing against another job's export: a plan split over N
jobs and merged gives the run one machine would have made, cell for cell. The guests are
fakes (tests/fake_guest.py) replaying real recorded results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bpfcompat.errors import ConfigError, ReportError
from bpfcompat.matrix.options import RunOptions
from bpfcompat.matrix.plan import Plan, discover_artifacts, parse_shard
from bpfcompat.matrix.runner import run_plan
from bpfcompat.matrix.store import Store
from bpfcompat.report import base_view
from bpfcompat.report.compare import compare_views
from bpfcompat.report.merge import load_shards, merge_into
from bpfcompat.report.view import RunView
from bpfcompat.vm.spec import KernelSpec
from conftest import run_cli
from fake_guest import FakeWorld, Step, recorded_result

NAMES = ["simple-pass", "ringbuf", "verifier-oob", "helper-not-allowed", "bloom-filter-map"]
KERNELS = [
    KernelSpec(id=f"k{i}", suite="bookworm", package=f"linux-image-k{i}", required=i != 2)
    for i in range(3)
]
JUDGED = ("status", "code", "evidence", "remediation", "rule", "expected", "notes", "attached",
          "needs", "pinpoint", "programs")  # fmt: skip


def _world() -> FakeWorld:
    world = FakeWorld()
    for name in ("verifier-oob", "helper-not-allowed"):
        world.script(name, Step(result=recorded_result(name)))
    world.script(
        "bloom-filter-map", Step(result=recorded_result("bloom-filter-map", "debian-11-5.10"))
    )
    return world


def _run(tmp: Path, examples: Path, shard: tuple[int, int] | None, name: str) -> Path:
    world = _world()
    artifacts = discover_artifacts([examples / n / f"{n}.bpf.o" for n in NAMES])
    for artifact in artifacts:
        world.names[artifact.sha256] = artifact.name
    store = Store(tmp / f"{name}.db")
    opts = RunOptions(workdir=tmp / name, backend=world.backend(tmp / "fake"), concurrency=1)
    _, summary = run_plan(Plan(KERNELS, artifacts, "trixie", shard=shard), store, opts)
    path = tmp / f"{name}.json"
    export = RunView.from_store(store, summary.run_id, with_results=True).export(
        include_results=True
    )
    path.write_text(json.dumps(export))
    return path


def _cells(view: RunView) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (c.artifact, c.kernel): {k: v for k, v in c.export().items() if k in JUDGED}
        for c in view.cells
    }


@pytest.mark.parametrize("count", [2, 3, 15])
def test_merged_shards_equal_one_run_cell_for_cell(
    tmp_path: Path, built_examples: Path, count: int
) -> None:
    whole = RunView.from_export(_run(tmp_path, built_examples, None, "whole"))
    shards = [_run(tmp_path, built_examples, (i, count), f"s{i}") for i in range(1, count + 1)]
    sizes = [len(RunView.from_export(s).cells) for s in shards]
    assert sum(sizes) == len(NAMES) * len(KERNELS) and max(sizes) - min(sizes) <= 1
    store = Store(tmp_path / "merged.db")
    run_id = merge_into(store, load_shards(list(reversed(shards))))
    merged = RunView.from_store(store, run_id)
    assert _cells(merged) == _cells(whole)
    assert [k.id for k in merged.kernels] == [k.id for k in whole.kernels]
    assert merged.artifact_names() == whole.artifact_names()
    floors = [(a.name, a.floor, a.floor_reason) for a in whole.artifacts]
    assert [(a.name, a.floor, a.floor_reason) for a in merged.artifacts] == floors
    assert ("bloom-filter-map", "5.16") in [(a.name, a.floor) for a in merged.artifacts]
    assert store.run(run_id).exit_code == whole.run.exit_code
    assert merged.run.shard == f"merged {count}"
    assert compare_views(whole, merged).changes == []


def test_a_shard_boots_only_the_kernels_of_its_slice(tmp_path: Path, built_examples: Path) -> None:
    view = RunView.from_export(_run(tmp_path, built_examples, (1, 3), "one"))
    assert [k.id for k in view.kernels] == ["k0"]
    assert view.run.shard == "1/3" and view.run.plan_digest


def test_merge_refuses_what_is_not_all_of_one_plan(tmp_path: Path, built_examples: Path) -> None:
    one, two = (_run(tmp_path, built_examples, (i, 2), f"s{i}") for i in (1, 2))
    with pytest.raises(ConfigError, match=r"shard\(s\) 2 of 2 missing"):
        load_shards([one])
    with pytest.raises(ConfigError, match="given twice"):
        load_shards([one, one, two])
    other = json.loads(two.read_text())
    other["run"]["plan_digest"] = "0" * 16
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="a shard of another plan"):
        load_shards([one, tmp_path / "other.json"])
    other = json.loads(two.read_text())
    other["run"]["tool_version"] = "9.9.9"
    (tmp_path / "old.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match=r"made by bpfcompat 9\.9\.9"):
        load_shards([one, tmp_path / "old.json"])
    whole = _run(tmp_path, built_examples, None, "whole")
    with pytest.raises(ConfigError, match="not a shard's export"):
        load_shards([whole])
    (tmp_path / "junk.json").write_text('{"hello": 1}')
    with pytest.raises(ReportError, match=r"junk\.json: not a bpfcompat\.run\.v1 run export"):
        load_shards([tmp_path / "junk.json"])


@pytest.mark.parametrize("text", ["3/2", "0/4", "x", "1/0", "-1/2", "2"])
def test_a_bad_shard_spec_is_one_line(text: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(text)
    proc = run_cli("matrix", "run", "examples/simple-pass", "--shard", text, "--db",
                   str(tmp_path / "db"))  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.count("bpfcompat: error:") == 1, proc.stderr
    assert "--shard" in proc.stderr and not (tmp_path / "db").exists()


def test_compare_against_another_jobs_export(tmp_path: Path, built_examples: Path) -> None:
    base = _run(tmp_path, built_examples, None, "base")
    head = json.loads(base.read_text())
    for cell in head["cells"]:
        if (cell["artifact"], cell["kernel"]) == ("ringbuf", "k0"):
            cell.update(status="fail", code="UNSUPPORTED_MAP_TYPE", evidence="map 'rb': failed")
    (tmp_path / "head.json").write_text(json.dumps(head))
    comparison = compare_views(
        base_view(None, str(base)), base_view(None, str(tmp_path / "head.json"))
    )
    assert [(c.artifact, c.kernel, c.kind) for c in comparison.changes] == [
        ("ringbuf", "k0", "new_failure")
    ]
    assert comparison.exit_code == 2
    proc = run_cli("compare", "--base", str(base), "--head", str(tmp_path / "head.json"),
                   "--db", str(tmp_path / "none.db"))  # fmt: skip
    assert proc.returncode == 2 and "ringbuf on k0" in proc.stdout, proc.stderr
    proc = run_cli("compare", "--base", str(tmp_path / "missing.json"), "--head", str(base))
    assert proc.returncode == 1 and "missing.json" in proc.stderr
