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

from bpfcompat.report.compare import Comparison

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


def _label(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "—"
    icon = {"pass": "✅", "fail": "❌", "error": "⚠️"}.get(cell["status"], "")
    code = f" {md_cell(cell['code'])}" if cell.get("code") else ""
    return f"{icon} {md_cell(cell['status'])}{code}".strip()


def render_markdown(export: dict[str, Any], comparison: Comparison | None = None) -> str:
    """The run as a CI summary; `comparison` adds the changes against a base run."""
    run = export["run"]
    kernels = export["kernels"]
    cells = {(c["artifact"], c["kernel"]): c for c in export["cells"]}
    names = list(
        dict.fromkeys(
            [a["name"] for a in export["artifacts"]] + [c["artifact"] for c in export["cells"]]
        )
    )
    counts = {
        s: sum(1 for c in export["cells"] if c["status"] == s) for s in ("pass", "fail", "error")
    }
    exit_code = run.get("exit_code")
    out = [
        f"## bpfcompat run {md_cell(run['id'])}: {md_cell(run['status'])}, "
        f"exit code {md_cell('–' if exit_code is None else exit_code)}",
        "",
        f"**{counts['pass']}** pass · **{counts['fail']}** fail · **{counts['error']}** error "
        f"· {len(names)} artifacts × {len(kernels)} kernels "
        f"· accel {md_cell(run.get('accel') or '?')}",
        "",
    ]
    if run.get("status") == "interrupted":
        out += ["> **Interrupted**: cells marked — were not run.", ""]
    header = ["artifact"] + [
        md_cell(k["id"])
        + ("" if k["required"] else " (optional)")
        + f"<br>{md_cell(k.get('release') or '')}"
        for k in kernels
    ]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for name in names:
        row = [md_cell(name)] + [_label(cells.get((name, k["id"]))) for k in kernels]
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
    required = {k["id"]: bool(k["required"]) for k in kernels}
    failing = [c for c in export["cells"] if c["status"] in ("fail", "error")]
    if failing:
        failing.sort(
            key=lambda c: (not required.get(c["kernel"], True), c["artifact"], c["kernel"])
        )
        out += [
            f"### Failing cells ({len(failing)})",
            "",
            "| artifact | kernel | status | code | evidence |",
            "|---|---|---|---|---|",
        ]
        for c in failing[:MAX_FAILURE_ROWS]:
            kernel = md_cell(c["kernel"]) + (
                "" if required.get(c["kernel"], True) else " (optional)"
            )
            evidence = md_cell(c.get("evidence"), EVIDENCE_CHARS)
            out.append(
                f"| {md_cell(c['artifact'])} | {kernel} | {md_cell(c['status'])} | "
                f"{md_cell(c.get('code'))} | {evidence} |"
            )
        if len(failing) > MAX_FAILURE_ROWS:
            out.append(f"\n… and {len(failing) - MAX_FAILURE_ROWS} more; see the HTML report.")
        out.append("")
    return "\n".join(out)
