"""Users' own kernels: a .deb or .rpm by URL or path, or a kernel image with its modules
directory and config file.

Packages are untrusted input: a checksum given in kernels.yaml is verified before
anything is unpacked, RPM payloads are unpacked by our own bounded cpio reader (no path
leaves the scratch directory), and only files really inside the unpacked tree are used.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from bpfcompat.errors import FetchError
from bpfcompat.vm.cache import sha256_file
from bpfcompat.vm.cpio import CpioFormatError, extract_newc
from bpfcompat.vm.kernels import (
    KernelFiles,
    check_image_arch,
    extract_deb,
    module_index_dir,
    nic_modules,
)
from bpfcompat.vm.spec import URL_PREFIXES, DebSource, FilesSource, KernelSpec, RpmSource

MAX_DOWNLOAD_BYTES = 4 << 30
DOWNLOAD_TIMEOUT_S = 60.0  # per read: a stalled server fails instead of hanging the run


def unpack_user_kernel(spec: KernelSpec, scratch: Path) -> tuple[Path | KernelFiles, dict]:
    """An unpacked package tree (deb, rpm) or the files themselves, and entry metadata."""
    src = spec.source
    if isinstance(src, FilesSource):
        return _files(spec, src), {
            "package": Path(src.vmlinuz).name,
            "version": _files_version(src),
        }
    assert isinstance(src, DebSource | RpmSource)
    where = src.deb if isinstance(src, DebSource) else src.rpm
    local = _obtain(where, scratch / "download", src.sha256)
    digest = sha256_file(local)
    tree = scratch / "tree"
    if isinstance(src, DebSource):
        extract_deb(local, tree)
        name, version = _deb_fields(local)
    else:
        _extract_rpm(local, tree, scratch / "payload.cpio")
        name, version = _rpm_fields(local)
    return tree, {"package": name, "version": f"{version} (sha256 {digest[:12]})"}


def _obtain(where: str, dest_dir: Path, sha256: str | None) -> Path:
    """The file at a path or URL, its checksum verified when one is given."""
    if where.startswith(URL_PREFIXES):
        path = _download(where, dest_dir)
    else:
        path = Path(where)
        if not path.is_file():
            raise FetchError(f"{where}: no such file")
    if sha256 is not None:
        got = sha256_file(path)
        if got != sha256:
            raise FetchError(f"{where}: sha256 mismatch (expected {sha256}, got {got})")
    return path


def _download(url: str, dest_dir: Path) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", url.rstrip("/").rsplit("/", 1)[-1]) or "download"
    dest = dest_dir / name
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp,
            dest.open("wb") as out,
        ):
            total = 0
            while block := resp.read(1 << 20):
                total += len(block)
                if total > MAX_DOWNLOAD_BYTES:
                    raise FetchError(f"{url}: larger than {MAX_DOWNLOAD_BYTES >> 30} GiB")
                out.write(block)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url}: cannot fetch (HTTP {exc.code} {exc.reason})") from None
    except urllib.error.URLError as exc:
        raise FetchError(f"{url}: cannot fetch ({exc.reason})") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, malformed URLs
        raise FetchError(f"{url}: cannot fetch ({exc})") from None
    return dest


def _deb_fields(deb: Path) -> tuple[str, str]:
    try:
        out = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Package", "Version"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return deb.name, "unknown"
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return fields.get("Package", deb.name), fields.get("Version", "unknown")


def _extract_rpm(rpm: Path, tree: Path, payload: Path) -> None:
    if shutil.which("rpm2cpio") is None:
        raise FetchError("rpm2cpio not found: run scripts/setup.sh (apt-get install rpm2cpio)")
    with payload.open("wb") as out:
        proc = subprocess.run(
            ["rpm2cpio", str(rpm)], stdout=out, stderr=subprocess.PIPE, check=False
        )
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise FetchError(f"{rpm}: not an RPM package (rpm2cpio: {why[0][:200]})")
    try:
        with payload.open("rb") as fh:
            extract_newc(fh, tree)
    except CpioFormatError as exc:
        raise FetchError(f"{rpm}: bad RPM payload: {exc}") from None
    finally:
        payload.unlink(missing_ok=True)


def _rpm_fields(rpm: Path) -> tuple[str, str]:
    try:
        out = subprocess.run(
            ["rpm", "-qp", "--nosignature", "--qf", "%{NAME} %{VERSION}-%{RELEASE}", str(rpm)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return rpm.name, "unknown"
    return (out[0], out[1]) if len(out) == 2 else (rpm.name, "unknown")


# --- a kernel image with its modules and config -------------------------------------------


def _files(spec: KernelSpec, src: FilesSource) -> KernelFiles:
    vmlinuz = Path(src.vmlinuz)
    if not vmlinuz.is_file():
        raise FetchError(f"vmlinuz {vmlinuz}: no such file")
    if src.sha256 is not None and (got := sha256_file(vmlinuz)) != src.sha256:
        raise FetchError(f"vmlinuz {vmlinuz}: sha256 mismatch (expected {src.sha256}, got {got})")
    check_image_arch(vmlinuz, spec.arch)
    config = Path(src.config) if src.config else None
    if config is not None and not config.is_file():
        raise FetchError(f"config {config}: no such file")
    moddir = Path(src.modules) if src.modules else None
    if moddir is not None and not moddir.is_dir():
        raise FetchError(f"modules {moddir}: no such directory")
    release = moddir.name if moddir is not None else image_release(vmlinuz)
    if release is None:
        raise FetchError(
            f"vmlinuz {vmlinuz}: cannot tell the kernel release from the image; "
            "give `modules:` (the lib/modules/<release> directory)"
        )
    modules = nic_modules(module_index_dir(moddir), [moddir]) if moddir is not None else []
    return KernelFiles(vmlinuz, release, config, modules)


def _files_version(src: FilesSource) -> str:
    return f"sha256 {sha256_file(Path(src.vmlinuz))[:12]}"


def image_release(vmlinuz: Path) -> str | None:
    """The release a kernel image says it is: an x86 bzImage points at its version
    string from the setup header; other images carry "Linux version X" in their bytes
    (gzip-compressed ones after decompression)."""
    data = vmlinuz.read_bytes()
    if data[0x202:0x206] == b"HdrS" and len(data) > 0x210:
        offset = int.from_bytes(data[0x20E:0x210], "little") + 0x200
        word = data[offset : offset + 256].split(b"\0")[0].split(b" ")[0]
        return word.decode("ascii", "replace") or None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            return None
    match = re.search(rb"Linux version (\S+) \(", data)
    return match.group(1).decode("ascii", "replace") if match else None
