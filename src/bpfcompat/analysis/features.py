"""Typed access to data/features.yaml: the release that introduced each eBPF feature.

The facts live in YAML rather than code so that updating them for a new kernel is a data
change a reviewer can check against its sources line by line (the file's header names them).
This module only indexes them: every lookup is by the identifier a BPF object or a log
actually carries (a helper id from a call instruction, a map type number from BTF, an ELF
section name), and answers with one `Feature` whose `since` can be compared with
`parse_release()` of a kernel's `uname -r`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

__all__ = [
    "KINDS",
    "Feature",
    "Rewrite",
    "SectionDef",
    "attach_type",
    "entries",
    "feature",
    "helper",
    "kfunc",
    "libbpf_rewrite",
    "libbpf_rewrites",
    "link_type",
    "load_raw",
    "map_type",
    "parse_release",
    "program_type",
    "section_def",
    "section_defs",
    "section_defs_libbpf_version",
]

Release = tuple[int, int]

# YAML section -> Feature.kind. The id-keyed sections mirror uapi enums; the others are keyed
# by name only.
_ENUM_SECTIONS = {
    "helpers": "helper",
    "map_types": "map_type",
    "program_types": "program_type",
    "attach_types": "attach_type",
    "link_types": "link_type",
}
KINDS = (*_ENUM_SECTIONS.values(), "kfunc", "feature")

# Lookups accept the uapi spelling too (BPF_MAP_TYPE_RINGBUF, BPF_FUNC_loop, BPF_TRACE_FENTRY),
# because that is what kernel logs, bpftool and C sources print.
_UAPI_PREFIX = {
    "helper": "bpf_func_",
    "map_type": "bpf_map_type_",
    "program_type": "bpf_prog_type_",
    "attach_type": "bpf_",
    "link_type": "bpf_link_type_",
}

_RELEASE_RE = re.compile(r"v?(\d+)\.(\d+)")


def parse_release(text: str) -> Release:
    """Return (major, minor) of a kernel release string or a `since` value.

    Only major.minor decides which upstream features a kernel has; the rest of
    `uname -r` ("-50-cloud-amd64", "+deb14") is distribution packaging. Strict about the
    start of the string so that a malformed `since` in the data is an error, not a guess.
    """
    m = _RELEASE_RE.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"not a kernel release: {text!r}")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True, slots=True)
class Feature:
    """One fact: `name` (and uapi `id`, when it has one) appeared upstream in `since`.

    `estimated` marks releases inferred from commit dates because no source states them;
    a report should say "probably" for those. `gpl_only` is None when unknown, never a
    guessed False, because a wrong False would hide a licence failure.
    """

    kind: str
    name: str
    id: int | None
    since: Release
    gpl_only: bool | None = None
    estimated: bool = False
    meaning: str | None = None
    libbpf_probe: str | None = None

    @property
    def since_text(self) -> str:
        """The release as the data and kernel.org spell it ("5.10", not 5.1)."""
        return f"{self.since[0]}.{self.since[1]}"

    def available_on(self, release: Release | str) -> bool:
        """Whether an upstream kernel of `release` has this feature.

        Distribution kernels backport features, so False means "not upstream in that
        release", which is a reason to look for the failure, not proof of one.
        """
        rel = parse_release(release) if isinstance(release, str) else release
        return rel >= self.since


@dataclass(frozen=True, slots=True)
class SectionDef:
    """One row of libbpf's section_defs[]: what a SEC() name makes libbpf load."""

    sec: str
    prog_type: str
    attach_type: str | None
    flags: frozenset[str]
    auto_attach: bool

    @property
    def attach_btf(self) -> bool:
        """The section's target is resolved through BTF at load time, so a missing kernel
        function fails the load, not the attach."""
        return "attach_btf" in self.flags

    @property
    def sleepable(self) -> bool:
        return "sleepable" in self.flags

    def matches(self, section_name: str) -> bool:
        """libbpf's sec_def_matches(): "+" = exact or "<prefix>/...", "/" = prefix, else exact.

        A plain prefix test would be wrong: "socket/tail" is no socket program for libbpf.
        """
        sec = self.sec
        if sec.endswith("/"):
            return section_name.startswith(sec)
        if sec.endswith("+"):
            base = sec[:-1]
            if not section_name.startswith(base):
                return False
            rest = section_name[len(base) :]
            return rest == "" or rest.startswith("/")
        return section_name == sec


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Something libbpf or its headers change between the user's source and the kernel.

    Kept so that an explanation can name what the user wrote (bpf_printk with five
    arguments) rather than what the kernel saw (bpf_trace_vprintk).
    """

    key: str
    stage: str
    meaning: str
    feature: str | None = None
    since: Release | None = None
    libbpf_probe: str | None = None
    helpers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class _Db:
    by_id: Mapping[str, Mapping[int, Feature]]
    by_name: Mapping[str, Mapping[str, Feature]]
    section_defs: tuple[SectionDef, ...]
    section_defs_version: str
    rewrites: Mapping[str, Rewrite]


def _since(value: Any, where: str) -> Release:
    if not isinstance(value, str) or not re.fullmatch(r"\d+\.\d+", value):
        raise ValueError(f"{where}: since must be a quoted 'X.Y' string, got {value!r}")
    return parse_release(value)


def _build(raw: Mapping[str, Any]) -> _Db:
    by_id: dict[str, dict[int, Feature]] = {}
    by_name: dict[str, dict[str, Feature]] = {}
    for section, kind in _ENUM_SECTIONS.items():
        ids: dict[int, Feature] = {}
        names: dict[str, Feature] = {}
        for row in raw[section]:
            where = f"{section}[{row.get('id')}]"
            f = Feature(
                kind=kind,
                name=row["name"],
                id=int(row["id"]),
                since=_since(row["since"], where),
                gpl_only=row.get("gpl_only"),
                estimated=bool(row.get("estimated", False)),
            )
            # Duplicates would make lookups silently depend on file order.
            if f.id in ids or f.name in names:
                raise ValueError(f"{where}: duplicate id or name {f.name!r}")
            ids[f.id] = names[f.name] = f
        by_id[kind], by_name[kind] = ids, names

    kfuncs: dict[str, Feature] = {}
    for name, since in raw["kfuncs"].items():
        kfuncs[name] = Feature("kfunc", name, None, _since(since, f"kfuncs.{name}"))
    by_name["kfunc"] = kfuncs

    feats: dict[str, Feature] = {}
    for key, row in raw["features"].items():
        feats[key] = Feature(
            "feature",
            key,
            None,
            _since(row["since"], f"features.{key}"),
            meaning=row.get("meaning"),
            libbpf_probe=row.get("libbpf_probe"),
        )
    by_name["feature"] = feats

    rewrites: dict[str, Rewrite] = {}
    for key, row in raw["libbpf_rewrites"]["rewrites"].items():
        feat = row.get("feature")
        if feat is not None and feat not in feats:
            raise ValueError(f"libbpf_rewrites.{key}: unknown feature {feat!r}")
        since = row.get("since")
        rewrites[key] = Rewrite(
            key=key,
            stage=row["stage"],
            meaning=row["meaning"],
            feature=feat,
            since=(
                _since(since, f"libbpf_rewrites.{key}")
                if since is not None
                else (feats[feat].since if feat is not None else None)
            ),
            libbpf_probe=row.get("libbpf_probe"),
            helpers=MappingProxyType(dict(row.get("helpers") or {})),
        )

    sd = raw["section_defs"]
    defs = tuple(
        SectionDef(
            sec=row["sec"],
            prog_type=row["prog_type"],
            attach_type=row["attach_type"],
            flags=frozenset(row["flags"]),
            auto_attach=bool(row["auto_attach"]),
        )
        for row in sd["table"]
    )
    for d in defs:
        if d.prog_type not in by_name["program_type"]:
            raise ValueError(f"section_defs {d.sec!r}: unknown program type {d.prog_type!r}")
        if d.attach_type is not None and d.attach_type not in by_name["attach_type"]:
            raise ValueError(f"section_defs {d.sec!r}: unknown attach type {d.attach_type!r}")

    return _Db(
        by_id=MappingProxyType({k: MappingProxyType(v) for k, v in by_id.items()}),
        by_name=MappingProxyType({k: MappingProxyType(v) for k, v in by_name.items()}),
        section_defs=defs,
        section_defs_version=str(sd["libbpf_version"]),
        rewrites=MappingProxyType(rewrites),
    )


def load_raw() -> dict[str, Any]:
    """The parsed YAML as is, for checks the indexes cannot see (e.g. duplicate rows)."""
    text = resources.files(__package__).joinpath("data/features.yaml").read_text("utf-8")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data = yaml.load(text, Loader=loader)
    if not isinstance(data, dict):
        raise ValueError("features.yaml: top level must be a mapping")
    return data


@functools.cache
def _db() -> _Db:
    # Parsed once per process: analysis looks up hundreds of ids per object.
    return _build(load_raw())


def _normalize(kind: str, name: str) -> str:
    key = name.strip().lower()
    prefix = _UAPI_PREFIX.get(kind)
    if prefix and key.startswith(prefix):
        key = key[len(prefix) :]
    if kind == "helper" and not key.startswith("bpf_"):
        key = "bpf_" + key
    if kind == "map_type" and key.endswith("_deprecated"):
        # uapi renamed cgroup_storage to *_DEPRECATED; libbpf and users keep the old name.
        key = key[: -len("_deprecated")]
    return key


def _lookup(kind: str, id_or_name: int | str) -> Feature | None:
    db = _db()
    if isinstance(id_or_name, bool):
        return None
    if isinstance(id_or_name, int):
        return db.by_id.get(kind, {}).get(id_or_name)
    return db.by_name[kind].get(_normalize(kind, id_or_name))


def helper(id_or_name: int | str) -> Feature | None:
    """A helper by call-instruction id (113) or name ("bpf_loop", "loop", "BPF_FUNC_loop")."""
    return _lookup("helper", id_or_name)


def map_type(id_or_name: int | str) -> Feature | None:
    """A map type by uapi value (27) or name ("ringbuf", "BPF_MAP_TYPE_RINGBUF")."""
    return _lookup("map_type", id_or_name)


def program_type(id_or_name: int | str) -> Feature | None:
    """A program type by uapi value (26) or name ("tracing", "BPF_PROG_TYPE_TRACING")."""
    return _lookup("program_type", id_or_name)


def attach_type(id_or_name: int | str) -> Feature | None:
    """An attach type by uapi value (24) or name ("trace_fentry", "BPF_TRACE_FENTRY")."""
    return _lookup("attach_type", id_or_name)


def link_type(id_or_name: int | str) -> Feature | None:
    """A link type by uapi value (1) or name ("raw_tracepoint", "BPF_LINK_TYPE_XDP")."""
    return _lookup("link_type", id_or_name)


def kfunc(name: str) -> Feature | None:
    """A kfunc by its exact BTF name; kfuncs have no stable id, only a name."""
    return _db().by_name["kfunc"].get(name)


def feature(key: str) -> Feature | None:
    """An ISA/BTF/loader feature by its key in the data ("atomics", "bounded_loops")."""
    return _db().by_name["feature"].get(key)


def entries(kind: str) -> Iterator[Feature]:
    """Every fact of one kind (see KINDS), for reports and whole-table checks."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
    return iter(_db().by_name[kind].values())


def section_def(section_name: str) -> SectionDef | None:
    """The libbpf 1.5 section_defs[] row libbpf would pick for an ELF section name.

    First match in table order, exactly as libbpf's find_sec_def(): the table lists
    "sk_reuseport/migrate" before "sk_reuseport" so the first hit is also the most
    specific one. None means libbpf 1.5 cannot guess the program type.
    """
    name = section_name[1:] if section_name.startswith("?") else section_name
    for d in _db().section_defs:
        if d.matches(name):
            return d
    return None


def section_defs() -> tuple[SectionDef, ...]:
    """Every libbpf 1.5 section_defs[] row, in table order (for near-miss suggestions)."""
    return _db().section_defs


def section_defs_libbpf_version() -> str:
    """The libbpf release the section table copies, since other releases differ."""
    return _db().section_defs_version


def libbpf_rewrite(key: str) -> Rewrite | None:
    """One libbpf rewrite fact by key ("probe_read_kernel_fallback")."""
    return _db().rewrites.get(key)


def libbpf_rewrites() -> tuple[Rewrite, ...]:
    """All libbpf rewrite facts, in file order."""
    return tuple(_db().rewrites.values())
