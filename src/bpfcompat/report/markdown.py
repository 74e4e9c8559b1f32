"""Markdown summary sized for a CI job summary (e.g. $GITHUB_STEP_SUMMARY).

A matrix table (artifacts x kernels), the changes against a base run when given, the
failing cells with code, evidence, what the kernel lacks and where the verifier stopped,
then per artifact its static floor against the oldest kernel it passed on, and the
programs that load where the whole object does not, with a manifest that would make it
load everywhere. Every value from a run is escaped for a
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
from bpfcompat.report.cost import heaviest
from bpfcompat.report.insight import floor_check, loadable_subset
from bpfcompat.report.view import CellInfo, RunView

EVIDENCE_CHARS = 300
MAX_FAILURE_ROWS = 200  # keep a large matrix under CI summary size limits
MAX_COST_ROWS = 10

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
        if comparison.cost:
            out += [
                f"**Verifier cost grew** over {comparison.cost_threshold * 100:.0f}% "
                f"({len(comparison.cost)} program(s)):",
                "",
                "| program | kernel | before | after | growth |",
                "|---|---|---|---|---|",
            ]
            for c in comparison.cost[:MAX_FAILURE_ROWS]:
                out.append(
                    f"| {md_cell(c.artifact + ':' + c.program)} | {_kernel(view, c.kernel)} | "
                    f"{c.base.insns:,} | {c.head.insns:,} ({c.head.share_text} of limit) | "
                    f"{'**' if c.required and comparison.gate_cost else ''}{c.growth_text}"
                    f"{'**' if c.required and comparison.gate_cost else ''} |"
                )
            out.append("")
    failing = view.failing()
    if failing:
        out += [
            f"### Failing cells ({len(failing)})",
            "",
            "| artifact | kernel | status | code | expected | evidence | needs | where |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in failing[:MAX_FAILURE_ROWS]:
            v = c.verdict
            where = v.pinpoint.where if v.pinpoint else None
            out.append(
                f"| {md_cell(c.artifact)} | {_kernel(view, c.kernel)} | {md_cell(v.status)} | "
                f"{md_cell(v.code)} | {_expected(c)} | {md_cell(v.evidence, EVIDENCE_CHARS)} | "
                f"{md_cell(v.needs)} | {md_cell(where, EVIDENCE_CHARS)} |"
            )
        if len(failing) > MAX_FAILURE_ROWS:
            out.append(f"\n… and {len(failing) - MAX_FAILURE_ROWS} more; see the HTML report.")
        out.append("")
    out += _artifacts(view, names)
    out += _cost(view)
    return "\n".join(out)


def _cost(view: RunView) -> list[str]:
    """The programs closest to their verifier limit, instructions processed per kernel."""
    rows = [r for r in heaviest(view, MAX_COST_ROWS) if r.peak_share > 0]
    if not rows:
        return []
    out = [
        "### Verifier cost (closest to the limit)",
        "",
        "| program | " + " | ".join(_kernel(view, k.id) for k in view.kernels) + " |",
        "|---|" + "---|" * len(view.kernels),
    ]
    for r in rows:
        cells = [f"{c.insns:,} ({c.share_text})" if c else "–" for c in r.per_kernel]
        out.append(f"| {md_cell(r.artifact + ':' + r.program)} | " + " | ".join(cells) + " |")
    return [*out, ""]


def _fenced(lines: list[str]) -> list[str]:
    """A code block for text from a run: control characters dropped, and a fence longer
    than any run of backticks inside, so nothing in it can end the block."""
    clean = [" ".join(ln.split()) if not ln.startswith(" ") else ln.rstrip() for ln in lines]
    clean = ["".join(ch for ch in ln if ch.isprintable()) for ln in clean]
    longest = max((len(m) for ln in clean for m in re.findall(r"`+", ln)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}yaml", *clean, fence]


def _artifacts(view: RunView, names: list[str]) -> list[str]:
    """Per artifact: floor against observation, and the loadable subset."""
    checks = [floor_check(view, n) for n in names]
    checks = [c for c in checks if c.floor or c.oldest_pass][:MAX_FAILURE_ROWS]
    out: list[str] = []
    if checks:
        out += [
            "### Floor vs observed",
            "",
            "| artifact | floor (static) | oldest pass | disagreement |",
            "|---|---|---|---|",
        ]
        for c in checks:
            floor = f"{c.floor} ({c.floor_reason})" if c.floor and c.floor_reason else c.floor
            oldest = f"{c.oldest_pass_release} ({c.oldest_pass})" if c.oldest_pass else "none"
            flags = c.verdict
            out.append(
                f"| {md_cell(c.artifact)} | {md_cell(floor or 'unknown')} | {md_cell(oldest)} | "
                f"{'⚠️ ' if c.flags else ''}{md_cell(flags, EVIDENCE_CHARS)} |"
            )
        out.append("")
    subsets = [s for s in (loadable_subset(view, n) for n in names) if s is not None]
    if subsets:
        out += ["### Loadable subsets", ""]
        for s in subsets[:MAX_FAILURE_ROWS]:
            out.append(f"**{md_cell(s.artifact)}**")
            out.append("")
            for k in s.kernels:
                loads = ", ".join(k.loads) or "none"
                fails = ", ".join(k.fails) or "none"
                out.append(
                    f"- {md_cell(k.kernel)}: loads alone: {md_cell(loads)}; "
                    f"fails alone: {md_cell(fails)}"
                )
            out += ["", md_cell(s.effect), ""]
            if s.manifest:
                out += [*_fenced(s.manifest.splitlines()), ""]
    return out
