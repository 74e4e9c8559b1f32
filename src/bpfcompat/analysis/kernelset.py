"""The matrix's cached kernels as name sets, for checks an object's BTF cannot answer alone.

"fentry/foo" is only a placeholder if no kernel of the matrix has a function foo; a
struct_ops map only loads where the kernel has its struct. The names come from each cached
kernel's own BTF (vm/kbtf); kernels not fetched yet are reported as unchecked, never as
lacking anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bpfcompat.analysis.features import parse_release
from bpfcompat.errors import BpfcompatError
from bpfcompat.vm.kbtf import KernelNames, kernel_names


@dataclass
class KernelBtf:
    id: str
    release: str  # major.minor, how findings name a kernel
    entry: Path
    names: KernelNames | None = None


@dataclass
class KernelSet:
    """Kernels whose BTF is available, and why the others are not."""

    kernels: list[KernelBtf] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # "debian-11-5.10: not fetched"
    _loaded: bool = False

    def load(self) -> KernelSet:
        """Read each kernel's BTF names (extracting the BTF on first use); idempotent."""
        if self._loaded:
            return self
        self._loaded = True
        shared: dict[Path, KernelNames] = {}
        usable = []
        for k in self.kernels:
            try:
                if k.entry not in shared:
                    shared[k.entry] = kernel_names(k.entry)
                k.names = shared[k.entry]
                usable.append(k)
            except (BpfcompatError, OSError) as exc:
                self.unchecked.append(f"{k.id}: {exc}")
        self.kernels = usable
        return self

    @property
    def checked(self) -> bool:
        return bool(self.load().kernels)

    def split(self, present: Callable[[KernelNames], bool]) -> tuple[list[str], list[str]]:
        """(releases that have it, releases that lack it); `present(names) -> bool`."""
        have: list[str] = []
        lack: list[str] = []
        for k in self.load().kernels:
            assert k.names is not None
            bucket = have if present(k.names) else lack
            if k.release not in bucket:
                bucket.append(k.release)
        return have, lack

    def describe_unchecked(self) -> str:
        if not self.kernels and not self.unchecked:
            return "no kernel matrix given"
        return "; ".join(self.unchecked) or ""


def kernel_btf(kernel_id: str, release: str, entry: Path) -> KernelBtf:
    """A cached kernel as findings name it (its release as major.minor)."""
    try:
        major, minor = parse_release(release)
        release = f"{major}.{minor}"
    except ValueError:
        pass
    return KernelBtf(kernel_id, release, entry)
