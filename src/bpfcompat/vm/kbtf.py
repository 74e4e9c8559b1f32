"""A cached kernel's own BTF, taken out of its vmlinuz, and the names it declares.

Booting a kernel to read /sys/kernel/btf/vmlinux is minutes under TCG; the same bytes sit in
the compressed kernel image we already cache. An x86 bzImage says where its compressed
payload is (setup header); an arm64 EFI zboot image too; a gzip'd arm64 Image is the payload.
Failing those, the payload is found by its compressor's magic. The decompressed kernel is an
ELF vmlinux (x86: take its .BTF section) or a raw Image (arm64: scan for a BTF header whose
sizes agree). The blob is written beside the cache entry as vmlinux.btf, atomically, with a
stamp naming the vmlinuz it came from, so a refetched kernel is never paired with stale BTF.
"""

from __future__ import annotations

import contextlib
import functools
import json
import lzma
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from bpfcompat.errors import BpfcompatError
from bpfcompat.validator import btf as B
from bpfcompat.validator.elf import elf_section_headers, section_bytes
from bpfcompat.vm.proc import run_bounded

BTF_FILE = "vmlinux.btf"
STAMP_FILE = "vmlinux.btf.json"
NAMES_FILE = "vmlinux.btf.names.json"
STAMP_FORMAT = 1
MAX_KERNEL_BYTES = 1 << 30  # a decompressed kernel is ~50-100 MB; refuse runaway output

GZIP_MAGIC = b"\x1f\x8b\x08"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
_MAGICS = ((ZSTD_MAGIC, "zstd"), (XZ_MAGIC, "xz"), (LZ4_LEGACY_MAGIC, "lz4"), (GZIP_MAGIC, "gzip"))
MAX_MAGIC_TRIES = 16  # candidate payloads tried when scanning an unknown image


class KernelBtfError(BpfcompatError):
    """The kernel image holds no BTF we can find (no CONFIG_DEBUG_INFO_BTF, unknown format)."""


@dataclass(frozen=True)
class KernelNames:
    """What attach-target and struct_ops checks look up in a kernel's BTF."""

    funcs: frozenset[str]
    structs: frozenset[str]
    typedefs: frozenset[str]
    types: int


def kernel_btf(entry: Path) -> Path:
    """The kernel's BTF file beside its cache entry, extracted from `entry/vmlinuz` if needed."""
    entry = Path(entry)
    vmlinuz = entry / "vmlinuz"
    target = entry / BTF_FILE
    try:
        st = vmlinuz.stat()
    except OSError as exc:
        raise KernelBtfError(f"{entry}: no vmlinuz ({exc.strerror})") from None
    stamp = {
        "format": STAMP_FORMAT,
        "vmlinuz_size": st.st_size,
        "vmlinuz_mtime_ns": st.st_mtime_ns,
    }
    if _stamp_matches(entry, stamp, target):
        return target
    blob = btf_from_image(vmlinuz.read_bytes(), str(vmlinuz))
    _write_atomic(target, blob)
    _write_atomic(entry / STAMP_FILE, json.dumps({**stamp, "btf_size": len(blob)}).encode())
    return target


def _stamp_matches(entry: Path, stamp: dict[str, int], target: Path) -> bool:
    try:
        saved = json.loads((entry / STAMP_FILE).read_text())
        return bool(
            isinstance(saved, dict)
            and all(saved.get(k) == v for k, v in stamp.items())
            and saved.get("btf_size") == target.stat().st_size
        )
    except (OSError, ValueError):
        return False


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # like the rest of the cache entry
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def btf_from_image(image: bytes, what: str = "kernel image") -> bytes:
    """The .BTF blob of a kernel image (bzImage, EFI zboot, Image.gz, vmlinux or raw Image)."""
    if image[0x38:0x3C] == b"ARM\x64":
        # An uncompressed arm64 Image (Debian ships these): its bytes are the kernel, and
        # scanning them for compressor magic only finds stray matches.
        blob = btf_from_kernel(image)
        if blob is not None:
            return blob
    errors: list[str] = []
    for payload, method in _payloads(image):
        try:
            kernel = decompress(payload, method)
        except KernelBtfError as exc:
            errors.append(str(exc))
            continue
        blob = btf_from_kernel(kernel)
        if blob is not None:
            return blob
        errors.append(f"{method} payload has no BTF")
    if not errors:
        blob = btf_from_kernel(image)  # an uncompressed vmlinux or Image
        if blob is not None:
            return blob
        errors.append("no compressed kernel payload found")
    raise KernelBtfError(
        f"{what}: no kernel BTF found ({'; '.join(errors[:3])}); "
        "the kernel may lack CONFIG_DEBUG_INFO_BTF"
    )


