"""Classify one stored validator result into a precise code with the line that proves it.

Why a table: first-match substring search over the libbpf log, ignoring errno, turns
EACCES verifier rejections into capability failures, makes every failure on a BTF-less
kernel MISSING_BTF and every attach failure "unsupported attach type". Here each rule
is a small named predicate over a `Facts` view of *all* the evidence (facts.py), built
from the one typed model of a result (bpfcompat.matrix.result); rules are data in
precedence order (rules.py) and every message they match is a `Msg` naming the source
that prints it (messages.py). Evidence is always one verbatim line from
the recorded logs, the console, or the host's ELF pre-check for objects that never
reached libbpf; every verdict names the rule that gave it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import yaml

from bpfcompat.matrix.result import ResultModel, ResultProblem
from bpfcompat.matrix.verdict import PASS, Verdict
from bpfcompat.vm.console import OOM_KILL, crash_evidence

from .explain import explain
from .facts import (
    STAGE_ORDER,
    STEP_STAGE,
    crashed_steps,
    facts_from,
    is_noise,
    verifier_summary,
)
from .matchers_late import attach_line
from .messages import NOISE, Msg
from .rules import CODES, OUTCOME_RULES, REGISTRY, RULES, Rule, rule, rule_table

__all__ = [
    "CLASSIFIER_VERSION", "CODES", "HOST_PRECHECK", "NOISE", "OUTCOME_RULES", "REGISTRY",
    "RULES", "Msg", "Rule", "cell_fields", "classify", "classify_result", "is_noise",
    "kernel_failed", "notes_for", "rule", "rule_table", "verifier_summary",
]  # fmt: skip

CLASSIFIER_VERSION = "8"

HOST_PRECHECK = "host ELF pre-check"
MAX_NOTE_NAMES = 8  # programs named in one attach-warning note
MAX_PROGRAM_SUMMARIES = 512  # programs whose load status a cell keeps (details_json)

Result = ResultModel | ResultProblem | Mapping[str, Any] | None


class StoredRow(Protocol):
    """What classify() reads of a stored ValidatorResult (reclassify needs no VM)."""

    crash: bool
    signal: int | None
    infra_error: str | None

    def result(self) -> Result: ...


def _model(result: Result) -> ResultModel | ResultProblem | None:
    """The typed result; plain mappings (already-loaded JSON) are read through the model."""
    if result is None or isinstance(result, ResultModel | ResultProblem):
        return result
    return ResultModel.from_data(result)


def classify_result(
    result: ResultModel | Mapping[str, Any], release: str = "", *,
    artifact_problem: str | None = None, setup: Sequence[dict[str, Any]] = (),
    analysis: Mapping[str, Any] | None = None,
) -> Verdict:  # fmt: skip
    """The verdict for one validator result: first matching rule, else UNKNOWN. `setup`:
    the host's loader-setup findings for the artifact; `analysis`: its whole static
    reading as a cell keeps it (matrix/statics.summary), whose findings count as `setup`."""
    model = result if isinstance(result, ResultModel) else ResultModel.from_data(result)
    summary = dict(analysis) if isinstance(analysis, Mapping) else {}
    kept = summary.get("loader_setup")
    if not setup and isinstance(kept, list):
        setup = kept
    facts = facts_from(model, release, artifact_problem, setup, summary)
    stage_rank = STAGE_ORDER.get(facts.stage, 0)
    inconclusive = [e for e in crashed_steps(model) if STEP_STAGE[str(e.step)] <= stage_rank]
    if facts.stage == "infra" or inconclusive:
        if inconclusive:
            evidence = inconclusive[0].message or "validator did not finish"
            detail = f"validator step {inconclusive[0].step!r} failed"
        else:
            evidence = model.load.error or "validator did not finish"
            detail = "no verdict"
        return rule("infra").verdict(evidence=evidence, detail=detail, program=facts.program)
    if facts.stage == "pass":
        return PASS.model_copy(update={"attached": attached(model)})
    for r in RULES:
        if r.match is None or facts.stage not in r.stages:
            continue
        hit = r.match(facts)
        if hit:
            verdict = r.verdict(
                evidence=hit.line,
                detail=hit.detail,
                program=hit.program or facts.program,
                stage=facts.stage,
                confidence=hit.confidence,  # type: ignore[arg-type]
                remediation=hit.remediation,
            )
            return explain(verdict, facts)
    fallback = (
        verifier_summary(facts.verifier_log())
        or attach_line(facts)
        or next((m for m in reversed(facts.messages) if not is_noise(m)), None)
        or model.load.error
        or "no log line explains the failure"
    )
    return rule("unknown").verdict(evidence=fallback, program=facts.program, stage=facts.stage)


def classify(
    stored: StoredRow,
    *,
    artifact_problem: str | None = None,
    release: str = "",
    setup: Sequence[dict[str, Any]] = (),
    analysis: Mapping[str, Any] | None = None,
) -> Verdict:
    """Verdict for a stored ValidatorResult row: what the row itself says (a crash, a
    signal, no usable result) before the evidence rules read its result."""
    infra_error = stored.infra_error
    if stored.crash:
        console = str(getattr(stored, "console_tail", "") or "")
        evidence = crash_evidence(console) or infra_error or "guest crashed"
        return rule("kernel-crash").verdict(evidence=evidence)
    if stored.signal:
        why = f"validator killed by signal {stored.signal}"
        oom = OOM_KILL.search(infra_error or "")
        if stored.signal == 9 and oom:
            return rule("oom-kill").verdict(
                evidence=oom.group(), detail="validator killed by the guest kernel's OOM killer"
            )
        if artifact_problem:
            return rule("validator-signal").verdict(evidence=artifact_problem, detail=why)
        return rule("validator-killed").verdict(evidence=why)
    result = _model(stored.result())
    if not isinstance(result, ResultModel):
        if artifact_problem:
            return rule("artifact-unreadable").verdict(
                evidence=artifact_problem, detail=HOST_PRECHECK
            )
        if isinstance(result, ResultProblem):
            return rule("malformed-result").verdict(evidence=result.reason)
        return rule("infra").verdict(evidence=infra_error or "no validator result")
    verdict = classify_result(
        result, release, artifact_problem=artifact_problem, setup=setup, analysis=analysis
    )
    if artifact_problem and verdict.code == "UNKNOWN":
        return rule("artifact-unreadable").verdict(evidence=artifact_problem, detail=HOST_PRECHECK)
    return verdict


def kernel_failed(message: str) -> Verdict:
    """The verdict for every cell of a kernel that could not be fetched or booted."""
    return rule("boot-failure").verdict(evidence=message[:500])


def attached(model: ResultModel) -> str:
    """How much of a loaded object attached (see Verdict.attached)."""
    attach = model.attach
    if attach.mode == "disabled":
        return "off"
    if attach.passed and not attach.failed:
        return "all"
    return "some" if attach.passed else "none"


def notes_for(result: Result) -> list[str]:
    """Variant choices, map fixups (declared and automatic), what the manifest set on
    programs and globals, and attach warnings, in words, for reports."""
    model = _model(result)
    if not isinstance(model, ResultModel):
        return []
    notes: list[str] = []
    for v in model.program_variants:
        disabled = ", ".join(v.disabled) or "none"
        notes.append(f"variant group {v.group}: chose {v.chosen}, disabled {disabled}")
    for m in model.map_fixups:
        applied = m.applied_entries if m.applied_entries is not None else "-"
        inner = f", inner ringbuf {m.inner_ringbuf_bytes} bytes" if m.inner_ringbuf_bytes else ""
        notes.append(
            f"map fixup {m.name}: requested {m.requested}, applied {applied} ({m.status}){inner}"
        )
    for auto in model.auto_sized_maps:
        notes.append(_auto_note(auto))
    for setup in model.program_setup:
        notes.append(_setup_note(setup))
    for g in model.globals_set:
        where = f" in {g.section}" if g.section else ""
        error = f": {g.error}" if g.error else ""
        notes.append(f"global {g.name}{where} set to {_flow(g.value)} ({g.status}){error}")
    if model.btf.core_btf_source == "custom":
        notes.append(
            f"external BTF ({model.btf.custom_btf_size} bytes) given to libbpf as "
            "btf_custom_path: CO-RE relocations use it instead of kernel BTF"
        )
    if model.attach.status == "warn":
        failed = [p.name for p in model.discovery.programs if p.attach_status == "fail"]
        # Name a few; an object with thousands of programs must not make a 15 KB note.
        names = ", ".join(map(str, failed[:MAX_NOTE_NAMES])) or "some programs"
        extra = len(failed) - MAX_NOTE_NAMES
        more = f" and {extra} more" if extra > 0 else ""
        notes.append(f"attach warning (best-effort): {names}{more} did not attach")
    return notes


def _flow(value: Any) -> str:
    """A value, or a manifest fragment, as one line of YAML (notes are one line each)."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6)
    return text.strip().removesuffix("\n...").strip()


