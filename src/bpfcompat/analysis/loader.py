"""What an object needs from its loader: the steps a project's own loader performs before
load that a generic libbpf open-and-load does not, each with the manifest lines that
declare the step to bpfcompat.

A failure caused by a missing step blames the loader contract, not the kernel, so these
are found statically first: maps sized at run time, attach targets chosen at run time,
sections only another loader can type, freplace targets, struct_ops types, and the
kconfig/.rodata values a loader or libbpf fills in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bpfcompat.analysis import features as F
from bpfcompat.analysis.insns import Uses
from bpfcompat.analysis.kernelset import KernelSet
from bpfcompat.analysis.objfile import MapDef, ObjectFile
from bpfcompat.vm.kbtf import KernelNames

PERF_MAX_STACK_DEPTH = 127  # include/uapi/linux/perf_event.h: frames of one stack trace
STACK_TRACE_VALUE_SIZE = PERF_MAX_STACK_DEPTH * 8  # u64 per frame

# Map types (uapi values) for which a zero in the compiled definition is not a loader step.
_STORAGE = {19, 21, 24, 28, 29, 32}  # cgroup/percpu cgroup/sk/inode/task/cgrp storage
_ZERO_MAX_OK = _STORAGE | {4, 26}  # perf_event_array: libbpf uses the CPU count; struct_ops
# Key and value sizes libbpf 1.5 leaves as compiled (it sets value_size 4 only for maps
# declared with `values`: prog arrays and maps-of-maps): zero is valid only for these.
_ZERO_KEY_OK = {22, 23, 26, 27, 30, 31, 33}  # queue, stack, struct_ops, ringbufs, bloom, arena
_ZERO_VALUE_OK = {26, 27, 31, 33}
_PER_CPU = {5, 6, 10, 12, 13}  # percpu hash/array, lru percpu hash, maps-of-maps
# Sizes the kernel fixes for fd and index maps (4-byte index or fd). cilium/ebpf fills
# them in when a definition leaves them 0; libbpf does not.
_KEY_4 = {3, 4, 8, 12, 14, 15, 16, 17, 20, 24, 28, 29, 32}
_VALUE_4 = {3, 4, 8, 12, 13, 17}
STACK_TRACE, RINGBUF, PROG_ARRAY, STRUCT_OPS = 7, 27, 3, 26

# Where libbpf looks up each BTF-attached section's target in kernel BTF.
_TARGET_LOOKUP: dict[str, tuple[str, str]] = {
    "trace_fentry": ("funcs", ""),
    "trace_fexit": ("funcs", ""),
    "modify_return": ("funcs", ""),
    "lsm_mac": ("funcs", "bpf_lsm_"),
    "lsm_cgroup": ("funcs", "bpf_lsm_"),
    "trace_raw_tp": ("typedefs", "btf_trace_"),
    "trace_iter": ("funcs", "bpf_iter_"),
}
_PLACEHOLDER = re.compile(
    r"^(?:_*(?:dummy|stub|placeholder|fake|nop|noop|foo|bar|baz|todo)(?:_.*)?|.*_(?:dummy|stub|placeholder))$",
    re.IGNORECASE,
)
# Section names other loaders give programs that libbpf 1.5 has no rule for.
_OTHER_LOADERS: tuple[tuple[re.Pattern[str], str, str | None, str], ...] = (
    (re.compile(r"^(?:from|to)-"), "sched_cls", None, "Cilium's tc program names"),
    (re.compile(r"^(?:ingress|egress)$"), "sched_cls", None, "tc programs loaded by iproute2"),
    (re.compile(r"^\d+/\d+$"), "", None, "iproute2's tail-call sections (__section_tail)"),
)
_SET_TARGET = "the function the loader attaches it to (or autoload: false)"
_VIRTUAL_KCONFIG = ("LINUX_KERNEL_VERSION", "LINUX_HAS_BPF_COOKIE", "LINUX_HAS_SYSCALL_WRAPPER")


@dataclass
class Finding:
    kind: str
    subject: str
    why: str
    level: str  # "required": fails everywhere without it; "kernel": some kernels; "info"
    manifest: dict[str, Any] = field(default_factory=dict)
    manifest_lines: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    declared_in: str | None = None  # the artifact's manifest already declares the step

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "level": self.level,
            "why": self.why,
            "manifest": self.manifest,
            "manifest_lines": self.manifest_lines,
            "declared_in": self.declared_in,
            **({"detail": self.detail} if self.detail else {}),
        }


@dataclass(frozen=True)
class DeclaredManifest:
    """The artifact's manifest as the caller read it (a matrix.manifest Manifest), or why
    it could not be read: the findings are marked with what it declares."""

    where: str
    manifest: Any = None
    error: str | None = None


def mark_declared(findings: list[Finding], manifest: Any, where: str) -> None:
    """Set `declared_in` on findings whose every manifest key the artifact's manifest sets
    (a program it does not load needs nothing else). `manifest` is a matrix.manifest
    Manifest; keys it does not model yet never count as declared."""
    maps = {m.name: m for m in manifest.maps}
    programs = {p.name: p for p in manifest.programs}
    for finding in findings:
        frag = finding.manifest
        if not frag or frag.get("globals"):
            continue
        ok = True
        for entry in frag.get("maps", []):
            fixup = maps.get(entry["name"])
            ok = (
                ok
                and fixup is not None
                and all(getattr(fixup, key, None) is not None for key in entry if key != "name")
            )
        for entry in frag.get("programs", []):
            prog = programs.get(entry["name"])
            ok = (
                ok
                and prog is not None
                and (
                    prog.autoload is False
                    or all(getattr(prog, key, None) is not None for key in entry if key != "name")
                )
            )
        if ok:
            finding.declared_in = where


def scalar(value: Any) -> str:
    """One YAML scalar: plain where that is unambiguous, else JSON (valid YAML) quoting."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", text) and text.lower() not in (
        "true", "false", "yes", "no", "on", "off", "null", "y", "n",
    ):  # fmt: skip
        return text
    return json.dumps(text)


