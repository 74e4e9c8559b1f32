"""Report writers; all read the same run export."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bpfcompat.matrix.store import Store
from bpfcompat.report.export import run_export
from bpfcompat.report.html import render_html


def _write(path: Path, text: str) -> Path:
    """Write atomically so a CI artifact is never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_reports(
    store: Store, run_id: int, *, html: Path | None = None, json_path: Path | None = None,
    markdown: Path | None = None, junit: Path | None = None,
) -> list[Path]:
    written: list[Path] = []
    if json_path:
        written.append(_write(json_path, json.dumps(run_export(store, run_id), indent=2) + "\n"))
    if html:
        written.append(_write(html, render_html(run_export(store, run_id, include_results=True))))
    if markdown or junit:
        from bpfcompat.report.markdown import render_markdown
        from bpfcompat.report.junit import render_junit

        export = run_export(store, run_id)
        if markdown:
            written.append(_write(markdown, render_markdown(export)))
        if junit:
            written.append(_write(junit, render_junit(export)))
    return written
