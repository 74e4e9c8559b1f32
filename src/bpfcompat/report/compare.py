"""Compare two runs cell by cell: what newly fails, what was fixed, what changed.

Gating policy (used by `bpfcompat compare`, exit 2): a *regression* is a cell on a kernel
that is required in the head run which passed in the base run and is `fail` or `error` in
the head run. Everything else is reported but does not gate:

- a cell failing in both runs with a different code (or fail <-> error) is a *changed*
  cell: the object was already broken there, and a new code usually means a classifier
  update (`bpfcompat reclassify`) or a new first failure inside an object that never
  loaded, not a compatibility regression;
- cells only in one run (new or removed artifacts or kernels, or an interrupted run) are
  listed; the head run's own exit code already covers what it did not finish;
- optional kernels never gate, as for `matrix run`.

Verifier cost is listed beside the verdicts: a program accepted in both runs whose
instructions processed grew by more than the threshold (default 20%) on a kernel. It
gates only when asked (`compare --fail-on-cost`), on required kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bpfcompat.matrix.policy import EXIT_FAIL, EXIT_PASS
from bpfcompat.matrix.store import Store
from bpfcompat.report.cost import (
    DEFAULT_MIN_INSNS,
    DEFAULT_THRESHOLD,
    CostChange,
    cost_changes,
)
from bpfcompat.report.view import CellInfo, RunView

# Change kinds, in the order reports list them.
NEW_FAILURE = "new_failure"
FIXED = "fixed"
CHANGED = "changed"
ONLY_HEAD = "only_head"
ONLY_BASE = "only_base"
KIND_ORDER = (NEW_FAILURE, CHANGED, FIXED, ONLY_HEAD, ONLY_BASE)
KIND_LABELS = {
    NEW_FAILURE: "new failure",
    FIXED: "fixed",
    CHANGED: "changed code",
    ONLY_HEAD: "only in head",
    ONLY_BASE: "only in base",
}


@dataclass(frozen=True)
class CellChange:
    """One (artifact, kernel) whose verdict differs between the base and the head run."""

    kind: str
    artifact: str
    kernel: str
    required: bool
    base_status: str | None
    base_code: str | None
    head_status: str | None
    head_code: str | None
    evidence: str | None  # head's evidence for failures, base's for fixes

    @property
    def regression(self) -> bool:
        return self.kind == NEW_FAILURE and self.required

    @property
    def label(self) -> str:
        return KIND_LABELS[self.kind]

    @property
    def base_verdict(self) -> str:
        return _verdict(self.base_status, self.base_code)

    @property
    def head_verdict(self) -> str:
        return _verdict(self.head_status, self.head_code)

    def line(self) -> str:
        """One plain-text line, as `bpfcompat compare` prints it."""
        tag = "REGRESSION" if self.regression else self.label
        req = "required" if self.required else "optional"
        text = f"{tag:13} {self.artifact} on {self.kernel} ({req}): "
        text += f"{self.base_verdict} -> {self.head_verdict}"
        if self.evidence and self.kind in (NEW_FAILURE, CHANGED):
            text += f": {_one_line(self.evidence)}"
        return text


@dataclass
class Comparison:
    base_id: int
    head_id: int
    changes: list[CellChange] = field(default_factory=list)
    unchanged: int = 0
    cost: list[CostChange] = field(default_factory=list)
    cost_threshold: float = DEFAULT_THRESHOLD
    gate_cost: bool = False  # a cost increase on a required kernel fails the comparison

    def of_kind(self, kind: str) -> list[CellChange]:
        return [c for c in self.changes if c.kind == kind]

    @property
    def regressions(self) -> list[CellChange]:
        return [c for c in self.changes if c.regression]

    @property
    def cost_regressions(self) -> list[CostChange]:
        return [c for c in self.cost if c.required] if self.gate_cost else []

    @property
    def exit_code(self) -> int:
        return EXIT_FAIL if self.regressions or self.cost_regressions else EXIT_PASS

    def by_cell(self) -> dict[tuple[str, str], CellChange]:
        return {(c.artifact, c.kernel): c for c in self.changes}

    def summary(self) -> str:
        counts = ", ".join(f"{len(self.of_kind(k))} {KIND_LABELS[k]}" for k in KIND_ORDER)
        cost = (
            f"; {len(self.cost)} program(s) whose verifier cost grew over "
            f"{self.cost_threshold * 100:.0f}%"
            + (f" ({len(self.cost_regressions)} gating)" if self.gate_cost else "")
        )
        return (
            f"run {self.base_id} (base) -> run {self.head_id} (head): {counts}; "
            f"{len(self.regressions)} required regression(s), {self.unchanged} unchanged{cost}"
        )

    def lines(self) -> list[str]:
        return [self.summary(), *(c.line() for c in self.changes), *(c.line() for c in self.cost)]


def _verdict(status: str | None, code: str | None) -> str:
    if status is None:
        return "absent"
    return f"{status} {code}" if code else status


def _one_line(text: str, limit: int = 240) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _kind(base: CellInfo | None, head: CellInfo | None) -> str | None:
    if base is None:
        return ONLY_HEAD
    if head is None:
        return ONLY_BASE
    b, h = base.verdict, head.verdict
    if b.status == "pass" and h.status != "pass":
        return NEW_FAILURE
    if b.status != "pass" and h.status == "pass":
        return FIXED
    if (b.status, b.code) != (h.status, h.code):
        return CHANGED
    return None


def compare_views(
    base_run: RunView,
    head_run: RunView,
    *,
    cost_threshold: float = DEFAULT_THRESHOLD,
    cost_min_insns: int = DEFAULT_MIN_INSNS,
    gate_cost: bool = False,
) -> Comparison:
    """Cell-by-cell differences from `base_run` to `head_run` (from a store or an export),
    and the programs whose verifier cost grew by more than `cost_threshold`."""
    required = {k.id: k.required for k in base_run.kernels}
    required.update({k.id: k.required for k in head_run.kernels})
    base, head = base_run.cell_map(), head_run.cell_map()
    comparison = Comparison(
        base_run.run.id,
        head_run.run.id,
        cost=cost_changes(base_run, head_run, threshold=cost_threshold, min_insns=cost_min_insns),
        cost_threshold=cost_threshold,
        gate_cost=gate_cost,
    )
    for key in [*head, *(k for k in base if k not in head)]:
        b, h = base.get(key), head.get(key)
        kind = _kind(b, h)
        if kind is None:
            comparison.unchanged += 1
            continue
        evidence_from = b if kind == FIXED or h is None else h
        comparison.changes.append(
            CellChange(
                kind=kind,
                artifact=key[0],
                kernel=key[1],
                required=required.get(key[1], True),
                base_status=b.verdict.status if b else None,
                base_code=b.verdict.code if b else None,
                head_status=h.verdict.status if h else None,
                head_code=h.verdict.code if h else None,
                evidence=evidence_from.verdict.evidence if evidence_from else None,
            )
        )
    order = {k: i for i, k in enumerate(KIND_ORDER)}
    comparison.changes.sort(key=lambda c: (order[c.kind], not c.required, c.artifact, c.kernel))
    return comparison


def compare_runs(store: Store, base_id: int, head_id: int) -> Comparison:
    """Cell-by-cell differences between two stored runs (both must exist)."""
    return compare_views(
        RunView.from_store(store, base_id, with_results=False),
        RunView.from_store(store, head_id, with_results=False),
    )