def entry_lines(section: str, entry: dict[str, Any], notes: dict[str, str]) -> list[str]:
    """A `maps:`/`programs:` list entry as YAML lines, with a comment after chosen keys."""
    lines = [f"{section}:"]
    first = True
    for key, value in entry.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k}: {scalar(v)}" for k, v in value.items())
            text = f"{key}: {{{inner}}}"
        else:
            text = f"{key}: {scalar(value)}"
        lead = "  - " if first else "    "
        first = False
        lines.append(lead + text + (f"  # {notes[key]}" if key in notes else ""))
    return lines


def program_types(obj: ObjectFile) -> dict[str, tuple[str | None, str | None, str]]:
    """Per program: (program type, expected attach type, "libbpf" | "suggested" | "unknown")."""
    libbpf_types = {}
    for prog in obj.programs:
        sdef = F.section_def(prog.section)
        if sdef is not None:
            libbpf_types[prog.name] = (sdef.prog_type, sdef.attach_type, "libbpf")
    common = {t[0] for t in libbpf_types.values()}
    out: dict[str, tuple[str | None, str | None, str]] = dict(libbpf_types)
    for prog in obj.programs:
        if prog.name in out:
            continue
        guess = suggest_type(prog.section)
        if guess is None or not guess[0]:
            if len(common) == 1:  # a tail-call target must match its caller's type
                out[prog.name] = (next(iter(common)), None, "suggested")
            else:
                out[prog.name] = (None, None, "unknown")
        else:
            out[prog.name] = (guess[0], guess[1], "suggested")
    return out


def suggest_type(section: str) -> tuple[str, str | None, str] | None:
    """(program type, attach type, why) for a section libbpf 1.5 cannot type, from the
    longest libbpf rule whose name starts the section or another loader's convention."""
    name = section.lstrip("?")
    for pattern, ptype, atype, why in _OTHER_LOADERS:
        if pattern.search(name):
            return ptype, atype, why
    best = None
    for d in F.section_defs():
        base = d.sec.rstrip("+/")
        fits = name.startswith(base) and (len(name) == len(base) or not name[len(base)].isalpha())
        if fits and (best is None or len(base) > len(best.sec.rstrip("+/"))):
            best = d
    if best is None:
        return None
    return best.prog_type, best.attach_type, f'libbpf\'s rule for "{best.sec.rstrip("+")}"'