def _payloads(image: bytes) -> list[tuple[bytes, str]]:
    """Candidate (compressed payload, method) pairs, most trustworthy first."""
    out: list[tuple[bytes, str]] = []
    if len(image) > 0x250 and image[0x202:0x206] == b"HdrS":
        version = struct.unpack_from("<H", image, 0x206)[0]
        if version >= 0x208:
            setup_sects = image[0x1F1] or 4
            offset, length = struct.unpack_from("<II", image, 0x248)
            start = (setup_sects + 1) * 512 + offset
            payload = image[start : start + length]
            method = _method(payload)
            if method:
                # The build appends the decompressed size (u32) after the compressed stream.
                out.append((payload[:-4] if method in ("zstd", "lz4") else payload, method))
    elif len(image) > 0x40 and image[:2] == b"MZ" and image[4:8] == b"zimg":
        offset, length = struct.unpack_from("<II", image, 8)
        payload = image[offset : offset + length]
        method = _method(payload)
        if method:
            out.append((payload, method))
    if out:
        return out
    method = _method(image)
    if method:
        return [(image, method)]
    tries = 0
    for magic, method in _MAGICS:
        pos = image.find(magic)
        while pos >= 0 and tries < MAX_MAGIC_TRIES:
            out.append((image[pos:], method))
            tries += 1
            pos = image.find(magic, pos + 1)
    return out


def _method(payload: bytes) -> str | None:
    return next((m for magic, m in _MAGICS if payload.startswith(magic)), None)


def decompress(payload: bytes, method: str) -> bytes:
    """Decompress a kernel payload: gzip and xz in-process, zstd and lz4 with their CLIs."""
    try:
        if method == "gzip":
            out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload, MAX_KERNEL_BYTES)
        elif method == "xz":
            out = lzma.LZMADecompressor().decompress(payload, MAX_KERNEL_BYTES)
        else:
            out = _decompress_cli([method, "-dc"], payload)
    except (zlib.error, lzma.LZMAError, EOFError) as exc:
        raise KernelBtfError(f"{method} payload does not decompress: {exc}") from None
    if len(out) < 4096:
        raise KernelBtfError(f"{method} payload decompresses to only {len(out)} bytes")
    return out


def _decompress_cli(argv: list[str], payload: bytes) -> bytes:
    """Run a decompressor over `payload`, bounded in time and in what it may print."""
    done = run_bounded(argv, f"decompressing the kernel ({argv[0]})", error=KernelBtfError,
                       timeout=300, stdin=payload)  # fmt: skip
    if len(done.stdout) > MAX_KERNEL_BYTES:
        raise KernelBtfError(f"{argv[0]} output exceeds {MAX_KERNEL_BYTES} bytes")
    # Trailing bytes after the stream make some tools exit non-zero after a full decode.
    if done.returncode != 0 and not done.stdout:
        raise KernelBtfError(f"{argv[0]} -dc failed with exit code {done.returncode}")
    return done.stdout


def btf_from_kernel(kernel: bytes) -> bytes | None:
    """The BTF of a decompressed kernel: vmlinux's .BTF section, or a scanned raw Image."""
    if kernel[:4] == b"\x7fELF":
        try:
            for header in elf_section_headers(kernel, bpf_object=False):
                if header[0] == ".BTF":
                    blob = section_bytes(kernel, header)
                    B.parse(blob)  # refuse garbage now rather than at every lookup
                    return blob
        except ValueError:
            pass
    found = B.find_btf_blob(kernel)
    while found is not None:
        start, length = found
        blob = kernel[start : start + length]
        try:
            B.parse(blob)
            return blob
        except ValueError:
            found = B.find_btf_blob(kernel, start + 1)
    return None


@functools.lru_cache(maxsize=16)
def _names_cached(path: str, size: int, mtime_ns: int) -> KernelNames:
    index = Path(path).with_name(NAMES_FILE)
    key = {"format": STAMP_FORMAT, "btf_size": size, "btf_mtime_ns": mtime_ns}
    try:
        saved = json.loads(index.read_text())
        if isinstance(saved, dict) and all(saved.get(k) == v for k, v in key.items()):
            return KernelNames(
                frozenset(saved["funcs"]),
                frozenset(saved["structs"]),
                frozenset(saved["typedefs"]),
                int(saved["types"]),
            )
    except (OSError, ValueError, KeyError, TypeError):
        pass
    btf = B.parse(Path(path).read_bytes())
    names = KernelNames(
        funcs=frozenset(btf.names_of_kind(B.FUNC)),
        structs=frozenset(btf.names_of_kind(B.STRUCT) | btf.names_of_kind(B.UNION)),
        typedefs=frozenset(btf.names_of_kind(B.TYPEDEF)),
        types=len(btf) - 1,
    )
    # Parsing several MB of BTF costs a few tenths of a second per kernel; the name lists
    # load in a few hundredths, and inspect wants every kernel of the matrix.
    saved = {
        **key,
        "funcs": sorted(names.funcs),
        "structs": sorted(names.structs),
        "typedefs": sorted(names.typedefs),
        "types": names.types,
    }
    with contextlib.suppress(OSError):  # a read-only cache still answers, only slower
        _write_atomic(index, json.dumps(saved, separators=(",", ":")).encode())
    return names


def kernel_names(entry: Path) -> KernelNames:
    """FUNC, STRUCT/UNION and TYPEDEF names of a cached kernel's BTF (extracting it first)."""
    path = kernel_btf(entry)
    st = path.stat()
    try:
        return _names_cached(str(path), st.st_size, st.st_mtime_ns)
    except ValueError as exc:
        raise KernelBtfError(f"{path}: {exc}") from None
