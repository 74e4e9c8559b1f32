"""One booted kernel, validating artifacts one process each, rebooted when it dies.

All artifacts of a kernel are staged at once and run by one guest-side driver that has
imported the validator once and forks a fresh process per artifact: start-up is paid
once per boot, while a libbpf crash (a signal) still costs only that artifact. A guest
that panics, hangs or drops SSH costs the artifact in progress: the VM is rebooted and
the rest go on. The per-run SSH key exists only in memory.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bpfcompat.errors import BpfcompatError, GuestCrash, TransportError, VMError
from bpfcompat.matrix.plan import Artifact
from bpfcompat.matrix.result import ResultModel, parse_result
from bpfcompat.vm.image import GUEST_DRIVER_COMMAND, GuestImage
from bpfcompat.vm.kernels import KernelBuild
from bpfcompat.vm.qemu import BootSpec, QemuVM
from bpfcompat.vm.spec import KernelSpec
from bpfcompat.vm.ssh import GuestTransport, ParamikoTransport, RunKey

GUEST_DIR = "/tmp/bpfc"
# Boot-time costs paid in emulated CPU, cut where nothing BPF sees changes:
# acpi=noirq routes PCI interrupts from the firmware's table instead of running ACPI byte
# code (0.13 s when the NIC driver loads); init_on_alloc=0 stops zeroing every page
# before it is written anyway (0.1 s while the initramfs unpacks). A throwaway test VM
# needs neither hardening default.
BASE_CMDLINE = (
    "console=ttyS0 panic=-1 oops=panic quiet random.trust_cpu=on acpi=noirq init_on_alloc=0"
)
KILLED = 128 + 9


@dataclass
class RawOutcome:
    """What one validator process produced; evidence only, classified later."""

    result: ResultModel | None
    raw_json: str | None
    exit_code: int | None
    signal: int | None
    infra_error: str | None
    crash: bool
    console_tail: str | None
    seconds: float


class GuestSession:
    """Boots `kernel` on demand and validates artifacts in it."""

    def __init__(
        self,
        spec: KernelSpec,
        kernel: KernelBuild,
        image: GuestImage,
        workdir: Path,
        stop: threading.Event,
        registry: set[QemuVM],
        artifact_timeout: float = 90.0,
    ) -> None:
        self.spec = spec
        self.kernel = kernel
        self.image = image
        self.workdir = workdir
        self.stop = stop
        self.registry = registry
        self.artifact_timeout = artifact_timeout
        self.vm: QemuVM | None = None
        self.transport: GuestTransport | None = None
        self.boots = 0
        self.boot_seconds: list[float] = []
        self.peak_rss_kb = 0

    def cmdline(self, key: RunKey) -> str:
        extra = f" {self.spec.cmdline}" if self.spec.cmdline else ""
        return f"{BASE_CMDLINE}{extra} bpfcompat.key={key.public_b64}"

    def boot(self) -> float:
        """Boot and connect; returns boot-to-ready seconds (SSH answering, validator in)."""
        self.shutdown()
        if self.stop.is_set():
            raise VMError("interrupted")
        key = RunKey()
        self.boots += 1
        console = self.workdir / f"console-{self.spec.id}-{self.boots}.log"
        vm = QemuVM(
            BootSpec(
                vmlinuz=self.kernel.vmlinuz,
                initrd=self.image.initrd_for(self.kernel),
                cmdline=self.cmdline(key),
                memory_mb=self.spec.memory_mb,
                cpus=self.spec.cpus,
                console_log=console,
            )
        )
        self.vm = vm
        self.registry.add(vm)
        vm.start()
        vm.wait_ready(self.spec.boot_timeout_s)
        deadline = vm.started_at + self.spec.boot_timeout_s
        self.transport = ParamikoTransport.connect(
            vm.ssh_port, key, self.image.host_key, deadline, self.spec.id, alive=vm.check
        )
        seconds = time.monotonic() - vm.started_at
        self.boot_seconds.append(seconds)
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

    def ensure_booted(self) -> None:
        """Boot when no healthy guest is up; a failure here is the kernel's, not a cell's."""
        if self.transport is None or self.vm is None or not self.vm.alive():
            self.boot()

    def validate_many(
        self,
        jobs: list[tuple[int, Artifact]],
        on_start: Callable[[int], None] = lambda index: None,
        *,
        boot_per_artifact: bool = False,
    ) -> Iterator[tuple[int, RawOutcome]]:
        """Yield (index, outcome) as artifacts finish. An infrastructure failure (not a
        crash) is retried once after a reboot; a failing boot raises BpfcompatError."""
        pending = list(jobs)
        retried: set[int] = set()
        while pending and not self.stop.is_set():
            self.ensure_booted()
            batch = pending[:1] if boot_per_artifact else pending
            for index, outcome in self._run_batch(batch, on_start):
                retry = outcome.infra_error and not outcome.crash and index not in retried
                if retry and not self.stop.is_set():
                    retried.add(index)  # stays pending: runs first after the reboot
                    break
                pending = [job for job in pending if job[0] != index]
                yield index, outcome
            if boot_per_artifact:
                self.shutdown()

    def _stage(
        self, artifact: Artifact, cell_dir: str, files: dict[str, bytes]
    ) -> tuple[list[str], float]:
        """Add one artifact's input files to `files` (guest path -> bytes); return its
        validator arguments and timeout."""
        # User-controlled names never reach a shell: files get index-based names and the
        # arguments travel as JSON.
        files[f"{cell_dir}/artifact.bpf.o"] = artifact.data
        manifest = artifact.manifest
        extra, inputs = manifest.validator_inputs(cell_dir)
        files.update(inputs)
        args = [
            "--artifact",
            f"{cell_dir}/artifact.bpf.o",
            "--out",
            f"{cell_dir}/result.json",
            "--log-dir",
            cell_dir,
            *extra,
        ]
        timeout = self.artifact_timeout + sum(t.timeout for t in manifest.functional_tests)
        return args, timeout

    def _run_batch(
        self, batch: list[tuple[int, Artifact]], on_start: Callable[[int], None]
    ) -> Iterator[tuple[int, RawOutcome]]:
        """Run a batch in the current boot; stop (VM shut down) at the first failure."""
        current: int | None = None
        started = time.monotonic()
        remaining = [index for index, _ in batch]
        try:
            transport, vm = self.transport, self.vm
            assert transport is not None and vm is not None
            jobs, idle, files = [], 30.0, {}
            for index, artifact in batch:
                cell_dir = f"{GUEST_DIR}/a/{index}"
                args, timeout = self._stage(artifact, cell_dir, files)
                jobs.append({"index": index, "dir": cell_dir, "args": args, "timeout": timeout})
                idle = max(idle, timeout + 30)
            files[f"{GUEST_DIR}/jobs.json"] = json.dumps(jobs).encode()
            prefix = f"{GUEST_DIR}/"
            assert all(path.startswith(prefix) for path in files)
            transport.put_files({p.removeprefix(prefix): d for p, d in files.items()}, GUEST_DIR)
            for line in transport.stream(
                f"{GUEST_DRIVER_COMMAND} {GUEST_DIR}/jobs.json 2>{GUEST_DIR}/driver.err",
                idle,
            ):
                vm.check()
                parts = line.split()
                if len(parts) == 2 and parts[0] == "start" and parts[1].isdigit():
                    current, started = int(parts[1]), time.monotonic()
                    on_start(current)
                elif len(parts) == 5 and parts[0] == "done" and parts[1].isdigit():
                    index, code, timed_out = int(parts[1]), int(parts[2]), parts[4] == "timeout"
                    current = None
                    if index in remaining:
                        remaining.remove(index)
                    # The guest's own clock: by the time the host reads a "start" line
                    # the job may be over (the host was collecting the previous one).
                    try:
                        seconds = float(parts[3])
                    except ValueError:
                        seconds = time.monotonic() - started
                    outcome = self._collect(index, code, seconds, timed_out=timed_out)
                    if outcome.infra_error is not None:
                        self.shutdown()  # a hung validator: start clean for the rest
                        yield index, outcome
                        return
                    yield index, outcome
            vm.check()
            if remaining:
                raise TransportError(f"guest driver stopped with {len(remaining)} job(s) left")
        except GuestCrash as exc:
            self.shutdown()
            current = current if current is not None else (remaining or [None])[0]
            if current is not None:
                yield current, self._failed(str(exc), started, crash=True, tail=exc.console_tail)
        except (TransportError, VMError) as exc:
            vm = self.vm
            crash_line = vm.crash_line() if vm else None
            tail = vm.console_tail() if vm else None
            self.shutdown()
            if current is None and remaining:
                current = remaining[0]  # failed between jobs: charge the next one
            if current is not None:
                if crash_line:
                    message, crash = f"guest crashed: {crash_line}", True
                else:
                    message, crash = str(exc), False
                yield current, self._failed(message, started, crash=crash, tail=tail)

    def _failed(self, message: str, started: float, *, crash: bool, tail: str | None) -> RawOutcome:
        return RawOutcome(None, None, None, None, message, crash, tail, time.monotonic() - started)

    def _collect(
        self, index: int, exit_code: int, seconds: float, *, timed_out: bool
    ) -> RawOutcome:
        transport, vm = self.transport, self.vm
        assert transport is not None and vm is not None
        cell_dir = f"{GUEST_DIR}/a/{index}"
        signal = exit_code - 128 if exit_code > 128 else None
        if timed_out:
            return RawOutcome(
                None,
                None,
                exit_code,
                None,
                "validator did not finish within its timeout (killed)",
                False,
                None,
                seconds,
            )
        if exit_code == KILLED:
            # Not our timeout: in practice the kernel's OOM killer, which says so on the
            # console. Inconclusive, and the guest is rebooted before the next artifact.
            oom = vm.oom_line()
            why = f"validator killed by SIGKILL: {oom}" if oom else "validator killed by SIGKILL"
            return RawOutcome(
                None, None, exit_code, 9, why, False, vm.console_tail() if oom else None, seconds
            )
        try:
            raw = transport.get_bytes(f"{cell_dir}/result.json").decode("utf-8", "replace")
        except FileNotFoundError:
            raw = None
        result = _parse_result(raw)
        if result is None and signal is None:
            stderr_tail = ""
            with contextlib.suppress(FileNotFoundError, TransportError):
                stderr_tail = transport.get_bytes(f"{cell_dir}/stderr").decode("utf-8", "replace")
            last = (stderr_tail.strip().splitlines() or ["no output"])[-1]
            return RawOutcome(
                None,
                raw,
                exit_code,
                None,
                f"validator wrote no result (exit {exit_code}): {last[:300]}",
                False,
                None,
                seconds,
            )
        return RawOutcome(result, raw, exit_code, signal, None, False, None, seconds)


def _parse_result(raw: str | None) -> ResultModel | None:
    """The typed result, or None when there is none or it is unusable (parse_result
    bounds its size and nesting before parsing, so hostile JSON cannot raise here)."""
    parsed = parse_result(raw) if raw else None
    return parsed if isinstance(parsed, ResultModel) else None


def describe_error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, BpfcompatError) else f"{type(exc).__name__}: {exc}"
