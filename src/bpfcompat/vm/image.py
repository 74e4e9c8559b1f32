"""The guest userspace: one uncompressed initramfs per guest suite, cached by input hash.

Every byte of the initramfs is unpacked by the emulated CPU on every boot, so the image
holds only what a validator run uses: the shared-library closure of python, bpftool,
dropbear, sftp-server and the libraries the validator loads through ctypes; a static
busybox for init and commands; the stdlib as byte code compiled by the guest's own
python (no sources, no test suites, no extension modules that pull in OpenSSL or
ncurses). Uncompressed because decompression is emulated too and costs more than the
copy. The dropbear host key made at build time is what a plain boot's host pins; a guest
in agent mode (snapshots) is handed a fresh one per run instead (vm/handoff.py).

Images are keyed by (suite, architecture). A foreign architecture's image is built the
way Debian builds foreign chroots: its programs (the loader listing libraries, python
byte-compiling the stdlib, dropbearkey, busybox) run through qemu-user-static and
binfmt_misc.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bpfcompat.errors import ImageError
from bpfcompat.vm.apt import KEYRING, discover_mirror
from bpfcompat.vm.arch import Arch, foreign_runner_problem, get_arch
from bpfcompat.vm.cache import (
    atomic_dir,
    cache_root,
    entry_lock,
    read_verified_manifest,
    sha256_file,
    write_manifest,
)
from bpfcompat.vm.cpio import CpioWriter
from bpfcompat.vm.kernels import KernelBuild
from bpfcompat.vm.proc import run_bounded

RECIPE_VERSION = 5
GUEST_PACKAGES = (
    "libc6",
    "busybox-static",
    "python3-minimal",
    "libpython3-stdlib",
    "libbpf1",
    "bpftool",
    "dropbear-bin",
    "openssh-sftp-server",
)
# Executables the guest runs; their shared-library closure comes with them. busybox is
# busybox-static: init and every shell command start without the dynamic loader.
BUSYBOX = "usr/bin/busybox"
ELF_ROOTS = (
    "usr/sbin/bpftool",
    "usr/sbin/dropbear",
    "usr/lib/openssh/sftp-server",
)
# Loaded by name through ctypes by the validator, so no ELF names them.
CTYPES_LIBS = ("libbpf.so.1", "libc.so.6")
# Copied whole from the extracted tree.
COPY_TREES = ("etc", "root")
# Stdlib parts no validator run or functional test needs.
PY_TRIM = (
    "test",
    "ensurepip",
    "idlelib",
    "pydoc_data",
    "tkinter",
    "turtledemo",
    "lib2to3",
    "venv",
    "__phello__",
    "config-3",
    "site-packages",
    "dist-packages",
)
# Extension modules left out: test modules, and those whose libraries (OpenSSL,
# Berkeley DB, SQLite, ncurses, readline) would dominate the image. hashlib falls back
# to its built-in implementations without _hashlib.
DYNLOAD_SKIP = (
    "_test",
    "_ctypes_test",
    "_xxtest",
    "xx",
    "_ssl",
    "_hashlib",
    "_dbm",
    "_gdbm",
    "_sqlite3",
    "_curses",
    "readline",
    "_tkinter",
)


@dataclass(frozen=True)
class GuestImage:
    suite: str
    digest: str
    entry: Path
    arch: str = "x86_64"

    @property
    def rootfs_cpio(self) -> Path:
        return self.entry / "rootfs.cpio"

    @property
    def host_key(self) -> str:
        """The dropbear host public key line (`ssh-ed25519 AAAA...`) to pin."""
        return (self.entry / "hostkey.pub").read_text().strip()

    def initrd_for(self, kernel: KernelBuild) -> Path:
        """rootfs + the kernel's NIC modules and config, concatenated (cpio archives stack).

        Reused only when its sha256 matches the one recorded when it was written: a
        same-size corruption would make every boot of this kernel panic, unexplained."""
        if kernel.arch != self.arch:
            raise ImageError(f"a {self.arch} guest image cannot boot a {kernel.arch} kernel")
        target = kernel.entry / f"initrd-{self.digest}.cpio"
        digest_file = target.with_name(target.name + ".sha256")
        parts = (self.rootfs_cpio, kernel.modules_cpio)
        with entry_lock(target):  # kernels sharing a package share this file
            with contextlib.suppress(OSError):
                if target.is_file() and sha256_file(target) == digest_file.read_text().strip():
                    return target
            fd, tmp_name = tempfile.mkstemp(prefix=".initrd-", dir=kernel.entry)
            tmp = Path(tmp_name)
            try:
                digest = hashlib.sha256()
                with os.fdopen(fd, "wb") as out:
                    for part in parts:
                        with part.open("rb") as src:
                            for block in iter(lambda src=src: src.read(1 << 20), b""):
                                digest.update(block)
                                out.write(block)
                os.replace(tmp, target)
                digest_file.write_text(digest.hexdigest() + "\n")
            finally:
                tmp.unlink(missing_ok=True)
        return target


GUEST_VALIDATOR_DIR = "opt/bpfcompat"  # on the guest's PYTHONPATH: holds bpfcompat/validator/
# The guest-side job driver, run over SSH; arguments follow.
GUEST_DRIVER_COMMAND = f"PYTHONPATH=/{GUEST_VALIDATOR_DIR} python3 -m bpfcompat.validator.driver"
# The guest gets the validator package alone: its parent package is a bare namespace, so
# nothing the host side of bpfcompat imports can reach the guest.
_GUEST_PARENT_INIT = '"""bpfcompat in the guest: only the validator package is here."""\n'


def init_script() -> str:
    return resources.files("bpfcompat.vm").joinpath("init.sh").read_text()


GUEST_AGENT = "bpfcompat/agent.py"  # init runs it when no key is on the command line


def agent_script() -> str:
    return resources.files("bpfcompat.vm").joinpath("guest_agent.py").read_text()


def guest_sources() -> dict[str, str]:
    """The validator package (path below GUEST_VALIDATOR_DIR -> text), its driver
    included; baked into the image (and its digest) so every boot finds it byte-compiled
    by the guest's own python, nothing to upload."""
    files = resources.files("bpfcompat.validator")
    sources = {"bpfcompat/__init__.py": _GUEST_PARENT_INIT}
    for entry in sorted(files.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".py"):
            sources[f"bpfcompat/validator/{entry.name}"] = entry.read_text()
    return sources


