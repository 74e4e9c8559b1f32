"""The guest userspace: one uncompressed initramfs per guest suite, cached by input hash.

Uncompressed because decompression is emulated under TCG and costs more than the copy;
stdlib byte-compiled by the guest's own python so no run pays for compiling it; the
dropbear host key is made at build time so the host can pin it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bpfcompat.errors import ImageError
from bpfcompat.vm.apt import KEYRING, discover_mirror
from bpfcompat.vm.cache import (
    atomic_dir,
    cache_root,
    entry_lock,
    read_verified_manifest,
    write_manifest,
)
from bpfcompat.vm.cpio import CpioWriter
from bpfcompat.vm.kernels import KernelBuild

RECIPE_VERSION = 3
GUEST_PACKAGES = (
    "libc6",
    "busybox",
    "python3-minimal",
    "libpython3-stdlib",
    "libbpf1",
    "bpftool",
    "dropbear-bin",
    "openssh-sftp-server",
)
# Parts of the extracted tree no validator run needs; dropping them shrinks what every
# boot copies into guest memory.
TRIM = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/zoneinfo",
    "usr/share/i18n",
    "usr/share/perl5",
    "usr/share/bash-completion",
    "usr/share/common-licenses",
    "usr/share/debconf",
    "usr/share/pam",
    "usr/share/pam-configs",
    "var/cache",
    "var/lib/apt",
    "var/lib/dpkg",
    "var/log",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/lib/x86_64-linux-gnu/perl-base",
    "usr/lib/x86_64-linux-gnu/perl",
    "usr/bin/perl",
    "usr/bin/perl5.40.1",
    "usr/share/python3",
)
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
)


@dataclass(frozen=True)
class GuestImage:
    suite: str
    digest: str
    entry: Path

    @property
    def rootfs_cpio(self) -> Path:
        return self.entry / "rootfs.cpio"

    @property
    def host_key(self) -> str:
        """The dropbear host public key line (`ssh-ed25519 AAAA...`) to pin."""
        return (self.entry / "hostkey.pub").read_text().strip()

    def initrd_for(self, kernel: KernelBuild) -> Path:
        """rootfs + the kernel's NIC modules, concatenated (cpio archives stack)."""
        target = kernel.entry / f"initrd-{self.digest}.cpio"
        parts = (self.rootfs_cpio, kernel.modules_cpio)
        expected = sum(p.stat().st_size for p in parts)
        with entry_lock(target):  # kernels sharing a package share this file
            if target.is_file() and target.stat().st_size == expected:
                return target
            fd, tmp_name = tempfile.mkstemp(prefix=".initrd-", dir=kernel.entry)
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as out:
                    for part in parts:
                        with part.open("rb") as src:
                            shutil.copyfileobj(src, out, 1 << 20)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        return target
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        try:
            with tmp.open("wb") as out:
                for part in parts:
                    with part.open("rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target


GUEST_VALIDATOR_DIR = "opt/bpfcompat"


def init_script() -> str:
    return resources.files("bpfcompat.vm").joinpath("init.sh").read_text()


def validator_source() -> str:
    """The in-guest validator; baked into the image (and into its digest) so every boot
    finds it byte-compiled by the guest's own python instead of compiling it per run."""
    return resources.files("bpfcompat.validator").joinpath("validator.py").read_text()


def image_digest(suite: str) -> str:
    h = hashlib.sha256()
    for part in (
        str(RECIPE_VERSION),
        suite,
        ",".join(GUEST_PACKAGES),
        init_script(),
        ",".join(TRIM),
        ",".join(PY_TRIM),
        validator_source(),
    ):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def image_entry_dir(suite: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / "images" / f"{suite}-{image_digest(suite)}"


def cached_image(suite: str, root: Path | None = None, *, deep: bool = False) -> GuestImage | None:
    entry = image_entry_dir(suite, root)
    if read_verified_manifest(entry, deep=deep) is None:
        return None
    return GuestImage(suite, image_digest(suite), entry)


def build_image(suite: str, root: Path | None = None, *, mirror: str | None = None) -> GuestImage:
    """Return the cached image for `suite`, building it with mmdebstrap when absent."""
    hit = cached_image(suite, root, deep=True)
    if hit is not None:
        return hit
    if shutil.which("mmdebstrap") is None:
        raise ImageError("mmdebstrap not found: run scripts/setup.sh (apt-get install mmdebstrap)")
    try:
        with entry_lock(image_entry_dir(suite, root)):
            hit = cached_image(suite, root, deep=True)
            return hit if hit is not None else _build(suite, root, mirror)
    except OSError as exc:
        raise ImageError(
            f"guest image {suite}: cannot write the cache: {exc.strerror or exc}"
        ) from None


def _build(suite: str, root: Path | None, mirror: str | None) -> GuestImage:
    mirror = mirror or discover_mirror()
    entry = image_entry_dir(suite, root)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bpfcompat-image-", dir=entry.parent) as scratch:
        tree = Path(scratch) / "rootfs"
        sources = Path(scratch) / "sources.list"
        signed = f"[signed-by={KEYRING}] " if KEYRING.is_file() else ""
        sources.write_text(f"deb {signed}{mirror} {suite} main\n")
        _mmdebstrap(suite, tree, sources)
        _customise(tree)
        with atomic_dir(entry) as tmp:
            (tmp / "hostkey.pub").write_text(_host_key(tree) + "\n")
            with (tmp / "rootfs.cpio").open("wb") as fh:
                writer = CpioWriter(fh)
                writer.tree(tree)
                writer.chardev("dev/console", 5, 1)
                writer.chardev("dev/null", 1, 3, 0o666)
                writer.close()
            write_manifest(
                tmp,
                {"suite": suite, "mirror_suite": suite, "recipe": RECIPE_VERSION},
                ["rootfs.cpio", "hostkey.pub"],
            )
    built = cached_image(suite, root, deep=True)
    if built is None:
        raise ImageError(f"guest image {entry}: failed verification right after the build")
    return built


def _run(cmd: list[str], what: str, timeout: float = 900) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ImageError(f"{what}: {cmd[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"{what}: timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ImageError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc.stdout


def _mmdebstrap(suite: str, tree: Path, sources: Path) -> None:
    mode = "root" if os.geteuid() == 0 else "unshare"
    _run(
        [
            "mmdebstrap",
            "--variant=extract",
            f"--mode={mode}",
            "--format=directory",
            "--quiet",
            f"--include={','.join(GUEST_PACKAGES)}",
            suite,
            str(tree),
            str(sources),
        ],
        f"mmdebstrap {suite}",
    )


def _customise(tree: Path) -> None:
    # The extract variant unpacks but runs no maintainer scripts: make the merged-/usr
    # links, users and applet links ourselves.
    for name, target in (
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ):
        link = tree / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(target)
    for rel in TRIM:
        path = tree / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    pylibs = sorted(tree.glob("usr/lib/python3.*"))
    for pylib in pylibs:
        for sub in PY_TRIM:
            for path in pylib.glob(f"{sub}*"):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
    busybox = tree / "usr/bin/busybox"
    if not busybox.exists():
        raise ImageError("guest image: busybox missing after mmdebstrap")
    applets = _run(["chroot", str(tree), "/usr/bin/busybox", "--list"], "busybox --list")
    for applet in applets.split():
        link = tree / "usr/bin" / applet
        if (
            not link.exists()
            and not link.is_symlink()
            and not (tree / "usr/sbin" / applet).exists()
        ):
            link.symlink_to("busybox")
    etc = tree / "etc"
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shells").write_text("/bin/sh\n/usr/bin/sh\n")
    (etc / "hostname").write_text("bpfcompat-guest\n")
    (tree / "root/.ssh").mkdir(parents=True, exist_ok=True, mode=0o700)
    sftp = tree / "usr/lib/sftp-server"
    if not sftp.exists():
        sftp.symlink_to("openssh/sftp-server")
    init = tree / "init"
    init.write_text(init_script())
    init.chmod(0o755)
    # Byte-compile with the guest's own interpreter so the .pyc magic matches it.
    python = next(
        (
            p.name
            for p in sorted((tree / "usr/bin").glob("python3.*"))
            if p.name[7:].replace(".", "").isdigit()
        ),
        None,
    )
    if python is None:
        raise ImageError("guest image: no python3.X interpreter after mmdebstrap")
    libdir = f"/usr/lib/{python}"
    vdir = tree / GUEST_VALIDATOR_DIR
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "validator.py").write_text(validator_source())
    _run(
        [
            "chroot",
            str(tree),
            f"/usr/bin/{python}",
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            libdir,
            f"/{GUEST_VALIDATOR_DIR}",
        ],
        "byte-compiling the guest stdlib",
    )
    (tree / "etc/dropbear").mkdir(parents=True, exist_ok=True)


def _host_key(tree: Path) -> str:
    key = "/etc/dropbear/dropbear_ed25519_host_key"
    _run(["chroot", str(tree), "dropbearkey", "-t", "ed25519", "-f", key], "dropbearkey")
    out = _run(["chroot", str(tree), "dropbearkey", "-y", "-f", key], "dropbearkey -y")
    for line in out.splitlines():
        if line.startswith("ssh-ed25519 "):
            return " ".join(line.split()[:2])
    raise ImageError("dropbearkey printed no public key")
