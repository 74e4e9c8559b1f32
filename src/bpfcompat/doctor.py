"""`bpfcompat doctor`: what this host has and lacks for a matrix run, each missing piece
with the command that fixes it.

What counts as needed depends on the cache. QEMU always is, and so are the decompressors
that read each run kernel's BTF for the static checks. The tools that fetch kernels
(apt-get, apt-cache, dpkg-deb, a Debian mirror) are needed only while a kernel of the
matrix is not cached, and those that build the guest image (mmdebstrap, the archive
keyring, root) only while the image is not built: a host with a warm cache runs without
them. KVM is never needed (guests run under TCG without it, only slower), so its line
explains why it is or is not used rather than failing the check.
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bpfcompat import __version__
from bpfcompat.errors import BpfcompatError
from bpfcompat.matrix.config import KernelMatrix
from bpfcompat.vm.apt import KEYRING, MIRROR_ENV, discover_mirror
from bpfcompat.vm.arch import foreign_runner_problem, get_arch
from bpfcompat.vm.cache import cache_root
from bpfcompat.vm.image import cached_image, image_entry_dir
from bpfcompat.vm.kbuild import TOOLS as BUILD_TOOLS
from bpfcompat.vm.kernels import cached_kernel
from bpfcompat.vm.proc import run_bounded
from bpfcompat.vm.qemu import ACCEL_ENV
from bpfcompat.vm.spec import KernelSpec

State = Literal["ok", "missing", "optional", "info"]
MiB = 1 << 20
# QEMU binary and the Debian package that provides it, per guest architecture.
QEMU = {
    "x86_64": ("qemu-system-x86_64", "qemu-system-x86"),
    "aarch64": ("qemu-system-aarch64", "qemu-system-arm"),
}
# Program -> Debian package. Every run decompresses its kernels to read their BTF (LZ4 on
# Debian 11/12, zstd later); fetching a kernel unpacks .deb files and .ko.zst modules.
RUN_TOOLS = {"zstd": "zstd", "lz4": "lz4"}
FETCH_TOOLS = {"apt-get": "apt", "apt-cache": "apt", "dpkg-deb": "dpkg"}
CAP_SYS_CHROOT = 18  # include/uapi/linux/capability.h
# Disk a run needs beyond the cache (store, guest consoles, per-kernel initrds), and what a
# missing kernel (its .debs and extracted tree while fetching, ~100-140 MiB kept) or the
# guest image (the mmdebstrap tree while building, 29 MiB kept) adds.
DISK_BASE = 256 * MiB
DISK_PER_KERNEL = 256 * MiB
DISK_IMAGE = 768 * MiB


@dataclass(frozen=True)
class Check:
    name: str
    state: State
    detail: str
    fix: str = ""
    package: str = ""  # the Debian package that fixes it, for the one-command summary


class Host:
    """Every probe doctor makes, so a test can replace one at a time."""

    def which(self, name: str) -> str | None:
        return shutil.which(name)

    def version(self, binary: str) -> str:
        try:
            proc = run_bounded([binary, "--version"], f"{binary} --version", timeout=20)
        except BpfcompatError as exc:
            return f"cannot run: {exc}"
        lines = (proc.out or proc.err).strip().splitlines()
        return lines[0].strip() if lines else f"exit {proc.returncode}"

    def euid(self) -> int:
        return os.geteuid()

    def read_text(self, path: str) -> str | None:
        try:
            return Path(path).read_text(errors="replace")
        except OSError:
            return None

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def access(self, path: str, mode: int) -> bool:
        return os.access(path, mode)

    def env(self, name: str) -> str:
        return os.environ.get(name, "")

    def cache_root(self) -> Path:
        return cache_root()

    def free_bytes(self, path: Path) -> tuple[Path, int]:
        """Free bytes for an unprivileged writer on the file system that holds `path`,
        measured at its nearest existing ancestor (the cache may not exist yet)."""
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        st = os.statvfs(probe)
        return probe, st.f_bavail * st.f_frsize

    def kernel_release(self, spec: KernelSpec) -> str | None:
        hit = cached_kernel(spec, deep=False)
        return hit.release if hit else None

    def image_built(self, suite: str, arch: str = "x86_64") -> bool:
        return cached_image(suite, arch=arch) is not None

    def image_dir(self, suite: str, arch: str = "x86_64") -> Path:
        return image_entry_dir(suite, arch=arch)

    def foreign_problem(self, arch: str) -> str | None:
        return foreign_runner_problem(get_arch(arch))

    def mirror(self) -> str:
        return discover_mirror()


def _cap_eff(status: str | None) -> int:
    for line in (status or "").splitlines():
        if line.startswith("CapEff:"):
            try:
                return int(line.split()[1], 16)
            except (IndexError, ValueError):
                return 0
    return 0


def _cpu_flags(cpuinfo: str | None) -> set[str]:
    for line in (cpuinfo or "").splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


class Doctor:
    def __init__(self, matrix: KernelMatrix, specs: list[KernelSpec], kernels_opt: str, host: Host):
        self.matrix = matrix
        self.specs = specs
        self.kernels_opt = kernels_opt  # " --kernels FILE" for fix commands, or ""
        self.host = host
        self.sudo = "" if host.euid() == 0 else "sudo "
        self.debian = host.read_text("/etc/debian_version") is not None

    def _apt(self, *packages: str) -> str:
        if not self.debian:
            return (
                f"not a Debian-based host: install {' '.join(packages)} (Debian's names) with "
                "its package manager, or run bpfcompat in its Docker image (docs/ci.md)"
            )
        return f"{self.sudo}apt-get install -y {' '.join(packages)}"

    def checks(self) -> list[Check]:
        missing_kernels = [s for s in self.specs if self.host.kernel_release(s) is None]
        suite = self.matrix.guest_suite
        arches = list(dict.fromkeys(getattr(s, "arch", "x86_64") for s in self.specs))
        images_missing = [a for a in arches if not self.host.image_built(suite, a)]
        image_missing = bool(images_missing)
        out = self._qemu()
        out.append(self._kvm())
        out += self._run_tools()
        out += self._cache(missing_kernels, arches)
        out += self._fetch_tools(bool(missing_kernels))
        out += self._build_tools([s for s in missing_kernels if s.source_kind == "build"])
        out += self._image_tools(image_missing)
        out += self._foreign(images_missing)
        out.append(self._mirror(bool(missing_kernels) or image_missing))
        out.append(self._disk(len(missing_kernels), image_missing))
        return out

    def _qemu(self) -> list[Check]:
        arches = {getattr(s, "arch", "x86_64") for s in self.specs}
        out = []
        for arch, (binary, package) in QEMU.items():
            path = self.host.which(binary)
            if path:
                out.append(Check(binary, "ok", f"{self.host.version(path)} ({path})"))
            elif arch in arches:
                kernels = ", ".join(s.id for s in self.specs if getattr(s, "arch", "") == arch)
                out.append(
                    Check(
                        binary,
                        "missing",
                        f"not installed: boots the {arch} kernels ({kernels or 'all'})",
                        self._apt(package),
                        package,
                    )
                )
            else:
                out.append(
                    Check(
                        binary,
                        "optional",
                        f"not installed: needed only for {arch} kernels (none in this matrix)",
                        self._apt(package),
                    )
                )
        return out

    def _kvm(self) -> Check:
        """Why guests will or will not run under KVM, by the rule vm.qemu.detect_accel
        applies: the device must be usable AND the CPU must advertise vmx or svm."""
        forced = self.host.env(ACCEL_ENV).strip().lower()
        if forced in {"kvm", "tcg"}:
            return Check("kvm", "info", f"{ACCEL_ENV}={forced}: guests run under {forced}")
        slow = "TCG is used instead (emulated: works, several times slower)"
        if not self.host.exists("/dev/kvm"):
            vendor = _cpu_flags(self.host.read_text("/proc/cpuinfo"))
            module = "kvm_amd" if "svm" in vendor else "kvm_intel"
            return Check(
                "kvm",
                "info",
                f"not usable: /dev/kvm does not exist (KVM module not loaded, or a container "
                f"started without --device /dev/kvm); {slow}",
                f"{self.sudo}modprobe {module}   # in a container: docker run --device /dev/kvm",
            )
        if not self.host.access("/dev/kvm", os.R_OK | os.W_OK):
            return Check(
                "kvm",
                "info",
                f"not usable: /dev/kvm is not readable and writable by this user; {slow}",
                f'{self.sudo}usermod -aG kvm "$USER"   # then log in again; on a CI runner: '
                f"{self.sudo}chmod a+rw /dev/kvm",
            )
        flags = _cpu_flags(self.host.read_text("/proc/cpuinfo"))
        if not flags & {"vmx", "svm"}:
            return Check(
                "kvm",
                "info",
                "not usable: /dev/kvm answers, but the CPU advertises neither vmx nor svm "
                f"(no nested virtualisation for this machine), so no guest can run under it; "
                f"{slow}",
            )
        which = "vmx" if "vmx" in flags else "svm"
        return Check("kvm", "ok", f"usable: /dev/kvm read-write, the CPU has {which}")

    def _cache(self, missing_kernels: list[KernelSpec], arches: list[str]) -> list[Check]:
        out = []
        for spec in self.specs:
            release = self.host.kernel_release(spec)
            if release:
                out.append(Check(f"kernel {spec.id}", "ok", f"cached {release}"))
            else:
                out.append(
                    Check(
                        f"kernel {spec.id}",
                        "missing",
                        f"not fetched ({spec.source_label})",
                        f"bpfcompat kernels fetch {spec.id}{self.kernels_opt}",
                    )
                )
        suite = self.matrix.guest_suite
        for arch in arches:  # one image per architecture the matrix boots
            name = f"guest image {suite}" + ("" if arch == "x86_64" else f" ({arch})")
            where = self.host.image_dir(suite, arch)
            if not self.host.image_built(suite, arch):
                only = "" if arch == "x86_64" else f" --arch {arch}"
                fix = f"{self._as_root()}bpfcompat image build{only}{self.kernels_opt}"
                out.append(Check(name, "missing", f"not built ({where})", fix))
            else:
                out.append(Check(name, "ok", f"built ({where})"))
        return out

    def _build_tools(self, to_build: list[KernelSpec]) -> list[Check]:
        """What `source: build` kernels need, when one is not in the cache yet."""
        if not to_build:
            return []
        ids = ", ".join(s.id for s in to_build)
        missing = [tool for tool in BUILD_TOOLS if not self.host.which(tool)]
        if not missing:
            return [Check("kernel build tools", "ok", f"present (builds {ids})")]
        packages = "build-essential bc bison flex libelf-dev libssl-dev dwarves perl"
        return [
            Check(
                "kernel build tools",
                "missing",
                f"{', '.join(missing)} not installed: builds {ids}",
                self._apt(*packages.split()),
                packages,
            )
        ]

    def _foreign(self, images_missing: list[str]) -> list[Check]:
        """A foreign-architecture image runs that architecture's programs while it is
        built: qemu-user-static registered with binfmt_misc."""
        out = []
        for arch in images_missing:
            problem = self.host.foreign_problem(arch)
            if problem is not None:
                fix = self._apt("qemu-user-static", "binfmt-support")
                out.append(Check(f"binfmt {arch}", "missing", problem, fix, "qemu-user-static"))
        return out

    def _as_root(self) -> str:
        """A command prefix running bpfcompat as root on this user's cache."""
        if not self.sudo:
            return ""
        return 'sudo env "PATH=$PATH" "XDG_CACHE_HOME=${XDG_CACHE_HOME:-$HOME/.cache}" '

    def _needed(self, name: str, needed: bool, why: str, detail: str, fix: str, pkg: str) -> Check:
        if needed:
            return Check(name, "missing", f"{detail}: {why}", fix, pkg)
        return Check(name, "info", f"{detail}: not needed while the cache is complete", fix)

    def _run_tools(self) -> list[Check]:
        out = []
        for tool, package in RUN_TOOLS.items():
            path = self.host.which(tool)
            if path:
                out.append(Check(tool, "ok", path))
            else:
                out.append(
                    Check(
                        tool,
                        "missing",
                        "not installed: decompresses the kernels to read their BTF for the "
                        "static checks of every run (without it they are left unchecked)",
                        self._apt(package),
                        package,
                    )
                )
        return out

    def _fetch_tools(self, needed: bool) -> list[Check]:
        out = []
        for tool, package in FETCH_TOOLS.items():
            path = self.host.which(tool)
            if path:
                out.append(Check(tool, "ok", path))
                continue
            out.append(
                self._needed(
                    tool,
                    needed,
                    "fetches the kernels",
                    "not installed",
                    self._apt(package),
                    package,
                )
            )
        return out

    def _image_tools(self, needed: bool) -> list[Check]:
        why = "builds the guest image"
        out = []
        path = self.host.which("mmdebstrap")
        if path:
            out.append(Check("mmdebstrap", "ok", path))
        else:
            out.append(
                self._needed(
                    "mmdebstrap",
                    needed,
                    why,
                    "not installed",
                    self._apt("mmdebstrap"),
                    "mmdebstrap",
                )
            )
        if self.host.exists(str(KEYRING)):
            out.append(Check("debian-archive-keyring", "ok", str(KEYRING)))
        else:
            out.append(
                self._needed(
                    "debian-archive-keyring",
                    needed,
                    "verifies the guest suite's packages",
                    f"{KEYRING} missing",
                    self._apt("debian-archive-keyring"),
                    "debian-archive-keyring",
                )
            )
        out.append(self._privilege(needed))
        return out

    def _privilege(self, needed: bool) -> Check:
        """Building the image runs mmdebstrap (--mode=root as root, --mode=unshare
        otherwise) and then chroot into the tree, which needs CAP_SYS_CHROOT."""
        if self.host.euid() == 0:
            return Check("root", "ok", "running as root: the guest image can be built")
        caps = _cap_eff(self.host.read_text("/proc/self/status"))
        if caps >> CAP_SYS_CHROOT & 1:
            if self.host.which("newuidmap"):
                return Check(
                    "root",
                    "ok",
                    "not root, but CAP_SYS_CHROOT is effective: the image build runs "
                    "mmdebstrap --mode=unshare (needs unprivileged user namespaces)",
                )
            return self._needed(
                "root",
                needed,
                "mmdebstrap --mode=unshare needs newuidmap",
                "not root",
                self._apt("uidmap"),
                "uidmap",
            )
        return self._needed(
            "root",
            needed,
            "building the guest image needs root (mmdebstrap --mode=root, chroot)",
            "not root and no CAP_SYS_CHROOT",
            f"{self._as_root()}bpfcompat image build{self.kernels_opt} && sudo chown -R "
            f'"$(id -u):$(id -g)" "{self.host.cache_root()}"',
            "",
        )

    def _mirror(self, needed: bool) -> Check:
        try:
            uri = self.host.mirror()
        except BpfcompatError as exc:
            return self._needed(
                "debian mirror",
                needed,
                "kernels and the guest image come from a Debian archive",
                f"none found ({exc})",
                f"export {MIRROR_ENV}=<URI of a Debian archive, ending in /debian>",
                "",
            )
        source = f"from {MIRROR_ENV}" if self.host.env(MIRROR_ENV).strip() else "from apt sources"
        return Check("debian mirror", "ok", f"{uri} ({source})")

    def _disk(self, missing_kernels: int, image_missing: bool) -> Check:
        root = self.host.cache_root()
        probe, free = self.host.free_bytes(root)
        need = DISK_BASE + missing_kernels * DISK_PER_KERNEL + (DISK_IMAGE if image_missing else 0)
        detail = f"{free / MiB:,.0f} MiB free at {probe} (the cache is {root})"
        if not self.host.access(str(probe), os.W_OK):
            return Check(
                "disk",
                "missing",
                f"{probe} is not writable by this user (the cache is {root})",
                "set XDG_CACHE_HOME to a directory this user can write",
            )
        if free < need:
            return Check(
                "disk",
                "missing",
                f"{detail}; about {need / MiB:,.0f} MiB needed for what is not cached yet",
                f"set XDG_CACHE_HOME to a directory on a larger file system, or free "
                f"{(need - free) / MiB:,.0f} MiB under {probe}",
            )
        return Check("disk", "ok", detail)