def loader_setup(
    obj: ObjectFile,
    uses: dict[str, Uses],
    types: dict[str, tuple[str | None, str | None, str]],
    kernels: KernelSet | None,
) -> list[Finding]:
    out: list[Finding] = []
    for mdef in obj.maps:
        out += _map_findings(mdef)
    for prog in obj.programs:
        out += _program_findings(obj, prog.name, prog.section, types, kernels)
    out += _struct_ops(obj, kernels)
    out += _externs_and_rodata(obj)
    return out


def _map_findings(mdef: MapDef) -> list[Finding]:
    out: list[Finding] = []
    if mdef.section == "maps":
        out.append(
            Finding(
                "legacy_maps_section",
                mdef.name,
                'defined in SEC("maps") (struct bpf_map_def or iproute2\'s bpf_elf_map), which '
                "libbpf 1.0 and later refuse; it needs the loader it was written for",
                "required",
            )
        )
        return out
    mtype = mdef.type
    if mtype is None:
        return out
    tname = F.map_type(mtype).name if F.map_type(mtype) else f"type {mtype}"
    entry: dict[str, Any] = {"name": mdef.name}
    notes: dict[str, str] = {}
    whys: list[str] = []
    if not mdef.max_entries and mtype not in _ZERO_MAX_OK:
        per_cpu = mtype in _PER_CPU or "cpu" in mdef.name.lower()
        entry["max_entries"] = "cpus" if per_cpu else (262144 if mtype == RINGBUF else 1024)
        notes["max_entries"] = (
            "one slot per possible CPU (what such maps are sized to)"
            if per_cpu
            else "a guess: use the size your loader sets"
        )
        whys.append("max_entries 0: the kernel refuses it, so the loader sets the size")
    has_values = mdef.values_are_programs or mdef.inner is not None
    if not mdef.value_size and mtype not in _ZERO_VALUE_OK and not has_values:
        if mtype == STACK_TRACE:
            entry["value_size"] = STACK_TRACE_VALUE_SIZE
            notes["value_size"] = f"PERF_MAX_STACK_DEPTH ({PERF_MAX_STACK_DEPTH}) x u64"
        elif mtype in _VALUE_4:
            entry["value_size"] = 4
            notes["value_size"] = "the kernel requires 4 (cilium/ebpf fills it in, libbpf not)"
        else:
            entry["value_size"] = 8
            notes["value_size"] = "a guess: use the size your loader sets"
        whys.append("value_size 0: sized by the loader at run time")
    if not mdef.key_size and mtype not in _ZERO_KEY_OK:
        entry["key_size"] = 4
        notes["key_size"] = (
            "the kernel requires 4 (cilium/ebpf fills it in, libbpf not)"
            if mtype in _KEY_4
            else "a guess: use the size your loader sets"
        )
        whys.append("key_size 0: sized by the loader at run time")
    whys += mdef.notes
    inner = mdef.inner
    if inner is not None and inner.type == RINGBUF and not inner.max_entries:
        entry["inner_ringbuf_bytes"] = 8 << 20
        notes["inner_ringbuf_bytes"] = "a guess: the ring buffer size your loader uses"
        whys.append("its inner ring buffer template has max_entries 0")
    elif inner is not None:
        whys += [f"inner map template: {note}" for note in inner.notes]
    if whys:
        declarable = len(entry) > 1  # an inner map's own sizes have no manifest key
        out.append(
            Finding(
                "map_sized_at_runtime",
                mdef.name,
                f"{tname} map: " + "; ".join(whys),
                "required",
                {"maps": [entry]} if declarable else {},
                entry_lines("maps", entry, notes) if declarable else [],
                {"map_type": tname, "guessed": sorted(k for k, v in notes.items() if "guess" in v)},
            )
        )
    if mtype == PROG_ARRAY and not mdef.initial_values:
        out.append(
            Finding(
                "prog_array_filled_by_loader",
                mdef.name,
                "PROG_ARRAY without static slots: the loader inserts tail-call targets at run "
                "time; until then tail calls fall through",
                "info",
            )
        )
    if mdef.pinning:
        out.append(
            Finding(
                "map_pinned",
                mdef.name,
                "pinned by name: libbpf reuses a map pinned under /sys/fs/bpf with the same "
                "name (needs bpffs mounted), so state survives the loader",
                "info",
            )
        )
    return out


