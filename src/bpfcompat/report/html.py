"""HTML report: one self-contained, autoescaped file (no external assets, works offline).

`build_view` turns a run export (made with include_results=True) into plain view models
so the template only lays them out. Everything from a guest or an artifact (program
names, logs, command output) reaches the page through Jinja's autoescaping, and the
script never builds markup from data; element ids are row/column indices, never names,
so any artifact name is safe. Logs are cut to their tails to keep the file small.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from bpfcompat.matrix.policy import EXIT_MEANINGS
from bpfcompat.report.compare import CellChange, Comparison

LOG_TAIL_LINES = 40
OUTPUT_TAIL_LINES = 20
LINE_CHARS = 300
TIMING_STEPS = 8

CHANGE_BADGES = {  # kind -> (badge text, css class)
    "new_failure": ("new failure", "ch-bad"),
    "changed": ("code changed", "ch-warn"),
    "fixed": ("fixed", "ch-good"),
    "only_head": ("new cell", "ch-info"),
    "only_base": ("removed", "ch-info"),
}


@dataclass
class Tail:
    """The last lines of a log, with how many lines were left out in front; `lines` pairs
    each line with whether it is the cell's evidence line (highlighted)."""

    text: str
    omitted: int
    lines: list[tuple[str, bool]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.text)


@dataclass
class KernelView:
    index: int
    id: str
    release: str
    required: bool
    btf: str  # yes | no | unknown
    accel: str
    boot_seconds: float | None
    status: str
    error: str | None
    cmdline: str
    package_version: str


@dataclass
class ChangeView:
    kind: str
    badge: str
    css: str
    artifact: str
    kernel: str
    required: bool
    regression: bool
    base: str
    head: str
    base_status: str
    base_code: str | None
    head_status: str
    head_code: str | None
    evidence: str | None
    anchor: str | None  # id of the head cell, when the head run has one


@dataclass
class CellView:
    row: int
    col: int
    status: str  # pass | fail | error | none
    code: str | None
    required: bool
    tooltip: str
    change: ChangeView | None = None

    @property
    def id(self) -> str:
        return f"cell-{self.row}-{self.col}"

    @property
    def detail_id(self) -> str:
        return f"detail-{self.row}-{self.col}"


@dataclass
class RowView:
    index: int
    artifact: str
    path: str
    sha256: str
    cells: list[CellView]

    @property
    def failing(self) -> bool:
        return any(c.status in ("fail", "error") for c in self.cells)

    @property
    def changed(self) -> bool:
        return any(c.change for c in self.cells)


@dataclass
class ProgramView:
    name: str
    section: str
    type: str
    load_status: str
    errno: str
    load_seconds: float | None
    skip_reason: str | None
    attach_status: str
    attach_detail: str | None
    attach_required: bool
    variant_group: str | None
    log: Tail


@dataclass
class TestView:
    name: str
    status: str
    required: bool
    command: str
    exit_code: Any
    expected_exit_code: Any
    duration: Any
    timed_out: bool
    error: str | None
    stdout: Tail
    stderr: Tail


@dataclass
class ProbeView:
    kernel_btf: str
    kernel_btf_size: Any
    artifact_btf: str
    lockdown: str
    libbpf: str
    map_supported: list[str]
    map_unsupported: list[str]
    prog_supported: list[str]
    prog_unsupported: list[str]
    attach_prereqs: list[tuple[str, str]]
    probe_errors: list[tuple[str, str]]
    bpftool: str


@dataclass
class DetailView:
    cell: CellView
    artifact: str
    kernel: KernelView
    status: str
    code: str | None
    confidence: str | None
    stage: str | None
    program: str | None
    evidence: str | None
    remediation: str | None
    notes: list[str]
    seconds: float
    cached: bool
    classifier_version: str
    has_result: bool
    load_error: str | None
    libbpf_messages: list[str]
    programs: list[ProgramView]
    attach: dict[str, Any] | None
    variants: list[dict[str, Any]]
    map_fixups: list[dict[str, Any]]
    functional_status: str | None
    tests: list[TestView]
    probes: ProbeView | None
    timings: list[tuple[str, float, int]]  # step, seconds, bar width in percent
    timing_total: float | None
    validator_errors: list[str]
    warnings: list[str]
    infra_error: str | None
    console: Tail
    libbpf_log: Tail


@dataclass
class ReportView:
    run: dict[str, Any]
    duration: str | None
    exit_meaning: str
    interrupted: bool
    counts: dict[str, int]
    required_failing: int
    kernels: list[KernelView]
    rows: list[RowView]
    details: list[DetailView]
    kernel_errors: list[KernelView] = field(default_factory=list)
    comparison: dict[str, Any] | None = None
    changes: list[ChangeView] = field(default_factory=list)


