"""How a run is set up: where kernels, images and guests come from (real or fake), the
user's options, how many guests at once, and what a finished run hands back."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bpfcompat.matrix.launch import Connector, VMFactory
from bpfcompat.matrix.share import SplitPolicy
from bpfcompat.matrix.store import Cell, RunKernel
from bpfcompat.vm.image import GuestImage, build_image
from bpfcompat.vm.kernels import KernelBuild, fetch_kernel
from bpfcompat.vm.qemu import QemuVM, detect_accel
from bpfcompat.vm.snapshot import SnapshotCache, snapshots_enabled
from bpfcompat.vm.spec import KernelSpec
from bpfcompat.vm.ssh import ssh_connect


class Progress(Protocol):
    def __call__(self, kernel: str, stage: str, detail: str = "") -> None: ...


def _quiet(kernel: str, stage: str, detail: str = "") -> None:
    return None


@dataclass
class Backend:
    """Where kernels, the guest image and guests come from: the real ones by default,
    fakes when the orchestration is tested without booting anything."""

    # fetch_kernel(spec, stop=Event, progress=fn(step)); build_image(suite, arch=...)
    fetch_kernel: Callable[..., KernelBuild] = fetch_kernel
    build_image: Callable[..., GuestImage] = build_image
    vm_factory: VMFactory = QemuVM
    connect: Connector = ssh_connect
    accel: Callable[[], str] = detect_accel
    snapshots: Callable[[], SnapshotCache | None] = SnapshotCache


@dataclass
class RunOptions:
    concurrency: int = 0  # 0: decide from CPUs and memory
    use_cache: bool = True
    workdir: Path = Path(".bpfcompat/work")
    boot_per_artifact: bool = False  # one cold boot per cell, for benchmarks
    # Start guests from saved snapshots (vm/snapshot.py); off: every guest boots.
    snapshots: bool = field(default_factory=snapshots_enabled)
    progress: Progress = _quiet
    backend: Backend = field(default_factory=Backend)
    labels: dict[str, str] = field(default_factory=dict)  # e.g. git sha, branch: shown everywhere
    # When other guests of a kernel may take over part of its work (None: never).
    split: SplitPolicy | None = field(default_factory=SplitPolicy)


@dataclass
class RunSummary:
    run_id: int
    exit_code: int
    status: str
    cells: list[Cell] = field(default_factory=list)
    kernels: list[RunKernel] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def _available_kb() -> int:
    try:
        with open("/proc/meminfo") as fh:
            return next(int(ln.split()[1]) for ln in fh if ln.startswith("MemAvailable"))
    except (OSError, StopIteration, ValueError):
        return 2 * 1024 * 1024


def room_for(memory_mb: int) -> bool:
    """Whether the host can give another guest this much now (with QEMU's own overhead
    and a margin), for a second guest that would re-run jobs an OOM kill stopped."""
    return _available_kb() // 1024 >= memory_mb + 1024


def default_concurrency(kernels: list[KernelSpec]) -> int:
    """One VM per core (TCG is CPU-bound), fewer if memory would run short."""
    cpus = os.cpu_count() or 1
    avail_kb = _available_kb()
    per_vm_mb = max((k.memory_mb for k in kernels), default=512) + 256  # QEMU's own overhead
    by_memory = max(1, int(avail_kb / 1024 * 0.7 // per_vm_mb))
    # Not capped by the number of kernels: a free slot lets another guest of a busy kernel
    # share its work (matrix/share.py).
    return max(1, min(cpus, by_memory))
