"""Getting one kernel's guest ready: booted, or restored from the kernel's snapshot.

Given a snapshot cache, a guest is restored from the kernel's snapshot instead of booted
(the first guest of a machine boots and saves it); a restore that fails in any way is
discarded and the guest boots, with a kernel note saying why. How each guest got ready is
kept (`ready_via`) so reports never show a restore as a boot. A guest with other memory
than the kernel's own (for jobs re-run after an OOM kill) has a snapshot of its own: the
memory is part of a snapshot's key.

The VM and the transport come from factories, so the orchestration is tested with a
fake guest; the real ones are QEMU and SSH.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bpfcompat.errors import BpfcompatError, SnapshotError, VMError
from bpfcompat.vm.arch import get_arch
from bpfcompat.vm.handoff import Handoff
from bpfcompat.vm.image import GuestImage
from bpfcompat.vm.kernels import KernelBuild
from bpfcompat.vm.qemu import BootSpec, GuestVM, QemuVM
from bpfcompat.vm.snapshot import RESTORE_TIMEOUT_S, SnapshotCache, SnapshotKey
from bpfcompat.vm.spec import KernelSpec
from bpfcompat.vm.ssh import GuestTransport, RunKey, ssh_connect

# Boot-time costs paid in emulated CPU, cut where nothing BPF sees changes:
# init_on_alloc=0 stops zeroing every page before it is written anyway (0.1 s while the
# initramfs unpacks); a throwaway test VM needs no hardening default. The console and
# architecture-specific parameters (x86: acpi=noirq) come from vm/arch.py.
COMMON_CMDLINE = "panic=-1 oops=panic quiet random.trust_cpu=on init_on_alloc=0"


def base_cmdline(arch: str = "x86_64") -> str:
    profile = get_arch(arch)
    return " ".join(filter(None, (f"console={profile.console}", COMMON_CMDLINE, profile.cmdline)))


VMFactory = Callable[[BootSpec], GuestVM]
Connector = Callable[[GuestVM, RunKey, str, float, str], GuestTransport]


class GuestLauncher:
    """One kernel's guests, one at a time: boot or restore, connect, shut down."""

    def __init__(
        self,
        spec: KernelSpec,
        kernel: KernelBuild,
        image: GuestImage,
        workdir: Path,
        stop: threading.Event,
        registry: set[GuestVM],
        *,
        vm_factory: VMFactory = QemuVM,
        connect: Connector = ssh_connect,
        snapshots: SnapshotCache | None = None,
    ) -> None:
        self.spec = spec
        self.kernel = kernel
        self.image = image
        self.workdir = workdir
        self.stop = stop
        self.registry = registry
        self.vm_factory = vm_factory
        self.connect = connect
        self.snapshots = snapshots
        self.label = spec.id  # names this guest's files; another guest of the kernel differs
        self.vm: GuestVM | None = None
        self.transport: GuestTransport | None = None
        self.boots = 0
        self.boot_seconds: list[float] = []
        # How each guest got ready: boot, boot+snapshot (booted and saved), restore.
        self.ready_via: list[str] = []
        self.snapshot_info: dict[str, Any] = {}  # the save this session made, if any
        self._no_snapshot: str | None = None  # why this session stopped using snapshots
        self.peak_rss_kb = 0
        self.notes: list[str] = []  # what the kernel did that no artifact is blamed for
        self._used = False  # the current guest has run jobs
        self._guest_memory = spec.memory_mb  # the running guest's memory

    def cmdline(self, key: RunKey | None) -> str:
        """The kernel command line; without a key the guest waits for its handoff."""
        extra = f" {self.spec.cmdline}" if self.spec.cmdline else ""
        run = f" bpfcompat.key={key.public_b64}" if key is not None else ""
        return f"{base_cmdline(self.kernel.arch)}{extra}{run}"

    def boot(self, memory_mb: int | None = None) -> float:
        """Get a guest ready and connect; returns seconds from QEMU's start until SSH
        answers. Restored from the kernel's snapshot when there is one, else booted (and
        saved, for the next guest); a guest with other memory than the kernel's own has
        its own snapshot (a snapshot holds the memory it was taken with)."""
        self.shutdown()
        if self.stop.is_set():
            raise VMError("interrupted")
        self._guest_memory = memory_mb or self.spec.memory_mb
        if self.snapshots is not None and self._no_snapshot is None:
            try:
                return self._boot_with_snapshots(self.snapshots)
            except SnapshotError as exc:
                self._stopped()
                # Discarded; this session boots from here on, the next run saves anew.
                self._no_snapshot = f"snapshot restore failed: {exc}; booted"
                self.notes.append(self._no_snapshot)
        key = RunKey()
        spec = self._boot_spec(self.cmdline(key), None)
        seconds = self._start(spec, key, self.image.host_key, self.spec.boot_timeout_s)
        self.ready_via.append("boot")
        return seconds

    def _boot_spec(self, cmdline: str, handoff: Handoff | None) -> BootSpec:
        return BootSpec(
            vmlinuz=self.kernel.vmlinuz,
            initrd=self.image.initrd_for(self.kernel),
            cmdline=cmdline,
            memory_mb=self._guest_memory,
            cpus=self.spec.cpus,
            console_log=self.workdir / "console.log",  # named per guest in _start
            arch=self.kernel.arch,
            handoff=handoff,
        )

    def _stopped(self) -> None:
        if self.stop.is_set():
            raise VMError("interrupted")

    def _boot_with_snapshots(self, snapshots: SnapshotCache) -> float:
        """Restore, or boot and save. SnapshotError: the restore failed (the snapshot is
        discarded); the caller boots."""
        client = RunKey()
        handoff = Handoff(client)
        spec = self._boot_spec(self.cmdline(None), handoff)
        try:
            key = snapshots.key(spec)
        except SnapshotError as exc:
            self._snapshots_off(f"snapshots not used: {exc}")
            return self.boot()
        host_key = handoff.host.public_line
        try:
            saved = snapshots.lookup(key)
        except SnapshotError:
            snapshots.discard(key)
            raise
        if saved is None:
            return self._boot_and_save(snapshots, key, spec, client, host_key)
        timeout = min(self.spec.boot_timeout_s, RESTORE_TIMEOUT_S)
        try:
            seconds = self._start(replace(spec, restore_from=saved), client, host_key, timeout)
        except BpfcompatError as exc:
            self.shutdown()
            self._stopped()
            snapshots.discard(key)
            raise SnapshotError(str(exc)) from None
        self.ready_via.append("restore")
        return seconds

    def _boot_and_save(
        self, snapshots: SnapshotCache, key: SnapshotKey, spec: BootSpec, client: RunKey, host: str
    ) -> float:
        pending = snapshots.begin(key)
        try:
            seconds = self._start(
                replace(spec, save_to=pending.state), client, host, self.spec.boot_timeout_s
            )
        except BpfcompatError as exc:
            pending.abandon()
            self._snapshots_off(f"snapshot not taken: the boot failed ({exc})")
            if isinstance(exc, SnapshotError):  # not a restore's failure: the boot's
                raise VMError(str(exc)) from None
            raise
        vm = self.vm
        assert vm is not None
        if vm.save_error is not None:
            pending.abandon()
            self._snapshots_off(f"snapshot not taken: {vm.save_error}")
        else:
            size = pending.state.stat().st_size
            info = {"kernel": self.spec.id, "save_seconds": round(vm.save_seconds, 2)}
            if snapshots.commit(pending, info) is not None:
                self.snapshot_info = {**info, "bytes": size}
            else:
                self.notes.append(f"snapshot not kept: cannot write under {snapshots.root}")
        self.ready_via.append("boot+snapshot")
        return seconds

    def _snapshots_off(self, why: str) -> None:
        self._no_snapshot = why
        self.notes.append(why)

    def _start(self, spec: BootSpec, key: RunKey, host_key: str, timeout: float) -> float:
        self.boots += 1
        console = self.workdir / f"console-{self.label}-{self.boots}.log"
        vm = self.vm_factory(replace(spec, console_log=console))
        self.vm = vm
        self.registry.add(vm)
        vm.start()
        vm.wait_ready(timeout)
        deadline = vm.started_at + timeout
        self.transport = self.connect(vm, key, host_key, deadline, self.spec.id)
        seconds = time.monotonic() - vm.started_at
        self.boot_seconds.append(seconds)
        self._used = False
        return seconds

    def shutdown(self) -> None:
        if self.transport is not None:
            # Closing a dead connection must not mask why it died.
            with contextlib.suppress(Exception):
                self.transport.close()
            self.transport = None
        if self.vm is not None:
            self.vm.stop()
            self.peak_rss_kb = max(self.peak_rss_kb, self.vm.last_peak_rss_kb or 0)
            self.registry.discard(self.vm)
            self.vm = None

    def ensure_booted(self, fresh: bool = False, memory_mb: int | None = None) -> None:
        """Boot when asked for a fresh guest, for other memory, or when no healthy one is
        up; a failure here is the kernel's, not a cell's."""
        healthy = self.transport is not None and self.vm is not None and self.vm.alive()
        sized = self._guest_memory == (memory_mb or self.spec.memory_mb)
        if (fresh and self._used) or not healthy or not sized:
            self.boot(memory_mb)