def _is_evidence(line: str, evidence: str | None) -> bool:
    """Whether a log line is the one the classifier quoted (it may add a suffix or the
    log a prefix); short lines never match, so "0: R1=ctx()" is not marked by accident."""
    stripped = line.strip()
    if not evidence or len(stripped) < 12:
        return False
    return evidence.startswith(stripped) or (len(evidence) >= 12 and evidence in stripped)


def tail(
    text: Any, lines: int = LOG_TAIL_LINES, width: int = LINE_CHARS, evidence: str | None = None
) -> Tail:
    """The last `lines` lines of `text`, each cut to `width` characters."""
    all_lines = str(text or "").rstrip("\n").splitlines()
    kept = all_lines[-lines:]
    cut = [ln if len(ln) <= width else ln[: width - 1] + "…" for ln in kept]
    marks = [(c, _is_evidence(ln, evidence)) for c, ln in zip(cut, kept, strict=True)]
    return Tail("\n".join(cut), max(0, len(all_lines) - lines), marks)


def _yes_no(value: Any) -> str:
    return "yes" if value is True else "no" if value is False else "unknown"


def _errno(name: Any, number: Any) -> str:
    if not number:
        return ""
    return f"{name} ({number})" if name else str(number)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value or [] if isinstance(v, dict)] if isinstance(value, list) else []


def _duration(start: Any, end: Any) -> str | None:
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _kernel_view(index: int, k: dict[str, Any], accel: str) -> KernelView:
    return KernelView(
        index=index,
        id=str(k["id"]),
        release=k.get("release") or "",
        required=bool(k["required"]),
        btf=_yes_no(k.get("btf")),
        accel=accel,
        boot_seconds=k.get("boot_seconds"),
        status=k.get("status") or "",
        error=k.get("error"),
        cmdline=k.get("cmdline") or "",
        package_version=k.get("package_version") or "",
    )


def _change_view(change: CellChange, anchor: str | None) -> ChangeView:
    badge, css = CHANGE_BADGES[change.kind]
    if change.regression:
        badge = "regression"
    return ChangeView(
        kind=change.kind,
        badge=badge,
        css=css,
        artifact=change.artifact,
        kernel=change.kernel,
        required=change.required,
        regression=change.regression,
        base=change.base_verdict,
        head=change.head_verdict,
        base_status=change.base_status or "absent",
        base_code=change.base_code,
        head_status=change.head_status or "absent",
        head_code=change.head_code,
        evidence=change.evidence,
        anchor=anchor,
    )


def _programs(result: dict[str, Any], evidence: str | None) -> list[ProgramView]:
    out = []
    for p in _dicts(_dict(result.get("discovery")).get("programs")):
        attach_detail = p.get("attach_error") or p.get("attach_skip_reason")
        if p.get("attach_errno"):
            attach_detail = f"errno {p['attach_errno']}: {attach_detail or ''}".rstrip(": ")
        out.append(
            ProgramView(
                name=str(p.get("name") or "?"),
                section=str(p.get("section") or ""),
                type=str(p.get("type") or ""),
                load_status=str(p.get("load_status") or "-"),
                errno=_errno(p.get("load_errno_name"), p.get("load_errno")),
                load_seconds=p.get("load_seconds"),
                skip_reason=p.get("load_skip_reason"),
                attach_status=str(p.get("attach_status") or "-"),
                attach_detail=attach_detail,
                attach_required=bool(p.get("attach_required")),
                variant_group=p.get("variant_group"),
                log=tail(p.get("load_log"), evidence=evidence),
            )
        )
    return out


def _variants(result: dict[str, Any], cell: dict[str, Any]) -> list[dict[str, Any]]:
    raw = _dicts(result.get("program_variants"))
    if not raw:  # no raw result (e.g. cached export without it): the cell's summary
        raw = _dicts(cell.get("variants"))
    return [
        {
            "group": v.get("group"),
            "chosen": v.get("chosen"),
            "disabled": [str(d) for d in v.get("disabled") or []],
            "status": v.get("status") or "",
            "error": v.get("error"),
            "probes": [
                {
                    "program": p.get("program"),
                    "helper": p.get("helper") or "unconditional",
                    "supported": _yes_no(p.get("supported")),
                }
                for p in _dicts(v.get("probes"))
            ],
        }
        for v in raw
    ]


