"""What differs between the guest architectures: one table, read by apt, image, qemu and
the kernel builder, so no other module spells an architecture's names.

The host runs foreign-architecture programs (the guest image's python, dropbearkey,
busybox, dynamic loader) at image build time the way Debian does: qemu-user-static
registered with binfmt_misc, with the F flag so a chroot finds the interpreter without a
copy inside the tree.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


@dataclass(frozen=True)
class Arch:
    name: str  # the kernel's and QEMU's name (uname -m)
    debian: str  # dpkg architecture
    multiarch: str  # the Debian multiarch triplet (library directory)
    loader: str  # the dynamic loader, inside the guest tree
    qemu_binary: str
    qemu_package: str  # the Debian package providing qemu_binary
    machine: tuple[str, ...]  # QEMU -machine and anything the board needs
    tcg_cpu: str
    console: str  # the serial console device the kernel prints to
    cmdline: str  # boot parameters only this architecture needs
    image_target: str  # what `make` builds for a bootable kernel
    image_path: str  # where that lands in the build tree
    kernel_arch: str  # ARCH= for the kernel's make
    binfmt: str  # the binfmt_misc entry qemu-user-static registers


ARCHES: dict[str, Arch] = {
    "x86_64": Arch(
        name="x86_64",
        debian="amd64",
        multiarch="x86_64-linux-gnu",
        loader="/usr/lib64/ld-linux-x86-64.so.2",
        qemu_binary="qemu-system-x86_64",
        qemu_package="qemu-system-x86",
        machine=("-machine", "pc"),
        tcg_cpu="max",
        console="ttyS0",
        # The firmware's table routes PCI interrupts instead of ACPI byte code, which
        # costs 0.13 s of emulated CPU each time the NIC driver probes.
        cmdline="acpi=noirq",
        image_target="bzImage",
        image_path="arch/x86/boot/bzImage",
        kernel_arch="x86_64",
        binfmt="qemu-x86_64",
    ),
    "aarch64": Arch(
        name="aarch64",
        debian="arm64",
        multiarch="aarch64-linux-gnu",
        loader="/usr/lib/ld-linux-aarch64.so.1",
        qemu_binary="qemu-system-aarch64",
        qemu_package="qemu-system-arm",
        machine=("-machine", "virt"),
        # QEMU's docs (cpu-features): the architected pointer-authentication algorithm
        # is slow to emulate; the implementation-defined one keeps the feature for the
        # guest and boots a 6.1 kernel in 1.7 s instead of 7.0 s here.
        tcg_cpu="max,pauth-impdef=on",
        console="ttyAMA0",
        cmdline="",
        image_target="Image",
        image_path="arch/arm64/boot/Image",
        kernel_arch="arm64",
        binfmt="qemu-aarch64",
    ),
}
ARCH_NAMES = tuple(ARCHES)


def host_arch() -> str:
    """The machine this runs on, as a key of ARCHES (or whatever uname says)."""
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def get_arch(name: str) -> Arch:
    try:
        return ARCHES[name]
    except KeyError:
        raise ValueError(f"unknown arch {name!r} (known: {', '.join(ARCH_NAMES)})") from None


def foreign_runner_problem(arch: Arch) -> str | None:
    """Why this host cannot run `arch`'s programs in a chroot, or None when it can."""
    if arch.name == host_arch():
        return None
    entry = BINFMT_DIR / arch.binfmt
    try:
        text = entry.read_text()
    except OSError:
        return (
            f"running {arch.debian} programs needs qemu-user-static registered with "
            f"binfmt_misc ({entry} is missing): run scripts/setup.sh"
        )
    lines = text.splitlines()
    if not lines or lines[0].strip() != "enabled":
        return f"{entry} is disabled: run `update-binfmts --enable {arch.binfmt}`"
    flags = next((ln.split(":", 1)[1] for ln in lines if ln.startswith("flags:")), "")
    interpreter = next((ln.split(None, 1)[1] for ln in lines if ln.startswith("interpreter")), "")
    if "F" not in flags and not os.path.exists(interpreter):
        return f"{entry} has no F flag and its interpreter {interpreter} is missing"
    if "F" not in flags:
        return (
            f"{entry} lacks the F (fix binary) flag, so a chroot cannot find "
            f"{interpreter}: install Debian's qemu-user-static"
        )
    return None
