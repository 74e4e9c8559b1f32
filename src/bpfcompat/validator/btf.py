"""BTF, read with struct alone: what an object (or a kernel) declares.

An object's BTF says which maps it defines, which kernel symbols it expects and which
kernel types its CO-RE relocations touch; a kernel's BTF says which functions and structs it
has. Both sides read it: the host to explain an object without booting anything, the guest
possibly to compare against the running kernel. The input is untrusted, so every offset,
count and type reference is checked and every walk is bounded: a corrupt or hostile blob
raises ValueError (never another exception), and the work is linear in its size.

Types are indexed in one pass (kind, name offset, info, size/type, where the trailing data
starts) and decoded on demand, so that a kernel's several-MB BTF indexes in well under a
second; `type()` decodes one type fully.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any, Iterator

BTF_MAGIC = 0xEB9F
BTF_HEADER_LEN = 24

# enum btf_kind (include/uapi/linux/btf.h), as bpftool prints the kinds.
KIND_NAMES = (
    "UNKN", "INT", "PTR", "ARRAY", "STRUCT", "UNION", "ENUM", "FWD", "TYPEDEF", "VOLATILE",
    "CONST", "RESTRICT", "FUNC", "FUNC_PROTO", "VAR", "DATASEC", "FLOAT", "DECL_TAG",
    "TYPE_TAG", "ENUM64",
)  # fmt: skip
(
    UNKN, INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC,
    FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64,
) = range(20)  # fmt: skip

# Bytes after the 12-byte common header: (fixed, per vlen item).
_TRAILER = {
    INT: (4, 0), PTR: (0, 0), ARRAY: (12, 0), STRUCT: (0, 12), UNION: (0, 12), ENUM: (0, 8),
    FWD: (0, 0), TYPEDEF: (0, 0), VOLATILE: (0, 0), CONST: (0, 0), RESTRICT: (0, 0),
    FUNC: (0, 0), FUNC_PROTO: (0, 8), VAR: (4, 0), DATASEC: (0, 12), FLOAT: (0, 0),
    DECL_TAG: (4, 0), TYPE_TAG: (0, 0), ENUM64: (0, 12),
}  # fmt: skip

# Kinds that only qualify or rename another type (skipped when resolving).
_MODIFIERS = frozenset((TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG))

LINKAGE_NAMES = ("static", "global", "extern")

# The kernel refuses type chains deeper than this (MAX_RESOLVE_DEPTH); so do we, which also
# makes a reference cycle an error instead of a hang.
MAX_DEPTH = 32
MAX_NAME = 4096  # bytes of one string; kernel names are far shorter (KSYM_NAME_LEN)
MAX_RENDER = 512  # characters of a rendered C type
MAX_ACCESS_PARTS = 256  # components of a CO-RE access string ("0:1:2")


def header(data: bytes, what: str) -> tuple[str, int, int]:
    """(struct byte order, version, flags) from a BTF or BTF.ext magic."""
    if len(data) < 8:
        raise ValueError(f"{what}: {len(data)} bytes is too short for a header")
    if data[:2] == b"\x9f\xeb":
        end = "<"
    elif data[:2] == b"\xeb\x9f":
        end = ">"
    else:
        raise ValueError(f"{what}: bad magic {data[:2].hex()} (want 9feb)")
    if data[2] != 1:
        raise ValueError(f"{what}: unsupported version {data[2]}")
    return end, data[2], data[3]


class BtfType:
    """One decoded type. Fields not meaningful for the kind stay None/empty."""

    __slots__ = (
        "component", "encoding", "id", "index_type", "kind", "kind_flag", "linkage", "members",
        "name", "nelems", "size", "type", "vlen",
    )  # fmt: skip

    def __init__(self, tid: int, kind: int, name: str, vlen: int, kind_flag: bool) -> None:
        self.id = tid
        self.kind = kind
        self.name = name
        self.vlen = vlen
        self.kind_flag = kind_flag
        self.size: int | None = None
        self.type: int | None = None
        self.encoding: int | None = None
        self.index_type: int | None = None
        self.nelems: int | None = None
        self.linkage: int | None = None
        self.component: int | None = None
        # STRUCT/UNION: (name, type, bit_offset, bitfield_size); ENUM/ENUM64: (name, value);
        # FUNC_PROTO: (name, type); DATASEC: (type, offset, size).
        self.members: list[tuple[Any, ...]] = []

    @property
    def kind_name(self) -> str:
        return KIND_NAMES[self.kind]

    def __repr__(self) -> str:
        return f"<BtfType [{self.id}] {self.kind_name} {self.name!r}>"


class Btf:
    """A parsed .BTF blob: types indexed by id (0 is void), names decoded on demand."""

    def __init__(self, data: bytes) -> None:
        data = bytes(data)
        end, _version, _flags = header(data, "BTF")
        if len(data) < BTF_HEADER_LEN:
            raise ValueError(f"BTF: {len(data)} bytes is too short for the 24-byte header")
        hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(end + "5I", data, 4)
        if hdr_len < BTF_HEADER_LEN or hdr_len > len(data):
            raise ValueError(f"BTF: header length {hdr_len} is invalid")
        body = len(data) - hdr_len
        for what, off, size in (("type", type_off, type_len), ("string", str_off, str_len)):
            if off + size > body:
                raise ValueError(
                    f"BTF: {what} section ({size} bytes at {off}) extends beyond the blob "
                    f"({body} bytes after the header)"
                )
        if type_off % 4:
            raise ValueError(f"BTF: type section offset {type_off} is not 4-byte aligned")
        if type_off < str_off + str_len and str_off < type_off + type_len:
            raise ValueError("BTF: type and string sections overlap")
        if str_len and data[hdr_len + str_off + str_len - 1] != 0:
            raise ValueError("BTF: string section does not end with a NUL byte")
        if str_len and data[hdr_len + str_off] != 0:
            raise ValueError("BTF: string section does not start with an empty string")
        self.data = data
        self.endian = end
        self.size = hdr_len + max(type_off + type_len, str_off + str_len)
        self._str_start = hdr_len + str_off
        self._str_len = str_len
        self._names: dict[int, str] = {}
        self._by_name: dict[str, list[int]] | None = None
        self._table: dict[int, str] | None = None
        self._index(hdr_len + type_off, type_len)

    def _index(self, start: int, length: int) -> None:
        data, end = self.data, self.endian
        stop = start + length
        kinds = bytearray(1)  # id 0: void
        name_offs = [0]
        infos = [0]
        size_types = [0]
        extras = [0]
        head = struct.Struct(end + "III")
        unpack = head.unpack_from
        trailer = _TRAILER
        str_len = self._str_len
        pos = start
        while pos < stop:
            if pos + 12 > stop:
                raise ValueError(f"BTF: type [{len(kinds)}] is truncated at the section end")
            name_off, info, size_type = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            shape = trailer.get(kind)
            if shape is None:
                raise ValueError(f"BTF: type [{len(kinds)}] has unknown kind {kind}")
            if name_off >= max(str_len, 1):
                raise ValueError(
                    f"BTF: type [{len(kinds)}] name offset {name_off} is outside the strings"
                )
            pos += 12
            extras.append(pos)
            pos += shape[0] + shape[1] * (info & 0xFFFF)
            if pos > stop:
                raise ValueError(f"BTF: type [{len(kinds)}] extends beyond the type section")
            kinds.append(kind)
            name_offs.append(name_off)
            infos.append(info)
            size_types.append(size_type)
        self._kinds = bytes(kinds)
        self._name_offs = name_offs
        self._infos = infos
        self._size_types = size_types
        self._extras = extras

    # -- raw access -------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of type ids including void (so the last id is len - 1)."""
        return len(self._kinds)

    def string(self, offset: int, limit: int = MAX_NAME, truncate: bool = False) -> str:
        """The NUL-terminated string at `offset` of the string section."""
        cached = self._names.get(offset)
        if cached is not None:
            return cached
        if not 0 <= offset < max(self._str_len, 1):
            raise ValueError(f"BTF: string offset {offset} is outside the string section")
        if self._str_len == 0:
            return ""
        start = self._str_start + offset
        nul = self.data.find(b"\0", start, start + limit + 1)
        if nul < 0:
            if not truncate:
                raise ValueError(f"BTF: string at offset {offset} is longer than {limit} bytes")
            nul = start + limit
        text = self.data[start:nul].decode("utf-8", "replace")
        if len(self._names) < 1 << 20:
            self._names[offset] = text
        return text

    def check_id(self, tid: int, where: str = "") -> int:
        if not 0 <= tid < len(self._kinds):
            raise ValueError(f"BTF: type id {tid}{where} is out of range (max {len(self) - 1})")
        return tid

    def kind(self, tid: int) -> int:
        return self._kinds[self.check_id(tid)]

    def name(self, tid: int) -> str:
        return self.string(self._name_offs[self.check_id(tid)]) if tid else ""

    def vlen(self, tid: int) -> int:
        return self._infos[self.check_id(tid)] & 0xFFFF

    def kind_flag(self, tid: int) -> bool:
        return bool(self._infos[self.check_id(tid)] >> 31)

    def size_or_type(self, tid: int) -> int:
        return self._size_types[self.check_id(tid)]

    def ids(self, kind: int | None = None) -> Iterator[int]:
        """Type ids in order, optionally of one kind only."""
        if kind is None:
            return iter(range(1, len(self._kinds)))
        kinds = self._kinds
        return (i for i in range(1, len(kinds)) if kinds[i] == kind)

    def kind_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for k in self._kinds[1:]:
            counts[KIND_NAMES[k]] = counts.get(KIND_NAMES[k], 0) + 1
        return counts

    def names_of_kind(self, kind: int) -> set[str]:
        """Every non-empty name of types of one kind (e.g. all FUNC names of a kernel)."""
        offs = self._name_offs
        table = self._string_table()
        kinds = self._kinds
        out: set[str] = set()
        for tid in range(1, len(kinds)):
            if kinds[tid] == kind and offs[tid]:
                name = table.get(offs[tid])
                out.add(name if name is not None else self.string(offs[tid]))
        out.discard("")
        return out

    def _string_table(self) -> dict[int, str]:
        """Offset -> string for every string start, built in one pass over the section (a
        kernel's names are looked up by the hundred thousand). Offsets into the middle of
        a string, which BTF allows, fall back to string()."""
        if self._table is None:
            raw = self.data[self._str_start : self._str_start + self._str_len]
            table: dict[int, str] = {}
            pos = 0
            for piece in raw.split(b"\0"):
                if len(piece) <= MAX_NAME:
                    table[pos] = piece.decode("utf-8", "replace")
                pos += len(piece) + 1
            self._table = table
        return self._table

    def find(self, name: str, kind: int | None = None) -> list[int]:
        """Ids of types called `name` (of one kind, if given), in id order."""
        if self._by_name is None:
            index: dict[str, list[int]] = {}
            offs = self._name_offs
            for tid in range(1, len(offs)):
                if offs[tid]:
                    index.setdefault(self.string(offs[tid]), []).append(tid)
            self._by_name = index
        found = self._by_name.get(name, [])
        return [t for t in found if kind is None or self._kinds[t] == kind]

    # -- decoding ---------------------------------------------------------------------------

    def _items(self, tid: int, fmt: str, size: int) -> Iterator[tuple[int, ...]]:
        pos = self._extras[tid]
        return struct.iter_unpack(self.endian + fmt, self.data[pos : pos + size * self.vlen(tid)])

    def members(self, tid: int) -> list[tuple[str, int, int, int]]:
        """STRUCT/UNION members: (name, type id, bit offset, bitfield size or 0)."""
        if self.kind(tid) not in (STRUCT, UNION):
            raise ValueError(f"BTF: type [{tid}] is a {KIND_NAMES[self.kind(tid)]}, not a struct")
        bitfields = self.kind_flag(tid)
        out = []
        for name_off, mtype, offset in self._items(tid, "III", 12):
            self.check_id(mtype, f" (member of [{tid}])")
            if bitfields:
                out.append((self.string(name_off), mtype, offset & 0xFFFFFF, offset >> 24))
            else:
                out.append((self.string(name_off), mtype, offset, 0))
        return out

    def params(self, tid: int) -> list[tuple[str, int]]:
        """FUNC_PROTO parameters: (name, type id); a trailing (\"\", 0) means varargs."""
        if self.kind(tid) != FUNC_PROTO:
            raise ValueError(f"BTF: type [{tid}] is not a FUNC_PROTO")
        out = []
        for name_off, ptype in self._items(tid, "II", 8):
            out.append((self.string(name_off), self.check_id(ptype, f" (param of [{tid}])")))
        return out

    def enum_values(self, tid: int) -> list[tuple[str, int]]:
        kind = self.kind(tid)
        signed = self.kind_flag(tid)
        if kind == ENUM:
            return [(self.string(n), v) for n, v in self._items(tid, "ii" if signed else "iI", 8)]
        if kind == ENUM64:
            out = []
            for n, lo, hi in self._items(tid, "III", 12):
                value = hi << 32 | lo
                if signed and value >= 1 << 63:
                    value -= 1 << 64
                out.append((self.string(n), value))
            return out
        raise ValueError(f"BTF: type [{tid}] is not an enum")

    def array(self, tid: int) -> tuple[int, int, int]:
        """ARRAY: (element type, index type, number of elements)."""
        if self.kind(tid) != ARRAY:
            raise ValueError(f"BTF: type [{tid}] is not an ARRAY")
        elem, index, nelems = struct.unpack_from(self.endian + "III", self.data, self._extras[tid])
        return self.check_id(elem, f" (array [{tid}])"), self.check_id(index), nelems

    def datasec_vars(self, tid: int) -> list[tuple[int, int, int]]:
        """DATASEC entries: (VAR or FUNC type id, offset, size)."""
        if self.kind(tid) != DATASEC:
            raise ValueError(f"BTF: type [{tid}] is not a DATASEC")
        return [
            (self.check_id(t, f" (in datasec [{tid}])"), off, size)
            for t, off, size in self._items(tid, "III", 12)
        ]

    def _u32_extra(self, tid: int, fmt: str = "I") -> int:
        value: int = struct.unpack_from(self.endian + fmt, self.data, self._extras[tid])[0]
        return value

    def linkage(self, tid: int) -> int:
        """VAR linkage (from its trailer) or FUNC linkage (from vlen): 0 static, 1 global,
        2 extern."""
        kind = self.kind(tid)
        if kind == VAR:
            return self._u32_extra(tid)
        if kind == FUNC:
            return self.vlen(tid)
        raise ValueError(f"BTF: type [{tid}] is neither VAR nor FUNC")

    def type(self, tid: int) -> BtfType:
        """One type fully decoded."""
        kind = self.kind(tid)
        t = BtfType(tid, kind, self.name(tid), self.vlen(tid), self.kind_flag(tid))
        st = self._size_types[tid]
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, DATASEC, FLOAT):
            t.size = st
        elif kind in (PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DECL_TAG,
                      TYPE_TAG):  # fmt: skip
            t.type = self.check_id(st, f" (referenced by [{tid}])")
        if kind == INT:
            t.encoding = self._u32_extra(tid)
        elif kind == ARRAY:
            t.type, t.index_type, t.nelems = self.array(tid)
        elif kind in (STRUCT, UNION):
            t.members = list(self.members(tid))
        elif kind in (ENUM, ENUM64):
            t.members = list(self.enum_values(tid))
        elif kind == FUNC_PROTO:
            t.members = list(self.params(tid))
        elif kind == DATASEC:
            t.members = list(self.datasec_vars(tid))
        elif kind in (VAR, FUNC):
            t.linkage = self.linkage(tid)
        elif kind == DECL_TAG:
            t.component = self._u32_extra(tid, "i")
        return t

    def types(self) -> Iterator[BtfType]:
        for tid in range(1, len(self._kinds)):
            yield self.type(tid)

    # -- type arithmetic --------------------------------------------------------------------

    def resolve(self, tid: int) -> int:
        """Skip typedefs, qualifiers and type tags: the id of the underlying type."""
        for _ in range(MAX_DEPTH):
            if self.kind(tid) not in _MODIFIERS:
                return tid
            tid = self.check_id(self._size_types[tid], " (modifier target)")
        raise ValueError(f"BTF: type chain at [{tid}] is deeper than {MAX_DEPTH}")

    def qualifiers(self, tid: int) -> set[str]:
        """The qualifiers on the way to the underlying type ({"const", "volatile"}); for an
        array, those of its elements (C puts `const volatile char x[4]`'s there)."""
        found: set[str] = set()
        for _ in range(MAX_DEPTH):
            kind = self.kind(tid)
            if kind == CONST:
                found.add("const")
            elif kind == VOLATILE:
                found.add("volatile")
            elif kind == ARRAY:
                tid = self.array(tid)[0]
                continue
            elif kind not in (RESTRICT, TYPE_TAG):  # a typedef hides the qualifiers beyond it
                return found
            tid = self.check_id(self._size_types[tid])
        raise ValueError(f"BTF: type chain at [{tid}] is deeper than {MAX_DEPTH}")

    def int_info(self, tid: int) -> tuple[int, int, int]:
        """INT: (encoding flags: 1 signed, 2 char, 4 bool; bit offset; bit count)."""
        if self.kind(tid) != INT:
            raise ValueError(f"BTF: type [{tid}] is not an INT")
        raw = self._u32_extra(tid)
        return (raw >> 24) & 0x0F, (raw >> 16) & 0xFF, raw & 0xFF

    def size_of(self, tid: int, _depth: int = 0) -> int:
        """sizeof() of a type, as the kernel computes it."""
        if _depth > MAX_DEPTH:
            raise ValueError(f"BTF: type chain at [{tid}] is deeper than {MAX_DEPTH}")
        tid = self.resolve(tid)
        kind = self.kind(tid)
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, DATASEC, FLOAT):
            return self._size_types[tid]
        if kind == PTR:
            return 8
        if kind == ARRAY:
            elem, _index, nelems = self.array(tid)
            return nelems * self.size_of(elem, _depth + 1)
        if kind == VAR:
            return self.size_of(self.check_id(self._size_types[tid]), _depth + 1)
        raise ValueError(f"BTF: type [{tid}] ({KIND_NAMES[kind]}) has no size")

    def render(self, tid: int) -> str:
        """A C spelling of a type ("const volatile __u32", "struct foo *", "char[16]")."""
        text = self._render(tid, 0, [MAX_RENDER])
        return text if len(text) <= MAX_RENDER else text[: MAX_RENDER - 3] + "..."

    def _render(self, tid: int, depth: int, budget: list[int]) -> str:
        # The budget caps the nodes visited: function prototypes branch, and nested ones
        # would otherwise make the work exponential in the depth.
        if depth > MAX_DEPTH:
            raise ValueError(f"BTF: type chain at [{tid}] is deeper than {MAX_DEPTH}")
        budget[0] -= 1
        if budget[0] < 0:
            return "..."
        if tid == 0:
            return "void"
        kind = self.kind(tid)
        name = self.name(tid)
        nxt = self._size_types[tid]
        if kind in (INT, FLOAT, TYPEDEF):
            return name or "(anon)"
        if kind in (STRUCT, UNION, ENUM, ENUM64):
            word = "union" if kind == UNION else "struct" if kind == STRUCT else "enum"
            return f"{word} {name}" if name else f"{word} (anon)"
        if kind == FWD:
            return ("union " if self.kind_flag(tid) else "struct ") + name
        if kind in (CONST, VOLATILE, RESTRICT):
            return (
                f"{KIND_NAMES[kind].lower()} {self._render(self.check_id(nxt), depth + 1, budget)}"
            )
        if kind == TYPE_TAG:
            return f"{self._render(self.check_id(nxt), depth + 1, budget)} __tag({name})"
        if kind == PTR:
            return self._render(self.check_id(nxt), depth + 1, budget) + " *"
        if kind == ARRAY:
            elem, _index, nelems = self.array(tid)
            return f"{self._render(elem, depth + 1, budget)}[{nelems}]"
        if kind == FUNC_PROTO:
            args = ", ".join(self._render(p, depth + 1, budget) for _n, p in self.params(tid)[:16])
            return f"{self._render(self.check_id(nxt), depth + 1, budget)} (*)({args})"
        if kind in (FUNC, VAR, DATASEC, DECL_TAG):
            return name
        return KIND_NAMES[kind]

    def field_path(self, tid: int, access: str) -> str:
        """A CO-RE access string ("0:1:2") as the C expression it stands for.

        The first index steps through the root as an array; each further one picks a member
        of a struct/union or an element of an array, as libbpf's bpf_core_parse_spec reads it.
        """
        parts = access.split(":")
        if len(parts) > MAX_ACCESS_PARTS or not all(p.isdigit() for p in parts):
            raise ValueError(f"BTF.ext: malformed CO-RE access string {access[:64]!r}")
        out = f"[{parts[0]}]" if parts[0] != "0" else ""
        cur = self.resolve(tid)
        for part in parts[1:]:
            index = int(part)
            kind = self.kind(cur)
            if kind in (STRUCT, UNION):
                members = self.members(cur)
                if index >= len(members):
                    raise ValueError(f"BTF.ext: CO-RE access {access!r} member {index} missing")
                mname, mtype, _off, _bits = members[index]
                out += f".{mname}" if mname else ".(anon)"
                cur = self.resolve(mtype)
            elif kind == ARRAY:
                out += f"[{index}]"
                cur = self.resolve(self.array(cur)[0])
            else:
                raise ValueError(
                    f"BTF.ext: CO-RE access {access!r} steps into a {KIND_NAMES[kind]}"
                )
        return out


