"""Kernels ready to boot: fetched with apt, built from source, or the user's own files,
all ending in one cache entry layout.

An entry holds `vmlinuz`, `config` and `modules.cpio`: a cpio layer appended to the guest
image that carries the NIC modules (and their dependencies) and the kernel's own config
at /boot/config-<release>, where libbpf looks to resolve `extern ... __kconfig`. A kernel
built from source also holds `detached.btf`, BTF generated from its DWARF.

Package layouts differ by release (vmlinuz in /boot or in /usr/lib/modules, modules as
.ko or .ko.xz, meta packages on sid), so files are found by walking, never assumed.
"""

from __future__ import annotations

import hashlib
import lzma
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bpfcompat.errors import FetchError
from bpfcompat.vm.apt import AptWorkspace, discover_mirror, linux_dependencies
from bpfcompat.vm.arch import get_arch
from bpfcompat.vm.cache import (
    atomic_dir,
    cache_root,
    entry_lock,
    read_verified_manifest,
    sha256_file,
    write_manifest,
)
from bpfcompat.vm.cpio import CpioWriter
from bpfcompat.vm.proc import run_bounded
from bpfcompat.vm.spec import BTF_FROM_BUILD, KernelSpec

# The guest talks SSH over virtio-net; on some releases virtio_pci is a module too.
NIC_MODULES = ("virtio_pci", "virtio_net")
# Bump when the entry layout changes; entries of each layout live apart, so tools of
# different layouts can share one cache without rebuilding each other's entries.
CACHE_LAYOUT = 3
# Not vmlinux.btf: that name beside an entry is vm/kbtf.py's, BTF taken out of the image.
DETACHED_BTF = "detached.btf"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class KernelBuild:
    """A kernel in the cache, ready to boot."""

    package: str
    version: str
    release: str
    entry: Path
    arch: str = "x86_64"
    source: str = "apt"

    @property
    def vmlinuz(self) -> Path:
        return self.entry / "vmlinuz"

    @property
    def config(self) -> Path:
        return self.entry / "config"

    @property
    def modules_cpio(self) -> Path:
        return self.entry / "modules.cpio"

    @property
    def detached_btf(self) -> Path | None:
        """BTF generated from the build's DWARF (kernels built from source only)."""
        path = self.entry / DETACHED_BTF
        return path if path.is_file() else None

    @property
    def has_btf(self) -> bool:
        return self.config_value("CONFIG_DEBUG_INFO_BTF") == "y"

    def config_value(self, option: str) -> str | None:
        try:
            text = self.config.read_text(errors="replace")
        except OSError:
            return None
        match = re.search(rf"^{re.escape(option)}=(.*)$", text, re.M)
        return match.group(1) if match else None


