"""What the HTML report shows of a cell's raw evidence: the one module that reads the
validator's raw result JSON (still a dict from the guest, so every value is checked
here before it reaches a view model).

Logs are cut to their tails, every line to LINE_CHARS, to keep the report small; the
line the classifier quoted as evidence is marked inside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bpfcompat.report.view import CellInfo, VerifierCost

LOG_TAIL_LINES = 40
OUTPUT_TAIL_LINES = 20
LINE_CHARS = 300
TIMING_STEPS = 8
LIBBPF_MESSAGES = 8


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
    verifier: str | None = None  # the verifier's own summary, also of a refused program


@dataclass
class TestView:
    name: str
    status: str
    required: bool
    command: str
    exit_code: int | None
    expected_exit_code: int | None
    duration: float | None
    timed_out: bool
    error: str | None
    stdout: Tail
    stderr: Tail


@dataclass
class ProbeView:
    kernel_btf: str  # yes | no | unknown
    kernel_btf_size: int | None
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
class VariantProbe:
    program: str | None
    helper: str
    supported: str  # yes | no | unknown


@dataclass
class VariantRow:
    group: str | None
    chosen: str | None
    disabled: list[str]
    status: str = ""
    error: str | None = None
    probes: list[VariantProbe] = field(default_factory=list)


@dataclass
class MapFixupRow:
    name: str | None
    requested: str
    applied: str
    status: str
    inner_ringbuf_bytes: int | None = None
    error: str | None = None


@dataclass
class AttachView:
    mode: str | None
    status: str | None
    attempted: int
    passed: int
    failed: int
    skipped: int
    required_failed: list[str]


@dataclass
class ResultView:
    """Everything the HTML shows of one cell's raw evidence, precomputed."""

    has_result: bool
    load_error: str | None
    libbpf_messages: list[str]
    programs: list[ProgramView]
    attach: AttachView | None
    variants: list[VariantRow]
    map_fixups: list[MapFixupRow]
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


# --- checked reads of untyped JSON ------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _str(value: Any, default: str = "") -> str:
    return default if value is None or value == "" else str(value)


