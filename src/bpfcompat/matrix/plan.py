"""Turn command-line inputs into a plan: which artifacts, which kernels, what is cached.

Artifacts are read once here (hash, manifest, a cheap ELF header check) so that every
later stage works from the same bytes even if the files change during the run.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from bpfcompat.analysis.objfile import read_object
from bpfcompat.errors import ArtifactError, ConfigError
from bpfcompat.matrix.config import (
    file_kind,
    load_expectations,
    load_manifest,
    read_regular,
)
from bpfcompat.matrix.expect import Expectations, expect_file_for
from bpfcompat.matrix.manifest import Manifest
from bpfcompat.validator.elf import elf_sections
from bpfcompat.validator.globals import global_names, object_btf
from bpfcompat.validator.globals import resolve as resolve_global
from bpfcompat.vm.spec import KernelSpec

MAX_ARTIFACT_BYTES = 64 * 1024 * 1024  # far above any real BPF object; see docs
# What one run may hold in memory and stage into guests, all artifacts together.
MAX_TOTAL_ARTIFACT_BYTES = 256 * 1024 * 1024
ARTIFACT_SUFFIX = ".bpf.o"
MANIFEST_NAME = "manifest.yaml"  # applies to every object in its directory
MANIFEST_SUFFIX = ".manifest.yaml"  # <name>.manifest.yaml applies to <name>.bpf.o only


@dataclass(frozen=True)
class Artifact:
    name: str
    path: Path
    data: bytes = field(repr=False)
    sha256: str
    manifest_path: Path | None
    manifest: Manifest
    manifest_hash: str
    invalid_reason: str | None = None
    # The other objects the manifest names (freplace targets), read once like the artifact.
    target_objects: tuple[bytes, ...] = field(default=(), repr=False)
    expect: Expectations | None = None  # what the project expects of each kernel


ATTACH_MODES = ("disabled", "best-effort", "required")


@dataclass(frozen=True)
class Plan:
    kernels: list[KernelSpec]
    artifacts: list[Artifact]
    guest_suite: str
    # disabled: load only; best-effort: a program that does not attach is shown, not
    # failed; required: every program must attach.
    attach_mode: str = "best-effort"
    # Size maps the object compiled with size 0 as its loader would (when the manifest
    # does not say): the kernel's own answer instead of the loader's.
    auto_fixups: bool = True
    # (I, N): run only the I-th of N deterministic slices of the cells (1-based).
    shard: tuple[int, int] | None = None

    def digest(self) -> str:
        """What makes two runs the same plan (shards of one plan share it)."""
        h = hashlib.sha256()
        for spec in self.kernels:
            h.update(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode() + b"\0")
        for a in self.artifacts:
            h.update(f"{a.name}\0{a.sha256}\0{a.manifest_hash}\0".encode())
        h.update(f"{self.guest_suite}\0{self.attach_mode}\0{self.auto_fixups}".encode())
        return h.hexdigest()[:16]

    def cells(self) -> list[tuple[KernelSpec, Artifact]]:
        """This run's cells, kernel by kernel: all of them, or the shard's slice of them.

        Slices are contiguous in kernel-then-artifact order and differ in size by at most
        one, so a shard boots as few kernels as it can."""
        every = [(spec, artifact) for spec in self.kernels for artifact in self.artifacts]
        if self.shard is None:
            return every
        index, count = self.shard
        return every[(index - 1) * len(every) // count : index * len(every) // count]

    def artifacts_for(self, kernel_id: str) -> list[Artifact]:
        return [a for spec, a in self.cells() if spec.id == kernel_id]

    def active_kernels(self) -> list[KernelSpec]:
        ids = {spec.id for spec, _ in self.cells()}
        return [spec for spec in self.kernels if spec.id in ids]


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` with 1 <= I <= N: which slice of the cells this job runs."""
    match = re.fullmatch(r"\s*(\d{1,4})\s*/\s*(\d{1,4})\s*", text)
    if not match:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 2/4")
    index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= index <= count:
        raise ConfigError(f"--shard {text!r}: I must be between 1 and N ({count})")
    return index, count