def find_btf_blob(data: bytes, start: int = 0, limit: int = 1 << 28) -> tuple[int, int] | None:
    """(offset, length) of the first self-consistent little- or big-endian BTF header in
    `data` at or after `start`: how a kernel's BTF is found in a raw, non-ELF Image."""
    for magic in (b"\x9f\xeb\x01\x00", b"\xeb\x9f\x01\x00"):
        end = "<" if magic[0] == 0x9F else ">"
        pos = data.find(magic, start)
        while pos >= 0 and pos + BTF_HEADER_LEN <= len(data):
            hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
                end + "5I", data, pos + 4
            )
            total = hdr_len + max(type_off + type_len, str_off + str_len)
            if (
                hdr_len == BTF_HEADER_LEN
                and type_off == 0
                and str_off == type_len
                and 0 < total <= min(limit, len(data) - pos)
                and str_len > 0
                and data[pos + total - 1] == 0
            ):
                return pos, total
            pos = data.find(magic, pos + 1)
    return None


def parse(data: bytes) -> Btf:
    """Parse a .BTF blob; ValueError with the reason if it is malformed."""
    try:
        return Btf(data)
    except (struct.error, OverflowError, IndexError, MemoryError) as exc:
        raise ValueError(f"BTF: malformed ({exc})") from None


def describe(btf: Btf) -> dict[str, Any]:
    """A compact summary: type count, counts per kind, blob size."""
    return {"types": len(btf) - 1, "kinds": btf.kind_counts(), "bytes": btf.size}
