"""The evidence of one cell, flattened from the typed result for the rules.

`Facts` holds *all* of it: the errno of the failing step, the failing program's own
verifier log from its isolated probe, the whole-object log, libbpf's messages, probe
results, BTF facts, kernel release, lockdown state and the stage that failed. Log lines
are read through `clean` (prefixes dropped, cut to MAX_LINE_CHARS) so that evidence is
always verbatim text the guest recorded.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bpfcompat.matrix.result import HelperProbe, Map, Program, ResultModel, StepMessage

from .messages import CALL_DUMP, LEVEL_PREFIX, LIBBPF_SHAPE, NOISE_RX, TRACE, Msg

# Log lines are cut to this before any regex sees them: the '%s' wildcards make the rules
# polynomial in line length, and the guest (running the artifact under test) writes the logs.
MAX_LINE_CHARS = 512

LOCKED_DOWN = frozenset({"integrity", "confidentiality"})
# Helpers `bpftool feature probe` leaves out of every per-type list unless run with `full`
# (bpftool src/feature.c probe_helpers_for_progtype()): their absence there proves nothing.
BPFTOOL_UNLISTED_HELPERS = frozenset({"trace_printk", "trace_vprintk", "probe_write_user"})
MAX_HELPER_PROBES = 1024  # distinct helper ids kept per program (the kernel has ~212)

# Steps of the validator whose crash makes the result inconclusive (validator CORE_STEPS),
# in pipeline order, with the stage a crash there stands for.
STEP_STAGE = {"libbpf": 0, "open": 1, "discovery": 1, "variants": 2, "fixups": 2, "load": 2,
              "attach": 3, "functional": 4}  # fmt: skip
STAGE_ORDER = {"infra": 0, "open": 1, "load": 2, "attach": 3, "functional": 4, "pass": 5}


# --- log lines ----------------------------------------------------------------------------


def is_noise(line: str) -> bool:
    line = line[:MAX_LINE_CHARS]
    return any(rx.search(line) for rx in NOISE_RX)


def clean(line: str) -> str:
    """A log line without the validator's level prefix or libbpf's: still verbatim text."""
    return LEVEL_PREFIX.sub("", line.strip()[:MAX_LINE_CHARS], count=1).strip()


def verifier_text(log: str) -> bool:
    """Whether `log` holds the kernel verifier's words (not only libbpf's messages)."""
    for raw in log.splitlines():
        line = clean(raw)
        if line and not LIBBPF_SHAPE.search(line):
            return True
    return False


def verifier_summary(log: str) -> str | None:
    """The verifier's own reason: the first line after the last instruction/state line.

    The kernel prints the failing instruction, then its reason, then context lines (for a
    bad map access, "R0 min value is outside of the allowed memory range" follows the
    real "invalid access to map value ..." line) and the stats, so the *first* non-trace
    line after the trace is the cause; stats and known noise are never chosen.
    """
    lines = [clean(ln) for ln in log.splitlines()]
    lines = [ln for ln in lines if ln and not is_noise(ln) and not ln.startswith("-- ")]
    last_trace = max((i for i, ln in enumerate(lines) if TRACE.search(ln)), default=-1)
    for line in lines[last_trace + 1 :]:
        if not TRACE.search(line):
            return line
    reasons = [ln for ln in lines if not TRACE.search(ln)]
    return reasons[-1] if reasons else None


# --- the facts ----------------------------------------------------------------------------


@dataclass
class Facts:
    """The evidence of one cell, flattened for the rules."""

    result: ResultModel
    stage: str  # open | load | attach | functional | pass | infra
    errno: int
    program: str | None
    entry: Program | None  # discovery.programs[] of the failing program
    prog_log: str  # the failing program's own isolated-probe log
    object_log: str  # whole-object verifier log
    messages: list[str]  # libbpf warnings of the failing step
    libbpf_log: str  # libbpf's messages while opening and loading the whole object
    lockdown: str | None
    kernel_btf: bool | None
    release: str
    artifact_problem: str | None = None
    map_types: dict[str, bool] = field(default_factory=dict)
    program_types: dict[str, bool] = field(default_factory=dict)
    # What the host's static reading found the object's loader does (analysis.loader
    # findings as dicts): kind, subject, why, level, manifest_lines, detail.
    setup: tuple[dict[str, Any], ...] = ()
    # The host's static reading of the object (matrix/statics.summary): floor and the
    # requirements (helpers, kfuncs, map/program/attach types) with their programs.
    analysis: dict[str, Any] = field(default_factory=dict)

    def requirements(self, kind: str) -> list[dict[str, Any]]:
        """The static reading's requirements of `kind` (helper, kfunc, map_type, ...)."""
        reqs = self.analysis.get("requirements")
        if not isinstance(reqs, list):
            return []
        return [r for r in reqs if isinstance(r, dict) and r.get("kind") == kind]

    def called_helpers(self, program: str | None) -> tuple[str, ...]:
        """The helpers `program`'s own instructions call in the object as compiled (before
        libbpf changes anything): the host's static reading, else the validator's."""
        names = []
        for r in self.requirements("helper"):
            progs = r.get("programs") if isinstance(r.get("programs"), list) else []
            if program is None or program in progs or r.get("programs_left_out"):
                names.append(str(r.get("name")))
        if names or self.requirements("helper"):
            return tuple(names)
        entry = next((p for p in self.programs if p.name == program), None)
        return tuple(str(h.name) for h in (entry.helpers if entry else None) or () if h.name)

    def finding(self, kind: str, subject: str | None = None) -> dict[str, Any] | None:
        """The loader-setup finding of `kind` (for `subject`), if the host made one."""
        for item in self.setup:
            if item.get("kind") == kind and (subject is None or item.get("subject") == subject):
                return item
        return None

    @property
    def locked_down(self) -> bool:
        return self.lockdown in LOCKED_DOWN

    @property
    def version(self) -> tuple[int, int] | None:
        m = re.match(r"(\d+)\.(\d+)", self.release or "")
        return (int(m.group(1)), int(m.group(2))) if m else None

    @property
    def programs(self) -> tuple[Program, ...]:
        return self.result.discovery.programs

    @property
    def maps(self) -> dict[str | None, Map]:
        return {m.name: m for m in self.result.discovery.maps}

    @property
    def prog_type(self) -> str | None:
        """The failing program's type (libbpf's name for it)."""
        return self.entry.type if self.entry else None

    def sources(self) -> Iterator[str]:
        """Logs in order of trust: the failing program's own probe log first."""
        yield self.prog_log
        yield self.object_log
        yield "\n".join(self.messages)
        yield self.libbpf_log

    def lines(self, *texts: str) -> Iterator[str]:
        for text in texts or tuple(self.sources()):
            for raw in text.splitlines():
                line = clean(raw)
                if line:
                    yield line

    def find(self, *msgs: Msg, texts: Iterable[str] | None = None) -> str | None:
        """The first line matching the first message that matches anywhere, verbatim."""
        for msg in msgs:
            for line in self.lines(*(texts or ())):
                if msg.rx.search(line) and not is_noise(line):
                    return line
        return None

    def warnings(self) -> str:
        """libbpf's warn-level messages only (its debug lines also start with 'elf: ')."""
        warn = [ln for ln in self.result.logs.libbpf.splitlines() if ln.startswith("warn: ")]
        return "\n".join([*self.messages, *warn])

    def program_of(self, line: str) -> str | None:
        """The program whose own probe log holds `line` (for object-level failures)."""
        for p in self.programs:
            if p.load_status == "fail" and line in p.load_log:
                return p.name
        return self.program

    @property
    def has_verifier_text(self) -> bool:
        return verifier_text(self.prog_log) or verifier_text(self.object_log)

    def verifier_log(self) -> str:
        return self.prog_log if verifier_text(self.prog_log) else self.object_log

    def helper_probes(self) -> list[HelperProbe]:
        """discovery.programs[].helpers of the failing program: the helpers its own
        instructions call, each probed for its own program type (first entry per id)."""
        probes: dict[int, HelperProbe] = {}
        for h in (self.entry.helpers if self.entry else None) or ():
            if h.id is not None and len(probes) < MAX_HELPER_PROBES:
                probes.setdefault(h.id, h)
        return list(probes.values())

    def helper_known(self, name: str) -> bool | None:
        """Whether any program type may call `name`, from bpftool's per-type helper lists.

        capabilities.helper_program_types (every type bpftool lists the helper for, recorded
        for helpers a program may not call) decides; else capabilities.helpers, the lists
        of the artifact's types. None: no lists, or a helper bpftool never lists.
        """
        short = name.removeprefix("bpf_")
        if short in BPFTOOL_UNLISTED_HELPERS:
            return None
        caps = self.result.capabilities
        for key, types in caps.helper_program_types.items():
            if key.removeprefix("bpf_") == short:
                return bool(types)
        if not caps.helpers:
            return None
        lists = [v for v in caps.helpers.values() if v is not None]
        return any(short in [h.removeprefix("bpf_") for h in v] for v in lists)

    def lockdown_denials(self, *reasons: str) -> list[str]:
        """security.lockdown_denials: the kernel's own "Lockdown: <comm>: <what> is
        restricted" lines logged during the run, only those naming one of `reasons`."""
        return [
            ln
            for ln in self.result.security.lockdown_denials
            if any(f": {r} is restricted" in ln for r in reasons)
        ]

    def verifier_knows(self, helper_id: int) -> bool | None:
        """Whether the verifier's instruction dump names helper `helper_id` (it prints
        `call unknown#<id>` for an id beyond this kernel's helpers)."""
        return self._dumped_calls.get(helper_id)

    @functools.cached_property
    def _dumped_calls(self) -> dict[int, bool]:
        """helper id -> named (not `unknown`) for every call the verifier's dump shows."""
        calls: dict[int, bool] = {}
        for m in CALL_DUMP.finditer(self.verifier_log()):
            calls.setdefault(int(m.group(2)), m.group(1) != "unknown")
        return calls