def image_digest(suite: str, arch: str = "x86_64", sources: dict[str, str] | None = None) -> str:
    h = hashlib.sha256()
    for part in (
        str(RECIPE_VERSION),
        suite,
        arch,
        ",".join(GUEST_PACKAGES),
        init_script(),
        agent_script(),
        ",".join(ELF_ROOTS + CTYPES_LIBS + COPY_TREES),
        ",".join(PY_TRIM + DYNLOAD_SKIP),
        *(sources or guest_sources()).values(),
    ):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def image_entry_dir(suite: str, root: Path | None = None, arch: str = "x86_64") -> Path:
    name = f"{suite}-{get_arch(arch).debian}-{image_digest(suite, arch)}"  # as _build names it
    return (root or cache_root()) / "images" / name


def cached_image(
    suite: str, root: Path | None = None, *, deep: bool = False, arch: str = "x86_64"
) -> GuestImage | None:
    entry = image_entry_dir(suite, root, arch)
    if read_verified_manifest(entry, deep=deep) is None:
        return None
    return GuestImage(suite, image_digest(suite, arch), entry, arch)


def build_image(
    suite: str, root: Path | None = None, *, mirror: str | None = None, arch: str = "x86_64"
) -> GuestImage:
    """Return the cached image for (`suite`, `arch`), building it with mmdebstrap when absent."""
    hit = cached_image(suite, root, deep=True, arch=arch)
    if hit is not None:
        return hit
    if shutil.which("mmdebstrap") is None:
        raise ImageError("mmdebstrap not found: run scripts/setup.sh (apt-get install mmdebstrap)")
    problem = foreign_runner_problem(get_arch(arch))
    if problem is not None:
        raise ImageError(f"guest image {suite}/{get_arch(arch).debian}: {problem}")
    try:
        with entry_lock(image_entry_dir(suite, root, arch)):
            hit = cached_image(suite, root, deep=True, arch=arch)
            return hit if hit is not None else _build(suite, root, mirror, get_arch(arch))
    except OSError as exc:
        raise ImageError(
            f"guest image {suite}/{get_arch(arch).debian}: cannot write the cache: "
            f"{exc.strerror or exc}"
        ) from None


def _build(suite: str, root: Path | None, mirror: str | None, arch: Arch) -> GuestImage:
    mirror = mirror or discover_mirror()
    # The validator baked in and the digest naming the entry come from one reading of
    # the sources, so an edit during the build cannot give an entry the wrong name.
    baked = guest_sources()
    digest = image_digest(suite, arch.name, baked)
    entry = (root or cache_root()) / "images" / f"{suite}-{arch.debian}-{digest}"
    entry.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bpfcompat-image-", dir=entry.parent) as scratch:
        tree = Path(scratch) / "rootfs"
        sources = Path(scratch) / "sources.list"
        signed = f"[signed-by={KEYRING}] " if KEYRING.is_file() else ""
        sources.write_text(f"deb {signed}{mirror} {suite} main\n")
        _mmdebstrap(suite, tree, sources, arch)
        _prepare(tree)
        host_key = _host_key(tree)
        slim = Path(scratch) / "slim"
        _slim(tree, slim, arch)
        _finish(slim, baked)
        with atomic_dir(entry) as tmp:
            (tmp / "hostkey.pub").write_text(host_key + "\n")
            with (tmp / "rootfs.cpio").open("wb") as fh:
                writer = CpioWriter(fh)
                writer.tree(slim)
                writer.chardev("dev/console", 5, 1)
                writer.chardev("dev/null", 1, 3, 0o666)
                writer.close()
            write_manifest(
                tmp,
                {"suite": suite, "arch": arch.name, "recipe": RECIPE_VERSION},
                ["rootfs.cpio", "hostkey.pub"],
            )
    if read_verified_manifest(entry, deep=True) is None:
        raise ImageError(f"guest image {entry}: failed verification right after the build")
    return GuestImage(suite, digest, entry, arch.name)


