"""Expected verdicts, read from examples/<name>/expect.yaml.

One loader for every test that judges a cell (the classifier tests on recorded evidence and
the end-to-end test on real VMs), so both hold the code to the same written expectations.
An expect.yaml has `default: {status, code?}`, optional per-kernel overrides under
`kernels:`, and optional `variants:` (`default` and per-kernel `{group: chosen program}`).

A kernel with `expect_like: <id>` in kernels.yaml (the arm64 kernels, the kernel built
without BTF) expects what that kernel expects unless its own entry says otherwise, as the
tool itself judges it (matrix/expect.py kernel_chain), so an expect.yaml records only
where arm64 or the missing BTF changes the verdict, each time with the reason.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from bpfcompat.matrix.classify import CODES
from bpfcompat.matrix.config import KernelMatrix, load_kernel_matrix
from bpfcompat.matrix.expect import kernel_chain

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STATUSES = ("pass", "fail", "error")
_TOP_KEYS = {"default", "kernels", "variants"}


def examples() -> list[str]:
    """Every example that states its expectations."""
    return sorted(p.name for p in EXAMPLES.iterdir() if (p / "expect.yaml").is_file())


def _check_verdict(where: str, verdict: Any) -> dict[str, Any]:
    if not isinstance(verdict, dict) or set(verdict) - {"status", "code"}:
        raise ValueError(f"{where}: expected {{status, code?}}, got {verdict!r}")
    status, code = verdict.get("status"), verdict.get("code")
    if status not in STATUSES:
        raise ValueError(f"{where}: status {status!r} is not one of {', '.join(STATUSES)}")
    if (status == "pass") != (code is None):
        raise ValueError(f"{where}: a {status} verdict {'has' if code else 'needs'} a code")
    if code is not None and code not in CODES:
        raise ValueError(f"{where}: unknown code {code!r}")
    return {"status": status, "code": code}


@cache
def _load(example: str) -> dict[str, Any]:
    path = EXAMPLES / example / "expect.yaml"
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or "default" not in data or set(data) - _TOP_KEYS:
        raise ValueError(f"{path}: needs `default:` and only {sorted(_TOP_KEYS)}")
    kernels = {
        str(k): _check_verdict(f"{path}: kernels.{k}", v)
        for k, v in (data.get("kernels") or {}).items()
    }
    variants = {str(k): dict(v or {}) for k, v in (data.get("variants") or {}).items()}
    return {"default": _check_verdict(f"{path}: default", data["default"]), "kernels": kernels,
            "variants": variants}  # fmt: skip


def lineage(kernel_id: str) -> list[str]:
    """The kernel id, then the kernels it is judged like (default kernels.yaml)."""
    return kernel_chain(_matrix().kernels, kernel_id)


@cache
def _matrix() -> KernelMatrix:
    return load_kernel_matrix(EXAMPLES.parent / "kernels.yaml")


def expected(example: str, kernel_id: str) -> dict[str, Any]:
    """{status, code (None for pass), variants: {group: chosen} or {}} for one cell."""
    data = _load(example)
    chain = lineage(kernel_id)
    verdict = next((data["kernels"][k] for k in chain if k in data["kernels"]), data["default"])
    variants = next(
        (data["variants"][k] for k in chain if k in data["variants"]),
        data["variants"].get("default", {}),
    )
    return {"status": verdict["status"], "code": verdict["code"], "variants": dict(variants)}
