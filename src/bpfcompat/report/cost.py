"""Verifier cost: what each program costs the verifier on each kernel, and how that moved.

The figures are the verifier's own summary ("processed N insns (limit L) ... total_states
T peak_states P", "stack depth", "verification time"), stored with each cell for every
program the verifier accepted. Instructions processed against the kernel's limit is the
headroom that matters: a program at 80% of it on one kernel is one compiler upgrade or
one kernel change away from VERIFIER_LIMIT. `compare` lists programs whose instruction
count grew by more than a threshold between two runs and can gate on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bpfcompat.report.view import RunView, VerifierCost, percent

DEFAULT_THRESHOLD = 0.20  # growth in instructions processed that `compare` reports
# A program this small can double from a one-line change; its cost is not news.
DEFAULT_MIN_INSNS = 100


@dataclass(frozen=True)
class ProgramCost:
    artifact: str
    program: str
    kernel: str
    cost: VerifierCost


def program_costs(run: RunView) -> dict[tuple[str, str, str], VerifierCost]:
    """(artifact, program, kernel) -> the verifier's cost, for every accepted program."""
    costs: dict[tuple[str, str, str], VerifierCost] = {}
    for cell in run.cells:
        for p in cell.programs:
            if p.name and p.verifier is not None:
                costs[(cell.artifact, p.name, cell.kernel)] = p.verifier
    return costs


@dataclass(frozen=True)
class CostRow:
    """One program across the run's kernels (None where it was not accepted)."""

    artifact: str
    program: str
    per_kernel: tuple[VerifierCost | None, ...]

    @property
    def peak_share(self) -> float:
        return max((c.share or 0.0 for c in self.per_kernel if c), default=0.0)

    @property
    def peak_kernel_index(self) -> int | None:
        shares = [(c.share or 0.0) if c else -1.0 for c in self.per_kernel]
        return shares.index(max(shares)) if shares and max(shares) >= 0 else None


def cost_rows(run: RunView) -> list[CostRow]:
    """Every program with a cost on some kernel, in the run's artifact and kernel order."""
    costs = program_costs(run)
    kernels = [k.id for k in run.kernels]
    programs: dict[tuple[str, str], None] = {}
    for artifact, program, _ in costs:
        programs[(artifact, program)] = None
    order = {name: i for i, name in enumerate(run.artifact_names())}
    rows = [
        CostRow(a, p, tuple(costs.get((a, p, k)) for k in kernels))
        for a, p in sorted(programs, key=lambda ap: (order.get(ap[0], len(order)), ap[1]))
    ]
    return rows


def heaviest(run: RunView, n: int = 10) -> list[CostRow]:
    """The `n` programs closest to their verifier limit on some kernel."""
    return sorted(cost_rows(run), key=lambda r: -r.peak_share)[:n]


@dataclass(frozen=True)
class CostChange:
    """A program whose instructions processed grew beyond the threshold on one kernel."""

    artifact: str
    program: str
    kernel: str
    required: bool
    base: VerifierCost
    head: VerifierCost

    @property
    def growth(self) -> float:
        return self.head.insns / self.base.insns - 1 if self.base.insns else float("inf")

    @property
    def growth_text(self) -> str:
        return "new cost" if self.growth == float("inf") else f"+{self.growth * 100:.0f}%"

    def line(self) -> str:
        req = "required" if self.required else "optional"
        limit = f" of {self.head.limit:,} ({percent(self.head.share)})" if self.head.limit else ""
        return (
            f"{'COST':13} {self.artifact}:{self.program} on {self.kernel} ({req}): "
            f"{self.base.insns:,} -> {self.head.insns:,} insns processed{limit}, "
            f"{self.growth_text}"
        )


def cost_changes(
    base: RunView,
    head: RunView,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    min_insns: int = DEFAULT_MIN_INSNS,
) -> list[CostChange]:
    """Programs accepted in both runs on a kernel whose instruction count grew by more than
    `threshold` (0.2 = 20%), ignoring programs under `min_insns` in the head run."""
    before = program_costs(base)
    changes = []
    for key, now in program_costs(head).items():
        was = before.get(key)
        if was is None or now.insns < min_insns:
            continue
        if now.insns > was.insns * (1 + threshold):
            artifact, program, kernel = key
            changes.append(CostChange(artifact, program, kernel, head.required(kernel), was, now))
    changes.sort(key=lambda c: (not c.required, -c.growth, c.artifact, c.program, c.kernel))
    return changes