def run_doctor(
    matrix: KernelMatrix,
    matrix_path: Path,
    specs: list[KernelSpec],
    kernels_given: bool,
    echo: Callable[[str], None],
    host: Host | None = None,
) -> int:
    """Print every check; 0 when everything a run needs is here, 1 otherwise."""
    host = host or Host()
    kernels_opt = f" --kernels {matrix_path}" if kernels_given else ""
    checks = Doctor(matrix, specs, kernels_opt, host).checks()
    echo(
        f"bpfcompat {__version__}, Python {platform.python_version()}, {platform.machine()}; "
        f"matrix {matrix_path} ({len(specs)} kernel(s), guest suite {matrix.guest_suite})"
    )
    width = max(len(c.name) for c in checks)
    for check in checks:
        echo(f"  {check.state:8}  {check.name:{width}}  {check.detail}")
        if check.fix and check.state != "ok":
            echo(f"  {'':8}  {'':{width}}  fix: {check.fix}")
    missing = [c for c in checks if c.state == "missing"]
    if not missing:
        echo("everything a run needs is here")
        return 0
    packages = list(dict.fromkeys(c.package for c in missing if c.package))
    echo(f"{len(missing)} missing: {', '.join(c.name for c in missing)}")
    if packages and host.read_text("/etc/debian_version") is not None:
        sudo = "" if host.euid() == 0 else "sudo "
        echo(f"install the missing packages at once: {sudo}apt-get install -y {' '.join(packages)}")
    return 1
