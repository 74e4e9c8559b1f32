"""The stdlib BTF/BTF.ext readers (validator/btf.py, btfext.py) against bpftool and the
host's own kernel BTF, and their refusal of malformed input with a ValueError."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest

from analysis_fixtures import FIXTURES, analysis_objects  # noqa: F401
from bpfcompat.validator import btf as B
from bpfcompat.validator import elf as E
from bpfcompat.validator.btfext import parse_ext
from conftest import EXAMPLES, require_tool

HOST_BTF = Path("/sys/kernel/btf/vmlinux")
_DUMP_LINE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'")


def bpftool_types(path: Path, raw: bool = False) -> list[tuple[int, str, str]]:
    """(id, kind, name) per type as `bpftool btf dump file` prints them."""
    bpftool = require_tool("bpftool")
    proc = subprocess.run(
        [bpftool, "btf", "dump", "file", str(path), *(["format", "raw"] if raw else [])],
        capture_output=True,
        text=True,
        check=True,
    )
    out = []
    for line in proc.stdout.splitlines():
        m = _DUMP_LINE.match(line)
        if m:
            name = "" if m.group(3) == "(anon)" else m.group(3)
            out.append((int(m.group(1)), m.group(2), name))
    return out


def section(path: Path, name: str) -> bytes:
    data = path.read_bytes()
    for header in E.elf_section_headers(data):
        if header[0] == name:
            return E.section_bytes(data, header)
    raise AssertionError(f"{path} has no {name}")


def example_objects() -> list[Path]:
    objs = sorted(EXAMPLES.glob("*/*.bpf.o"))
    return [p for p in objs if p.parent.name not in ("invalid-object", "truncated-elf")]


def test_every_example_matches_bpftool(built_examples: Path) -> None:
    objs = example_objects()
    assert len(objs) >= 18
    for path in objs:
        btf = B.parse(section(path, ".BTF"))
        ours = [(t, B.KIND_NAMES[btf.kind(t)], btf.name(t)) for t in btf.ids()]
        assert ours == bpftool_types(path), path.name
        for tid in btf.ids():  # every type decodes and renders
            btf.type(tid)
            btf.render(tid)


def test_fixtures_match_bpftool(analysis_objects: dict[str, Path]) -> None:  # noqa: F811
    for name, path in analysis_objects.items():
        btf = B.parse(section(path, ".BTF"))
        ours = [(t, B.KIND_NAMES[btf.kind(t)], btf.name(t)) for t in btf.ids()]
        assert ours == bpftool_types(path), name


def test_host_vmlinux_matches_bpftool() -> None:
    if not HOST_BTF.is_file():
        pytest.fail("this host has no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)")
    btf = B.parse(HOST_BTF.read_bytes())
    theirs = bpftool_types(HOST_BTF, raw=True)
    assert len(btf) - 1 == len(theirs) > 10000
    counts: dict[str, int] = {}
    for _tid, kind, _name in theirs:
        counts[kind] = counts.get(kind, 0) + 1
    assert btf.kind_counts() == counts
    # Names of every 97th type, and all the function names.
    for tid, kind, name in theirs[::97]:
        assert (B.KIND_NAMES[btf.kind(tid)], btf.name(tid)) == (kind, name)
    funcs = {name for _t, kind, name in theirs if kind == "FUNC"}
    assert btf.names_of_kind(B.FUNC) == funcs
    (task,) = btf.find("task_struct", B.STRUCT)
    assert "pid" in [m[0] for m in btf.members(task)]
    assert btf.size_of(task) == btf.size_or_type(task) > 1000


def test_map_definition_types_decode(built_examples: Path) -> None:
    path = EXAMPLES / "runtime-sized-maps" / "runtime-sized-maps.bpf.o"
    btf = B.parse(section(path, ".BTF"))
    (aux,) = btf.find("aux_state", B.STRUCT)
    t = btf.type(aux)
    assert (t.kind_name, t.size, [m[0] for m in t.members]) == ("STRUCT", 16, ["events", "drops"])
    assert [m[2] for m in t.members] == [0, 64]  # bit offsets
    (sec,) = btf.find(".maps", B.DATASEC)
    assert [btf.name(v) for v, _o, _s in btf.datasec_vars(sec)] == [
        "auxiliary_maps",
        "ringbuf_maps",
    ]
    (var,) = btf.find("auxiliary_maps", B.VAR)
    assert btf.linkage(var) == 1  # global
    (func,) = btf.find("runtime_sized_execve", B.FUNC)
    proto = btf.size_or_type(func)
    assert [name for name, _tid in btf.params(proto)] == ["ctx"]
    assert btf.render(proto) == "int (*)(void *)"


def test_const_volatile_globals_and_int_encoding(analysis_objects: dict[str, Path]) -> None:  # noqa: F811
    btf = B.parse(section(analysis_objects["externs"], ".BTF"))
    (pid,) = btf.find("target_pid", B.VAR)
    vtype = btf.size_or_type(pid)
    assert btf.qualifiers(vtype) == {"const", "volatile"}
    assert btf.render(vtype) in ("const volatile int", "volatile const int")
    assert btf.int_info(btf.resolve(vtype)) == (1, 0, 32)  # signed, 32 bits
    (comm,) = btf.find("comm_filter", B.VAR)
    assert btf.qualifiers(btf.size_or_type(comm)) == {"const", "volatile"}  # on the elements
    assert btf.size_of(btf.size_or_type(comm)) == 16


def test_line_info_matches_the_source(analysis_objects: dict[str, Path]) -> None:  # noqa: F811
    path = analysis_objects["isa"]
    btf = B.parse(section(path, ".BTF"))
    ext = parse_ext(section(path, ".BTF.ext"), btf)
    source = (FIXTURES / "isa.bpf.c").read_text().splitlines()
    lines = [li for recs in ext.line_info.values() for li in recs]
    assert len(lines) == ext.counts()["line_info"] > 10
    assert sum(li.line > 0 for li in lines) > 10
    for li in lines:
        assert li.file.endswith("isa.bpf.c")
        if li.line == 0:  # compiler-generated code has no source line
            continue
        assert li.text.strip() == source[li.line - 1].strip(), li
        assert 0 <= li.column <= len(source[li.line - 1]) + 1
    funcs = {btf.name(t) for recs in ext.func_info.values() for _off, t in recs}
    assert funcs == {"isa_features", "twice", "step"}
    assert set(ext.func_info) == {"raw_tp/sys_enter", ".text"}


def test_core_relocations_decode(built_examples: Path) -> None:
    path = EXAMPLES / "core-relocation-fail" / "core-relocation-fail.bpf.o"
    btf = B.parse(section(path, ".BTF"))
    ext = parse_ext(section(path, ".BTF.ext"), btf)
    (relos,) = ext.core_relos.values()
    (relo,) = relos
    assert btf.name(relo.type_id) == "bpfcompat_no_such_type___x"
    assert (relo.access, relo.kind_name) == ("0:0", "byte_off")
    assert btf.field_path(relo.type_id, relo.access) == ".f"
    path = EXAMPLES / "lockdown-probe-read" / "lockdown-probe-read.bpf.o"
    btf = B.parse(section(path, ".BTF"))
    ext = parse_ext(section(path, ".BTF.ext"), btf)
    ((relo,),) = ext.core_relos.values()
    assert btf.render(relo.type_id) + btf.field_path(relo.type_id, relo.access) == (
        "struct task_struct.tgid"
    )


# --- malformed input -------------------------------------------------------------------------


def blob(types: bytes, strings: bytes = b"\0", hdr: dict[str, int] | None = None) -> bytes:
    fields = {"hdr_len": 24, "type_off": 0, "type_len": len(types)}
    fields.update(str_off=len(types), str_len=len(strings))
    fields.update(hdr or {})
    head = struct.pack("<HBBI", 0xEB9F, 1, 0, fields["hdr_len"])
    head += struct.pack(
        "<IIII", fields["type_off"], fields["type_len"], fields["str_off"], fields["str_len"]
    )
    return head + types + strings


def t(kind: int, size_type: int = 0, vlen: int = 0, name_off: int = 0, flag: int = 0) -> bytes:
    return struct.pack("<III", name_off, (flag << 31) | (kind << 24) | vlen, size_type)


INT32 = t(B.INT, 4) + struct.pack("<I", 32)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "too short"),
        (b"\x9f\xeb\x02\x00" + bytes(20), "unsupported version"),
        (b"ELF\0" + bytes(20), "bad magic"),
        (blob(INT32, hdr={"hdr_len": 8}), "header length"),
        (blob(INT32, hdr={"type_len": 1 << 30}), "extends beyond the blob"),
        (blob(INT32, hdr={"str_len": 1 << 31}), "extends beyond the blob"),
        (blob(INT32[:12]), "extends beyond the type section"),
        (blob(INT32 + b"\0\0"), "truncated"),
        (blob(t(25)), "unknown kind 25"),
        (blob(t(B.INT, 4, name_off=99) + b"\0" * 4), "name offset 99"),
        (blob(INT32, b"ab"), "does not end with a NUL"),
        (blob(INT32, b"a\0"), "does not start with an empty string"),
        (blob(t(B.STRUCT, 8, vlen=3)), "extends beyond"),
    ],
)
def test_malformed_btf_is_a_value_error(data: bytes, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        B.parse(data)


def test_reference_errors_surface_on_use() -> None:
    # A typedef cycle ([1] -> [2] -> [1]) and a pointer to a type that does not exist.
    btf = B.parse(blob(t(B.TYPEDEF, 2) + t(B.TYPEDEF, 1) + t(B.PTR, 77) + t(B.CONST, 4)))
    for call in (btf.resolve, btf.size_of):
        with pytest.raises(ValueError, match="deeper than"):
            call(1)
    for call in (btf.qualifiers, btf.render):  # const -> itself
        with pytest.raises(ValueError, match="deeper than"):
            call(4)
    with pytest.raises(ValueError, match="out of range"):
        btf.type(3)
    with pytest.raises(ValueError, match="out of range"):
        btf.name(5)


def test_exponential_prototypes_render_within_budget() -> None:
    # Each FUNC_PROTO takes 16 arguments of the previous prototype's pointer type: naive
    # rendering would visit 16**depth nodes.
    types = INT32
    tid = 1
    for _ in range(12):  # 24 levels: within the depth limit, 16**12 nodes naively
        types += t(B.FUNC_PROTO, tid, vlen=16) + struct.pack("<II", 0, tid) * 16
        types += t(B.PTR, tid + 1)
        tid += 2
    btf = B.parse(blob(types))
    text = btf.render(tid)
    assert len(text) <= B.MAX_RENDER and "..." in text


def test_find_btf_blob_in_noise() -> None:
    real = blob(INT32, b"\0int\0", hdr={})
    real = real[:12] + real[12:]  # as built: header, 16 bytes of INT, strings
    noise = b"\x9f\xeb\x01\x00" + bytes(40) + b"junk" * 100
    found = B.find_btf_blob(noise + real + b"tail" * 10)
    assert found == (len(noise), len(real))
    assert B.find_btf_blob(noise) is None
