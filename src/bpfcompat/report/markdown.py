"""Markdown summary sized for a CI job summary (e.g. $GITHUB_STEP_SUMMARY).

A matrix table (artifacts x kernels), the changes against a base run when given, and the
failing cells with code and evidence. Every value from a run is escaped for a
GitHub-flavoured table cell: `|` cannot end a cell, backticks cannot open code spans, HTML
cannot become markup and newlines cannot break the row. Evidence is cut to one line; the
HTML report has the logs.
"""

from __future__ import annotations

import html
import re
from typing import Any

from bpfcompat.matrix.policy import EXIT_MEANINGS
from bpfcompat.report.compare import Comparison
from bpfcompat.report.view import CellInfo, RunView

EVIDENCE_CHARS = 300
MAX_FAILURE_ROWS = 200  # keep a large matrix under CI summary size limits

# `_` only at a word edge: inside words (CORE_RELOCATION_FAILURE) it never emphasises.
_MD_SPECIAL = re.compile(r"([\\`*\[\]|~]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z]))")


def md_cell(value: Any, limit: int | None = None) -> str:
    """One value made safe inside a Markdown table cell, on one line."""
    text = " ".join(str("" if value is None else value).split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    text = html.escape(text, quote=False)  # < > & never become markup
    return _MD_SPECIAL.sub(r"\\\1", text)


def _label(cell: CellInfo | None) -> str:
    if cell is None:
        return "—"
    v = cell.verdict
    icon = {"pass": "✅", "fail": "❌", "error": "⚠️"}[v.status]
    code = f" {md_cell(v.code)}" if v.code else ""
    return f"{icon} {md_cell(v.status)}{code}"


def _kernel(view: RunView, kernel_id: str) -> str:
    return md_cell(kernel_id) + ("" if view.required(kernel_id) else " (optional)")


def _expected(cell: CellInfo) -> str:
    if cell.expected is None:
        return ""
    return "yes" if cell.expected else f"**no** (expected {md_cell(cell.expectation)})"


def render_markdown(view: RunView, comparison: Comparison | None = None) -> str:
    """The run as a CI summary; `comparison` adds the changes against a base run."""
    run = view.run
    cells = view.cell_map()
    names = view.artifact_names()
    counts = view.counts()
    exit_code = "–" if run.exit_code is None else run.exit_code
    meaning = EXIT_MEANINGS.get(run.exit_code, "") if run.exit_code is not None else ""
    out = [
        f"## bpfcompat run {run.id}: {md_cell(run.status)}, exit code {exit_code}"
        + (f" ({md_cell(meaning)})" if meaning else ""),
        "",
        f"**{counts['pass']}** pass · **{counts['fail']}** fail · **{counts['error']}** error "
        f"· {len(names)} artifacts × {len(view.kernels)} kernels "
        f"· accel {md_cell(run.accel or '?')}",
        "",
    ]
    if run.status == "interrupted":
        out += ["> **Interrupted**: cells marked — were not run.", ""]
    header = ["artifact"] + [
        _kernel(view, k.id) + f"<br>{md_cell(k.release)}" for k in view.kernels
    ]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for name in names:
        row = [md_cell(name)] + [_label(cells.get((name, k.id))) for k in view.kernels]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    if comparison is not None:
        out += [f"### Changes since run {comparison.base_id}", ""]
        if comparison.changes:
            out += [
                "| change | artifact | kernel | before | after | evidence |",
                "|---|---|---|---|---|---|",
            ]
            for ch in comparison.changes:
                tag = "**regression**" if ch.regression else md_cell(ch.label)
                out.append(
                    f"| {tag} | {md_cell(ch.artifact)} | {md_cell(ch.kernel)} | "
                    f"{md_cell(ch.base_verdict)} | {md_cell(ch.head_verdict)} | "
                    f"{md_cell(ch.evidence, EVIDENCE_CHARS)} |"
                )
        else:
            out.append(f"No cell changed ({comparison.unchanged} unchanged).")
        out.append("")
    failing = view.failing()
    if failing:
        out += [
            f"### Failing cells ({len(failing)})",
            "",
            "| artifact | kernel | status | code | expected | evidence |",
            "|---|---|---|---|---|---|",
        ]
        for c in failing[:MAX_FAILURE_ROWS]:
            v = c.verdict
            out.append(
                f"| {md_cell(c.artifact)} | {_kernel(view, c.kernel)} | {md_cell(v.status)} | "
                f"{md_cell(v.code)} | {_expected(c)} | {md_cell(v.evidence, EVIDENCE_CHARS)} |"
            )
        if len(failing) > MAX_FAILURE_ROWS:
            out.append(f"\n… and {len(failing) - MAX_FAILURE_ROWS} more; see the HTML report.")
        out.append("")
    return "\n".join(out)