def _map_fixups(result: dict[str, Any], cell: dict[str, Any]) -> list[dict[str, Any]]:
    raw = _dicts(result.get("map_fixups")) or _dicts(cell.get("map_fixups"))
    out = []
    for m in raw:
        requested, applied = m.get("requested"), m.get("applied_entries")
        if requested == "cpus" and applied is not None:
            resolved = f"cpus → {applied}"
        elif applied is not None:
            resolved = str(applied)
        else:
            resolved = "-"
        out.append(
            {
                "name": m.get("name"),
                "requested": "-" if requested is None else requested,
                "applied": resolved,
                "inner_ringbuf_bytes": m.get("inner_ringbuf_bytes"),
                "status": m.get("status") or "",
                "error": m.get("error"),
            }
        )
    return out


def _tests(functional: dict[str, Any]) -> list[TestView]:
    return [
        TestView(
            name=str(t.get("name") or "?"),
            status=str(t.get("status") or "-"),
            required=bool(t.get("required", True)),
            command=str(t.get("command") or ""),
            exit_code=t.get("exit_code"),
            expected_exit_code=t.get("expected_exit_code"),
            duration=t.get("duration_seconds"),
            timed_out=bool(t.get("timed_out")),
            error=t.get("error"),
            stdout=tail(t.get("stdout_tail"), OUTPUT_TAIL_LINES),
            stderr=tail(t.get("stderr_tail"), OUTPUT_TAIL_LINES),
        )
        for t in _dicts(functional.get("tests"))
    ]


def _split(types: Any) -> tuple[list[str], list[str]]:
    types = _dict(types)
    return (
        sorted(k for k, v in types.items() if v is True),
        sorted(k for k, v in types.items() if v is False),
    )


def _probes(result: dict[str, Any]) -> ProbeView | None:
    caps, btf = _dict(result.get("capabilities")), _dict(result.get("btf"))
    security, host = _dict(result.get("security")), _dict(result.get("host"))
    if not (caps or btf or security):
        return None
    maps_ok, maps_no = _split(caps.get("map_types"))
    progs_ok, progs_no = _split(caps.get("program_types"))
    prereqs = [
        (k, _yes_no(v) if isinstance(v, bool) else str(v))
        for k, v in sorted(_dict(caps.get("attach_prereqs")).items())
        if v is not None
    ]
    artifact_btf = "BTF " + _yes_no(btf.get("artifact_has_btf"))
    artifact_btf += ", BTF.ext " + _yes_no(btf.get("artifact_has_btf_ext"))
    lockdown = str(security.get("lockdown") or security.get("lockdown_error") or "unknown")
    bpftool = "probe ok" if caps.get("bpftool_probe_ok") else "probe failed"
    if caps.get("bpftool_probe_error"):
        bpftool += f": {caps['bpftool_probe_error']}"
    if caps.get("bpftool_probe_cached"):
        bpftool += " (cached in this boot)"
    return ProbeView(
        kernel_btf=_yes_no(btf.get("kernel_btf_available")),
        kernel_btf_size=btf.get("kernel_btf_size"),
        artifact_btf=artifact_btf,
        lockdown=lockdown,
        libbpf=str(host.get("libbpf_version") or "unknown"),
        map_supported=maps_ok,
        map_unsupported=maps_no,
        prog_supported=progs_ok,
        prog_unsupported=progs_no,
        attach_prereqs=prereqs,
        probe_errors=[(str(k), str(v)) for k, v in _dict(caps.get("probe_errors")).items()],
        bpftool=bpftool if caps.get("bpftool_available") else "not available",
    )