def artifact_name(path: Path) -> str:
    name = path.name
    return name[: -len(ARTIFACT_SUFFIX)] if name.endswith(ARTIFACT_SUFFIX) else path.stem


def elf_problem(data: bytes) -> str | None:
    """Why the bytes cannot be a BPF ELF object: the validator's own check, so host and
    guest agree on what a BPF object is."""
    if not data:
        return "empty file"
    try:
        elf_sections(data)
    except (ValueError, struct.error) as exc:
        return str(exc)
    return None


def _manifest_hash(manifest: Manifest, targets: tuple[bytes, ...] = ()) -> str:
    canonical = json.dumps(manifest.model_dump(mode="json"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode())
    for data in targets:  # what the manifest points at is part of what it asks for
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


def manifest_for(path: Path, explicit: Path | None = None) -> Path | None:
    """The manifest that applies to `path`: the one given, else `<name>.manifest.yaml`
    beside it, else the directory's `manifest.yaml`. A candidate that exists but is not a
    regular file (a directory, a broken symlink) is an error, never silently skipped."""
    if explicit is not None:
        return explicit
    for candidate in (
        path.with_name(artifact_name(path) + MANIFEST_SUFFIX),
        path.parent / MANIFEST_NAME,
    ):
        if candidate.is_file():
            return candidate
        if candidate.exists() or candidate.is_symlink():
            read_regular(candidate, 0, "manifest")  # raises the one-line reason
    return None


def check_manifest_names(path: Path, data: bytes, manifest: Manifest, where: Path) -> None:
    """Every program and map a manifest names must be in the object: a misspelt name would
    silently drop what the manifest asks for (a required attach, a fixup)."""
    names = manifest.named()
    if not names and not manifest.globals:
        return
    try:
        obj = read_object(path, data)
    except ValueError:
        return  # not a BPF object: its cell says so
    have = {
        "program": {f.name for f in obj.programs},
        "map": {m.name for m in obj.maps},
    }
    for key, kind, name in names:
        if name in have[kind]:
            continue
        close = difflib.get_close_matches(name, sorted(have[kind]), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: {key}: {path.name} has no {kind} {name!r}{hint}")
    for name, value in manifest.globals.items():
        try:
            resolve_global(data, name, value)
        except ValueError as exc:
            known = global_names(object_btf(data)[0]) if obj.btf is not None else []
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close and close[0] != name else ""
            raise ConfigError(f"{where}: globals.{name}: {path.name}: {exc}{hint}") from None


def load_artifact(
    path: Path, manifest_path: Path | None = None, refused: str | None = None
) -> Artifact:
    """Read `path` once; `refused` names why it must not be read at all (an invalid cell)."""
    given = manifest_path
    manifest_path = manifest_for(path, manifest_path)
    manifest = load_manifest(manifest_path) if manifest_path else Manifest()
    data, problem = b"", refused
    if not refused:
        try:
            st = path.stat()
        except OSError as exc:
            raise ArtifactError(f"{path}: cannot read artifact: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            problem = f"{file_kind(st.st_mode)}, not a file: refused, not read"
        elif st.st_size > MAX_ARTIFACT_BYTES:
            problem = f"artifact is {st.st_size} bytes, over the {MAX_ARTIFACT_BYTES} byte limit"
        else:
            try:
                with path.open("rb") as fh:
                    data = fh.read(MAX_ARTIFACT_BYTES + 1)
            except OSError as exc:
                raise ArtifactError(f"{path}: cannot read artifact: {exc.strerror}") from None
            if len(data) > MAX_ARTIFACT_BYTES:
                data, problem = b"", f"artifact grew over the {MAX_ARTIFACT_BYTES} byte limit"
            else:
                problem = elf_problem(data)
    targets = _target_objects(manifest, manifest_path) if manifest_path else ()
    shared_dir_manifest = given is None and manifest_path == path.parent / MANIFEST_NAME
    if (
        manifest_path is not None
        and problem is None
        and not (shared_dir_manifest and manifest.shared)
    ):
        check_manifest_names(path, data, manifest, manifest_path)
    return Artifact(
        name=artifact_name(path),
        path=path,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        manifest_path=manifest_path,
        manifest=manifest,
        manifest_hash=_manifest_hash(manifest, targets),
        invalid_reason=problem,
        target_objects=targets,
        expect=_expectations(path, manifest),
    )


def _expectations(path: Path, manifest: Manifest) -> Expectations | None:
    if manifest.expect is not None:
        return manifest.expect
    found = expect_file_for(path)
    return load_expectations(found) if found is not None else None


def _target_objects(manifest: Manifest, manifest_path: Path) -> tuple[bytes, ...]:
    """The bytes of each object the manifest's freplace targets name, checked like
    artifacts (relative to the manifest's directory)."""
    out = []
    for index, (prog, target) in enumerate(manifest.targets()):
        path = manifest_path.parent / target.object
        what = f"target object of programs ({prog})"
        data = read_regular(path, MAX_ARTIFACT_BYTES, what)
        problem = elf_problem(data)
        if problem:
            raise ConfigError(f"{manifest_path}: programs: target {index} ({path}): {problem}")
        out.append(data)
    return tuple(out)


def escaping_symlink(path: Path, root: Path) -> str | None:
    """Why `path`, found below the input directory `root`, must not be read: it resolves
    (through a symlink) to somewhere outside `root`. A directory given to `matrix run`
    is a boundary; following links out of it would let a checked-in link feed any file
    the user can read (keys, /proc) to the guest and the reports."""
    target = path.resolve()
    if target.is_relative_to(root.resolve()):
        return None
    return f"symlink to {target}, outside the input directory {root}: refused, not read"


def discover_artifacts(inputs: list[Path], manifest: Path | None = None) -> list[Artifact]:
    """Files as given; directories expand to every *.bpf.o below them, sorted. Files
    below a directory that resolve outside it are refused (an INVALID_ARTIFACT cell)."""
    paths: dict[Path, str | None] = {}
    for item in inputs:
        if item.is_dir():
            # Everything named like an object is a cell: a FIFO or a directory named x.bpf.o
            # becomes an invalid artifact with its reason, not a silent gap in the matrix.
            found = sorted(p for p in item.rglob(f"*{ARTIFACT_SUFFIX}") if not p.is_dir())
            if not found:
                raise ArtifactError(f"{item}: directory holds no *{ARTIFACT_SUFFIX} files")
            for p in found:
                paths.setdefault(p, escaping_symlink(p, item))
        elif item.exists():
            paths.setdefault(item, None)
        else:
            raise ArtifactError(f"{item}: no such file or directory")
    artifacts: list[Artifact] = []
    seen: dict[str, Path] = {}
    total = 0
    for path, refused in paths.items():
        artifact = load_artifact(path, manifest, refused)
        total += len(artifact.data)
        if total > MAX_TOTAL_ARTIFACT_BYTES:
            raise ArtifactError(
                f"{path}: the artifacts of this run total over {MAX_TOTAL_ARTIFACT_BYTES} bytes "
                "(the limit for one run): validate them in smaller runs"
            )
        if artifact.name in seen:
            raise ConfigError(
                f"{path}: artifact name {artifact.name!r} is also used by {seen[artifact.name]}"
            )
        seen[artifact.name] = path
        artifacts.append(artifact)
    return artifacts


def kernel_key(spec: KernelSpec, package_version: str) -> str:
    return f"{spec.id}|{spec.package or spec.source_kind}={package_version}|{spec.cmdline}"


def cache_key(
    artifact: Artifact,
    spec: KernelSpec,
    package_version: str,
    validator_version: str,
    image_digest: str,
    attach_mode: str = "best-effort",
    auto_fixups: bool = True,
    *,
    btf_sha256: str | None = None,
) -> str:
    parts = [
        artifact.sha256,
        artifact.manifest_hash,
        kernel_key(spec, package_version),
        validator_version,
        image_digest,
    ]
    if attach_mode != "best-effort":  # keeps the keys of earlier best-effort runs
        parts.append(f"attach={attach_mode}")
    if not auto_fixups:
        parts.append("no-auto-fixups")
    if btf_sha256 is not None:  # an external BTF file changes what libbpf relocates against
        parts.append(f"btf={btf_sha256}")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()