def _identity(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _local_stamp(path: str) -> str:
    """A local input's path, size and mtime: a changed file gives a new entry."""
    try:
        st = Path(path).stat()
    except OSError:
        return f"{path}|missing"
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def entry_name(spec: KernelSpec) -> str:
    """The cache entry's directory name: what the kernel is, not what it is called."""
    src = spec.source
    kind = spec.source_kind
    if kind == "apt":
        return f"{spec.suite}_{spec.package}"
    if kind == "build":
        from bpfcompat.vm.kbuild import recipe_identity

        return f"build_{spec.suite}_{spec.package}_{recipe_identity(spec)}"
    if kind == "files":
        paths = [src.vmlinuz, src.config or "", src.modules or ""]  # type: ignore[union-attr]
        return "files_" + _identity(*map(_local_stamp, paths), str(src.sha256))  # type: ignore[union-attr]
    where = src.deb if kind == "deb" else src.rpm  # type: ignore[union-attr]
    stamp = where if where.startswith(("http://", "https://")) else _local_stamp(where)
    return f"{kind}_" + _identity(stamp, str(src.sha256))  # type: ignore[union-attr]


def kernel_entry_dir(spec: KernelSpec, root: Path | None = None) -> Path:
    arch = get_arch(spec.arch).debian
    return (root or cache_root()) / "kernels" / f"v{CACHE_LAYOUT}" / arch / entry_name(spec)


def cached_kernel(
    spec: KernelSpec, root: Path | None = None, *, deep: bool = True
) -> KernelBuild | None:
    entry = kernel_entry_dir(spec, root)
    meta = read_verified_manifest(entry, deep=deep)
    if meta is None or meta.get("layout") != CACHE_LAYOUT:
        return None
    return KernelBuild(
        meta["package"],
        meta["version"],
        meta["release"],
        entry,
        meta.get("arch", "x86_64"),
        meta.get("source", "apt"),
    )


def fetch_kernel(
    spec: KernelSpec,
    root: Path | None = None,
    *,
    mirror: str | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
) -> KernelBuild:
    """Return the cached kernel, or obtain it (download, unpack or build) atomically."""
    hit = cached_kernel(spec, root)
    if hit is not None:
        return hit
    root = root or cache_root()
    try:
        with entry_lock(kernel_entry_dir(spec, root)):
            # Another thread or process may have made it while we waited.
            hit = cached_kernel(spec, root)
            return hit if hit is not None else _obtain(spec, root, mirror, stop, progress)
    except OSError as exc:  # disk full, permissions: the atomic dir left nothing behind
        raise FetchError(f"cannot write the cache under {root}: {exc.strerror or exc}") from None


def _obtain(
    spec: KernelSpec,
    root: Path,
    mirror: str | None,
    stop: threading.Event | None,
    progress: Progress | None,
) -> KernelBuild:
    entry = kernel_entry_dir(spec, root)
    kind = spec.source_kind
    say = progress or (lambda step: None)
    with tempfile.TemporaryDirectory(prefix="bpfcompat-fetch-", dir=root) as scratch_name:
        scratch = Path(scratch_name)
        if kind == "build":
            from bpfcompat.vm.kbuild import build_kernel

            built = build_kernel(spec, root, scratch, mirror, stop, say)
            files, meta = built.files, built.meta
        elif kind == "apt":
            say("downloading")
            tree, meta = _apt_tree(spec, root, scratch, mirror)
            files = find_kernel_files(tree, spec)
        else:
            from bpfcompat.vm.sources import unpack_user_kernel

            say("unpacking")
            found, meta = unpack_user_kernel(spec, scratch)
            files = found if isinstance(found, KernelFiles) else find_kernel_files(found, spec)
        with atomic_dir(entry) as tmp:
            names = write_entry(tmp, files)
            write_manifest(
                tmp,
                {
                    "layout": CACHE_LAYOUT,
                    "arch": spec.arch,
                    "source": kind,
                    "release": files.release,
                    **meta,
                },
                names,
            )
    built_entry = cached_kernel(spec, root)
    if built_entry is None:
        raise FetchError(f"cache entry {entry} failed verification right after it was made")
    return built_entry


@dataclass
class KernelFiles:
    """What an entry is made of, wherever it came from."""

    vmlinuz: Path
    release: str
    config: Path | None
    modules: list[tuple[str, bytes]]
    btf: Path | None = None


def write_entry(out: Path, files: KernelFiles) -> list[str]:
    """Write the entry's files into `out`; returns their names for the manifest."""
    shutil.copyfile(files.vmlinuz, out / "vmlinuz")
    config = files.config.read_bytes() if files.config is not None else b""
    (out / "config").write_bytes(config)
    with (out / "modules.cpio").open("wb") as fh:
        writer = CpioWriter(fh)
        writer.directory("bpfcompat/modules")
        for name, data in files.modules:
            writer.file(f"bpfcompat/modules/{name}.ko", data)
        order = "".join(f"{n}\n" for n, _ in files.modules).encode()
        writer.file("bpfcompat/modules/order", order)
        if config:
            writer.file(f"boot/config-{files.release}", config)
        writer.close()
    names = ["vmlinuz", "config", "modules.cpio"]
    if files.btf is not None:
        shutil.copyfile(files.btf, out / DETACHED_BTF)
        names.append(DETACHED_BTF)
    return names


def btf_file_for(spec: KernelSpec, kernel: KernelBuild) -> Path | None:
    """The external BTF file for this kernel (its `btf:`), checked to exist."""
    if spec.btf is None:
        return None
    if spec.btf == BTF_FROM_BUILD:
        if kernel.detached_btf is None:
            raise FetchError(f"btf: build, but the kernel's build left no {DETACHED_BTF}")
        return kernel.detached_btf
    path = Path(spec.btf)
    if not path.is_file():
        raise FetchError(f"btf file {path} not found")
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic not in (b"\x9f\xeb", b"\xeb\x9f"):
        raise FetchError(f"btf file {path} is not raw BTF (bad magic)")
    return path


def btf_digest(path: Path | None) -> str | None:
    return None if path is None else sha256_file(path)


# --- Debian packages through apt ----------------------------------------------------------


def _apt_tree(
    spec: KernelSpec, root: Path, scratch: Path, mirror: str | None
) -> tuple[Path, dict[str, str]]:
    assert spec.suite is not None and spec.package is not None
    arch = get_arch(spec.arch).debian
    workspace = AptWorkspace.for_suite(root, spec.suite, arch, mirror or discover_mirror())
    with entry_lock(workspace.root):  # one apt at a time per private lists dir
        workspace.prepare()
        debs, version = _download_with_deps(workspace, spec.package, scratch / "debs")
    tree = scratch / "tree"
    for deb in debs:
        extract_deb(deb, tree)
    return tree, {"package": spec.package, "version": version, "suite": spec.suite}


def _download_with_deps(ws: AptWorkspace, package: str, dest: Path) -> tuple[list[Path], str]:
    """Download the package and the linux-* packages it depends on (sid's meta packages)."""
    todo, seen, debs = [package], set(), []
    version = ""
    while todo:
        name = todo.pop(0)
        if name in seen or name == "linux-base":  # plain linux-base is tooling, not the kernel
            continue
        seen.add(name)
        fields = ws.show(name)
        if name == package:
            version = fields.get("Version", "")
        try:
            debs.append(ws.download(name, fields["Version"], dest))
        except FetchError:
            ws.update()  # the lists may be stale: refresh once and retry
            debs.append(ws.download(name, ws.show(name)["Version"], dest))
        todo += linux_dependencies(fields.get("Depends", ""))
    return debs, version


def extract_deb(deb: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    what = f"{deb.name}: dpkg-deb -x"
    proc = run_bounded(["dpkg-deb", "-x", str(deb), str(dest)], what, error=FetchError, timeout=600)
    if proc.returncode != 0:
        detail = (proc.err.strip().splitlines() or ["no output"])[-1][:200]
        raise FetchError(f"{what} failed: {detail}")


# --- finding the kernel in an unpacked package --------------------------------------------


def find_kernel_files(tree: Path, spec: KernelSpec) -> KernelFiles:
    """The kernel image, config and NIC modules in an unpacked package tree. Only files
    really inside the tree count: a package's symlink may point anywhere on the host."""
    vmlinuz, release = _find_vmlinuz(tree)
    check_image_arch(vmlinuz, spec.arch)
    moddirs = [tree / "usr/lib/modules" / release, tree / "lib/modules" / release]
    index = {n: p for n, p in _module_index(moddirs).items() if _inside(tree, p)}
    return KernelFiles(vmlinuz, release, _find_config(tree, release), nic_modules(index, moddirs))


def nic_modules(index: dict[str, Path], moddirs: list[Path]) -> list[tuple[str, bytes]]:
    """The NIC modules to load, dependencies first; none when the kernel has them built in."""
    modules = module_closure(index, NIC_MODULES)
    if index and not any(n == "virtio_net" for n, _ in modules):
        # Modules exist but virtio_net is not among them: it must be built in.
        for moddir in moddirs:
            builtin = moddir / "modules.builtin"
            if builtin.is_file() and "virtio_net" not in builtin.read_text(errors="replace"):
                raise FetchError("virtio_net (the guest's NIC) is neither a module nor built in")
    return modules


def check_image_arch(vmlinuz: Path, arch: str) -> None:
    """Refuse a kernel image of another architecture than its entry says (when the image
    says which: an x86 bzImage or an uncompressed arm64 Image)."""
    with vmlinuz.open("rb") as fh:
        head = fh.read(0x210)
    found = None
    if head[0x202:0x206] == b"HdrS":
        found = "x86_64"
    elif head[0x38:0x3C] == b"ARM\x64":
        found = "aarch64"
    if found is not None and found != arch:
        raise FetchError(
            f"{vmlinuz.name} is an {found} kernel image, but the entry says arch {arch}"
        )


def _inside(tree: Path, path: Path) -> bool:
    try:
        return path.resolve().is_relative_to(tree.resolve())
    except OSError:
        return False


def _find_vmlinuz(tree: Path) -> tuple[Path, str]:
    candidates = [(p, p.name.removeprefix("vmlinuz-")) for p in sorted(tree.glob("boot/vmlinuz-*"))]
    candidates += [(p, p.name.removeprefix("Image-")) for p in sorted(tree.glob("boot/Image-*"))]
    for moddir in ("usr/lib/modules", "lib/modules"):
        candidates += [(p, p.parent.name) for p in sorted(tree.glob(f"{moddir}/*/vmlinuz*"))]
    for path, release in candidates:
        if path.is_file() and _inside(tree, path):
            return path, release
    raise FetchError("no kernel image (boot/vmlinuz-*, lib/modules/*/vmlinuz) in the package")


def _find_config(tree: Path, release: str) -> Path | None:
    for pattern in (
        f"boot/config-{release}",
        f"usr/lib/modules/{release}/config",
        f"lib/modules/{release}/config",
    ):
        path = tree / pattern
        if path.is_file() and _inside(tree, path):
            return path
    return None


def _module_index(moddirs: list[Path]) -> dict[str, Path]:
    """Module name (underscored) -> file, from whichever modules dir holds it."""
    index: dict[str, Path] = {}
    for moddir in moddirs:
        if not moddir.is_dir():
            continue
        for path in sorted(moddir.rglob("*.ko*")):
            name = path.name.split(".ko")[0].replace("-", "_")
            index.setdefault(name, path)
    return index


def module_index_dir(moddir: Path) -> dict[str, Path]:
    return _module_index([moddir])


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        what = f"{path.name}: zstd -dc"
        out = run_bounded(["zstd", "-dc", str(path)], what, error=FetchError, timeout=300)
        if out.returncode != 0:
            raise FetchError(f"{what} failed: {out.err.strip()[-300:]}")
        return out.stdout
    if path.name.endswith(".gz"):
        import gzip

        return gzip.decompress(data)
    return data


def _module_depends(data: bytes) -> list[str]:
    match = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", data)
    if not match or not match.group(1):
        return []
    return [d.decode().replace("-", "_") for d in match.group(1).split(b",") if d]


def module_closure(index: dict[str, Path], wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """Modules to insmod, dependencies first; names absent from the index are built in."""
    order: list[tuple[str, bytes]] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done or name not in index:
            return
        done.add(name)
        data = _module_bytes(index[name])
        for dep in _module_depends(data):
            visit(dep)
        order.append((name, data))

    for name in wanted:
        visit(name)
    return order
