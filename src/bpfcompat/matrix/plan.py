"""Turn command-line inputs into a plan: which artifacts, which kernels, what is cached.

Artifacts are read once here (hash, manifest, a cheap ELF header check) so that every
later stage works from the same bytes even if the files change during the run.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from bpfcompat.errors import ArtifactError, ConfigError
from bpfcompat.matrix.config import Manifest, load_manifest
from bpfcompat.vm.spec import KernelSpec

MAX_ARTIFACT_BYTES = 64 * 1024 * 1024  # far above any real BPF object; see docs
EM_BPF = 247
ARTIFACT_SUFFIX = ".bpf.o"
MANIFEST_NAME = "manifest.yaml"


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


@dataclass(frozen=True)
class Plan:
    kernels: list[KernelSpec]
    artifacts: list[Artifact]
    guest_suite: str


def artifact_name(path: Path) -> str:
    name = path.name
    return name[: -len(ARTIFACT_SUFFIX)] if name.endswith(ARTIFACT_SUFFIX) else path.stem


def elf_problem(data: bytes) -> str | None:
    """Why the bytes cannot be a BPF ELF object, judged from the header alone."""
    if not data:
        return "empty file"
    if data[:4] != b"\x7fELF":
        preview = data[:8].decode("ascii", "replace").encode("unicode_escape").decode()
        return f"not an ELF file (starts with {preview!r})"
    if len(data) < 64:
        return f"truncated ELF header ({len(data)} bytes)"
    if data[4] != 2 or data[5] not in (1, 2):
        return "not a 64-bit ELF object"
    endian = "<" if data[5] == 1 else ">"
    (machine,) = struct.unpack_from(endian + "H", data, 18)
    if machine not in (0, EM_BPF):  # libbpf takes EM_NONE too: "Old LLVM set e_machine to EM_NONE"
        return f"ELF for machine {machine}, not BPF ({EM_BPF})"
    (shoff,) = struct.unpack_from(endian + "Q", data, 40)
    shentsize, shnum = struct.unpack_from(endian + "HH", data, 58)
    end = shoff + shentsize * shnum
    if end > len(data):
        return f"truncated ELF: section headers end at {end}, file has {len(data)} bytes"
    return None


def _manifest_hash(manifest: Manifest) -> str:
    canonical = json.dumps(manifest.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def load_artifact(
    path: Path, manifest_path: Path | None = None, refused: str | None = None
) -> Artifact:
    """Read `path` once; `refused` names why it must not be read at all (an invalid cell)."""
    if manifest_path is None and (path.parent / MANIFEST_NAME).is_file():
        manifest_path = path.parent / MANIFEST_NAME
    manifest = load_manifest(manifest_path) if manifest_path else Manifest()
    try:
        size = 0 if refused else path.stat().st_size
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read artifact: {exc.strerror}") from None
    if refused:
        data, problem = b"", refused
    elif size > MAX_ARTIFACT_BYTES:
        data = b""
        problem = f"artifact is {size} bytes, over the {MAX_ARTIFACT_BYTES} byte limit"
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"{path}: cannot read artifact: {exc.strerror}") from None
        problem = elf_problem(data)
    return Artifact(
        name=artifact_name(path),
        path=path,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        manifest_path=manifest_path,
        manifest=manifest,
        manifest_hash=_manifest_hash(manifest),
        invalid_reason=problem,
    )


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
            found = sorted(p for p in item.rglob(f"*{ARTIFACT_SUFFIX}") if p.is_file())
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
    for path, refused in paths.items():
        artifact = load_artifact(path, manifest, refused)
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
    if btf_sha256 is not None:  # an external BTF file changes what libbpf relocates against
        parts.append(f"btf={btf_sha256}")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()
