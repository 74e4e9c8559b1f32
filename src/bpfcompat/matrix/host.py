"""Validate one artifact on the running kernel: the validator as a child process of ours.

No guest stands between the artifact's manifest and this machine here: its functional
tests would run as root on the host, so they run only when the user says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bpfcompat.errors import BpfcompatError, ConfigError
from bpfcompat.matrix.plan import Artifact
from bpfcompat.matrix.result import ResultModel, ResultProblem, parse_result

HOST_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class HostRun:
    result: ResultModel
    release: str
    exit_code: int


def host_commands(artifact: Artifact) -> list[str]:
    """The commands the artifact's manifest would run on this host, as root."""
    return [t.command for t in artifact.manifest.functional_tests]


def validate_on_host(
    artifact: Artifact,
    *,
    out: Path | None = None,
    attach_mode: str = "best-effort",
    auto_fixups: bool = True,
    allow_commands: bool = False,
) -> HostRun:
    """Run the validator on this kernel; `out` keeps its result JSON."""
    if os.geteuid() != 0:
        raise ConfigError(
            "validate --kernel host needs root (BPF loading needs CAP_BPF/CAP_SYS_ADMIN)"
        )
    commands = host_commands(artifact)
    if commands and not allow_commands:
        where = artifact.manifest_path or "its manifest"
        raise ConfigError(
            f"{where}: its functional tests would run {len(commands)} command(s) as root on "
            "this host; pass --allow-host-commands to allow that"
        )
    with tempfile.TemporaryDirectory(prefix="bpfcompat-validate-") as tmp:
        result_path = out or Path(tmp) / "result.json"
        extra, files = artifact.manifest.validator_inputs(tmp, artifact.target_objects)
        for path, data in files.items():
            Path(path).write_bytes(data)
        args = [
            sys.executable,
            "-m",
            "bpfcompat.validator",
            "--artifact",
            str(artifact.path),
            "--out",
            str(result_path),
            "--log-dir",
            tmp,
            "--attach-mode",
            attach_mode,
            *([] if auto_fixups else ["--no-auto-fixups"]),
            *extra,
        ]
        try:
            proc = subprocess.run(args, check=False, timeout=HOST_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BpfcompatError(
                f"{artifact.path}: the validator did not finish within {HOST_TIMEOUT_S:g} s"
            ) from None
        if not result_path.is_file():
            raise BpfcompatError(
                f"{artifact.path}: validator wrote no result (exit {proc.returncode})"
            )
        result = parse_result(result_path.read_bytes())
    if isinstance(result, ResultProblem):
        raise BpfcompatError(f"{result_path}: {result.reason}")
    return HostRun(result, os.uname().release, proc.returncode)
