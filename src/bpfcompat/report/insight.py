"""Per artifact, across its cells of a run: the static floor against what the run saw, and
which programs load where the whole object does not.

The floor (the host's static reading, kept with each cell) is the oldest upstream release
with every feature the object uses. A pass below it is a vendor backport or a feature the
object does not really need; a failure at or above it has another cause (a verifier
rejection, a policy, the loader), or a requirement the static reading missed.

Each program is also loaded on its own in the guest (the validator's isolated probes), so
where the whole object fails the run knows which programs load there. A program that
fails alone on some kernel is what keeps the object from loading; turning it off
(`autoload: false`), or pairing it with a program that loads everywhere as a variant,
is the suggestion, predicted from those probes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from bpfcompat.analysis.features import parse_release
from bpfcompat.report.view import CellInfo, RunView

MAX_LISTED = 50  # programs named in one suggestion
_PLAIN_NAME = re.compile(r"[A-Za-z_][\w.-]{0,127}")
_NEEDS_HELPER = re.compile(r"^needs >= \S+(?: \(estimated\))? for helper (\w+) ")


def _release(text: str | None) -> tuple[int, int] | None:
    try:
        return parse_release(text or "")
    except ValueError:
        return None


def _rel_text(rel: tuple[int, int] | None) -> str:
    return f"{rel[0]}.{rel[1]}" if rel else "?"


def _yaml(name: str) -> str:
    """A program name as a YAML scalar: plain when it is an identifier, else a
    double-quoted JSON string (names come from the artifact)."""
    return name if _PLAIN_NAME.fullmatch(name) else json.dumps(name)


def _cells(view: RunView, artifact: str) -> list[CellInfo]:
    """The artifact's cells in the run's kernel order."""
    order = {k.id: i for i, k in enumerate(view.kernels)}
    cells = [c for c in view.cells if c.artifact == artifact]
    return sorted(cells, key=lambda c: order.get(c.kernel, len(order)))


@dataclass
class FloorCheck:
    """The artifact's floor next to the oldest kernel of the run it passed on."""

    artifact: str
    floor: str | None
    floor_reason: str | None
    oldest_pass: str | None  # kernel id
    oldest_pass_release: str | None  # "5.10"
    flags: list[str] = field(default_factory=list)  # where the two disagree, in words
    judged: int = 0  # cells that passed or failed (errors say nothing about the kernel)
    pass_below: bool = False  # a pass on a kernel older than the floor
    fail_above: bool = False  # a failure on a kernel at or above the floor

    @property
    def verdict(self) -> str:
        """The comparison in words: the disagreements, "agree", or why there is none."""
        if self.flags:
            return "; ".join(self.flags)
        if not self.judged:
            return "no cell was judged (errors only)"
        return "agree" if self.floor else "no static floor"


def floor_check(view: RunView, artifact: str) -> FloorCheck:
    """Compare the artifact's static floor with its cells' verdicts in this run."""
    art = view.artifact(artifact)
    floor = art.floor if art else None
    floor_rel = _release(floor)
    releases = {k.id: _release(k.release) for k in view.kernels}
    cells = _cells(view, artifact)
    passing = [c for c in cells if c.verdict.status == "pass" and releases.get(c.kernel)]
    oldest = min(passing, key=lambda c: releases[c.kernel] or (0, 0), default=None)
    check = FloorCheck(
        artifact=artifact,
        floor=floor,
        floor_reason=art.floor_reason if art else None,
        oldest_pass=oldest.kernel if oldest else None,
        oldest_pass_release=_rel_text(releases[oldest.kernel]) if oldest else None,
        judged=sum(1 for c in cells if c.verdict.status in ("pass", "fail")),
    )
    if floor_rel is None:
        return check
    below = [c for c in passing if (releases[c.kernel] or (0, 0)) < floor_rel]
    if below:
        check.pass_below = True
        left = sorted({p for c in below for v in c.variants for p in v.disabled if p})
        why = (
            f"its manifest's program variants leave out {', '.join(left)} there"
            if left
            else "a vendor backport, or a feature the object does not really need"
        )
        check.flags.append(
            f"passes on {', '.join(c.kernel for c in below)}, below its floor {floor} "
            f"({check.floor_reason or 'static reading'}): {why}"
        )
    above: dict[str, list[CellInfo]] = {}
    for c in cells:
        rel = releases.get(c.kernel)
        if c.verdict.status == "fail" and rel is not None and rel >= floor_rel:
            above.setdefault(c.verdict.code or "fail", []).append(c)
    check.fail_above = bool(above)
    for code, group in above.items():
        kernels = (
            "every kernel of the run"
            if len(group) == len(view.kernels)
            else ", ".join(c.kernel for c in group)
        )
        missed = next((c.verdict.needs for c in group if c.verdict.needs), None)
        why = (
            f"a requirement the static reading did not count ({missed})"
            if missed
            else "not a missing upstream feature"
        )
        check.flags.append(f"fails on {kernels} at or above its floor {floor} ({code}): {why}")
    return check


