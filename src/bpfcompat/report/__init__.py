"""Report writers; all read the same run export (`bpfcompat.run.v1`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bpfcompat.matrix.store import Store
from bpfcompat.report.export import run_export


def _write(path: Path, text: str) -> Path:
    """Write atomically so a CI artifact is never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_reports(
    store: Store,
    run_id: int,
    *,
    html: Path | None = None,
    json_path: Path | None = None,
    markdown: Path | None = None,
    junit: Path | None = None,
    base_run: int | None = None,
) -> list[Path]:
    """Write the requested formats; `base_run` adds the changes since that run to the
    HTML and Markdown reports (the JSON export and JUnit stay one run's own view)."""
    from bpfcompat.report.compare import compare_runs

    comparison = compare_runs(store, base_run, run_id) if base_run is not None else None
    written: list[Path] = []
    if json_path:
        written.append(_write(json_path, json.dumps(run_export(store, run_id), indent=2) + "\n"))
    if html:
        from bpfcompat.report.html import render_html

        export = run_export(store, run_id, include_results=True)
        written.append(_write(html, render_html(export, comparison)))
    if markdown or junit:
        from bpfcompat.report.junit import render_junit
        from bpfcompat.report.markdown import render_markdown

        export = run_export(store, run_id)
        if markdown:
            written.append(_write(markdown, render_markdown(export, comparison)))
        if junit:
            written.append(_write(junit, render_junit(export)))
    return written
