"""Expected verdicts, read from examples/<name>/expect.yaml.

One loader for every test that judges a cell (the classifier tests on recorded evidence and
the end-to-end test on real VMs), so both hold the code to the same written expectations.
An expect.yaml has `default: {status, code?}`, optional per-kernel overrides under
`kernels:`, and optional `variants:` (`default` and per-kernel `{group: chosen program}`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from bpfcompat.matrix.classify import CODES

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


def expected(example: str, kernel_id: str) -> dict[str, Any]:
    """{status, code (None for pass), variants: {group: chosen} or {}} for one cell."""
    data = _load(example)
    verdict = data["kernels"].get(kernel_id, data["default"])
    variants = data["variants"].get(kernel_id, data["variants"].get("default", {}))
    return {"status": verdict["status"], "code": verdict["code"], "variants": dict(variants)}