def _auto_note(auto: Any) -> str:
    """An automatic fixup, with the manifest lines that would declare it (a declared
    value always wins, and --no-auto-fixups turns these off)."""
    head = (
        f"automatic fixup {auto.name}: {auto.field} {auto.compiled} -> {auto.applied} "
        f"({auto.status})"
    )
    why = f"; {auto.reason}" if auto.reason else ""
    error = f": {auto.error}" if auto.error else ""
    try:
        declared = _flow(yaml.safe_load(auto.manifest)) if auto.manifest else None
    except yaml.YAMLError:
        declared = None
    return head + error + why + (f"; to declare it: {declared}" if declared else "")


def _setup_note(setup: Any) -> str:
    """What the manifest set on a program before load, and whether it took."""
    parts = [
        f"attach target {setup.attach_target}" if setup.attach_target else None,
        "attach program " + _flow(setup.attach_program) if setup.attach_program else None,
        f"autoload {str(setup.autoload).lower()}" if setup.autoload is not None else None,
        f"type {setup.type}" if setup.type else None,
    ]
    what = ", ".join(p for p in parts if p) or "setup"
    error = f": {setup.error}" if setup.error else ""
    return f"program {setup.name}: {what} from the manifest ({setup.status}){error}"


def _cost(program: Any) -> dict[str, Any] | None:
    """The verifier's own summary of a program it accepted: what `compare` tracks across
    runs. A refused program's counts stop where the verifier stopped, so none is kept."""
    stats = program.verifier_stats
    if stats is None or program.load_status != "pass" or stats.insns_processed is None:
        return None
    return {
        "insns": stats.insns_processed,
        "limit": stats.insn_limit,
        "states": stats.states_total,
        "peak_states": stats.states_peak,
        "stack": list(stats.stack_depth) if stats.stack_depth is not None else None,
        "usec": stats.verify_usec,
    }