def _run(cmd: list[str], what: str, timeout: float = 900, stall: float = 300) -> str:
    proc = run_bounded(cmd, what, error=ImageError, timeout=timeout, stall=stall)
    if proc.returncode != 0:
        tail = (proc.err or proc.out).strip().splitlines()[-3:]
        raise ImageError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc.out


def _mmdebstrap(suite: str, tree: Path, sources: Path, arch: Arch) -> None:
    mode = "root" if os.geteuid() == 0 else "unshare"
    _run(
        [
            "mmdebstrap",
            "--variant=extract",
            f"--mode={mode}",
            f"--architectures={arch.debian}",
            "--format=directory",
            "--quiet",
            f"--include={','.join(GUEST_PACKAGES)}",
            suite,
            str(tree),
            str(sources),
        ],
        f"mmdebstrap {suite}/{arch.debian}",
    )


def _prepare(tree: Path) -> None:
    """Make the extracted suite runnable in a chroot: the extract variant unpacks but
    runs no maintainer scripts, so the merged-/usr links and users are ours to make."""
    for name, target in (
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ):
        link = tree / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(target)
    etc = tree / "etc"
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shells").write_text("/bin/sh\n/usr/bin/sh\n")
    (etc / "hostname").write_text("bpfcompat-guest\n")
    (etc / "dropbear").mkdir(parents=True, exist_ok=True)
    (tree / "root/.ssh").mkdir(parents=True, exist_ok=True, mode=0o700)


def _python_name(tree: Path) -> str:
    for path in sorted((tree / "usr/bin").glob("python3.*")):
        if path.name[7:].replace(".", "").isdigit():
            return path.name
    raise ImageError("guest image: no python3.X interpreter after mmdebstrap")


def _slim(tree: Path, slim: Path, arch: Arch) -> None:
    """Copy into `slim` only what the guest runs: ELF roots and extension modules with
    their shared-library closure, the stdlib, /etc and /root."""
    python = _python_name(tree)
    libdir = f"usr/lib/{python}"
    if not (tree / BUSYBOX).is_file():
        raise ImageError("guest image: busybox missing after mmdebstrap")
    keep = _Keep(tree, slim)
    keep.path(BUSYBOX)
    for name in ("bin", "sbin", "lib", "lib64"):
        keep.path(name)
    for rel in COPY_TREES:
        keep.tree(rel)
    for dirpath, dirnames, filenames in os.walk(tree / libdir):
        rel_dir = os.path.relpath(dirpath, tree)
        top = os.path.relpath(dirpath, tree / libdir).split(os.sep)[0]
        dirnames[:] = [
            d
            for d in dirnames
            if d != "__pycache__" and not (rel_dir == libdir and d.startswith(PY_TRIM))
        ]
        for name in filenames:
            if rel_dir == libdir and name.startswith(PY_TRIM):
                continue
            if top == "lib-dynload" and name.startswith(DYNLOAD_SKIP):
                continue
            keep.path(f"{rel_dir}/{name}")
    roots = [f"usr/bin/{python}", *ELF_ROOTS]
    roots += [f"usr/lib/{arch.multiarch}/{lib}" for lib in CTYPES_LIBS]
    roots += [rel for rel in keep.files if rel.endswith(".so")]
    for root in roots:
        keep.path(root)
        for lib in _needed_libs(tree, "/" + root, arch.loader):
            keep.path(lib)
    keep.path("usr/bin/python3")
    sftp = slim / "usr/lib/sftp-server"  # where dropbear looks for the SFTP subsystem
    if not sftp.is_symlink():
        sftp.symlink_to("openssh/sftp-server")


