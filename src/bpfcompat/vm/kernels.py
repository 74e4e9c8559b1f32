"""Fetch Debian kernel packages and extract what a direct-kernel QEMU boot needs.

Package layouts differ by release (vmlinuz in /boot or in /usr/lib/modules, modules as
.ko or .ko.xz, meta packages on sid), so files are found by walking, never assumed.
Only the NIC modules (and their dependencies) are kept: the guest needs nothing else.
"""

from __future__ import annotations

import lzma
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bpfcompat.errors import FetchError
from bpfcompat.vm.apt import AptWorkspace, discover_mirror, linux_dependencies
from bpfcompat.vm.cache import (
    atomic_dir,
    cache_root,
    entry_lock,
    read_verified_manifest,
    write_manifest,
)
from bpfcompat.vm.cpio import CpioWriter
from bpfcompat.vm.proc import run_bounded
from bpfcompat.vm.spec import KernelSpec

# The guest talks SSH over virtio-net; on some releases virtio_pci is a module too.
NIC_MODULES = ("virtio_pci", "virtio_net")
CACHE_LAYOUT = 2  # bump when the entry layout changes


@dataclass(frozen=True)
class KernelBuild:
    """A fetched kernel, ready to boot."""

    package: str
    version: str
    release: str
    entry: Path

    @property
    def vmlinuz(self) -> Path:
        return self.entry / "vmlinuz"

    @property
    def config(self) -> Path:
        return self.entry / "config"

    @property
    def modules_cpio(self) -> Path:
        return self.entry / "modules.cpio"

    def config_value(self, option: str) -> str | None:
        try:
            text = self.config.read_text(errors="replace")
        except OSError:
            return None
        match = re.search(rf"^{re.escape(option)}=(.*)$", text, re.M)
        return match.group(1) if match else None


def kernel_entry_dir(spec: KernelSpec, root: Path | None = None) -> Path:
    return (root or cache_root()) / "kernels" / f"{spec.suite}_{spec.package}"


def cached_kernel(
    spec: KernelSpec, root: Path | None = None, *, deep: bool = True
) -> KernelBuild | None:
    entry = kernel_entry_dir(spec, root)
    meta = read_verified_manifest(entry, deep=deep)
    if meta is None or meta.get("layout") != CACHE_LAYOUT:
        return None
    return KernelBuild(meta["package"], meta["version"], meta["release"], entry)


def fetch_kernel(
    spec: KernelSpec, root: Path | None = None, *, mirror: str | None = None
) -> KernelBuild:
    """Return the cached kernel, or download and extract it (atomically)."""
    hit = cached_kernel(spec, root)
    if hit is not None:
        return hit
    root = root or cache_root()
    try:
        with entry_lock(kernel_entry_dir(spec, root)):
            # Another thread or process may have fetched it while we waited.
            hit = cached_kernel(spec, root)
            return hit if hit is not None else _fetch(spec, root, mirror)
    except OSError as exc:  # disk full, permissions: the atomic dir left nothing behind
        raise FetchError(
            f"kernel {spec.id}: cannot write the cache under {root}: {exc.strerror or exc}"
        ) from None


def _fetch(spec: KernelSpec, root: Path, mirror: str | None) -> KernelBuild:
    workspace = AptWorkspace(root / "apt" / spec.suite, mirror or discover_mirror(), (spec.suite,))
    entry = kernel_entry_dir(spec, root)
    with tempfile.TemporaryDirectory(prefix="bpfcompat-fetch-", dir=root) as scratch_name:
        scratch = Path(scratch_name)
        with entry_lock(workspace.root):  # one apt at a time per private lists dir
            workspace.prepare()
            debs, version = _download_with_deps(workspace, spec.package, scratch / "debs")
        tree = scratch / "tree"
        for deb in debs:
            _extract_deb(deb, tree)
        with atomic_dir(entry) as tmp:
            release = _assemble(tree, tmp, spec.package)
            write_manifest(
                tmp,
                {
                    "layout": CACHE_LAYOUT,
                    "package": spec.package,
                    "version": version,
                    "release": release,
                    "suite": spec.suite,
                },
                ["vmlinuz", "config", "modules.cpio"],
            )
    built = cached_kernel(spec, root)
    if built is None:
        raise FetchError(f"kernel {spec.id}: cache entry {entry} failed verification after fetch")
    return built


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


def _extract_deb(deb: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    what = f"{deb.name}: dpkg-deb -x"
    proc = run_bounded(["dpkg-deb", "-x", str(deb), str(dest)], what, error=FetchError, timeout=600)
    if proc.returncode != 0:
        raise FetchError(f"{what} failed: {proc.err.strip()[-300:]}")


def _find_vmlinuz(tree: Path) -> tuple[Path, str]:
    for candidate in sorted(tree.glob("boot/vmlinuz-*")):
        return candidate, candidate.name.removeprefix("vmlinuz-")
    for moddir in ("usr/lib/modules", "lib/modules"):
        for candidate in sorted(tree.glob(f"{moddir}/*/vmlinuz*")):
            return candidate, candidate.parent.name
    raise FetchError("no vmlinuz found in the kernel package(s)")


def _find_config(tree: Path, release: str) -> Path | None:
    for pattern in (
        f"boot/config-{release}",
        f"usr/lib/modules/{release}/config",
        f"lib/modules/{release}/config",
    ):
        path = tree / pattern
        if path.is_file():
            return path
    return None


def _module_index(tree: Path, release: str) -> dict[str, Path]:
    """Module name (underscored) -> file, from whichever modules dir the package used."""
    index: dict[str, Path] = {}
    for moddir in (tree / "usr/lib/modules" / release, tree / "lib/modules" / release):
        for path in moddir.rglob("*.ko*"):
            name = path.name.split(".ko")[0].replace("-", "_")
            index.setdefault(name, path)
    return index


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


def _assemble(tree: Path, out: Path, package: str) -> str:
    vmlinuz, release = _find_vmlinuz(tree)
    shutil.copyfile(vmlinuz, out / "vmlinuz")
    config = _find_config(tree, release)
    if config is not None:
        shutil.copyfile(config, out / "config")
    else:
        (out / "config").write_text("")
    modules = module_closure(_module_index(tree, release), NIC_MODULES)
    with (out / "modules.cpio").open("wb") as fh:
        writer = CpioWriter(fh)
        writer.directory("bpfcompat/modules")
        for name, data in modules:
            writer.file(f"bpfcompat/modules/{name}.ko", data)
        writer.file("bpfcompat/modules/order", "".join(f"{n}\n" for n, _ in modules).encode())
        writer.close()
    if not any(n == "virtio_net" for n, _ in modules) and _module_index(tree, release):
        # virtio_net neither shipped as a module nor absent entirely: check it is built in.
        builtin = list(tree.rglob("modules.builtin"))
        if builtin and "virtio_net" not in builtin[0].read_text():
            raise FetchError(f"{package}: virtio_net is neither a module nor built in")
    return release
