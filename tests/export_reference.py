"""The run export (`bpfcompat.run.v1`) as the tool wrote it before RunView, reading the
store directly: the oracle that RunView.export keeps every key and value CI scripts
parse. A key added to the export is added here too; none is ever renamed or removed.
"""

from __future__ import annotations

from typing import Any

from bpfcompat.matrix.result import ResultModel
from bpfcompat.matrix.store import Store

SCHEMA = "bpfcompat.run.v1"


def reference_export(
    store: Store, run_id: int | None = None, *, include_results: bool = False
) -> dict[str, Any]:
    """The stored run as plain data; `include_results` adds each cell's validator result."""
    run = store.run(run_id)
    assert run.id is not None
    kernels = store.kernels(run.id)
    cells = store.cells(run.id)
    artifacts: dict[str, dict[str, Any]] = {}
    for cell in cells:
        artifacts.setdefault(
            cell.artifact,
            {
                "name": cell.artifact,
                "path": cell.artifact_path,
                "sha256": cell.artifact_sha256,
                "manifest": cell.manifest_path,
            },
        )
    out_cells = []
    for cell in cells:
        details = cell.details
        entry: dict[str, Any] = {
            "artifact": cell.artifact,
            "kernel": cell.kernel_id,
            "status": cell.status,
            "code": cell.code,
            "evidence": cell.evidence,
            "notes": cell.notes,
            "seconds": cell.seconds,
            "cached": cell.cached,
            "confidence": cell.confidence,
            "stage": cell.stage,
            "program": cell.program,
            "remediation": cell.remediation,
            "rule": cell.rule,
            "detail": cell.detail,
            "classifier_version": cell.classifier_version,
            "variants": details.get("variants", []),
            "map_fixups": details.get("map_fixups", []),
        }
        if include_results:
            stored = store.result(cell.result_id)
            parsed = stored.result() if stored else None
            # Normalised: only what the typed model read, bounded (the guest wrote it).
            entry["result"] = parsed.as_dict() if isinstance(parsed, ResultModel) else None
            entry["console_tail"] = stored.console_tail if stored else None
            entry["infra_error"] = stored.infra_error if stored else None
            entry["exit_code"] = stored.exit_code if stored else None
            entry["signal"] = stored.signal if stored else None
        out_cells.append(entry)
    return {
        "schema": SCHEMA,
        "run": {
            "id": run.id,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "status": run.status,
            "exit_code": run.exit_code,
            "accel": run.accel,
            "tool_version": run.tool_version,
            "error": run.error,
        },
        "kernels": [
            {
                "id": k.kernel_id,
                "release": k.release,
                "required": k.required,
                "btf": k.btf,
                "boot_seconds": k.boot_seconds,
                "package": k.package,
                "package_version": k.package_version,
                "suite": k.suite,
                "cmdline": k.cmdline,
                "status": k.status,
                "error": k.error,
                "boots": k.boots,
                "peak_rss_mb": k.peak_rss_mb,
            }
            for k in kernels
        ],
        "artifacts": list(artifacts.values()),
        "cells": out_cells,
    }
