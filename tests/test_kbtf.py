"""Kernel BTF from the cached Debian kernels' vmlinuz (vm/kbtf.py), and from synthetic
images for the formats the matrix does not cover (arm64 Image.gz, EFI zboot, xz).

The Debian kernels must be cached (./scripts/setup.sh fetches them): without them this
fails, it does not skip."""

from __future__ import annotations

import gzip
import lzma
import os
import struct
from pathlib import Path

import pytest

from bpfcompat.matrix.config import default_kernels_file, load_kernel_matrix
from bpfcompat.validator import btf as B
from bpfcompat.vm import kbtf
from bpfcompat.vm.kernels import cached_kernel

HOST_BTF = Path("/sys/kernel/btf/vmlinux")


def cached_entries(*, btf: bool = True) -> list[tuple[str, str, Path]]:
    """(kernel id, release, entry) of every distinct cached kernel of kernels.yaml whose
    config has (or, with btf=False, lacks) CONFIG_DEBUG_INFO_BTF."""
    out: dict[Path, tuple[str, str, Path]] = {}
    for spec in load_kernel_matrix(default_kernels_file()).kernels:
        hit = cached_kernel(spec, deep=False)
        if hit is not None and hit.has_btf is btf:
            out.setdefault(hit.entry, (spec.id, hit.release, hit.entry))
    if not out:
        pytest.fail("no kernel of kernels.yaml is cached: run ./scripts/setup.sh", pytrace=False)
    return list(out.values())


def test_btf_from_every_cached_kernel(tmp_path: Path) -> None:
    for kernel_id, _release, entry in cached_entries():
        # A private entry (the vmlinuz linked in) shows a first extraction and its caching.
        private = tmp_path / kernel_id
        private.mkdir()
        (private / "vmlinuz").symlink_to(entry / "vmlinuz")
        path = kbtf.kernel_btf(private)
        assert path == private / kbtf.BTF_FILE
        btf = B.parse(path.read_bytes())
        assert len(btf) > 50000, kernel_id
        assert btf.find("task_struct", B.STRUCT), kernel_id
        assert btf.find("schedule", B.FUNC), kernel_id
        assert btf.find("btf_trace_sched_switch", B.TYPEDEF), kernel_id
        assert btf.find("bpf_struct_ops_tcp_congestion_ops", B.STRUCT), kernel_id
        stamp = (private / kbtf.STAMP_FILE).read_text()
        mtime = path.stat().st_mtime_ns
        assert kbtf.kernel_btf(private) == path and path.stat().st_mtime_ns == mtime
        assert (private / kbtf.STAMP_FILE).read_text() == stamp


def test_a_kernel_built_without_btf_has_none_to_extract(tmp_path: Path) -> None:
    without = cached_entries(btf=False)
    if not without:
        pytest.fail("debian-12-6.1-nobtf is not built: run ./scripts/setup.sh", pytrace=False)
    for kernel_id, _release, entry in without:
        private = tmp_path / kernel_id
        private.mkdir()
        (private / "vmlinuz").symlink_to(entry / "vmlinuz")
        with pytest.raises(kbtf.KernelBtfError, match="may lack CONFIG_DEBUG_INFO_BTF"):
            kbtf.kernel_btf(private)
        assert not (private / kbtf.BTF_FILE).exists()


def test_kernel_names_in_the_shared_cache() -> None:
    seen = {}
    for kernel_id, _release, entry in cached_entries():
        names = kbtf.kernel_names(entry)
        assert (entry / kbtf.BTF_FILE).is_file() and (entry / kbtf.NAMES_FILE).is_file()
        btf = B.parse((entry / kbtf.BTF_FILE).read_bytes())
        assert names.funcs == btf.names_of_kind(B.FUNC)
        assert names.types == len(btf) - 1
        assert "tcp_congestion_ops" in names.structs
        assert "btf_trace_sched_switch" in names.typedefs
        seen[kernel_id] = names
    # Different releases have different function sets.
    if len(seen) > 1:
        assert len({n.funcs for n in seen.values()}) == len(seen)


def test_stale_btf_is_extracted_again(tmp_path: Path) -> None:
    _kid, _release, entry = cached_entries()[0]
    (tmp_path / "vmlinuz").write_bytes((entry / "vmlinuz").read_bytes())
    path = kbtf.kernel_btf(tmp_path)
    path.write_bytes(b"garbage")  # size no longer matches the stamp
    assert kbtf.kernel_btf(tmp_path).read_bytes()[:2] == b"\x9f\xeb"
    before = (tmp_path / kbtf.STAMP_FILE).read_text()
    os.utime(tmp_path / "vmlinuz", ns=(10**18, 10**18))  # "refetched"
    kbtf.kernel_btf(tmp_path)
    assert (tmp_path / kbtf.STAMP_FILE).read_text() != before


# --- other image formats, built around a real BTF blob ---------------------------------------


@pytest.fixture(scope="module")
def real_btf() -> bytes:
    _kid, _release, entry = cached_entries()[0]
    return kbtf.kernel_btf(entry).read_bytes()


def fake_vmlinux(blob: bytes) -> bytes:
    """A minimal x86-64 ELF executable with a .BTF section, as a vmlinux carries it."""
    names = b"\0.BTF\0.shstrtab\0"
    body = b"\x90" * 64 + blob
    shoff = 64 + len(body) + len(names)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    table = bytes(64)
    table += struct.pack("<IIQQQQIIQQ", 1, 1, 0, 0, 128, len(blob), 0, 0, 1, 0)
    table += struct.pack("<IIQQQQIIQQ", 6, 3, 0, 0, 64 + len(body), len(names), 0, 0, 1, 0)
    return header + body + names + table


def test_arm64_style_gzip_image(real_btf: bytes) -> None:
    raw_image = os.urandom(4096) + real_btf + os.urandom(4096)  # no ELF: scanned
    assert kbtf.btf_from_image(gzip.compress(raw_image, 1)) == real_btf


def test_efi_zboot_image(real_btf: bytes) -> None:
    payload = gzip.compress(os.urandom(512) + real_btf, 1)
    header = b"MZ\0\0zimg" + struct.pack("<II", 64, len(payload)) + b"\0" * 8 + b"gzip"
    image = header.ljust(64, b"\0") + payload + b"\0" * 100
    assert kbtf.btf_from_image(image) == real_btf


def test_xz_vmlinux_found_by_magic(real_btf: bytes) -> None:
    packed = lzma.compress(fake_vmlinux(real_btf), preset=0)
    image = b"\x00" * 1000 + packed + b"\x00" * 10  # unknown wrapper: the magic is scanned
    assert kbtf.btf_from_image(image) == real_btf


def test_image_without_btf_says_why() -> None:
    with pytest.raises(kbtf.KernelBtfError, match="CONFIG_DEBUG_INFO_BTF"):
        kbtf.btf_from_image(gzip.compress(os.urandom(20000)))
    with pytest.raises(kbtf.KernelBtfError, match="no vmlinuz"):
        kbtf.kernel_btf(Path("/nonexistent-entry"))


def test_host_btf_inside_a_fake_vmlinux() -> None:
    if not HOST_BTF.is_file():
        pytest.fail("this host has no /sys/kernel/btf/vmlinux")
    blob = HOST_BTF.read_bytes()
    assert kbtf.btf_from_kernel(fake_vmlinux(blob)) == blob
