"""BPF C fixtures for the static analysis (tests/data/analysis/*.bpf.c), compiled once per
session with the flags examples/Makefile uses. clang is required: a missing compiler
fails the tests that need it, it never skips them."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from bpfcompat.validator import elf as E
from conftest import ROOT, require_tool

FIXTURES = ROOT / "tests" / "data" / "analysis"
# Per fixture: extra clang flags (isa.bpf.c needs -mcpu=v3 for atomics and JMP32).
EXTRA_FLAGS = {"isa": ["-mcpu=v3"]}


def multiarch_includes() -> list[str]:
    """Debian's clang needs the multiarch include dir for <asm/types.h>, as the Makefile does."""
    try:
        arch = subprocess.run(
            ["dpkg-architecture", "-qDEB_HOST_MULTIARCH"], capture_output=True, text=True
        ).stdout.strip()
    except FileNotFoundError:
        arch = ""
    return [f"-I/usr/include/{arch}"] if arch else []


def compile_bpf(source: Path, out: Path, *flags: str, debug: bool = True) -> Path:
    clang = require_tool("clang")
    cmd = [clang, "-target", "bpf", "-O2", "-Wall", *multiarch_includes(), *flags]
    cmd += ["-g"] if debug else []
    proc = subprocess.run([*cmd, "-c", str(source), "-o", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"clang failed on {source.name}: {proc.stderr[-2000:]}", pytrace=False)
    return out


@pytest.fixture(scope="session")
def analysis_objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fixture name (file stem without .bpf) -> compiled object."""
    out_dir = tmp_path_factory.mktemp("analysis-fixtures")
    objects = {}
    for source in sorted(FIXTURES.glob("*.bpf.c")):
        stem = source.name.removesuffix(".bpf.c")
        objects[stem] = compile_bpf(source, out_dir / f"{stem}.bpf.o", *EXTRA_FLAGS.get(stem, []))
    return objects


def section_of(path: Path, name: str) -> tuple[int, int]:
    """(file offset, size) of a section of an object."""
    data = path.read_bytes()
    for header in E.elf_section_headers(data):
        if header[0] == name:
            return header[3], header[4]
    raise AssertionError(f"{path.name} has no section {name!r}")


def patch_insns(path: Path, section: str, index: int, raw: bytes, out: Path) -> Path:
    """A copy of `path` with instructions from `index` of `section` overwritten by `raw`:
    how encodings this clang cannot emit (ISA v4, load-acquire) get into a real object."""
    offset, size = section_of(path, section)
    assert index * 8 + len(raw) <= size, "patch does not fit the section"
    data = bytearray(path.read_bytes())
    data[offset + index * 8 : offset + index * 8 + len(raw)] = raw
    shutil.copyfile(path, out)
    out.write_bytes(bytes(data))
    return out


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)
