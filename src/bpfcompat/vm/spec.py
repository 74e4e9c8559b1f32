"""What a kernel of the matrix is: the VM layer boots it, the matrix layer plans with it.

Kept here, below both, so the VM layer never imports the matrix layer's config.

A kernel comes from one source: a Debian package fetched with apt (the default), a kernel
built from a Debian source package (`source: build`), or the user's own files (a .deb or
.rpm by URL or path, or a vmlinuz with its modules and config). Relative paths are
resolved against the directory of the kernels.yaml that names them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# Debian package names: lower case, digits, + - . (policy 5.6.1).
PACKAGE_PATTERN = r"^[a-z0-9][a-z0-9+.-]+$"
SUITE_PATTERN = r"^[a-z][a-z0-9-]{1,31}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# One Kconfig assignment: y/n/m, a number or a quoted string without quotes inside.
CONFIG_LINE_PATTERN = r'^CONFIG_[A-Za-z0-9_]+=(y|n|m|-?[0-9]+|0x[0-9a-fA-F]+|"[^"\\]*")$'
URL_PREFIXES = ("http://", "https://")
# The detached BTF a `source: build` kernel's own build generated.
BTF_FROM_BUILD = "build"


class Strict(BaseModel):
    """Every config model: unknown keys are errors, values are never coerced."""

    # strict: YAML already yields real ints and booleans, so `max_entries: true` (lax
    # pydantic: 1) or `required: 1` are typos to report, not values to coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, strict=True)


def resolve_location(value: str, info: ValidationInfo | None, *, url_ok: bool) -> str:
    """A URL kept as given, or a path made absolute against the config file's directory."""
    if re.search(r"[\x00-\x1f]", value):
        raise ValueError("may not contain control characters")
    if value.startswith(URL_PREFIXES):
        if not url_ok:
            raise ValueError("must be a local path, not a URL")
        return value
    if value.startswith("file://"):
        value = value.removeprefix("file://")
    elif "://" in value:
        raise ValueError(f"unsupported URL scheme in {value!r} (use http, https or a path)")
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir") if info is not None else None
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return str(path)


Location = Annotated[str, Field(min_length=1, max_length=4096)]


class DebSource(Strict):
    """A Debian kernel package (.deb) by URL or path."""

    deb: Location
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)] | None = None

    @field_validator("deb")
    @classmethod
    def _where(cls, value: str, info: ValidationInfo) -> str:
        return resolve_location(value, info, url_ok=True)


class RpmSource(Strict):
    """An RPM kernel package by URL or path (unpacked with rpm2cpio)."""

    rpm: Location
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)] | None = None

    @field_validator("rpm")
    @classmethod
    def _where(cls, value: str, info: ValidationInfo) -> str:
        return resolve_location(value, info, url_ok=True)


