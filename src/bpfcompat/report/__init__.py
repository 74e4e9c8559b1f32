"""Report writers; every format renders the same RunView, built once per call."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from pathlib import Path

from bpfcompat.errors import ReportError
from bpfcompat.matrix.store import Store
from bpfcompat.report.compare import Comparison, compare_views
from bpfcompat.report.view import RunView


def write_file(path: Path, text: str) -> Path:
    """Write atomically so a CI artifact is never half a file: a temporary file beside
    `path`, synced, then renamed over it. Any failure is one line naming `path`, and the
    temporary file never outlives the call."""
    try:
        if path.parent.exists() and not path.parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.name or path.is_dir():  # "/" and "." have no name
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        tmp = path.with_name(f".{path.name[:200]}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        # A lone surrogate (an undecodable file name) is written as its escape.
        data = text.encode("utf-8", errors="backslashreplace")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    except OSError as exc:
        raise ReportError(f"{path}: cannot write the report: {exc.strerror or exc}") from None
    return path


def write_view(
    view: RunView,
    *,
    html: Path | None = None,
    json_path: Path | None = None,
    markdown: Path | None = None,
    junit: Path | None = None,
    comparison: Comparison | None = None,
) -> list[Path]:
    """Write the requested formats of one run view; `comparison` adds the changes since a
    base run to the HTML and Markdown reports (the JSON export and JUnit stay one run's
    own view). The HTML needs a view built with its raw results."""
    written: list[Path] = []
    if json_path:
        written.append(write_file(json_path, json.dumps(view.export(), indent=2) + "\n"))
    if html:
        from bpfcompat.report.html import render_html

        written.append(write_file(html, render_html(view, comparison)))
    if markdown:
        from bpfcompat.report.markdown import render_markdown

        written.append(write_file(markdown, render_markdown(view, comparison)))
    if junit:
        from bpfcompat.report.junit import render_junit

        written.append(write_file(junit, render_junit(view)))
    return written


def base_view(store: Store | None, base: str) -> RunView:
    """A run to compare against: a stored run's id, or a run export from another job
    (`bpfcompat.run.v1` JSON, e.g. main's last CI run)."""
    if base.strip().isdigit():
        if store is None:
            raise ReportError(f"--base {base}: a run id needs a store (--db)")
        return RunView.from_store(store, int(base), with_results=False)
    return RunView.from_export(Path(base))


def write_reports(
    store: Store,
    run_id: int,
    *,
    html: Path | None = None,
    json_path: Path | None = None,
    markdown: Path | None = None,
    junit: Path | None = None,
    base_run: int | str | None = None,
) -> list[Path]:
    """Write the requested formats of a stored run, read from the store once (raw results
    only when the HTML report needs them); `base_run` (a run id or an export's path) adds
    the changes since that run."""
    view = RunView.from_store(store, run_id, with_results=html is not None)
    comparison = None
    if base_run is not None:
        comparison = compare_views(base_view(store, str(base_run)), view)
    return write_view(
        view, html=html, json_path=json_path, markdown=markdown, junit=junit, comparison=comparison
    )
