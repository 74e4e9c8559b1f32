"""The `inspect` and `manifest suggest` commands: the matrix's cached kernels and each
object's manifest found as `matrix run` finds them, then analysis/ reads the object."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bpfcompat.analysis.inspect import inspect_object, render_text
from bpfcompat.analysis.kernelset import KernelSet
from bpfcompat.analysis.suggest import suggest_manifest
from bpfcompat.errors import BpfcompatError, ConfigError
from bpfcompat.matrix.config import default_kernels_file
from bpfcompat.matrix.plan import manifest_for
from bpfcompat.matrix.statics import declared, matrix_kernels


def kernel_set(kernels_file: Path | None) -> KernelSet:
    if kernels_file is None and not default_kernels_file().is_file():
        return KernelSet(unchecked=["no kernel matrix file (give --kernels)"])
    return matrix_kernels(kernels_file)


def run_inspect(paths: list[Path], kernels_file: Path | None, as_json: bool) -> tuple[str, int]:
    """The `inspect` command: (output text, exit code). Exit 1 only when some artifact could
    not be read at all; partial reads (no BTF) still report what they could."""
    kernels = kernel_set(kernels_file)
    reports = [inspect_object(p, kernels, declared(_manifest_of(p))) for p in paths]
    code = 0 if all(r["readable"] for r in reports) else 1
    if as_json:
        body: Any = reports[0] if len(reports) == 1 else reports
        return json.dumps(body, indent=2, default=str), code
    return "\n\n".join(render_text(r) for r in reports), code


def _manifest_of(path: Path) -> Path | None:
    """The manifest that applies to `path`, as `matrix run` finds it (None if unusable:
    inspect reports the object regardless)."""
    try:
        return manifest_for(path)
    except (BpfcompatError, OSError):
        return None


def run_suggest(path: Path, kernels_file: Path | None) -> str:
    """The `manifest suggest` command: a starting manifest, or ConfigError if unreadable."""
    report = inspect_object(path, kernel_set(kernels_file))
    if not report["readable"]:
        raise ConfigError(f"{path}: not a readable BPF object: {report['error']}")
    return suggest_manifest(report)