def _target(section: str) -> str | None:
    name = section.lstrip("?")
    sdef = F.section_def(name)
    if sdef is None:
        return None
    base = sdef.sec.rstrip("+/")
    return name[len(base) + 1 :] if len(name) > len(base) else ""


def _program_findings(
    obj: ObjectFile,
    prog: str,
    section: str,
    types: dict[str, tuple[str | None, str | None, str]],
    kernels: KernelSet | None,
) -> list[Finding]:
    out: list[Finding] = []
    ptype, atype, source = types[prog]
    sdef = F.section_def(section)
    if section.startswith("?"):
        out.append(
            Finding(
                "autoload_off",
                prog,
                'SEC("?...") turns autoload off: libbpf skips it unless the loader enables it',
                "info",
                {"programs": [{"name": prog, "autoload": False}]},
                entry_lines("programs", {"name": prog, "autoload": False}, {}),
            )
        )
    if sdef is None:
        entry: dict[str, Any] = {"name": prog}
        guess = suggest_type(section)
        if ptype:
            entry["type"] = ptype
        if atype:
            entry["expected_attach_type"] = atype
        why = f"libbpf {F.section_defs_libbpf_version()} has no rule for section {section!r}"
        if ptype:
            how = guess[2] if guess and guess[0] else "the type of the object's other programs"
            why += f"; {ptype} suggested from {how}"
        else:
            entry["type"] = "PROG_TYPE"
            why += "; set the program type the project's loader uses"
        out.append(
            Finding(
                "untypable_section",
                prog,
                why,
                "required",
                {"programs": [entry]},
                entry_lines("programs", entry, {"type": "as the project's loader sets it"}),
                {"section": section, "suggested_by": source},
            )
        )
        return out
    target = _target(section)
    if ptype == "ext":
        entry = {
            "name": prog,
            "attach_target": target or "FUNCTION",
            "attach_target_program": {"object": "TARGET.bpf.o", "program": "PROGRAM"},
        }
        out.append(
            Finding(
                "freplace_target",
                prog,
                f"freplace replaces {('function ' + repr(target)) if target else 'a function'} "
                "of another, already loaded BPF program: the loader passes that program",
                "required",
                {"programs": [entry]},
                entry_lines(
                    "programs",
                    entry,
                    {"attach_target_program": "the object and program holding the function"},
                ),
            )
        )
        return out
    lookup = _TARGET_LOOKUP.get(atype or "")
    if lookup is None or target is None:
        return out
    if target == "":
        entry = {"name": prog, "attach_target": "FUNCTION"}
        out.append(
            Finding(
                "attach_target_unset",
                prog,
                f'SEC("{section}") names no target: the loader sets it before load '
                "(bpf_program__set_attach_target), or does not load the program",
                "required",
                {"programs": [entry]},
                entry_lines("programs", entry, {"attach_target": _SET_TARGET}),
            )
        )
        return out
    out += _check_target(prog, section, target, lookup, kernels)
    return out