def _timings(result: dict[str, Any]) -> tuple[list[tuple[str, float, int]], float | None]:
    raw = {
        k: float(v)
        for k, v in _dict(result.get("timings")).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    total = raw.pop("total", None)
    longest = max(raw.values(), default=0.0) or 1.0
    steps = sorted(raw.items(), key=lambda kv: -kv[1])
    shown = [(k, v, max(1, round(100 * v / longest))) for k, v in steps[:TIMING_STEPS]]
    rest = steps[TIMING_STEPS:]
    if rest:
        others = sum(v for _, v in rest)
        shown.append((f"{len(rest)} other steps", others, max(1, round(100 * others / longest))))
    return shown, total


def _detail(
    cell: dict[str, Any], view: CellView, kernel: KernelView, *, with_libbpf_log: bool
) -> DetailView:
    result = _dict(cell.get("result"))
    load = _dict(result.get("load"))
    functional = _dict(result.get("functional"))
    attach = _dict(result.get("attach"))
    timings, total = _timings(result)
    load_error = None
    if load.get("status") == "fail":
        load_error = " ".join(
            str(x)
            for x in (
                _errno(load.get("errno_name"), load.get("error_code")),
                load.get("error") or "",
                f"(stage {load['stage']})" if load.get("stage") else "",
            )
            if x
        )
    return DetailView(
        cell=view,
        artifact=cell["artifact"],
        kernel=kernel,
        status=cell["status"],
        code=cell.get("code"),
        confidence=cell.get("confidence"),
        stage=cell.get("stage"),
        program=cell.get("program"),
        evidence=cell.get("evidence"),
        remediation=cell.get("remediation"),
        notes=[str(n) for n in cell.get("notes") or []],
        seconds=float(cell.get("seconds") or 0.0),
        cached=bool(cell.get("cached")),
        classifier_version=str(cell.get("classifier_version") or ""),
        has_result=bool(result),
        load_error=load_error or None,
        libbpf_messages=[str(m) for m in (load.get("libbpf_messages") or [])[-8:]],
        programs=_programs(result, cell.get("evidence")),
        attach=attach or None,
        variants=_variants(result, cell),
        map_fixups=_map_fixups(result, cell),
        functional_status=functional.get("status"),
        tests=_tests(functional),
        probes=_probes(result),
        timings=timings,
        timing_total=total,
        validator_errors=[
            f"{e.get('step')}: {e.get('message')}" for e in _dicts(result.get("errors"))
        ],
        warnings=[
            f"{w.get('step')}: {w.get('message')}" if isinstance(w, dict) else str(w)
            for w in result.get("warnings") or []
        ],
        infra_error=cell.get("infra_error"),
        console=tail(cell.get("console_tail")),
        libbpf_log=(
            tail(_dict(result.get("logs")).get("libbpf"), evidence=cell.get("evidence"))
            if with_libbpf_log
            else Tail("", 0)
        ),
    )


def build_view(export: dict[str, Any], comparison: Comparison | None = None) -> ReportView:
    """The report's view model: everything the template shows, precomputed."""
    run = export["run"]
    accel = str(run.get("accel") or "")
    kernels = [_kernel_view(i, k, accel) for i, k in enumerate(export["kernels"])]
    cells = {(c["artifact"], c["kernel"]): c for c in export["cells"]}
    names = [a["name"] for a in export["artifacts"]]
    names += [n for n in dict.fromkeys(c["artifact"] for c in export["cells"]) if n not in names]
    artifacts = {a["name"]: a for a in export["artifacts"]}
    rows: list[RowView] = []
    details: list[DetailView] = []
    anchors: dict[tuple[str, str], str] = {}
    for r, name in enumerate(names):
        row_cells = []
        for k in kernels:
            cell = cells.get((name, k.id))
            if cell is None:
                row_cells.append(CellView(r, k.index, "none", None, k.required, "not run"))
                continue
            tip = cell["status"] + (
                f" {cell['code']}: {cell.get('evidence') or ''}" if cell.get("code") else ""
            )
            view = CellView(r, k.index, cell["status"], cell.get("code"), k.required, tip[:300])
            anchors[(name, k.id)] = view.id
            row_cells.append(view)
            details.append(_detail(cell, view, k, with_libbpf_log=cell["status"] != "pass"))
        art = artifacts.get(name, {})
        rows.append(
            RowView(r, name, str(art.get("path") or ""), str(art.get("sha256") or ""), row_cells)
        )
    change_views = []
    if comparison:
        for change in comparison.changes:
            cv = _change_view(change, anchors.get((change.artifact, change.kernel)))
            change_views.append(cv)
        by_anchor = {cv.anchor: cv for cv in change_views if cv.anchor}
        for row in rows:
            for c in row.cells:
                c.change = by_anchor.get(c.id)
    counts = {
        s: sum(1 for c in export["cells"] if c["status"] == s) for s in ("pass", "fail", "error")
    }
    counts["not run"] = sum(1 for row in rows for c in row.cells if c.status == "none")
    exit_code = run.get("exit_code")
    return ReportView(
        run=run,
        duration=_duration(run.get("started_at"), run.get("finished_at")),
        exit_meaning=EXIT_MEANINGS.get(exit_code, "unknown")
        if exit_code is not None
        else "not finished",
        interrupted=run.get("status") == "interrupted",
        counts=counts,
        required_failing=sum(
            1 for row in rows for c in row.cells if c.required and c.status in ("fail", "error")
        ),
        kernels=kernels,
        rows=rows,
        details=details,
        kernel_errors=[k for k in kernels if k.error],
        comparison={
            "base_id": comparison.base_id,
            "head_id": comparison.head_id,
            "regressions": len(comparison.regressions),
            "unchanged": comparison.unchanged,
        }
        if comparison
        else None,
        changes=change_views,
    )


def _env() -> Environment:
    return Environment(
        loader=PackageLoader("bpfcompat.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(export: dict[str, Any], comparison: Comparison | None = None) -> str:
    """Render a run export made with include_results=True (optionally against a base run)."""
    view = build_view(export, comparison)
    return _env().get_template("report.html.j2").render(view=view)
