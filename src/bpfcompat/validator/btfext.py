"""BTF.ext, read with struct alone: where each function, source line and CO-RE relocation
of an object's code is.

Like btf.py this reads untrusted input: every count and offset is checked and a malformed
section raises ValueError. Records are decoded on first use, so counting them is cheap even
for an object with a hundred thousand line records.
"""

from __future__ import annotations

import struct

from .btf import Btf, header

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Iterator

BTF_EXT_MIN_HEADER_LEN = 24
BTF_EXT_CORE_HEADER_LEN = 32

# enum bpf_core_relo_kind (include/uapi/linux/bpf.h), named as libbpf's logs name them.
CORE_RELO_KINDS = (
    "byte_off", "byte_sz", "field_exists", "signed", "lshift_u64", "rshift_u64",
    "local_type_id", "target_type_id", "type_exists", "type_size", "enumval_exists",
    "enumval_value", "type_matches",
)  # fmt: skip


class LineInfo:
    __slots__ = ("column", "file", "insn_off", "line", "text")

    def __init__(self, insn_off: int, file: str, text: str, line: int, column: int) -> None:
        self.insn_off = insn_off
        self.file = file
        self.text = text
        self.line = line
        self.column = column

    def __repr__(self) -> str:
        return f"<LineInfo +{self.insn_off} {self.file}:{self.line}:{self.column}>"


class CoreRelo:
    """One CO-RE relocation: instruction byte offset, local type, access string, kind."""

    __slots__ = ("access", "insn_off", "kind", "type_id")

    def __init__(self, insn_off: int, type_id: int, access: str, kind: int) -> None:
        self.insn_off = insn_off
        self.type_id = type_id
        self.access = access
        self.kind = kind

    @property
    def kind_name(self) -> str:
        return CORE_RELO_KINDS[self.kind] if self.kind < len(CORE_RELO_KINDS) else str(self.kind)

    def __repr__(self) -> str:
        return f"<CoreRelo +{self.insn_off} [{self.type_id}] {self.access} {self.kind_name}>"


class BtfExt:
    """A parsed .BTF.ext: func_info, line_info and CO-RE relocations per ELF section.

    Offsets are in bytes, as the object file stores them (libbpf turns them into
    instruction indexes for the kernel). Strings live in the matching .BTF.
    """

    def __init__(self, data: bytes, btf: Btf) -> None:
        data = bytes(data)
        end, _version, _flags = header(data, "BTF.ext")
        if len(data) < BTF_EXT_MIN_HEADER_LEN:
            raise ValueError(f"BTF.ext: {len(data)} bytes is too short for the header")
        hdr_len = struct.unpack_from(end + "I", data, 4)[0]
        if hdr_len < BTF_EXT_MIN_HEADER_LEN or hdr_len > len(data):
            raise ValueError(f"BTF.ext: header length {hdr_len} is invalid")
        fi_off, fi_len, li_off, li_len = struct.unpack_from(end + "4I", data, 8)
        cr_off = cr_len = 0
        if hdr_len >= BTF_EXT_CORE_HEADER_LEN:
            cr_off, cr_len = struct.unpack_from(end + "2I", data, 24)
        self.data = data
        self.endian = end
        self.btf = btf
        self._hdr_len = hdr_len
        self._func_raw = self._blocks(fi_off, fi_len, 8, "func_info")
        self._line_raw = self._blocks(li_off, li_len, 16, "line_info")
        self._core_raw = self._blocks(cr_off, cr_len, 16, "core_relo")
        self._func: dict[str, list[tuple[int, int]]] | None = None
        self._lines: dict[str, list[LineInfo]] | None = None
        self._core: dict[str, list[CoreRelo]] | None = None

    def _blocks(
        self, off: int, length: int, min_rec: int, what: str
    ) -> list[tuple[str, int, int, int]]:
        """(section name, first record offset, record count, record size) per section."""
        if length == 0:
            return []
        start = self._hdr_len + off
        stop = start + length
        if stop > len(self.data) or length < 4:
            raise ValueError(f"BTF.ext: {what} ({length} bytes at {off}) is out of bounds")
        rec_size = struct.unpack_from(self.endian + "I", self.data, start)[0]
        if rec_size < min_rec or rec_size % 4 or rec_size > 1024:
            raise ValueError(f"BTF.ext: {what} record size {rec_size} is invalid")
        out = []
        pos = start + 4
        while pos < stop:
            if pos + 8 > stop:
                raise ValueError(f"BTF.ext: {what} section header is truncated")
            sec_off, count = struct.unpack_from(self.endian + "II", self.data, pos)
            pos += 8
            if count == 0 or count * rec_size > stop - pos:
                raise ValueError(f"BTF.ext: {what} block of {count} records does not fit")
            out.append((self.btf.string(sec_off), pos, count, rec_size))
            pos += count * rec_size
        return out

    def _records(self, block: tuple[str, int, int, int], fmt: str) -> Iterator[tuple[int, ...]]:
        _sec, pos, count, rec_size = block
        layout = struct.Struct(self.endian + fmt)
        if layout.size == rec_size:  # the usual case: one C-level pass over the block
            yield from layout.iter_unpack(self.data[pos : pos + count * rec_size])
            return
        for i in range(count):  # newer, larger records: read the fields we know
            yield layout.unpack_from(self.data, pos + i * rec_size)

    @property
    def func_info(self) -> dict[str, list[tuple[int, int]]]:
        """Per section: (instruction byte offset, FUNC type id)."""
        if self._func is None:
            func: dict[str, list[tuple[int, int]]] = {}
            for block in self._func_raw:
                for insn_off, tid in self._records(block, "II"):
                    func.setdefault(block[0], []).append((insn_off, self.btf.check_id(tid)))
            self._func = func
        return self._func

    @property
    def line_info(self) -> dict[str, list[LineInfo]]:
        if self._lines is None:
            lines: dict[str, list[LineInfo]] = {}
            string = self.btf.string
            for block in self._line_raw:
                for insn_off, file_off, line_off, line_col in self._records(block, "IIII"):
                    lines.setdefault(block[0], []).append(
                        LineInfo(
                            insn_off,
                            string(file_off, truncate=True),
                            string(line_off, truncate=True),
                            line_col >> 10,
                            line_col & 0x3FF,
                        )
                    )
            self._lines = lines
        return self._lines

    @property
    def core_relos(self) -> dict[str, list[CoreRelo]]:
        if self._core is None:
            core: dict[str, list[CoreRelo]] = {}
            for block in self._core_raw:
                for insn_off, tid, access_off, kind in self._records(block, "IIII"):
                    core.setdefault(block[0], []).append(
                        CoreRelo(
                            insn_off, self.btf.check_id(tid), self.btf.string(access_off), kind
                        )
                    )
            self._core = core
        return self._core

    def counts(self) -> dict[str, int]:
        """Record counts without decoding them: cheap even for huge objects."""
        return {
            "func_info": sum(b[2] for b in self._func_raw),
            "line_info": sum(b[2] for b in self._line_raw),
            "core_relo": sum(b[2] for b in self._core_raw),
        }


def parse_ext(data: bytes, btf: Btf) -> BtfExt:
    try:
        return BtfExt(data, btf)
    except (struct.error, OverflowError, IndexError) as exc:
        raise ValueError(f"BTF.ext: malformed ({exc})") from None
