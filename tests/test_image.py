"""The guest image: only the runtime closure goes in, and that closure really runs.

The closure is checked by running the image's own programs in a chroot of the real
cached image (the setup script builds it), so a library the copy missed fails here
rather than as an obscure boot failure.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bpfcompat.errors import ImageError
from bpfcompat.matrix.config import default_kernels_file, load_kernel_matrix
from bpfcompat.vm.image import GUEST_VALIDATOR_DIR, _Keep, build_image


def test_keep_resolves_absolute_and_dotdot_links_inside_the_tree(tmp_path: Path) -> None:
    """An absolute link target means the tree's root, as in the guest; `..` never climbs
    out of it. (An early version of the copier wrote through such a link to the host.)"""
    tree, slim = tmp_path / "tree", tmp_path / "slim"
    (tree / "usr/sbin").mkdir(parents=True)
    (tree / "etc/alternatives").mkdir(parents=True)
    (tree / "usr/sbin/rmt-tar").write_text("real")
    (tree / "etc/alternatives/rmt").symlink_to("/usr/sbin/rmt-tar")
    (tree / "usr/sbin/rmt").symlink_to("/etc/alternatives/rmt")
    (tree / "usr/sbin/up").symlink_to("../../../../../usr/sbin/rmt-tar")
    (tree / "etc/resolv.conf").symlink_to("/run/resolv.conf")  # made at boot
    keep = _Keep(tree, slim)
    keep.path("usr/sbin/rmt")
    keep.path("usr/sbin/up")
    keep.path("etc/resolv.conf")
    assert os.readlink(slim / "usr/sbin/rmt") == "/etc/alternatives/rmt"
    assert os.readlink(slim / "etc/alternatives/rmt") == "/usr/sbin/rmt-tar"
    assert (slim / "usr/sbin/rmt-tar").read_text() == "real"
    assert os.readlink(slim / "usr/sbin/up") == "../../../../../usr/sbin/rmt-tar"
    assert os.readlink(slim / "etc/resolv.conf") == "/run/resolv.conf"
    assert keep.files == ["usr/sbin/rmt-tar"]


def test_keep_refuses_a_link_loop(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").symlink_to("/b")
    (tree / "b").symlink_to("/a")
    with pytest.raises(ImageError, match="symlink loop"):
        _Keep(tree, tmp_path / "slim").path("a")


def _extract(cpio: Path, dest: Path) -> None:
    """Unpack a newc archive (regular files, directories, symlinks)."""
    data = cpio.read_bytes()
    pos = 0
    while True:
        header = data[pos : pos + 110]
        assert header[:6] == b"070701", f"bad cpio header at {pos}"
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos : pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            return
        target = dest / name
        kind = mode & 0o170000
        if kind == 0o040000:
            target.mkdir(parents=True, exist_ok=True)
        elif kind == 0o120000:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(body.decode())
        elif kind == 0o100000:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
            target.chmod(mode & 0o7777)


@pytest.fixture(scope="module", params=["x86_64", "aarch64"])
def image_root(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image of each architecture the default matrix uses; the arm64 one runs its
    programs through qemu-user-static and binfmt_misc, as it was built."""
    if os.geteuid() != 0:
        pytest.fail("the image closure test chroots: run it as root (CI does)", pytrace=False)
    suite = load_kernel_matrix(default_kernels_file()).guest_suite
    root = tmp_path_factory.mktemp(f"image-{request.param}")
    _extract(build_image(suite, arch=request.param).rootfs_cpio, root)
    machine = subprocess.run(
        ["chroot", str(root), "/usr/bin/busybox", "uname", "-m"], capture_output=True, text=True
    ).stdout.strip()
    assert machine == request.param  # qemu-user reports the emulated machine
    return root


def _chroot(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["chroot", str(root), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/sbin:/usr/bin"},
        check=False,
    )


def test_image_programs_find_every_library_they_load(image_root: Path) -> None:
    checks = [
        ("/usr/sbin/bpftool", "version"),
        ("/usr/sbin/dropbear", "-V"),
        ("/usr/lib/sftp-server", "-h"),
        ("/bin/sh", "-c", "grep -c root /etc/passwd && timeout 5 true && echo shell-ok"),
    ]
    for argv in checks:
        proc = _chroot(image_root, *argv)
        out = proc.stdout + proc.stderr
        assert "error while loading shared libraries" not in out, (argv, out)
        assert proc.returncode != 127, (argv, out)
    assert "shell-ok" in _chroot(image_root, "/bin/sh", "-c", "echo shell-ok").stdout


def test_image_python_runs_the_validator_from_byte_code(image_root: Path) -> None:
    """The stdlib ships as byte code only; the validator, its driver, ctypes over libbpf
    and libc, and the modules functional tests commonly use all import."""
    script = (
        "import sys, ctypes, hashlib, socket, subprocess, json, argparse, shlex, signal;"
        f"sys.path.insert(0, '/{GUEST_VALIDATOR_DIR}');"
        "import bpfcompat.validator.run as validator, bpfcompat.validator.driver;"
        "libbpf = ctypes.CDLL('libbpf.so.1'); ctypes.CDLL('libc.so.6');"
        "print('v', libbpf.libbpf_major_version(),"
        " hashlib.sha256(b'x').hexdigest()[:8], validator.__file__)"
    )
    proc = _chroot(image_root, "/usr/bin/python3", "-c", script)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("v 1 2d711642 "), proc.stdout
    stdlib = next((image_root / "usr/lib").glob("python3.*"))
    sources = list(stdlib.rglob("*.py"))
    assert sources == [], sources[:5]
    assert not list(stdlib.rglob("_ssl*.so")), "OpenSSL-backed modules should be left out"
    package = image_root / GUEST_VALIDATOR_DIR / "bpfcompat/validator"
    assert (package / "run.py").is_file()  # sources kept for tracebacks
    assert (package / "driver.py").is_file()
