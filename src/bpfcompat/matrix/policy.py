"""The exit-code policy, written once: `matrix run`, `validate`, `compare` and every report
that states what an exit code means read it from here.

0 every required cell passes; 2 a compatibility failure on a required kernel; 1 a tool or
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
    EXIT_PASS: "every required cell passed",
    EXIT_ERROR: "error: a required kernel or cell errored, or an artifact was unusable",
    EXIT_FAIL: "a required cell failed",
    EXIT_INTERRUPTED: "interrupted",
}


@dataclass(frozen=True)
class CellOutcome:
    """What the policy needs of a cell: where it ran and how it ended."""

    kernel_id: str
    status: str  # pass | fail | error


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
    statuses = {c.status for c in cells if c.kernel_id in required_kernels}
    if "error" in statuses:
        return EXIT_ERROR
    if "fail" in statuses:
        return EXIT_FAIL
    return EXIT_PASS


def cell_exit_code(status: str) -> int:
    """The exit code of a single cell (`validate` on one kernel)."""
    return {"pass": EXIT_PASS, "fail": EXIT_FAIL}.get(status, EXIT_ERROR)