def _opt(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _num(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _yes_no(value: Any) -> str:
    return "yes" if value is True else "no" if value is False else "unknown"


def _errno(name: Any, number: Any) -> str:
    if not number:
        return ""
    return f"{name} ({number})" if name else str(number)


# --- the sections -----------------------------------------------------------------------


def _programs(result: dict[str, Any], evidence: str | None) -> list[ProgramView]:
    out = []
    for p in _dicts(_dict(result.get("discovery")).get("programs")):
        attach_detail = _opt(p.get("attach_error") or p.get("attach_skip_reason"))
        if p.get("attach_errno"):
            attach_detail = f"errno {p['attach_errno']}: {attach_detail or ''}".rstrip(": ")
        out.append(
            ProgramView(
                name=_str(p.get("name"), "?"),
                section=_str(p.get("section")),
                type=_str(p.get("type")),
                load_status=_str(p.get("load_status"), "-"),
                errno=_errno(p.get("load_errno_name"), p.get("load_errno")),
                load_seconds=_num(p.get("load_seconds")),
                skip_reason=_opt(p.get("load_skip_reason")),
                attach_status=_str(p.get("attach_status"), "-"),
                attach_detail=attach_detail,
                attach_required=bool(p.get("attach_required")),
                variant_group=_opt(p.get("variant_group")),
                log=tail(p.get("load_log"), evidence=evidence),
                verifier=_verifier_line(_dict(p.get("verifier_stats"))),
            )
        )
    return out


def _verifier_line(stats: dict[str, Any]) -> str | None:
    insns = stats.get("insns_processed")
    if not isinstance(insns, int):
        return None
    stack = stats.get("stack_depth")
    return VerifierCost(
        insns=max(0, insns),
        limit=_count(stats.get("insn_limit")),
        states=_count(stats.get("states_total")),
        peak_states=_count(stats.get("states_peak")),
        stack=[s for s in stack if isinstance(s, int) and s >= 0]
        if isinstance(stack, list)
        else None,
        usec=_count(stats.get("verify_usec")),
    ).line()


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _variants(result: dict[str, Any], cell: CellInfo) -> list[VariantRow]:
    raw = _dicts(result.get("program_variants"))
    if not raw:  # no raw result (e.g. an export without results): the cell's summary
        return [VariantRow(v.group, v.chosen, list(v.disabled)) for v in cell.variants]
    return [
        VariantRow(
            group=_opt(v.get("group")),
            chosen=_opt(v.get("chosen")),
            disabled=[str(d) for d in v.get("disabled") or [] if d is not None]
            if isinstance(v.get("disabled"), list)
            else [],
            status=_str(v.get("status")),
            error=_opt(v.get("error")),
            probes=[
                VariantProbe(
                    program=_opt(p.get("program")),
                    helper=_str(p.get("helper"), "unconditional"),
                    supported=_yes_no(p.get("supported")),
                )
                for p in _dicts(v.get("probes"))
            ],
        )
        for v in raw
    ]


def _applied(requested: Any, applied: Any) -> str:
    if requested == "cpus" and applied is not None:
        return f"cpus → {applied}"
    return "-" if applied is None else str(applied)


def _map_fixups(result: dict[str, Any], cell: CellInfo) -> list[MapFixupRow]:
    raw = _dicts(result.get("map_fixups"))
    if not raw:
        return [
            MapFixupRow(
                name=m.name,
                requested="-" if m.requested is None else str(m.requested),
                applied=_applied(m.requested, m.applied_entries),
                status=m.status or "",
            )
            for m in cell.map_fixups
        ]
    return [
        MapFixupRow(
            name=_opt(m.get("name")),
            requested=_str(m.get("requested"), "-"),
            applied=_applied(m.get("requested"), m.get("applied_entries")),
            status=_str(m.get("status")),
            inner_ringbuf_bytes=_int(m.get("inner_ringbuf_bytes")),
            error=_opt(m.get("error")),
        )
        for m in raw
    ]


def _tests(functional: dict[str, Any]) -> list[TestView]:
    return [
        TestView(
            name=_str(t.get("name"), "?"),
            status=_str(t.get("status"), "-"),
            required=bool(t.get("required", True)),
            command=_str(t.get("command")),
            exit_code=_int(t.get("exit_code")),
            expected_exit_code=_int(t.get("expected_exit_code")),
            duration=_num(t.get("duration_seconds")),
            timed_out=bool(t.get("timed_out")),
            error=_opt(t.get("error")),
            stdout=tail(t.get("stdout_tail"), OUTPUT_TAIL_LINES),
            stderr=tail(t.get("stderr_tail"), OUTPUT_TAIL_LINES),
        )
        for t in _dicts(functional.get("tests"))
    ]


def _split(types: Any) -> tuple[list[str], list[str]]:
    types = _dict(types)
    return (
        sorted(str(k) for k, v in types.items() if v is True),
        sorted(str(k) for k, v in types.items() if v is False),
    )


def _probes(result: dict[str, Any]) -> ProbeView | None:
    caps, btf = _dict(result.get("capabilities")), _dict(result.get("btf"))
    security, host = _dict(result.get("security")), _dict(result.get("host"))
    if not (caps or btf or security):
        return None
    maps_ok, maps_no = _split(caps.get("map_types"))
    progs_ok, progs_no = _split(caps.get("program_types"))
    prereqs = [
        (str(k), _yes_no(v) if isinstance(v, bool) else str(v))
        for k, v in sorted(_dict(caps.get("attach_prereqs")).items())
        if v is not None
    ]
    artifact_btf = "BTF " + _yes_no(btf.get("artifact_has_btf"))
    artifact_btf += ", BTF.ext " + _yes_no(btf.get("artifact_has_btf_ext"))
    lockdown = _str(security.get("lockdown") or security.get("lockdown_error"), "unknown")
    bpftool = "probe ok" if caps.get("bpftool_probe_ok") else "probe failed"
    if caps.get("bpftool_probe_error"):
        bpftool += f": {caps['bpftool_probe_error']}"
    if caps.get("bpftool_probe_cached"):
        bpftool += " (cached in this boot)"
    return ProbeView(
        kernel_btf=_yes_no(btf.get("kernel_btf_available")),
        kernel_btf_size=_int(btf.get("kernel_btf_size")),
        artifact_btf=artifact_btf,
        lockdown=lockdown,
        libbpf=_str(host.get("libbpf_version"), "unknown"),
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
        str(k): num for k, v in _dict(result.get("timings")).items() if (num := _num(v)) is not None
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


def _attach(result: dict[str, Any]) -> AttachView | None:
    attach = _dict(result.get("attach"))
    if not attach:
        return None
    failed = attach.get("required_failed")
    return AttachView(
        mode=_opt(attach.get("mode")),
        status=_opt(attach.get("status")),
        attempted=_int(attach.get("attempted")) or 0,
        passed=_int(attach.get("passed")) or 0,
        failed=_int(attach.get("failed")) or 0,
        skipped=_int(attach.get("skipped")) or 0,
        required_failed=[str(f) for f in failed] if isinstance(failed, list) else [],
    )


def _load_error(load: dict[str, Any]) -> str | None:
    if load.get("status") != "fail":
        return None
    parts = (
        _errno(load.get("errno_name"), load.get("error_code")),
        _str(load.get("error")),
        f"(stage {load['stage']})" if load.get("stage") else "",
    )
    return " ".join(p for p in parts if p) or None


def _messages(items: Any) -> list[str]:
    """Validator errors and warnings as `step: message` lines."""
    if not isinstance(items, list):
        return []
    return [
        f"{i.get('step')}: {i.get('message')}" if isinstance(i, dict) else str(i) for i in items
    ]


def result_view(cell: CellInfo, *, with_libbpf_log: bool) -> ResultView:
    """The cell's raw evidence as the HTML shows it; without raw evidence (an export made
    without results), only what the cell's own summaries hold."""
    raw = cell.raw
    result = _dict(raw.result if raw else None)
    load = _dict(result.get("load"))
    functional = _dict(result.get("functional"))
    evidence = cell.verdict.evidence
    timings, total = _timings(result)
    messages = load.get("libbpf_messages")
    return ResultView(
        has_result=bool(result),
        load_error=_load_error(load),
        libbpf_messages=[str(m) for m in messages[-LIBBPF_MESSAGES:]]
        if isinstance(messages, list)
        else [],
        programs=_programs(result, evidence),
        attach=_attach(result),
        variants=_variants(result, cell),
        map_fixups=_map_fixups(result, cell),
        functional_status=_opt(functional.get("status")),
        tests=_tests(functional),
        probes=_probes(result),
        timings=timings,
        timing_total=total,
        validator_errors=_messages(_dicts(result.get("errors"))),
        warnings=_messages(result.get("warnings")),
        infra_error=raw.infra_error if raw else None,
        console=tail(raw.console_tail if raw else None),
        libbpf_log=(
            tail(_dict(result.get("logs")).get("libbpf"), evidence=evidence)
            if with_libbpf_log
            else Tail("", 0)
        ),
    )
