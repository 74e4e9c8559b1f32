"""The exit-code policy, written once: `matrix run`, `validate`, `compare` and every report
that states what an exit code means read it from here.

0 every required cell passes (or is what the project expects of it); 2 a compatibility
failure on a required kernel, or a cell that differs from its expectation; 1 a tool or
infrastructure error or bad input; 130 interrupted. Optional kernels never change it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

EXIT_PASS = 0
EXIT_ERROR = 1
EXIT_FAIL = 2
EXIT_INTERRUPTED = 130

EXIT_MEANINGS = {
    EXIT_PASS: "every required cell passed or behaved as expected",
    EXIT_ERROR: "error: a required kernel or cell errored, or an artifact was unusable",
    EXIT_FAIL: "a required cell failed, or differs from what was expected",
    EXIT_INTERRUPTED: "interrupted",
}


@dataclass(frozen=True)
class CellOutcome:
    """What the policy needs of a cell: where it ran, how it ended, and whether that is
    what the project expects (None: no expectation stated)."""

    kernel_id: str
    status: str  # pass | fail | error
    expected: bool | None = None


def run_exit_code(
    required_kernels: set[str],
    kernel_errors: set[str],
    cells: Iterable[CellOutcome],
    *,
    invalid_inputs: bool = False,
    interrupted: bool = False,
) -> int:
    """The exit code of a run: errors outrank failures, which outrank passes."""
    if interrupted:
        return EXIT_INTERRUPTED
    if kernel_errors & required_kernels or invalid_inputs:
        return EXIT_ERROR
    judged = [c for c in cells if c.kernel_id in required_kernels and c.expected is not True]
    statuses = {c.status for c in judged}
    if "error" in statuses:
        return EXIT_ERROR
    # A cell that differs from its expectation fails the run even when it passed.
    if "fail" in statuses or any(c.expected is False for c in judged):
        return EXIT_FAIL
    return EXIT_PASS


def cell_exit_code(status: str) -> int:
    """The exit code of a single cell (`validate` on one kernel)."""
    return {"pass": EXIT_PASS, "fail": EXIT_FAIL}.get(status, EXIT_ERROR)