@dataclass
class KernelLoad:
    """Where the whole object failed to load: its programs, each loaded on its own."""

    kernel: str
    loads: list[str]
    fails: list[str]
    unknown: list[str]  # skipped or not probed alone


@dataclass
class Subset:
    artifact: str
    kernels: list[KernelLoad]
    manifest: str | None  # suggested manifest lines, when a subset loads everywhere
    effect: str  # what the suggestion does, or why there is none


def _programs(cell: CellInfo) -> list[tuple[str, str]]:
    """(name, load status) of the programs the object loads by default (autoload)."""
    return [(p.name, p.load_status or "?") for p in cell.programs if p.name and p.autoload]


def _variant(
    prog: str, cells: list[CellInfo], failed_in: list[CellInfo], keep: list[str]
) -> tuple[str, str] | None:
    """(helper, fallback) when `prog` fails only for a helper its kernels lack and another
    program of the same section loads on every kernel of the run."""
    helpers = set()
    for c in failed_in:
        m = _NEEDS_HELPER.match(c.verdict.needs or "")
        if c.verdict.program != prog or not m:
            return None
        helpers.add(m.group(1))
    if len(helpers) != 1:
        return None
    sections = {p.name: p.section for c in cells for p in c.programs if p.name}
    for other in keep:
        if other != prog and sections.get(other) and sections.get(other) == sections.get(prog):
            return helpers.pop(), other
    return None


def loadable_subset(view: RunView, artifact: str) -> Subset | None:
    """None when the object loaded on every kernel of the run, or has one program (or no
    program is known)."""
    cells = _cells(view, artifact)
    failed = [
        c for c in cells if c.verdict.status == "fail" and c.verdict.stage == "load" and c.programs
    ]
    if not failed:
        return None
    loads = [
        KernelLoad(
            c.kernel,
            [n for n, s in _programs(c) if s == "pass"],
            [n for n, s in _programs(c) if s == "fail"],
            [n for n, s in _programs(c) if s not in ("pass", "fail")],
        )
        for c in failed
    ]
    every = list(dict.fromkeys(n for c in cells for n, _ in _programs(c)))
    if len(every) < 2:
        return None  # one program: the verdict already says all there is
    off = list(dict.fromkeys(n for k in loads for n in k.fails))
    keep = [n for n in every if n not in off]
    subset = Subset(artifact, loads, None, "")
    left_out = any(c.programs_left_out for c in cells)
    if not off or not keep:
        why = (
            "every program fails on its own there: the cause is the object's, not one program's"
            if off
            else "no program fails on its own there: the cause is the object's"
        )
        subset.effect = f"No subset of its programs loads on every kernel of the run: {why}."
        return subset
    unsure = sorted({n for k in loads for n in k.unknown if n in keep})
    variants, lines_off = [], []
    for prog in off[:MAX_LISTED]:
        failed_in = [c for c in failed if prog in [n for n, s in _programs(c) if s == "fail"]]
        pair = _variant(prog, cells, failed_in, keep)
        if pair:
            variants.append((prog, *pair))
        else:
            lines_off.append(prog)
    lines: list[str] = []
    if lines_off:
        lines += ["programs:", *(f"  - {{name: {_yaml(p)}, autoload: false}}" for p in lines_off)]
    if variants:
        lines.append("program_variants:")
        for prog, helper, fallback in variants:
            lines += [f"  - group: {_yaml(prog)}", "    programs:",
                      f"      - {{name: {_yaml(prog)}, requires_helper: {helper}}}",
                      f"      - {{name: {_yaml(fallback)}}}"]  # fmt: skip
    subset.manifest = "\n".join(lines)
    effects = []
    if lines_off:
        effects.append(f"turns {', '.join(lines_off)} off on every kernel")
    for prog, helper, fallback in variants:
        effects.append(f"loads {prog} where {helper} exists and {fallback} instead elsewhere")
    effect = "; ".join(effects)
    subset.effect = (
        f"With this manifest the object should load on every kernel of the run ({effect}): "
        "predicted from each program's own load probe."
    )
    if unsure:
        subset.effect += f" Not probed alone where the object failed: {', '.join(unsure)}."
    if left_out or len(off) > MAX_LISTED:
        subset.effect += " Only the programs the cells kept were considered."
    return subset