def cell_fields(verdict: Verdict, result: Result) -> dict[str, Any]:
    """The judged part of a stored cell: the verdict, its notes, and the variant and
    map-fixup summaries reports show (one mapping for the runner and reclassify alike)."""
    model = _model(result)
    model = model if isinstance(model, ResultModel) else ResultModel()
    details = {
        "variants": [
            {"group": v.group, "chosen": v.chosen, "disabled": list(v.disabled)}
            for v in model.program_variants
        ],
        "map_fixups": [
            {"name": f.name, "requested": f.requested, "applied_entries": f.applied_entries,
             "status": f.status}
            for f in model.map_fixups
        ],
        # Each program's own isolated load probe: which programs load where the whole
        # object does not (the reports' loadable subset).
        "programs": [
            {"name": p.name, "load_status": p.load_status, "autoload": p.autoload,
             "variant_group": p.variant_group, "section": p.section,
             "verifier": _cost(p)}
            for p in model.discovery.programs[:MAX_PROGRAM_SUMMARIES]
        ],
        "programs_left_out": max(0, len(model.discovery.programs) - MAX_PROGRAM_SUMMARIES),
    }  # fmt: skip
    return {
        "status": verdict.status,
        "code": verdict.code,
        "evidence": verdict.evidence,
        "confidence": verdict.confidence,
        "stage": verdict.stage,
        "program": verdict.program,
        "remediation": verdict.remediation,
        "rule": verdict.rule,
        "detail": verdict.detail,
        "attached": verdict.attached,
        "needs": verdict.needs,
        "pinpoint_json": verdict.pinpoint.model_dump_json() if verdict.pinpoint else None,
        "classifier_version": CLASSIFIER_VERSION,
        "notes_json": json.dumps(notes_for(model)),
        "details_json": json.dumps(details),
    }
