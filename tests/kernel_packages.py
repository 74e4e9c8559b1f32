"""Users' own kernel packages, made here from a real Debian kernel.

Only Debian's archive is reachable from CI, so the .deb and .rpm a user would point
kernels.yaml at are repacked from the files of a Debian kernel the setup script fetched:
its vmlinuz, config and NIC modules, laid out as a distribution package lays them out.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bpfcompat.matrix.config import load_kernel_matrix
from bpfcompat.vm.cpio import extract_newc
from bpfcompat.vm.kernels import KernelBuild, fetch_kernel
from conftest import ROOT, require_tool

BASE_KERNEL = "debian-12-6.1"


def base_kernel() -> KernelBuild:
    """The Debian kernel the packages are made of (cached by scripts/setup.sh)."""
    spec = load_kernel_matrix(ROOT / "kernels.yaml").select([BASE_KERNEL])[0]
    return fetch_kernel(spec)


def kernel_tree(kernel: KernelBuild, dest: Path, *, modules_dir: str = "lib/modules") -> Path:
    """/boot/vmlinuz-REL, /boot/config-REL and REL's NIC modules under `modules_dir`."""
    tree = dest / "tree"
    rel = kernel.release
    (tree / "boot").mkdir(parents=True)
    shutil.copyfile(kernel.vmlinuz, tree / f"boot/vmlinuz-{rel}")
    shutil.copyfile(kernel.config, tree / f"boot/config-{rel}")
    unpacked = dest / "cpio"
    with kernel.modules_cpio.open("rb") as fh:
        extract_newc(fh, unpacked)
    mods = tree / modules_dir / rel / "kernel/drivers/virtio"
    mods.mkdir(parents=True)
    for ko in (unpacked / "bpfcompat/modules").glob("*.ko"):
        shutil.copyfile(ko, mods / ko.name)
    (tree / modules_dir / rel / "modules.builtin").write_text("kernel/lib/zlib_inflate.ko\n")
    return tree


def make_deb(tree: Path, out: Path, name: str = "linux-image-bpfcompat-test") -> Path:
    require_tool("dpkg-deb")
    control = tree / "DEBIAN" / "control"
    control.parent.mkdir(parents=True, exist_ok=True)
    control.write_text(
        f"Package: {name}\nVersion: 6.1.176-1\nArchitecture: amd64\n"
        "Maintainer: bpfcompat tests <tests@invalid>\nDescription: a repacked kernel\n"
    )
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(out)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(control.parent)
    return out


def make_rpm(tree: Path, work: Path, name: str = "kernel-bpfcompat-test") -> Path:
    """An .rpm holding `tree` as its files, built with Debian's rpmbuild."""
    require_tool("rpmbuild")
    spec = work / f"{name}.spec"
    spec.write_text(
        f"""Name: {name}
Version: 6.1.176
Release: 1
Summary: a Debian kernel repacked as an RPM
License: GPL-2.0-only
BuildArch: noarch
%define debug_package %{{nil}}
%define __os_install_post %{{nil}}
%define _build_id_links none
%description
Test input for bpfcompat.
%install
mkdir -p %{{buildroot}}
cp -a {tree}/. %{{buildroot}}/
%files
/*
"""
    )
    top = work / "rpmbuild"
    proc = subprocess.run(
        ["rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {top}", str(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"rpmbuild failed: {proc.stderr[-2000:]}", pytrace=False)
    (rpm,) = (top / "RPMS" / "noarch").glob(f"{name}-*.rpm")
    return rpm
