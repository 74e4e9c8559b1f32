"""Record real validator results for the unit tests: one JSON file per kernel.

Usage: .venv/bin/python scripts/record_test_data.py DB [RUN_ID]
Reads a stored run (made by `bpfcompat matrix run examples`) and writes
tests/data/recorded/<kernel-id>.json holding, per artifact, the raw validator JSON the
guest produced, and the host's static reading of the artifact the run kept with the cell
(`analysis`: floor, loader-setup findings, requirements), so classifier and report tests
run on real evidence without a VM.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bpfcompat.matrix.statics import analysis_of
from bpfcompat.matrix.store import Store
from bpfcompat.report.view import RunView

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "recorded"


def main() -> None:
    store = Store(Path(sys.argv[1]))
    run_id = int(sys.argv[2]) if len(sys.argv) > 2 else None
    view = RunView.from_store(store, run_id)
    export = view.export(include_results=True)
    analysis = {
        (c.artifact, c.kernel_id): analysis_of(c.analysis_json) for c in store.cells(view.run.id)
    }
    OUT.mkdir(parents=True, exist_ok=True)
    for kernel in export["kernels"]:
        cells = [
            {
                "artifact": c["artifact"],
                "kernel": c["kernel"],
                "release": kernel["release"],
                "result": c["result"],
                "exit_code": c["exit_code"],
                "signal": c["signal"],
                "infra_error": c["infra_error"],
                "console_tail": c["console_tail"],
                "analysis": analysis.get((c["artifact"], c["kernel"])) or None,
            }
            for c in export["cells"]
            if c["kernel"] == kernel["id"]
        ]
        data = {"kernel": kernel, "recorded_from_run": export["run"], "cells": cells}
        path = OUT / f"{kernel['id']}.json"
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"wrote {path} ({len(cells)} cells)")


if __name__ == "__main__":
    main()
