"""A compiled BPF object as libbpf sees it before loading: programs, maps, globals, externs.

Everything is read from the file alone (ELF sections, symbols, relocations, BTF, BTF.ext)
with the bounded readers of the validator package. Each part is read on its own, so a
missing or corrupt .BTF still leaves the programs, helpers and licence readable; what
could not be read is recorded in `problems`, never raised.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpfcompat.validator import btf as B
from bpfcompat.validator import elf as E
from bpfcompat.validator.btfext import BtfExt, parse_ext

MAX_OBJECT_BYTES = 256 << 20  # larger than any real BPF object; refuse rather than thrash
MAX_MAP_NESTING = 2  # map-in-map definitions: outer and inner

# Map definition members whose value is encoded as the element count of an array pointer
# (__uint(name, value) in bpf_helpers.h), as libbpf's parse_btf_map_def() reads them.
_UINT_FIELDS = (
    "type", "max_entries", "map_flags", "numa_node", "key_size", "value_size", "pinning",
    "map_extra",
)  # fmt: skip
DATA_SECTION_PREFIXES = (".data", ".rodata", ".bss")
STRUCT_OPS_MAP_TYPE = 26  # BPF_MAP_TYPE_STRUCT_OPS


@dataclass
class Function:
    """One STT_FUNC symbol in an executable section: a program or a subprogram."""

    name: str
    section: str
    sec_index: int
    offset: int
    size: int
    is_program: bool
    weak: bool = False


@dataclass
class MapDef:
    name: str
    section: str  # ".maps" (BTF-defined) or the legacy "maps" section
    type: int | None = None
    key_size: int | None = None
    value_size: int | None = None
    max_entries: int | None = None
    map_flags: int = 0
    pinning: int = 0
    numa_node: int | None = None
    map_extra: int | None = None
    key_type: str | None = None
    value_type: str | None = None
    value_type_id: int | None = None
    inner: MapDef | None = None
    values_are_programs: bool = False  # PROG_ARRAY with __array(values, int (void *))
    initial_values: list[str] = field(default_factory=list)  # static slots (.rel.maps)
    notes: list[str] = field(default_factory=list)  # what libbpf cannot size, and why


@dataclass
class GlobalVar:
    name: str
    section: str
    type: str
    size: int
    offset: int
    linkage: str
    const_volatile: bool
    default: Any = None  # int/bool/str for scalars and char arrays, None otherwise


@dataclass
class Extern:
    name: str
    section: str  # ".kconfig" or ".ksyms"
    kind: str  # "func" (kfunc), "var" (typed or untyped ksym, kconfig value)
    type: str
    typed: bool
    weak: bool


@dataclass
class ObjectFile:
    path: str
    data: bytes
    headers: list[tuple[Any, ...]]
    symbols: list[tuple[Any, ...]] = field(default_factory=list)
    relocs: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)
    btf: B.Btf | None = None
    btf_ext: BtfExt | None = None
    functions: list[Function] = field(default_factory=list)
    maps: list[MapDef] = field(default_factory=list)
    globals: list[GlobalVar] = field(default_factory=list)
    externs: list[Extern] = field(default_factory=list)
    license: str | None = None
    problems: list[str] = field(default_factory=list)
    _starts: dict[int, list[int]] = field(default_factory=dict)
    _funcs_by_sec: dict[int, list[Function]] = field(default_factory=dict)

    @property
    def section_names(self) -> list[str]:
        return [h[0] for h in self.headers[1:]]

    def section_index(self, name: str) -> int | None:
        for index, h in enumerate(self.headers):
            if index and h[0] == name:
                return index
        return None

    def section_data(self, index: int) -> bytes:
        return E.section_bytes(self.data, self.headers[index])

    @property
    def programs(self) -> list[Function]:
        return [f for f in self.functions if f.is_program]

    def function_at(self, sec_index: int, offset: int) -> Function | None:
        """The function of a section whose code contains `offset` (a call or callback target)."""
        starts = self._starts.get(sec_index)
        if not starts:
            return None
        pos = bisect.bisect_right(starts, offset) - 1
        if pos < 0:
            return None
        func = self._funcs_by_sec[sec_index][pos]
        return func if offset < func.offset + max(func.size, 8) else None

    def map_named(self, name: str) -> MapDef | None:
        return next((m for m in self.maps if m.name == name), None)


def read_object(path: Path, data: bytes | None = None) -> ObjectFile:
    """Read everything readable; ValueError only if the file is no BPF ELF object at all.
    `data`: the file's bytes when the caller already holds them (the run reads each
    artifact once, so every stage judges the same bytes)."""
    if data is None:
        try:
            size = path.stat().st_size
            if size > MAX_OBJECT_BYTES:
                raise ValueError(f"{size} bytes is larger than any BPF object ({MAX_OBJECT_BYTES})")
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(str(exc.strerror or exc)) from None
    try:
        headers = E.elf_section_headers(data)
    except (ValueError, struct.error) as exc:
        raise ValueError(str(exc)) from None
    obj = ObjectFile(str(path), data, headers)
    steps = (_read_symbols, _read_license, _read_btf, _read_functions, _read_maps, _read_datasecs)
    for step in steps:
        try:
            step(obj)
        except (ValueError, struct.error) as exc:
            obj.problems.append(f"{step.__name__.removeprefix('_read_')}: {exc}")
    return obj


def _read_symbols(obj: ObjectFile) -> None:
    obj.symbols = E.elf_symbols(obj.data, obj.headers)
    nsyms = len(obj.symbols)
    for h in obj.headers:
        if h[1] != E.SHT_REL:
            continue
        target = h[6]
        if not 0 < target < len(obj.headers):
            raise ValueError(f"relocation section {h[0]!r} targets invalid section #{target}")
        if not _relocations_matter(obj.headers[target]):
            continue  # DWARF and BTF relocations: often most of them, never needed here
        relocs = E.elf_relocations(obj.data, h)
        if relocs and max(sym for _off, sym, _t in relocs) >= nsyms:
            raise ValueError(f"relocation section {h[0]!r} names a symbol beyond the table")
        obj.relocs.setdefault(target, []).extend(relocs)
    for relocs in obj.relocs.values():
        relocs.sort()


def _relocations_matter(target: tuple[Any, ...]) -> bool:
    """Code (calls, map and global references), map definitions and struct_ops slots."""
    return (
        bool(target[2] & E.SHF_EXECINSTR)
        or target[0] in (".maps", "maps")
        or (target[0].startswith(".struct_ops"))
    )


def _read_license(obj: ObjectFile) -> None:
    index = obj.section_index("license")
    if index is None:
        return
    raw = obj.section_data(index)[:128]
    obj.license = raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _read_btf(obj: ObjectFile) -> None:
    index = obj.section_index(".BTF")
    if index is None:
        return
    obj.btf = B.parse(obj.section_data(index))
    ext = obj.section_index(".BTF.ext")
    if ext is not None:
        btf_ext = parse_ext(obj.section_data(ext), obj.btf)
        # Decoded now, so that a corrupt record is reported here and not by a later reader.
        btf_ext.func_info  # noqa: B018
        btf_ext.core_relos  # noqa: B018
        obj.btf_ext = btf_ext


def _read_functions(obj: ObjectFile) -> None:
    """Programs are the functions of executable sections other than .text (libbpf's rule)."""
    seen: set[int] = set()
    for _name, _value, _size, _bind, stype, shndx in obj.symbols:
        if stype == E.STT_FUNC and 0 < shndx < len(obj.headers):
            seen.add(shndx)
    for name, value, size, bind, stype, shndx in obj.symbols:
        if stype != E.STT_FUNC or not 0 < shndx < len(obj.headers):
            continue
        h = obj.headers[shndx]
        if not h[2] & E.SHF_EXECINSTR or value + size > h[4]:
            continue
        obj.functions.append(
            Function(name, h[0], shndx, value, size, h[0] != ".text", bind == E.STB_WEAK)
        )
    for index, h in enumerate(obj.headers):
        # Objects without function symbols (hand-written or stripped): one program per section.
        if index and h[2] & E.SHF_EXECINSTR and h[4] and h[0] != ".text" and index not in seen:
            obj.functions.append(Function(h[0], h[0], index, 0, h[4], True))
    obj.functions.sort(key=lambda f: (f.sec_index, f.offset))
    for f in obj.functions:
        obj._funcs_by_sec.setdefault(f.sec_index, []).append(f)
    obj._starts = {k: [f.offset for f in v] for k, v in obj._funcs_by_sec.items()}


def _symbol_map(obj: ObjectFile, sec_index: int) -> dict[int, str]:
    return {
        value: name
        for name, value, _size, _bind, stype, shndx in obj.symbols
        if shndx == sec_index and stype in (E.STT_OBJECT, E.STT_NOTYPE) and name
    }


def _read_maps(obj: ObjectFile) -> None:
    legacy = obj.section_index("maps")
    if legacy is not None:
        _read_legacy_maps(obj, legacy)
    index = obj.section_index(".maps")
    if index is None:
        return
    btf = obj.btf
    if btf is None:
        raise ValueError("the object has a .maps section but no .BTF to describe it")
    secs = btf.find(".maps", B.DATASEC)
    if not secs:
        raise ValueError(".BTF has no DATASEC for .maps")
    slots = _map_slot_values(obj, index)
    # A compiler leaves DATASEC offsets 0 (libbpf fills them in from the symbols).
    where = {name: value for value, name in _symbol_map(obj, index).items()}
    for var_id, _offset, _size in btf.datasec_vars(secs[0]):
        if btf.kind(var_id) != B.VAR:
            continue
        name = btf.name(var_id)
        try:  # one malformed definition must not hide the others
            mdef = parse_btf_map(btf, btf.size_or_type(var_id), name, 0)
        except ValueError as exc:
            obj.problems.append(f"map {name!r}: {exc}")
            continue
        mdef.initial_values = slots.get(where.get(name, -1), [])
        obj.maps.append(mdef)


def _map_slot_values(obj: ObjectFile, index: int) -> dict[int, list[str]]:
    """Statically initialised slots of maps-of-maps and PROG_ARRAYs, by map offset."""
    out: dict[int, list[str]] = {}
    starts = sorted(_symbol_map(obj, index))
    for offset, sym, _type in obj.relocs.get(index, []):
        pos = bisect.bisect_right(starts, offset) - 1
        if pos >= 0 and 0 < sym < len(obj.symbols):
            out.setdefault(starts[pos], []).append(obj.symbols[sym][0])
    return out


def parse_btf_map(btf: B.Btf, struct_id: int, name: str, depth: int) -> MapDef:
    """A BTF-defined map, read the way libbpf's parse_btf_map_def() reads it."""
    mdef = MapDef(name=name, section=".maps")
    sid = btf.resolve(struct_id)
    if btf.kind(sid) != B.STRUCT:
        raise ValueError(f"map {name!r}: definition is a {B.KIND_NAMES[btf.kind(sid)]}")
    for mname, mtype, _off, _bits in btf.members(sid):
        if mname in _UINT_FIELDS:
            ptr = btf.resolve(mtype)
            if btf.kind(ptr) != B.PTR:
                raise ValueError(f"map {name!r}: {mname} is not declared with __uint()")
            arr = btf.resolve(btf.size_or_type(ptr))
            if btf.kind(arr) != B.ARRAY:
                raise ValueError(f"map {name!r}: {mname} is not declared with __uint()")
            value = btf.array(arr)[2]
            if mname == "type":
                mdef.type = value
            elif mname == "map_flags":
                mdef.map_flags = value
            elif mname == "pinning":
                mdef.pinning = value
            else:
                setattr(mdef, mname, value)
        elif mname in ("key", "value"):
            ptr = btf.resolve(mtype)
            if btf.kind(ptr) != B.PTR:
                raise ValueError(f"map {name!r}: {mname} is not declared with __type()")
            target = btf.size_or_type(ptr)
            setattr(mdef, f"{mname}_type", btf.render(target))
            try:
                setattr(mdef, f"{mname}_size", btf.size_of(target))
            except ValueError:  # e.g. a struct only declared: libbpf cannot size it either
                mdef.notes.append(f"{mname} type {btf.render(target)} has no known size")
            if mname == "value":
                mdef.value_type_id = target
        elif mname == "values":
            arr = btf.resolve(mtype)
            if btf.kind(arr) != B.ARRAY:
                raise ValueError(f"map {name!r}: values is not an array")
            ptr = btf.resolve(btf.array(arr)[0])
            if btf.kind(ptr) != B.PTR:
                raise ValueError(f"map {name!r}: values is not an array of pointers")
            inner = btf.resolve(btf.size_or_type(ptr))
            if btf.kind(inner) == B.FUNC_PROTO:
                mdef.values_are_programs = True
            elif depth + 1 < MAX_MAP_NESTING:
                mdef.inner = parse_btf_map(btf, inner, f"{name}.inner", depth + 1)
            else:
                raise ValueError(f"map {name!r}: maps nested deeper than {MAX_MAP_NESTING}")
    return mdef


def _read_legacy_maps(obj: ObjectFile, index: int) -> None:
    """SEC("maps"): struct bpf_map_def (libbpf < 1.0) or iproute2's struct bpf_elf_map,
    which share their first five u32 fields (type, key, value, max entries, flags)."""
    raw = obj.section_data(index)
    end = "<" if obj.data[5] == 1 else ">"
    for offset, name in sorted(_symbol_map(obj, index).items()):
        if offset + 20 > len(raw):
            raise ValueError(f"legacy map {name!r} lies beyond the maps section")
        mtype, key, value, entries, flags = struct.unpack_from(end + "5I", raw, offset)
        obj.maps.append(MapDef(name, "maps", mtype, key, value, entries, flags))


def _read_datasecs(obj: ObjectFile) -> None:
    btf = obj.btf
    if btf is None:
        return
    weak = {s[0] for s in obj.symbols if s[3] == E.STB_WEAK}
    for sec_id in btf.ids(B.DATASEC):
        sec = btf.name(sec_id)
        if sec in (".kconfig", ".ksyms"):
            for tid, _off, _size in btf.datasec_vars(sec_id):
                kind = btf.kind(tid)
                target = btf.size_or_type(tid)
                typed = btf.resolve(target) != 0 if kind == B.VAR else True
                obj.externs.append(
                    Extern(
                        btf.name(tid),
                        sec,
                        "func" if kind == B.FUNC else "var",
                        btf.render(target),
                        typed,
                        btf.name(tid) in weak,
                    )
                )
        elif sec.startswith(DATA_SECTION_PREFIXES):
            _read_globals(obj, btf, sec_id, sec)
        elif sec.startswith(".struct_ops"):
            _read_struct_ops(obj, btf, sec_id, sec)


def _read_struct_ops(obj: ObjectFile, btf: B.Btf, sec_id: int, sec: str) -> None:
    """SEC(".struct_ops") variables: each is a struct_ops map whose value type is the kernel
    struct it implements, its function pointers relocated against programs."""
    index = obj.section_index(sec)
    progs = _map_slot_values(obj, index) if index is not None else {}
    where = (
        {name: value for value, name in _symbol_map(obj, index).items()}
        if index is not None
        else {}
    )
    for tid, _off, _size in btf.datasec_vars(sec_id):
        if btf.kind(tid) != B.VAR:
            continue
        vtype = btf.size_or_type(tid)
        name = btf.name(tid)
        obj.maps.append(
            MapDef(
                name=name,
                section=sec,
                type=STRUCT_OPS_MAP_TYPE,
                max_entries=1,
                value_type=btf.name(btf.resolve(vtype)) or btf.render(vtype),
                value_type_id=vtype,
                initial_values=progs.get(where.get(name, -1), []),
            )
        )


def _read_globals(obj: ObjectFile, btf: B.Btf, sec_id: int, sec: str) -> None:
    index = obj.section_index(sec)
    raw: bytes | None = None
    symbols: dict[str, tuple[int, int]] = {}
    if index is not None:
        h = obj.headers[index]
        raw = bytes(min(h[4], 1 << 20)) if h[1] == E.SHT_NOBITS else obj.section_data(index)
        symbols = {s[0]: (s[1], s[2]) for s in obj.symbols if s[5] == index and s[0]}
    end = "<" if obj.data[5] == 1 else ">"
    for tid, offset, size in btf.datasec_vars(sec_id):
        if btf.kind(tid) != B.VAR:
            continue
        vtype = btf.size_or_type(tid)
        quals = btf.qualifiers(vtype)
        # A compiler leaves DATASEC offsets 0 (libbpf fills them in from the symbols).
        offset, size = symbols.get(btf.name(tid), (offset, size))
        size = size or btf.size_of(vtype)
        obj.globals.append(
            GlobalVar(
                name=btf.name(tid),
                section=sec,
                type=btf.render(vtype),
                size=size,
                offset=offset,
                linkage=B.LINKAGE_NAMES[min(btf.linkage(tid), 2)],
                const_volatile={"const", "volatile"} <= quals,
                default=_default_value(btf, vtype, raw, offset, size, end),
            )
        )


def _default_value(
    btf: B.Btf, tid: int, raw: bytes | None, offset: int, size: int, end: str
) -> Any:
    """The compiled-in value of a scalar or char array (what a loader would override)."""
    if raw is None or offset + size > len(raw) or size == 0:
        return None
    base = btf.resolve(tid)
    kind = btf.kind(base)
    chunk = raw[offset : offset + size]
    if kind in (B.INT, B.ENUM, B.ENUM64) and size in (1, 2, 4, 8):
        encoding = btf.int_info(base)[0] if kind == B.INT else 0
        value = int.from_bytes(chunk, "little" if end == "<" else "big", signed=bool(encoding & 1))
        return bool(value) if encoding & 4 else value
    if kind == B.ARRAY:
        elem = btf.resolve(btf.array(base)[0])
        if btf.kind(elem) == B.INT and btf.size_or_type(elem) == 1:
            return chunk.split(b"\0", 1)[0][:256].decode("utf-8", "replace")
    return None
