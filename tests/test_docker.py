"""The Dockerfile: no Docker engine builds it here, so its install step is scripts/install.sh,
which tests/test_package.py runs for real; these tests check that the image gets what the
script reads, in the layout it expects, and that the Debian packages the image installs
are the ones doctor asks for and apt knows."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from bpfcompat.doctor import FETCH_TOOLS, QEMU, RUN_TOOLS
from conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
INSTALL = ROOT / "scripts" / "install.sh"
SRC = "/src/bpfcompat"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _copies() -> dict[str, str]:
    """Repository path -> its path in the image, from the COPY lines."""
    copied: dict[str, str] = {}
    for word, rest in _instructions():
        if word == "COPY":
            *sources, dest = shlex.split(rest)
            for source in sources:
                target = dest + Path(source).name if dest.endswith("/") else dest
                copied[source] = target
    return copied


def test_base_image_is_debian_bookworm() -> None:
    froms = [rest for word, rest in _instructions() if word == "FROM"]
    assert len(froms) == 1
    assert re.fullmatch(r"debian:bookworm(-slim)?", froms[0]), froms


def test_the_image_installs_with_the_tested_script() -> None:
    runs = [rest for word, rest in _instructions() if word == "RUN"]
    assert len(runs) == 1
    command = shlex.split(runs[0])
    assert command[:5] == [
        f"{SRC}/scripts/install.sh",
        "--prefix",
        "/opt/bpfcompat",
        "--bin-dir",
        "/usr/local/bin",
    ]
    proc = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for option in ("--prefix", "--bin-dir"):
        assert option in proc.stdout
    assert ("ENTRYPOINT", '["bpfcompat"]') in _instructions()


def test_the_image_holds_every_file_install_sh_reads() -> None:
    """install.sh tars these paths from the directory above its own: each must be copied
    to the same place under /src/bpfcompat."""
    tar = re.search(r"-cf - ([^|]+)\|", INSTALL.read_text())
    assert tar, "install.sh: the tar of the sources"
    needed = tar.group(1).split()
    assert needed == ["pyproject.toml", "README.md", "kernels.yaml", "src"]
    copies = _copies()
    for path in [*needed, "scripts/install.sh"]:
        assert copies.get(path) == f"{SRC}/{path}", (path, copies.get(path))
    # the package's kernels.yaml is a relative symlink that must resolve inside the copy
    link = ROOT / "src" / "bpfcompat" / "kernels.yaml"
    assert link.is_symlink()
    assert (link.parent / link.readlink()).resolve() == (ROOT / "kernels.yaml").resolve()


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert set(_copies()) <= allowed, set(_copies()) - allowed


def _apt_packages(*, python: str | None = None) -> list[str]:
    env = None if python is None else {"PATH": "/usr/bin:/bin", "PYTHON": python}
    proc = subprocess.run(
        ["bash", str(INSTALL), "--print-apt"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_debian_packages_are_what_doctor_asks_for_and_exist() -> None:
    packages = _apt_packages()
    qemu_x86 = QEMU["x86_64"][1]
    essential = {"apt", "dpkg"}  # on every Debian system
    asked = {qemu_x86, "mmdebstrap", "debian-archive-keyring", *RUN_TOOLS.values()}
    for package in asked | set(FETCH_TOOLS.values()):
        assert package in packages or package in essential, package
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    for package in asked:
        assert re.search(rf"^\s+.*\b{re.escape(package)}\b", setup, re.M), package
    # the image starts without python3: the script adds Debian's, with venv
    bare = _apt_packages(python="/nonexistent/python3")
    assert bare[-2:] == ["python3", "python3-venv"]
    proc = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", *bare], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    known = set(re.findall(r"^Package: (\S+)$", proc.stdout, re.M))
    assert set(bare) <= known, set(bare) - known
