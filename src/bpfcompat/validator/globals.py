"""Global variables a loader sets before load (`const volatile` switches, pids, filters).

A value from a manifest is checked against the variable's own BTF type and encoded into
the bytes the object's data section holds at that variable's offset: on the host, so a
wrong type or an out-of-range value is a one-line error before anything boots, and in the
guest, where the bytes are written into libbpf's copy of the section between open and
load. Both use this one definition.
"""

from __future__ import annotations

import struct

from . import btf as B
from .elf import elf_section_headers, elf_sections, elf_symbols

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any

# The sections libbpf turns into maps a loader may write before load.
DATA_PREFIXES = (".rodata", ".data", ".bss")
_INT_FORMATS = {1: "b", 2: "h", 4: "i", 8: "q"}


class GlobalSpec:
    """Where a global lives: its data section, offset and size, and its BTF type."""

    def __init__(self, name: str, section: str, offset: int, size: int, type_id: int) -> None:
        self.name = name
        self.section = section
        self.offset = offset
        self.size = size
        self.type_id = type_id


def object_btf(data: bytes) -> tuple[B.Btf, str]:
    """The object's BTF and its byte order ('<' or '>'); ValueError without one."""
    for name, _type, offset, size in elf_sections(data):
        if name == ".BTF":
            return B.parse(data[offset : offset + size]), "<" if data[5] == 1 else ">"
    raise ValueError("the object has no .BTF section: its globals cannot be found")


def find_global(btf: B.Btf, name: str, data: bytes | None = None) -> GlobalSpec:
    """The variable `name` of a data section; ValueError naming what is wrong.

    The compiler leaves DATASEC offsets at 0 (libbpf fills them in from the ELF symbols
    at open), so with the object's bytes the symbol table gives the real offset."""
    for sec_id in btf.ids(B.DATASEC):
        section = btf.name(sec_id)
        if not section.startswith(DATA_PREFIXES):
            continue
        for var_id, offset, size in btf.datasec_vars(sec_id):
            if btf.kind(var_id) == B.VAR and btf.name(var_id) == name:
                vtype = btf.size_or_type(var_id)
                if data is not None:
                    offset, size = _symbol(data, section, name, (offset, size))
                return GlobalSpec(name, section, offset, size or btf.size_of(vtype), vtype)
    raise ValueError(f"no global variable {name!r} in .rodata/.data/.bss")


def _symbol(data: bytes, section: str, name: str, default: tuple[int, int]) -> tuple[int, int]:
    headers = elf_section_headers(data)
    index = next((i for i, h in enumerate(headers) if i and h[0] == section), None)
    for sym in elf_symbols(data, headers):
        if sym[0] == name and sym[5] == index:
            return sym[1], sym[2]
    return default


def global_names(btf: B.Btf) -> list[str]:
    names = []
    for sec_id in btf.ids(B.DATASEC):
        if btf.name(sec_id).startswith(DATA_PREFIXES):
            names += [btf.name(v) for v, _o, _s in btf.datasec_vars(sec_id)]
    return names


def encode(btf: B.Btf, type_id: int, value: Any, endian: str = "<") -> bytes:
    """The bytes of `value` as the C type `type_id` holds it; ValueError when the value
    does not fit the type (wrong kind, out of range, too long)."""
    tid = btf.resolve(type_id)
    kind = btf.kind(tid)
    spelled = btf.render(type_id)
    if kind == B.INT:
        flags, _bit_off, _bits = btf.int_info(tid)
        size = btf.size_of(tid)
        if flags & 4:  # bool
            if not isinstance(value, bool):
                raise ValueError(f"{spelled} takes true or false, not {value!r}")
            return struct.pack(endian + "B" * size, *([int(value)] + [0] * (size - 1)))
        return _int_bytes(value, size, bool(flags & 1), spelled, endian)
    if kind in (B.ENUM, B.ENUM64):
        size = btf.size_of(tid)
        if isinstance(value, str):
            by_name = dict(btf.enum_values(tid))
            if value not in by_name:
                raise ValueError(f"{spelled} has no enumerator {value!r}")
            value = by_name[value]
        return _int_bytes(value, size, True, spelled, endian, either=True)
    if kind == B.ARRAY:
        elem, _index, count = btf.array(tid)
        elem_id = btf.resolve(elem)
        elem_size = btf.size_of(elem_id)
        if btf.kind(elem_id) == B.INT and elem_size == 1 and isinstance(value, str):
            raw = value.encode("utf-8")
            if len(raw) >= count:
                raise ValueError(f"{spelled} holds at most {count - 1} bytes and a NUL")
            return raw + bytes(count - len(raw))
        if not isinstance(value, list) or len(value) > count:
            raise ValueError(f"{spelled} takes a list of at most {count} values")
        parts = [encode(btf, elem, v, endian) for v in value]
        return b"".join(parts) + bytes(elem_size * (count - len(value)))
    raise ValueError(f"{spelled} cannot be set from a manifest (only numbers, booleans, "
                     "enums, strings and arrays of them)")  # fmt: skip


def _int_bytes(
    value: Any, size: int, signed: bool, spelled: str, endian: str, either: bool = False
) -> bytes:
    """`value` as a `size`-byte integer; `either`: an enum, whose values may use the
    signed or the unsigned range of its size."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{spelled} takes an integer, not {value!r}")
    if size not in _INT_FORMATS:
        raise ValueError(f"{spelled}: a {size}-byte integer cannot be set")
    bits = size * 8
    low = -(1 << (bits - 1)) if signed or either else 0
    high = (1 << bits) - 1 if not signed or either else (1 << (bits - 1)) - 1
    if not low <= value <= high:
        raise ValueError(f"{value} is out of range for {spelled} ({low}..{high})")
    fmt = _INT_FORMATS[size]
    return struct.pack(endian + (fmt if value < 0 else fmt.upper()), value)


def resolve(data: bytes, name: str, value: Any) -> tuple[GlobalSpec, bytes]:
    """Where `name` lives in the object `data` and the bytes `value` becomes there."""
    btf, endian = object_btf(data)
    spec = find_global(btf, name, data)
    raw = encode(btf, spec.type_id, value, endian)
    if len(raw) != spec.size:
        raise ValueError(f"{name}: encodes to {len(raw)} bytes, the variable has {spec.size}")
    return spec, raw