class FilesSource(Strict):
    """A kernel image with (optionally) its modules directory and config file."""

    vmlinuz: Location
    modules: Location | None = None
    config: Location | None = None
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)] | None = None  # of vmlinuz

    @field_validator("vmlinuz", "modules", "config")
    @classmethod
    def _where(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else resolve_location(value, info, url_ok=False)


def _source_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "name"
    if isinstance(value, dict):
        for key in ("deb", "rpm", "vmlinuz"):
            if key in value:
                return key
    if isinstance(value, DebSource | RpmSource | FilesSource):
        return {DebSource: "deb", RpmSource: "rpm", FilesSource: "vmlinuz"}[type(value)]
    return None


KernelSource = Annotated[
    Annotated[Literal["apt", "build"], Tag("name")]
    | Annotated[DebSource, Tag("deb")]
    | Annotated[RpmSource, Tag("rpm")]
    | Annotated[FilesSource, Tag("vmlinuz")],
    Discriminator(
        _source_tag,
        custom_error_type="source",
        custom_error_message="expected apt, build, {deb: ...}, {rpm: ...} or {vmlinuz: ...}",
    ),
]


class BuildSpec(Strict):
    """How to configure a kernel built from source: a make *config base, then these
    CONFIG_X=... lines applied over it (every one is checked to hold afterwards)."""

    base: Literal["tinyconfig", "allnoconfig", "defconfig"] = "tinyconfig"
    config: list[Annotated[str, Field(pattern=CONFIG_LINE_PATTERN)]] = Field(default_factory=list)
    # The whole build may take this long; a build printing nothing for stall_s is stuck.
    timeout_s: Annotated[float, Field(gt=0, le=86400)] = 5400.0
    stall_s: Annotated[float, Field(gt=0, le=86400)] = 900.0


class KernelSpec(Strict):
    """One kernel of the matrix and the command line it is booted with."""

    id: Annotated[str, Field(pattern=ID_PATTERN)]
    arch: Literal["x86_64", "aarch64"] = "x86_64"
    # apt: the suite and kernel package; build: the suite and kernel *source* package.
    suite: Annotated[str, Field(pattern=SUITE_PATTERN)] | None = None
    package: Annotated[str, Field(pattern=PACKAGE_PATTERN)] | None = None
    source: KernelSource = "apt"
    build: BuildSpec | None = None
    # A BTF file libbpf uses for CO-RE instead of the kernel's own (btf_custom_path):
    # a path, or `build` for the detached BTF a built kernel's build generated.
    btf: Location | None = None
    required: bool = True
    memory_mb: Annotated[int, Field(ge=256, le=16384)] = 512
    cpus: Annotated[int, Field(ge=1, le=64)] = 1
    cmdline: Annotated[str, Field(max_length=512)] = ""
    boot_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 180.0
    description: str = ""
    # Judge this kernel's cells by the expectations written for another kernel (e.g. the
    # same release on another architecture) unless an expectation names this one.
    expect_like: Annotated[str, Field(pattern=ID_PATTERN)] | None = None

    @field_validator("cmdline")
    @classmethod
    def _safe_cmdline(cls, value: str) -> str:
        # The command line is ours to build; quotes or control characters would let a
        # config value smuggle init arguments or confuse the parser in the guest.
        if re.search(r"[\"'`\\\x00-\x1f]", value):
            raise ValueError("may not contain quotes, backslashes or control characters")
        return value

    @field_validator("btf")
    @classmethod
    def _btf_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or value == BTF_FROM_BUILD:
            return value
        return resolve_location(value, info, url_ok=False)

    @model_validator(mode="after")
    def _source_fields(self) -> KernelSpec:
        kind = self.source_kind
        if kind in ("apt", "build"):
            what = "kernel package" if kind == "apt" else "kernel source package"
            for key in ("suite", "package"):
                if getattr(self, key) is None:
                    raise ValueError(f"source {kind} needs `{key}` (the {what} and its suite)")
        else:
            for key in ("suite", "package"):
                if getattr(self, key) is not None:
                    raise ValueError(f"`{key}` is only for apt and build sources, not {kind}")
        if (kind == "build") != (self.build is not None):
            raise ValueError(
                "source build needs a `build:` section"
                if kind == "build"
                else "`build:` is only for source: build"
            )
        if self.btf == BTF_FROM_BUILD and kind != "build":
            raise ValueError(f"btf: {BTF_FROM_BUILD} is only for source: build")
        return self

    @property
    def source_kind(self) -> str:
        """apt, build, deb, rpm or files."""
        if isinstance(self.source, str):
            return self.source
        if isinstance(self.source, DebSource):
            return "deb"
        return "rpm" if isinstance(self.source, RpmSource) else "files"

    @property
    def source_label(self) -> str:
        """Where the kernel comes from, in a few words (listings, reports)."""
        src = self.source
        if isinstance(src, DebSource):
            return f"deb {src.deb}"
        if isinstance(src, RpmSource):
            return f"rpm {src.rpm}"
        if isinstance(src, FilesSource):
            return f"vmlinuz {src.vmlinuz}"
        if src == "build":
            return f"build {self.suite}/{self.package}"
        return f"apt {self.suite}/{self.package}"
