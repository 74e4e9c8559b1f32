"""HTML report: one self-contained, autoescaped file (no external assets, works offline)."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("bpfcompat.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["tail"] = lambda text, n=40: "\n".join(str(text or "").splitlines()[-n:])
    return env


def render_html(export: dict[str, Any]) -> str:
    """Render a run export made with include_results=True."""
    cells = {(c["artifact"], c["kernel"]): c for c in export["cells"]}
    counts = {s: sum(1 for c in export["cells"] if c["status"] == s) for s in ("pass", "fail", "error")}
    return _env().get_template("report.html.j2").render(
        run=export["run"], kernels=export["kernels"], artifacts=export["artifacts"],
        cells=cells, counts=counts,
    )
