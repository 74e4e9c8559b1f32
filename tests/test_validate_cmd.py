"""`bpfcompat validate`: one artifact on the running kernel (root) or in one VM."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

pytestmark = pytest.mark.root


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests load BPF into the host kernel: run them as root", pytrace=False)


def test_validate_on_host_passes_and_fails(built_examples: Path, tmp_path: Path) -> None:
    _need_root()
    ok = run_cli(
        "validate",
        str(built_examples / "simple-pass" / "simple-pass.bpf.o"),
        "--kernel",
        "host",
        "--out",
        str(tmp_path / "r.json"),
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "simple-pass on host" in ok.stdout and ": pass" in ok.stdout
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["status"] == "pass" and result["host"]["release"] == os.uname().release
    bad = run_cli(
        "validate", str(built_examples / "verifier-oob" / "verifier-oob.bpf.o"), "--kernel", "host"
    )
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "VERIFIER_REJECTION" in bad.stdout and "invalid access to map value" in bad.stdout


def test_validate_on_host_uses_the_manifest(built_examples: Path) -> None:
    _need_root()
    proc = run_cli(
        "validate",
        str(built_examples / "runtime-sized-maps" / "runtime-sized-maps.bpf.o"),
        "--kernel",
        "host",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_validate_on_host_needs_root(built_examples: Path) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.fail("needs root and setpriv (util-linux) to drop privileges", pytrace=False)
    proc = subprocess.run(
        [
            setpriv,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "bpfcompat",
            "validate",
            str(built_examples / "simple-pass" / "simple-pass.bpf.o"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "HOME": "/tmp"},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "bpfcompat: error: validate --kernel host needs root (BPF loading needs "
        "CAP_BPF/CAP_SYS_ADMIN)"
    ]
