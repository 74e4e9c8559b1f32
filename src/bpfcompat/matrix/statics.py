"""The host's static reading of each artifact, made once per run and kept with its cells.

The classifier needs it to tell the loader's job from the kernel's answer ("this fentry
target exists in no kernel of the matrix", "this section is another loader's
convention"), and the reports show the artifact's upstream floor beside what the run
observed. A target is a placeholder only if no kernel of the run has it, so the reading
waits until every kernel of the run has been fetched (or has failed to be).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from bpfcompat.analysis.inspect import inspect_object
from bpfcompat.analysis.kernelset import KernelSet, kernel_btf
from bpfcompat.analysis.loader import DeclaredManifest
from bpfcompat.errors import BpfcompatError
from bpfcompat.matrix.config import default_kernels_file, load_kernel_matrix, load_manifest
from bpfcompat.matrix.plan import Artifact
from bpfcompat.vm.kernels import KernelBuild, cached_kernel

# What a cell keeps: the findings that change a verdict (required and kernel-level ones;
# the informational ones, hundreds in a big object, stay with `bpfcompat inspect`).
MAX_KEPT_FINDINGS = 50
KEPT_LEVELS = ("required", "kernel")
# What the object uses, kept so a verdict can name what the source called where the
# kernel's log names something else (a helper libbpf rewrote, a macro's helper).
KEPT_KINDS = ("helper", "kfunc", "map_type", "program_type", "attach_type")
MAX_KEPT_REQUIREMENTS = 300
MAX_KEPT_PROGRAMS = 20  # programs named per requirement; `programs_left_out` counts the rest


def _requirement(r: dict[str, Any]) -> dict[str, Any]:
    programs = [str(p) for p in r.get("programs") or []]
    kept = {k: r.get(k) for k in ("kind", "name", "since", "id") if r.get(k) is not None}
    kept["programs"] = programs[:MAX_KEPT_PROGRAMS]
    if len(programs) > MAX_KEPT_PROGRAMS:
        kept["programs_left_out"] = len(programs) - MAX_KEPT_PROGRAMS
    return kept


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The part of an inspect report a cell keeps (bounded)."""
    findings = [f for f in report.get("loader_setup") or [] if f.get("level") in KEPT_LEVELS]
    reqs = [r for r in report.get("requirements") or [] if r.get("kind") in KEPT_KINDS]
    return {
        "floor": report.get("floor"),
        "floor_reason": report.get("floor_reason"),
        "floor_without_unused_maps": report.get("floor_without_unused_maps"),
        "loader_setup": findings[:MAX_KEPT_FINDINGS],
        "findings_left_out": max(0, len(report.get("loader_setup") or []) - len(findings)),
        "requirements": [_requirement(r) for r in reqs[:MAX_KEPT_REQUIREMENTS]],
    }


def analysis_of(analysis_json: str | None) -> dict[str, Any]:
    """The static reading a stored cell kept ({} when none or damaged)."""
    try:
        data = json.loads(analysis_json or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class RunAnalysis:
    """Each artifact read once per run, against the kernels the run fetched."""

    def __init__(self, kernel_ids: list[str], stop: threading.Event) -> None:
        self._waiting = set(kernel_ids)
        self._kernels: dict[str, KernelBuild] = {}
        self._ready = threading.Event()
        self._stop = stop
        self._lock = threading.Lock()
        self._done: dict[str, dict[str, Any]] = {}
        if not kernel_ids:
            self._ready.set()

    def kernel_fetched(self, kernel_id: str, build: KernelBuild | None) -> None:
        """Record that a kernel's fetch ended (None: it failed)."""
        with self._lock:
            if build is not None:
                self._kernels[kernel_id] = build
            self._waiting.discard(kernel_id)
            if not self._waiting:
                self._ready.set()

    def of(self, artifact: Artifact) -> dict[str, Any]:
        """The artifact's summary (see `summary`), read on first use."""
        while not self._ready.wait(0.2):
            if self._stop.is_set():
                break
        key = f"{artifact.sha256}:{artifact.manifest_hash}"
        with self._lock:
            if key not in self._done:
                where = artifact.manifest_path
                declared = DeclaredManifest(str(where), artifact.manifest) if where else None
                report = inspect_object(
                    artifact.path, self._kernel_set(), declared, data=artifact.data
                )
                self._done[key] = summary(report)
            return self._done[key]

    def _kernel_set(self) -> KernelSet:
        kernels = [kernel_btf(k, b.release, b.entry) for k, b in self._kernels.items()]
        return KernelSet(kernels=kernels)


def matrix_kernels(kernels_file: Path | None) -> KernelSet:
    """The kernels of a matrix file (default: kernels.yaml) that are in the cache."""
    matrix = load_kernel_matrix(kernels_file or default_kernels_file())
    out = KernelSet()
    for spec in matrix.kernels:
        hit = cached_kernel(spec, deep=False)
        if hit is None:
            out.unchecked.append(f"{spec.id}: not fetched (bpfcompat kernels fetch {spec.id})")
        else:
            out.kernels.append(kernel_btf(spec.id, hit.release, hit.entry))
    return out


def declared(manifest: Path | None) -> DeclaredManifest | None:
    """A manifest file read for the static reading (its error kept, never raised)."""
    if manifest is None:
        return None
    try:
        return DeclaredManifest(str(manifest), load_manifest(manifest))
    except BpfcompatError as exc:
        return DeclaredManifest(str(manifest), error=str(exc))
