"""Saved guests: a guest booted to the point where it waits for its run's keys, kept in the
cache so later guests of the same machine start from it instead of booting.

A snapshot is reused only for a guest that would have booted identically: its key covers
the kernel and initrd contents, the kernel command line, memory, CPUs, accelerator (and,
under KVM, the host CPU), architecture and machine, QEMU's version and binary, the firmware
QEMU loads, the rest of QEMU's command line with per-run values blanked, and this file's
format version. Nothing per-run is in a snapshot: it is saved before the handoff
(vm/handoff.py). Entries are written to a temporary directory and renamed into place under
a lock; `entry.json` records the size and sha256 checked before each use, and the key it
was saved under, compared field by field.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bpfcompat.errors import SnapshotError
from bpfcompat.vm.arch import get_arch
from bpfcompat.vm.cache import cache_root, entry_lock, read_verified_manifest, write_manifest
from bpfcompat.vm.migration import SavedGuest, zstd_problem
from bpfcompat.vm.qemu import BootSpec, QemuVM

SNAPSHOT_FORMAT = 1  # bump when the saved state or the handoff changes meaning
SNAPSHOT_ENV = "BPFCOMPAT_SNAPSHOT"
STATE = "state.zst"
# A restore normally takes about a second; past this the guest boots instead.
RESTORE_TIMEOUT_S = 30.0
# An unfinished save left by a killed process is removed once this old.
STALE_TMP_S = 3600.0
# Firmware QEMU loads into guest memory (and so into a snapshot) per architecture: SeaBIOS,
# the direct-kernel-boot option ROM, the KVM TPR patcher, the virtio NIC's option ROM.
FIRMWARE = {
    "x86_64": ("bios-256k.bin", "linuxboot_dma.bin", "kvmvapic.bin", "efi-virtio.rom"),
    "aarch64": ("efi-virtio.rom",),
}


def snapshots_enabled() -> bool:
    """False when BPFCOMPAT_SNAPSHOT says so (0, no, off, false)."""
    return os.environ.get(SNAPSHOT_ENV, "1").strip().lower() not in {"0", "no", "off", "false"}


def snapshot_root(root: Path | None = None) -> Path:
    return (root or cache_root()) / "snapshots"


@dataclass(frozen=True)
class HostFacts:
    """What of this host shapes a saved guest."""

    qemu: str  # `qemu --version`, the binary's path, size and mtime
    firmware: str  # sha256 of each firmware file QEMU would load
    host_cpu: str  # under KVM the guest sees the host's CPU; empty under TCG


@dataclass(frozen=True)
class SnapshotKey:
    format: int
    arch: str
    machine: str
    accel: str
    qemu: str
    firmware: str
    host_cpu: str
    kernel_sha256: str
    initrd_sha256: str
    cmdline: str
    memory_mb: int
    cpus: int
    shape: str  # sha256 of the QEMU command line with per-run values blanked

    @property
    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


_memo: dict[tuple[Any, ...], str] = {}


def _file_sha256(path: Path) -> str:
    """sha256 of a file, remembered for this process while it keeps its size and mtime."""
    st = path.stat()
    memo = ("sha256", str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if memo not in _memo:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _memo[memo] = digest.hexdigest()
    return _memo[memo]


def _qemu_output(binary: str, *args: str) -> str:
    st = os.stat(binary)
    memo = ("qemu", binary, *args, st.st_size, st.st_mtime_ns)
    if memo not in _memo:
        try:
            proc = subprocess.run(
                [binary, *args], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SnapshotError(f"{binary} {' '.join(args)}: {exc}") from None
        _memo[memo] = proc.stdout
    return _memo[memo]


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    first = text.split("\n\n", 1)[0]
    wanted = [
        ln for ln in first.splitlines() if ln.split(":")[0].strip() in {"model name", "flags"}
    ]
    return hashlib.sha256("\n".join(wanted).encode()).hexdigest()


def host_facts(arch: str, accel: str) -> HostFacts:
    binary_name = get_arch(arch).qemu_binary
    binary = shutil.which(binary_name)
    if binary is None:
        raise SnapshotError(f"{binary_name} not found")
    st = os.stat(binary)
    version = _qemu_output(binary, "--version").splitlines()[:1]
    qemu = f"{version[0] if version else '?'} {binary} {st.st_size} {st.st_mtime_ns}"
    dirs = [Path(line.strip()) for line in _qemu_output(binary, "-L", "help").splitlines()]
    found = []
    for name in FIRMWARE.get(arch, ()):
        path = next((d / name for d in dirs if (d / name).is_file()), None)
        found.append(f"{name}={_file_sha256(path) if path else 'absent'}")
    return HostFacts(qemu, ";".join(found), _cpu_signature() if accel == "kvm" else "")


def snapshot_key(spec: BootSpec, facts: HostFacts) -> SnapshotKey:
    shape = QemuVM(spec).shape()
    machine = shape[shape.index("-machine") + 1] if "-machine" in shape else "?"
    return SnapshotKey(
        format=SNAPSHOT_FORMAT,
        arch=spec.arch,
        machine=machine,
        accel=spec.effective_accel,
        qemu=facts.qemu,
        firmware=facts.firmware,
        host_cpu=facts.host_cpu,
        kernel_sha256=_file_sha256(spec.vmlinuz),
        initrd_sha256=_file_sha256(spec.initrd),
        cmdline=spec.cmdline,
        memory_mb=spec.memory_mb,
        cpus=spec.cpus,
        shape=hashlib.sha256("\0".join(shape).encode()).hexdigest(),
    )


@dataclass
class PendingSnapshot:
    """A save in progress: QEMU's stream goes to `state`, inside a private temp dir."""

    key: SnapshotKey
    tmp: Path

    @property
    def state(self) -> Path:
        return self.tmp / STATE

    def abandon(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class SnapshotCache:
    """Snapshots under `root`, one directory per key digest."""

    def __init__(
        self, root: Path | None = None, facts: Callable[[str, str], HostFacts] = host_facts
    ) -> None:
        self.root = snapshot_root(root) if root is None else root
        self.facts = facts

    def key(self, spec: BootSpec) -> SnapshotKey:
        """The key of the guest `spec` would boot; SnapshotError when snapshots cannot
        be used here (zstd or QEMU missing, a file unreadable)."""
        problem = zstd_problem()
        if problem:
            raise SnapshotError(problem)
        try:
            return snapshot_key(spec, self.facts(spec.arch, spec.effective_accel))
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"cannot identify the guest: {exc}") from None

    def entry(self, key: SnapshotKey) -> Path:
        return self.root / key.digest[:32]

    def lookup(self, key: SnapshotKey) -> SavedGuest | None:
        """The saved guest for `key` (size checked here, sha256 while it is restored);
        None when there is none; SnapshotError when there is one that cannot be used."""
        entry = self.entry(key)
        if not entry.exists():
            return None
        meta = read_verified_manifest(entry, deep=False)
        if meta is None:
            raise SnapshotError(f"{entry.name}: missing, truncated or unreadable")
        if meta.get("key") != asdict(key):
            raise SnapshotError(f"{entry.name}: saved under another key")
        info = meta["files"].get(STATE)
        if not isinstance(info, dict):
            raise SnapshotError(f"{entry.name}: no {STATE} recorded")
        return SavedGuest(entry / STATE, int(info["size"]), str(info["sha256"]))

    def begin(self, key: SnapshotKey) -> PendingSnapshot:
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep()
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key.digest[:32]}-", dir=self.root))
        return PendingSnapshot(key, tmp)

    def commit(self, pending: PendingSnapshot, info: dict[str, Any]) -> Path | None:
        """Record size and sha256 and rename into place; keep an entry another process
        committed first. Returns the entry, or None when nothing was kept."""
        entry = self.entry(pending.key)
        try:
            meta = {"format": SNAPSHOT_FORMAT, "key": asdict(pending.key), **info}
            meta["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            write_manifest(pending.tmp, meta, [STATE])
            with entry_lock(entry):
                with contextlib.suppress(SnapshotError):
                    if self.lookup(pending.key) is not None:
                        return entry
                if entry.exists():
                    shutil.rmtree(entry)
                os.rename(pending.tmp, entry)
            return entry
        except OSError:
            return None
        finally:
            pending.abandon()

    def discard(self, key: SnapshotKey) -> None:
        entry = self.entry(key)
        with contextlib.suppress(OSError), entry_lock(entry):
            shutil.rmtree(entry, ignore_errors=True)

    def entries(self) -> list[dict[str, Any]]:
        """Every entry's metadata with its path and size on disk (unreadable: no key)."""
        found = []
        if not self.root.is_dir():
            return found
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            try:
                meta = json.loads((entry / "entry.json").read_text())
            except (OSError, ValueError):
                meta = {}
            if not isinstance(meta, dict):
                meta = {}
            meta["path"] = str(entry)
            meta["bytes"] = _tree_bytes(entry)
            found.append(meta)
        return found

    def clean(self) -> tuple[int, int]:
        """Remove every snapshot and unfinished save; (entries, bytes) removed."""
        count = size = 0
        if not self.root.is_dir():
            return count, size
        for entry in self.root.iterdir():
            if not entry.is_dir():
                continue
            size += _tree_bytes(entry)
            count += not entry.name.startswith(".")
            with entry_lock(entry):
                shutil.rmtree(entry, ignore_errors=True)
        return count, size

    def _sweep(self) -> None:
        """Remove unfinished saves of processes long gone."""
        now = time.time()
        for tmp in self.root.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > STALE_TMP_S:
                    shutil.rmtree(tmp, ignore_errors=True)


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
