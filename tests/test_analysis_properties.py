"""Property tests of the static readers on hostile input: mutated .BTF/.BTF.ext blobs and
objects, and generated type tables. Any input: a result or a ValueError (the readers), a
report (inspect), never another exception; and bounded work (`deadline` per example, the
same bound the other property tests use)."""

from __future__ import annotations

import contextlib
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis_fixtures import FIXTURES, compile_bpf, multiarch_includes  # noqa: F401
from bpfcompat.analysis.inspect import inspect_object, render_text
from bpfcompat.analysis.suggest import suggest_manifest
from bpfcompat.validator import btf as B
from bpfcompat.validator import elf as E
from bpfcompat.validator.btfext import parse_ext
from conftest import EXAMPLES

SETTINGS = settings(
    max_examples=150,
    deadline=2000,  # ms per example: linear readers need a few ms on these sizes
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)

_SEED_DIR = Path(tempfile.mkdtemp(prefix="bpfcompat-analysis-seeds-"))


def _seed_objects() -> list[bytes]:
    """Real objects to mutate: the examples (built by the session) plus three fixtures."""
    out = []
    for path in sorted(EXAMPLES.glob("*/*.bpf.o")):
        if path.parent.name not in ("invalid-object", "truncated-elf"):
            out.append(path.read_bytes())
    for name in ("isa", "externs", "struct_ops"):
        obj = _SEED_DIR / f"{name}.bpf.o"
        if not obj.exists():
            flags = ["-mcpu=v3"] if name == "isa" else []
            compile_bpf(FIXTURES / f"{name}.bpf.c", obj, *flags)
        out.append(obj.read_bytes())
    return out


def _section(data: bytes, name: str) -> bytes:
    for header in E.elf_section_headers(data):
        if header[0] == name:
            return E.section_bytes(data, header)
    raise AssertionError(name)


@pytest.fixture(scope="module")
def seeds(built_examples: Path) -> list[bytes]:
    return _seed_objects()


def mutate(data: bytes, draw: Callable[[Any], Any]) -> bytes:
    """Byte flips, u32 overwrites with extreme values, truncation or insertion."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        if not buf:
            break
        op = draw(st.sampled_from(("flip", "u32", "cut", "insert")))
        pos = draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "u32" and pos + 4 <= len(buf):
            value = draw(st.sampled_from((0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 24)))
            struct.pack_into("<I", buf, pos, value)
        elif op == "cut":
            del buf[pos:]
        else:
            buf[pos:pos] = draw(st.binary(max_size=16))
    return bytes(buf)


def exercise_btf(btf: B.Btf) -> None:
    """Every decoder over every type: each may only raise ValueError."""
    btf.kind_counts()
    for kind in range(len(B.KIND_NAMES)):
        with contextlib.suppress(ValueError):
            btf.names_of_kind(kind)
    for tid in list(btf.ids())[:400]:
        for call in (btf.type, btf.render, btf.size_of, btf.resolve, btf.qualifiers):
            with contextlib.suppress(ValueError):
                call(tid)
        with contextlib.suppress(ValueError):
            btf.find(btf.name(tid))


@SETTINGS
@given(data=st.data())
def test_mutated_btf_only_value_errors(seeds: list[bytes], data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(seeds))
    blob = mutate(_section(seed, ".BTF"), data.draw)
    try:
        btf = B.parse(blob)
    except ValueError:
        return
    exercise_btf(btf)


@SETTINGS
@given(data=st.data())
def test_mutated_btf_ext_only_value_errors(seeds: list[bytes], data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(seeds))
    btf = B.parse(_section(seed, ".BTF"))
    blob = mutate(_section(seed, ".BTF.ext"), data.draw)
    try:
        ext = parse_ext(blob, btf)
        ext.counts()
        ext.func_info  # noqa: B018
        ext.line_info  # noqa: B018
        for relos in ext.core_relos.values():
            for relo in relos:
                with contextlib.suppress(ValueError):
                    btf.field_path(relo.type_id, relo.access)
    except ValueError:
        return


@SETTINGS
@given(data=st.data())
def test_mutated_objects_inspect_without_exceptions(
    seeds: list[bytes], data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    seed = data.draw(st.sampled_from(seeds))
    raw = mutate(seed, data.draw)
    try:
        headers = E.elf_section_headers(raw)
        symbols = E.elf_symbols(raw, headers)
        for header in headers:
            if header[1] == E.SHT_REL:
                E.elf_relocations(raw, header)
        del symbols
    except ValueError:
        pass
    path = tmp_path_factory.mktemp("mut") / "m.bpf.o"
    path.write_bytes(raw)
    report = inspect_object(path)
    assert report["readable"] in (True, False)
    if report["readable"]:
        render_text(report)
        suggest_manifest(report)
    else:
        assert report["error"]


# --- generated type tables ------------------------------------------------------------------

_TRAILER = {1: 4, 3: 12, 14: 4, 17: 4}
_PER_ITEM = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}


@st.composite
def btf_tables(draw: Callable[[Any], Any]) -> bytes:
    """Self-consistent BTF headers around random types: ids, offsets and counts that point
    anywhere (cycles, out-of-range ids, huge sizes), strings with or without NULs."""
    n = draw(st.integers(1, 60))
    strings = b"\0" + draw(st.binary(max_size=200)) + b"\0"
    ids = st.integers(0, n + 2)
    types = b""
    for _ in range(n):
        kind = draw(st.integers(1, 19))
        vlen = draw(st.integers(0, 6))
        name_off = draw(st.integers(0, len(strings) - 1))
        size_type = draw(st.one_of(ids, st.sampled_from((0xFFFFFFFF, 1 << 31))))
        flag = draw(st.integers(0, 1))
        types += struct.pack("<III", name_off, (flag << 31) | (kind << 24) | vlen, size_type)
        fixed = _TRAILER.get(kind, 0)
        per = _PER_ITEM.get(kind, 0)
        words = (fixed + per * vlen) // 4
        for _ in range(words):
            types += struct.pack("<I", draw(st.one_of(ids, st.integers(0, 0xFFFFFFFF))))
    head = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return head + types + strings


@SETTINGS
@given(blob=btf_tables())
def test_generated_btf_only_value_errors(blob: bytes) -> None:
    try:
        btf = B.parse(blob)
    except ValueError:
        return
    exercise_btf(btf)
    for tid in btf.ids():
        with contextlib.suppress(ValueError):
            btf.field_path(tid, "0:1:2:0:1")


@SETTINGS
@given(count=st.integers(1000, 40000), name_len=st.integers(1, B.MAX_NAME))
def test_many_types_sharing_a_long_name_stay_linear(count: int, name_len: int) -> None:
    """Every type names a different offset into one long string: a scan to the next NUL
    per name would be quadratic; the bounded scan is not."""
    strings = b"\0" + b"x" * name_len + b"\0"
    types = b"".join(
        struct.pack("<III", 1 + i % name_len, 7 << 24, 0)  # FWD types
        for i in range(count)
    )
    head = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    btf = B.parse(head + types + strings)
    assert len(btf.names_of_kind(B.FWD)) == min(count, name_len)
