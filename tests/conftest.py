"""Shared fixtures. Tests that need a tool this machine lacks FAIL loudly: CI must never
report a skipped check as passing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BPFCOMPAT = [sys.executable, "-m", "bpfcompat"]


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/setup.sh", pytrace=False)
    return path


@pytest.fixture(scope="session")
def built_examples() -> Path:
    """examples/ built with clang (make -C examples)."""
    require_tool("clang")
    subprocess.run(["make", "-s", "-C", str(EXAMPLES)], check=True)
    return EXAMPLES


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 1800, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a subprocess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("CI", "1")  # plain progress lines
    return subprocess.run(
        [*BPFCOMPAT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd,
        check=False,
    )
