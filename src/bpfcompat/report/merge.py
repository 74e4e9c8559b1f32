"""One run from the exports of its shards: what a CI job matrix that fanned a plan out over
N machines hands to the final job.

Shards are refused unless they are the N slices of one plan, each once, made by the same
bpfcompat: the merged run must be the run one machine would have made, cell for cell.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bpfcompat import __version__
from bpfcompat.errors import ConfigError
from bpfcompat.matrix.store import Cell, Run, RunKernel, Store, ValidatorResult, utcnow
from bpfcompat.report.view import CellInfo, KernelInfo, RunView


def load_shards(paths: list[Path]) -> list[RunView]:
    """The exports, checked to be all the slices of one plan."""
    if not paths:
        raise ConfigError("merge: give the run exports (--json) of every shard")
    views = [RunView.from_export(path) for path in paths]
    first, where = views[0].run, paths[0]
    if first.plan_digest is None or first.shard is None:
        raise ConfigError(f"{where}: not a shard's export (run with matrix run --shard I/N)")
    count = int(first.shard.split("/")[1])
    seen: dict[int, Path] = {}
    for view, path in zip(views, paths, strict=True):
        run = view.run
        if run.plan_digest != first.plan_digest:
            raise ConfigError(
                f"{path}: a shard of another plan ({run.plan_digest}, not {first.plan_digest} "
                f"of {where}): other kernels, artifacts or options"
            )
        if run.tool_version != first.tool_version:
            raise ConfigError(
                f"{path}: made by bpfcompat {run.tool_version}, {where} by {first.tool_version}"
            )
        index, _, total = (run.shard or "").partition("/")
        if int(total or 0) != count:
            raise ConfigError(f"{path}: shard {run.shard} of a {total}-way split, not {count}")
        if int(index) in seen:
            raise ConfigError(f"{path}: shard {run.shard} given twice (also {seen[int(index)]})")
        seen[int(index)] = path
    missing = sorted(set(range(1, count + 1)) - set(seen))
    if missing:
        raise ConfigError(f"merge: shard(s) {', '.join(map(str, missing))} of {count} missing")
    # In slice order, so kernels and cells come out in the plan's order.
    return sorted(views, key=lambda v: int((v.run.shard or "0/0").split("/")[0]))


def merge_into(store: Store, views: list[RunView]) -> int:
    """Store the shards as one run; returns its id. The run is `completed` only if every
    shard completed; its exit code is the worst of theirs."""
    statuses = {v.run.status for v in views}
    status = "completed" if statuses == {"completed"} else sorted(statuses - {"completed"})[0]
    codes = [v.run.exit_code for v in views if v.run.exit_code is not None]
    first = views[0].run
    run = store.add(
        Run(
            started_at=min(v.run.started_at for v in views),
            finished_at=utcnow(),
            status=status,
            exit_code=_worst(codes),
            accel=",".join(sorted({v.run.accel for v in views})),
            tool_version=__version__,
            labels_json=json.dumps(first.labels),
            attach_mode=first.attach_mode,
            plan_digest=first.plan_digest,
            shard=f"merged {len(views)}",
            error="; ".join(v.run.error for v in views if v.run.error) or None,
        )
    )
    assert run.id is not None
    kernels: dict[str, list[KernelInfo]] = {}
    for view in views:
        for kernel in view.kernels:
            kernels.setdefault(kernel.id, []).append(kernel)
    for kernel_id, parts in kernels.items():
        store.add(_kernel_row(run.id, kernel_id, parts))
    artifacts = {a.name: a for v in views for a in v.artifacts}
    for view in views:
        for cell in view.cells:
            result_id = _result_row(store, cell, artifacts[cell.artifact].sha256)
            store.add(_cell_row(run.id, cell, artifacts[cell.artifact], result_id))
    return run.id


def _worst(codes: list[int]) -> int | None:
    """Interrupted over error over failure over pass (the exit-code policy's order)."""
    for code in (130, 1, 2):
        if code in codes:
            return code
    return 0 if codes else None


def _kernel_row(run_id: int, kernel_id: str, parts: list[KernelInfo]) -> RunKernel:
    k = parts[0]
    statuses = {p.status for p in parts}
    # The fastest shard's first guest, and how it got ready: the two are shown together.
    fastest = min(
        (p for p in parts if p.boot_seconds), key=lambda p: p.boot_seconds or 0, default=k
    )
    return RunKernel(
        run_id=run_id,
        kernel_id=kernel_id,
        release=k.release,
        package=k.package,
        package_version=k.package_version,
        suite=k.suite,
        cmdline=k.cmdline,
        required=k.required,
        btf=k.btf,
        boot_seconds=fastest.boot_seconds or None,
        boots=sum(p.boots for p in parts),
        ready_via=fastest.ready_via,
        restores=sum(p.restores for p in parts),
        helpers=sum(p.helpers for p in parts),
        peak_rss_mb=max((p.peak_rss_mb for p in parts if p.peak_rss_mb), default=None),
        status="error" if "error" in statuses else "ok" if "ok" in statuses else k.status,
        error="; ".join(p.error for p in parts if p.error) or None,
        notes_json=json.dumps([n for p in parts for n in p.notes]),
        arch=k.arch,
        accel=k.accel,
    )


def _result_row(store: Store, cell: CellInfo, sha256: str) -> int | None:
    """The shard's raw evidence, when its export carried it (--json with results)."""
    raw = cell.raw
    if raw is None:
        return None
    stored = store.add(
        ValidatorResult(
            cache_key=f"merged:{sha256}:{cell.kernel}",
            artifact_sha256=sha256,
            kernel_id=cell.kernel,
            exit_code=raw.exit_code,
            signal=raw.signal,
            raw_json=json.dumps(raw.result) if raw.result is not None else None,
            infra_error=raw.infra_error,
            console_tail=raw.console_tail,
            seconds=cell.seconds,
        )
    )
    return stored.id


def _cell_row(run_id: int, cell: CellInfo, artifact: Any, result_id: int | None) -> Cell:
    v = cell.verdict
    return Cell(
        run_id=run_id,
        artifact=cell.artifact,
        artifact_path=artifact.path,
        artifact_sha256=artifact.sha256,
        manifest_path=artifact.manifest,
        kernel_id=cell.kernel,
        seconds=cell.seconds,
        cached=cell.cached,
        result_id=result_id,
        classifier_version=cell.classifier_version,
        notes_json=json.dumps(cell.notes),
        details_json=json.dumps(
            {
                "variants": [s.model_dump() for s in cell.variants],
                "map_fixups": [s.model_dump() for s in cell.map_fixups],
                "programs": [p.model_dump() for p in cell.programs],
                "programs_left_out": cell.programs_left_out,
            }
        ),
        flaky=cell.flaky,
        expectation=cell.expectation,
        expected=cell.expected,
        # The artifact's floor, as the shard's static reading kept it.
        analysis_json=json.dumps({"floor": artifact.floor, "floor_reason": artifact.floor_reason}),
        pinpoint_json=v.pinpoint.model_dump_json() if v.pinpoint else None,
        **{f: getattr(v, f) for f in type(v).model_fields if f != "pinpoint"},
    )
