"""The artifact's ELF structure and its BPF instructions, read with struct alone.

libbpf (through libelf) is never handed a structurally broken file, and the host judges
artifacts with the same check before any guest sees them: one definition of "a BPF ELF
object" on both sides.
"""

from __future__ import annotations

import struct
import sys

from .limits import MAX_SECTIONS_LISTED
from .util import decode

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any

SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_REL = 9
SHT_NOBITS = 8
SHF_EXECINSTR = 0x4

STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION = 0, 1, 2, 3
SHN_UNDEF = 0

MAX_SYMBOL_NAME = 4096  # bytes scanned for one name: keeps hostile tables linear

EM_BPF = 247

ET_REL = 1


def inspect_elf(path: str) -> dict[str, Any]:
    """Parse the artifact's ELF header and section table with struct.

    libbpf (through libelf) is not handed a structurally broken file: a corrupt artifact
    must produce a clear failing result, and a crash in C would produce no result at all.
    """
    info: dict[str, Any] = {
        "size": None,
        "elf_valid": False,
        "elf_error": None,
        "section_count": 0,
        "sections": [],
        "has_btf": False,
        "has_btf_ext": False,
    }
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        info["elf_error"] = f"cannot read artifact: {exc.strerror}"
        return info
    info["size"] = len(data)
    try:
        names = _elf_section_names(data)
    except (ValueError, struct.error) as exc:
        info["elf_error"] = str(exc)
        return info
    info["elf_valid"] = True
    info["section_count"] = len(names)
    info["sections"] = names[:MAX_SECTIONS_LISTED]
    info["has_btf"] = ".BTF" in names
    info["has_btf_ext"] = ".BTF.ext" in names
    return info


def _elf_section_names(data: bytes) -> list[str]:
    return [name for name, _type, _offset, _size in elf_sections(data)]


def elf_sections(data: bytes) -> list[tuple[str, int, int, int]]:
    """(name, sh_type, offset, size) of every section but the null one; ValueError if corrupt."""
    return [(h[0], h[1], h[3], h[4]) for h in elf_section_headers(data)[1:]]


def elf_section_headers(data: bytes, bpf_object: bool = True) -> list[tuple[Any, ...]]:
    """Every section header, the null one included so that list index == section index:
    (name, sh_type, sh_flags, offset, size, sh_link, sh_info, sh_entsize).

    `bpf_object=False` accepts any 64-bit ELF (a kernel's vmlinux) instead of only a BPF
    relocatable object. ValueError if the file is corrupt.
    """
    size = len(data)
    if size < 16 or data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file (no ELF magic)")
    if data[4] != 2:
        raise ValueError(f"not a 64-bit ELF (EI_CLASS={data[4]}); BPF objects are ELF64")
    if data[5] not in (1, 2):
        raise ValueError(f"invalid ELF data encoding (EI_DATA={data[5]})")
    end = "<" if data[5] == 1 else ">"
    if size < 64:
        raise ValueError(f"truncated ELF header ({size} bytes, need 64)")
    header = struct.unpack_from(end + "HHIQQQIHHHHHH", data, 16)
    e_type, e_machine, e_shoff, e_shentsize, e_shnum, e_shstrndx = (
        header[0],
        header[1],
        header[5],
        header[10],
        header[11],
        header[12],
    )
    if bpf_object and e_type != ET_REL:
        raise ValueError(f"ELF type {e_type} is not a relocatable object (ET_REL)")
    if bpf_object and e_machine not in (0, EM_BPF):
        raise ValueError(f"ELF machine {e_machine} is not BPF (EM_BPF={EM_BPF})")
    if e_shoff == 0:
        raise ValueError("ELF has no section header table")
    if e_shentsize != 64:
        raise ValueError(f"unexpected ELF section header size {e_shentsize}")
    if e_shoff + 64 > size:
        raise ValueError(
            f"truncated ELF: section headers at offset {e_shoff} lie beyond the end "
            f"of the file ({size} bytes)"
        )
    sh_fmt = end + "IIQQQQIIQQ"
    first = struct.unpack_from(sh_fmt, data, e_shoff)
    shnum = e_shnum or first[5]  # extended numbering: count in section 0's sh_size
    shstrndx = first[6] if e_shstrndx == 0xFFFF else e_shstrndx
    if e_shoff + shnum * 64 > size:
        raise ValueError(
            f"truncated ELF: {shnum} section headers at offset {e_shoff} do not fit in {size} bytes"
        )
    headers = [struct.unpack_from(sh_fmt, data, e_shoff + i * 64) for i in range(shnum)]
    if not 0 < shstrndx < shnum:
        raise ValueError(f"invalid section name table index {shstrndx}")
    str_off, str_size = headers[shstrndx][4], headers[shstrndx][5]
    if str_off + str_size > size:
        raise ValueError("truncated ELF: section name table lies beyond the end of the file")
    strtab = data[str_off : str_off + str_size]
    sections: list[tuple[Any, ...]] = []
    for index, (
        name_off,
        sh_type,
        flags,
        _a,
        offset,
        sec_size,
        link,
        info,
        _al,
        entsize,
    ) in enumerate(headers):
        if name_off >= max(str_size, 1) and index:
            raise ValueError(f"section #{index} has a name offset outside the name table")
        nul = strtab.find(b"\0", name_off, name_off + MAX_SYMBOL_NAME)
        name = decode(strtab[name_off : nul if nul >= 0 else name_off + MAX_SYMBOL_NAME])
        if sh_type not in (SHT_NULL, SHT_NOBITS) and offset + sec_size > size:
            raise ValueError(
                f"truncated ELF: section #{index} {name!r} ({sec_size} bytes at offset "
                f"{offset}) extends beyond the end of the file ({size} bytes)"
            )
        sections.append((name, sh_type, flags, offset, sec_size, link, info, entsize))
    return sections