def stage_of(result: ResultModel) -> str:
    """The first stage that failed: open | load | attach | functional, else pass or infra."""
    load = result.load
    if load.status == "fail":
        if load.stage in ("elf", "open"):
            return "open"
        return "load" if load.stage == "load" else "infra"
    if result.attach.status == "fail":
        return "attach"
    if result.functional.status == "fail":
        return "functional"
    return "pass" if result.status == "pass" else "infra"


def crashed_steps(result: ResultModel) -> list[StepMessage]:
    """The validator's errors[] in steps whose crash leaves the kernel's verdict unknown."""
    return [e for e in result.errors if e.step in STEP_STAGE]


def facts_from(
    result: ResultModel,
    release: str = "",
    artifact_problem: str | None = None,
    setup: Sequence[dict[str, Any]] = (),
    analysis: dict[str, Any] | None = None,
) -> Facts:
    """Flatten one validator result for the rules."""
    stage = stage_of(result)
    load = result.load
    programs = result.discovery.programs
    by_name = {p.name: p for p in programs}
    program = load.failed_program
    errno_value = abs(load.error_code)
    messages = list(load.libbpf_messages)
    if stage == "attach":
        required = set(result.attach.required_failed)
        failed = [p for p in programs if p.attach_status == "fail"]
        chosen = [p for p in failed if p.name in required] or failed
        program = chosen[0].name if chosen else None
        errno_value = abs(chosen[0].attach_errno) if chosen else 0
        messages = [chosen[0].attach_error] if chosen and chosen[0].attach_error else []
    elif program is None and stage == "load" and not load.failed_map:
        failing = [p for p in programs if p.load_status == "fail" and p.autoload]
        hinted = [p for p in failing if any(m in p.load_log for m in messages)]
        picked = hinted or failing
        program = picked[0].name if picked else None
    entry = by_name.get(program)
    prog_log = ""
    if entry and stage == "load" and entry.load_status == "fail":
        prog_log = entry.load_log
    caps = result.capabilities
    return Facts(
        result=result,
        stage=stage,
        errno=errno_value,
        program=program,
        entry=entry,
        prog_log=prog_log,
        object_log=load.verifier_log,
        messages=messages,
        libbpf_log=result.logs.libbpf_load,
        lockdown=result.security.lockdown,
        kernel_btf=result.btf.kernel_btf_available,
        release=release or result.host.release or "",
        artifact_problem=artifact_problem,
        map_types=dict(caps.map_types),
        program_types=dict(caps.program_types),
        setup=tuple(s for s in setup if isinstance(s, dict)),
        analysis=analysis if isinstance(analysis, dict) else {},
    )