def _check_target(
    prog: str, section: str, target: str, lookup: tuple[str, str], kernels: KernelSet | None
) -> list[Finding]:
    if ":" in target:  # "module:function": module BTF, which the matrix check does not read
        return []
    kind, prefix = lookup
    symbol = prefix + target

    def present(names: KernelNames) -> bool:
        return symbol in getattr(names, kind)

    checked = kernels is not None and kernels.checked
    have, lack = kernels.split(present) if checked and kernels else ([], [])
    looks_fake = bool(_PLACEHOLDER.match(target))
    entry = {"name": prog, "attach_target": "FUNCTION"}
    if (checked and not have) or looks_fake:
        where = (
            f"exists in no kernel of the matrix ({', '.join(lack)})"
            if checked and not have
            else "looks like a placeholder (not checked against kernel BTF)"
            if not checked
            else f"looks like a placeholder, though {', '.join(have)} have it"
        )
        return [
            Finding(
                "attach_target_placeholder",
                prog,
                f"{section}: {symbol} {where}; the loader probably sets the real target at run "
                "time (a kernel function, or a function of a loaded BPF program, with "
                "bpf_program__set_attach_target), or the program is not meant to load",
                "required" if not have else "info",
                {"programs": [entry]},
                entry_lines("programs", entry, {"attach_target": _SET_TARGET}),
                {"target": symbol, "kernels_with": have, "kernels_without": lack},
            )
        ]
    if lack:
        return [
            Finding(
                "attach_target_missing",
                prog,
                f"{symbol} is not in the BTF of {', '.join(lack)} (present in {', '.join(have)}): "
                "loading fails there",
                "kernel",
                detail={"target": symbol, "kernels_with": have, "kernels_without": lack},
            )
        ]
    return []


def _struct_ops(obj: ObjectFile, kernels: KernelSet | None) -> list[Finding]:
    out: list[Finding] = []
    checked = kernels is not None and kernels.checked
    for mdef in obj.maps:
        if mdef.type != STRUCT_OPS or not mdef.value_type:
            continue
        tname = mdef.value_type
        present = _struct_ops_check(tname)
        have, lack = kernels.split(present) if checked and kernels else ([], [])
        if not checked:
            where, level = "kernels not checked (no kernel BTF cached)", "info"
        elif not lack:
            where, level = f"every kernel of the matrix has it ({', '.join(have)})", "info"
        else:
            where = (
                f"in {', '.join(have) or 'no kernel'}, not in {', '.join(lack)}"
                " (vmlinux BTF; a module that registers it is not seen here)"
            )
            level = "kernel" if have else "required"
        out.append(
            Finding(
                "struct_ops",
                mdef.name,
                f"struct_ops map implementing struct {tname}: {where}",
                level,
                detail={
                    "struct": tname,
                    "kernels_with": have,
                    "kernels_without": lack,
                    "programs": mdef.initial_values,
                },
            )
        )
    return out


def _struct_ops_check(tname: str) -> Callable[[KernelNames], bool]:
    """libbpf needs the struct and the kernel's wrapper type bpf_struct_ops_<struct>."""

    def present(names: KernelNames) -> bool:
        return tname in names.structs and f"bpf_struct_ops_{tname}" in names.structs

    return present


def _externs_and_rodata(obj: ObjectFile) -> list[Finding]:
    out: list[Finding] = []
    for ext in obj.externs:
        if ext.section != ".kconfig":
            continue
        source = (
            "libbpf computes it itself"
            if ext.name in _VIRTUAL_KCONFIG
            else "libbpf reads it from the running kernel's config (/proc/config.gz or "
            "/boot/config-$(uname -r)) at load time"
            + ("; __weak: 0 when unset" if ext.weak else "; not __weak: load fails if unset")
        )
        out.append(
            Finding(
                "kconfig_extern",
                ext.name,
                f"__kconfig {ext.type} {ext.name}: {source}",
                "info",
                detail={"type": ext.type, "weak": ext.weak},
            )
        )
    for var in obj.globals:
        if not var.const_volatile or not var.section.startswith(".rodata"):
            continue
        value = var.default if var.default is not None else 0
        out.append(
            Finding(
                "rodata_config",
                var.name,
                f"{var.type} in {var.section} (compiled default {value!r}): "
                "loaders usually set it before load; set it here to test another value",
                "info",
                {"globals": {var.name: value}},
                ["globals:", f"  {var.name}: {scalar(value)}"],
                {"type": var.type, "size": var.size, "default": var.default},
            )
        )
    return out
