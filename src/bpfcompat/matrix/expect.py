"""What a project expects of each kernel, like pytest's xfail: a cell that matches its
expectation is "expected" and does not fail the run; one that differs (a new failure, a
changed code, an unexpected pass) does, and every report says which.

Expectations live in `<name>.expect.yaml` beside an object, a directory's
`expect.yaml`, or the manifest's `expect:` key (that order of precedence, the manifest
first): `default: {status, code}`, per-kernel overrides under `kernels:`, and optionally
the variant each program_variants group should choose (`variants:`). A kernel entry
of kernels.yaml may say `expect_like: <id>` to be judged like another kernel unless an
expectation names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from bpfcompat.vm.spec import KernelSpec, Strict

EXPECT_NAME = "expect.yaml"
EXPECT_SUFFIX = ".expect.yaml"


class ExpectedVerdict(Strict):
    """The verdict a cell is expected to get."""

    status: Literal["pass", "fail", "error"] = Field(
        description="The expected status of the cell.", examples=["fail"]
    )
    code: Annotated[str, Field(pattern=r"^[A-Z][A-Z_]{2,40}$")] | None = Field(
        None,
        description="The expected classification code (docs/codes.md): required for fail "
        "and error, absent for pass.",
        examples=["VERIFIER_REJECTION"],
    )

    @model_validator(mode="after")
    def _code_for_failures(self) -> ExpectedVerdict:
        if (self.status == "pass") != (self.code is None):
            has = "has" if self.code else "needs"
            raise ValueError(f"a {self.status} expectation {has} a code")
        return self

    @property
    def label(self) -> str:
        return self.status + (f" {self.code}" if self.code else "")


class Expectations(Strict):
    """What the project expects on each kernel, like pytest's xfail: a cell that matches
    does not fail the run; one that differs (an unexpected pass included) does."""

    default: ExpectedVerdict = Field(description="The expectation on every kernel not named.")
    kernels: dict[str, ExpectedVerdict] = Field(
        default_factory=dict,
        description="Per-kernel expectations, by kernel id.",
        examples=[{"debian-11-5.10": {"status": "fail", "code": "VERIFIER_REJECTION"}}],
    )
    # group -> the program the variant selection should choose, by default and per kernel
    variants: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="The program each program_variants group should choose: under "
        "`default` and under kernel ids, group names map to program names.",
        examples=[{"default": {"loop_x": "loop_x"}, "debian-11-5.10": {"loop_x": "loop_old_x"}}],
    )

    def verdict(self, kernel_ids: list[str]) -> ExpectedVerdict:
        """The expectation for a kernel, given it and the kernels it is judged like."""
        for kernel_id in kernel_ids:
            if kernel_id in self.kernels:
                return self.kernels[kernel_id]
        return self.default

    def chosen(self, kernel_ids: list[str]) -> dict[str, str]:
        for kernel_id in kernel_ids:
            if kernel_id in self.variants:
                return dict(self.variants[kernel_id])
        return dict(self.variants.get("default", {}))


def expect_file_for(path: Path) -> Path | None:
    """`<name>.expect.yaml` beside the object, else the directory's `expect.yaml`."""
    name = path.name.removesuffix(".bpf.o")
    for candidate in (path.with_name(name + EXPECT_SUFFIX), path.parent / EXPECT_NAME):
        if candidate.is_file() or candidate.exists() or candidate.is_symlink():
            return candidate
    return None


def kernel_chain(kernels: list[KernelSpec], kernel_id: str) -> list[str]:
    """The kernel, then the kernels it is judged like (KernelSpec.expect_like)."""
    by_id = {k.id: k for k in kernels}
    chain = [kernel_id]
    while (spec := by_id.get(chain[-1])) is not None and spec.expect_like:
        if spec.expect_like in chain:
            break
        chain.append(spec.expect_like)
    return chain


def matches(expected: ExpectedVerdict, status: str, code: str | None) -> bool:
    return expected.status == status and (expected.code or None) == (code or None)