def section_bytes(data: bytes, header: tuple[Any, ...]) -> bytes:
    """A section's contents (empty for SHT_NOBITS such as .bss)."""
    if header[1] in (SHT_NULL, SHT_NOBITS):
        return b""
    return data[header[3] : header[3] + header[4]]


def elf_symbols(data: bytes, headers: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The .symtab: (name, value, size, bind, type, section index) per symbol, index 0
    included so that list index == symbol index. Empty when there is no symbol table."""
    for sec in headers:
        if sec[1] == SHT_SYMTAB:
            break
    else:
        return []
    if not 0 < sec[5] < len(headers):
        raise ValueError(f"symbol table links to invalid string table #{sec[5]}")
    strtab = section_bytes(data, headers[sec[5]])
    raw = section_bytes(data, sec)
    end = "<" if data[5] == 1 else ">"
    out: list[tuple[Any, ...]] = []
    for name_off, info, _other, shndx, value, size in struct.iter_unpack(
        end + "IBBHQQ", raw[: len(raw) // 24 * 24]
    ):
        if name_off >= max(len(strtab), 1) and name_off:
            raise ValueError(f"symbol #{len(out)} has a name offset outside the string table")
        nul = strtab.find(b"\0", name_off, name_off + MAX_SYMBOL_NAME)
        name = decode(strtab[name_off : nul if nul >= 0 else name_off + MAX_SYMBOL_NAME])
        out.append((name, value, size, info >> 4, info & 0xF, shndx))
    return out


def elf_relocations(data: bytes, header: tuple[Any, ...]) -> list[tuple[int, int, int]]:
    """An SHT_REL section's entries: (offset in the target section, symbol index, type)."""
    raw = section_bytes(data, header)
    end = "<" if data[5] == 1 else ">"
    return [
        (offset, info >> 32, info & 0xFFFFFFFF)
        for offset, info in struct.iter_unpack(end + "QQ", raw[: len(raw) // 16 * 16])
    ]


# struct bpf_insn (include/uapi/linux/bpf.h): code u8, dst_reg:4 src_reg:4, off s16, imm s32.
BPF_INSN_SIZE = 8

BPF_CALL_CODE = 0x85  # BPF_JMP | BPF_CALL

BPF_PSEUDO_CALL = 1  # src_reg of a bpf-to-bpf (subprogram) call

BPF_PSEUDO_KFUNC_CALL = 2  # src_reg of a kfunc call, imm = the kfunc's kernel BTF id


def decode_calls(raw: bytes) -> tuple[list[int], list[int]]:
    """(helper ids, kfunc BTF ids) called by BPF instructions, deduplicated, in order.

    A helper call is ``BPF_JMP|BPF_CALL`` with src_reg 0 and the helper id in imm; src_reg 1
    is a call to a subprogram and src_reg 2 a kfunc call (imm is its BTF id once libbpf
    has relocated it). The code bytes are scanned with bytes.find, not insn by insn: a
    program may have a million instructions and this runs under emulation.
    """
    helpers: dict[int, None] = {}
    kfuncs: dict[int, None] = {}
    count = len(raw) // BPF_INSN_SIZE
    codes = raw[: count * BPF_INSN_SIZE : BPF_INSN_SIZE]
    little = sys.byteorder == "little"
    index = codes.find(BPF_CALL_CODE)
    while index >= 0:
        _, regs, _, imm = struct.unpack_from("=BBhi", raw, index * BPF_INSN_SIZE)
        src_reg = regs >> 4 if little else regs & 0x0F
        if src_reg == 0:
            helpers[imm] = None
        elif src_reg == BPF_PSEUDO_KFUNC_CALL:
            kfuncs[imm] = None
        index = codes.find(BPF_CALL_CODE, index + 1)
    return list(helpers), list(kfuncs)