class _Keep:
    """Copies paths from `tree` to `slim`, following symlinks inside `tree` as the guest
    would (an absolute link target is relative to the tree), keeping every link passed."""

    def __init__(self, tree: Path, slim: Path) -> None:
        self.src = tree
        self.dst = slim
        self.files: list[str] = []
        self._done: set[str] = set()

    def path(self, rel: str) -> None:
        parts = rel.split("/")
        current: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                current = current[:-1]  # never above the tree's root, as in a chroot
                continue
            current.append(part)
            here = "/".join(current)
            src = self.src / here
            if src.is_symlink():
                hops += 1
                if hops > 40:
                    raise ImageError(f"guest image: symlink loop at /{here}")
                target = os.readlink(src)
                self._link(here, target)
                base = [] if target.startswith("/") else current[:-1]
                parts = [*base, *target.split("/"), *parts]
                current = []
        if current:
            self._copy("/".join(current))

    def tree(self, rel: str) -> None:
        for dirpath, dirnames, filenames in os.walk(self.src / rel):
            here = os.path.relpath(dirpath, self.src)
            self._copy(here)  # empty directories too, with their modes
            links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            for name in [*filenames, *links]:
                self.path(f"{here}/{name}")

    def _link(self, rel: str, target: str) -> None:
        if rel in self._done:
            return
        self._done.add(rel)
        dst = self.dst / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(target)

    def _copy(self, rel: str) -> None:
        if rel in self._done:
            return
        self._done.add(rel)
        src, dst = self.src / rel, self.dst / rel
        if not src.exists():
            return  # a link into what the guest makes at boot (/run, /proc)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            dst.mkdir(exist_ok=True)
            shutil.copymode(src, dst)
            return
        shutil.copy2(src, dst)
        self.files.append(rel)


def _needed_libs(tree: Path, binary: str, loader: str) -> list[str]:
    """The shared libraries `binary` loads, as the tree's own dynamic loader resolves
    them (never call this on a static executable: the loader crashes on those)."""
    proc = run_bounded(
        ["chroot", str(tree), loader, "--list", binary],
        f"guest image: listing the libraries of {binary}",
        error=ImageError,
        timeout=60,
    )
    if proc.returncode != 0:
        tail = (proc.err or proc.out).strip().splitlines()[-1:]
        why = " ".join(tail) or f"exit {proc.returncode}"
        raise ImageError(f"guest image: listing the libraries of {binary}: {why}")
    libs = []
    for line in proc.out.splitlines():
        if "not found" in line:
            raise ImageError(f"guest image: {binary} needs a library the suite lacks: {line}")
        words = line.split()
        path = words[2] if len(words) >= 3 and words[1] == "=>" else words[0]
        if path.startswith("/"):
            libs.append(path.lstrip("/"))
    return libs


def _finish(slim: Path, sources: dict[str, str]) -> None:
    """Busybox applets for every command no real binary provides, /init, the validator
    and its driver, and the stdlib compiled by the guest's python, sources dropped."""
    applets = _run(["chroot", str(slim), "/usr/bin/busybox", "--list"], "busybox --list")
    for applet in applets.split():
        link = slim / "usr/bin" / applet
        if (
            not link.exists()
            and not link.is_symlink()
            and not (slim / "usr/sbin" / applet).exists()
        ):
            link.symlink_to("busybox")
    init = slim / "init"
    init.write_text(init_script())
    init.chmod(0o755)
    agent = slim / GUEST_AGENT
    agent.parent.mkdir(parents=True, exist_ok=True)
    agent.write_text(agent_script())
    for name in ("tmp", "run", "proc", "sys", "dev"):
        (slim / name).mkdir(exist_ok=True)
    python = _python_name(slim)
    libdir = f"/usr/lib/{python}"
    vdir = slim / GUEST_VALIDATOR_DIR
    for name, text in sources.items():
        (vdir / name).parent.mkdir(parents=True, exist_ok=True)
        (vdir / name).write_text(text)
    # Legacy-layout .pyc files beside no source: imported directly, half the bytes.
    # Not -q: a line per file feeds the stall detector, and under qemu-user (a foreign
    # arch) the stdlib takes a minute of CPU, many more on a loaded host.
    compile_cmd = ["chroot", str(slim), f"/usr/bin/{python}", "-B", "-m", "compileall"]
    _run([*compile_cmd, "-b", libdir], "byte-compiling the guest stdlib", timeout=3600)
    for path in (slim / libdir.lstrip("/")).rglob("*.py"):
        path.unlink()
    _run([*compile_cmd, f"/{GUEST_VALIDATOR_DIR}"], "byte-compiling the validator")


def _host_key(tree: Path) -> str:
    key = "/etc/dropbear/dropbear_ed25519_host_key"
    _run(["chroot", str(tree), "dropbearkey", "-t", "ed25519", "-f", key], "dropbearkey")
    out = _run(["chroot", str(tree), "dropbearkey", "-y", "-f", key], "dropbearkey -y")
    for line in out.splitlines():
        if line.startswith("ssh-ed25519 "):
            return " ".join(line.split()[:2])
    raise ImageError("dropbearkey printed no public key")
