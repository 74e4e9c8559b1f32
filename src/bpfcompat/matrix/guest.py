"""One booted kernel, validating artifacts one process each, rebooted when it dies.

Each artifact runs in its own validator process so a libbpf crash costs one cell; a
guest that panics, hangs or drops SSH costs one cell too: the VM is rebooted and the
rest of that kernel's artifacts go on. The per-run SSH key exists only in memory.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpfcompat.errors import BpfcompatError, GuestCrash, TransportError, VMError
from bpfcompat.matrix.config import KernelSpec
from bpfcompat.matrix.plan import Artifact
from bpfcompat.vm.image import GUEST_VALIDATOR_DIR, GuestImage
from bpfcompat.vm.kernels import KernelBuild
from bpfcompat.vm.qemu import BootSpec, QemuVM
from bpfcompat.vm.ssh import GuestTransport, ParamikoTransport, RunKey

GUEST_DIR = "/tmp/bpfc"
BASE_CMDLINE = "console=ttyS0 panic=-1 oops=panic quiet random.trust_cpu=on"
# A tiny entry point that imports the validator baked (byte-compiled) into the image,
# instead of compiling it afresh for every artifact; arguments arrive as a JSON list.
RUNNER = (
    "import json, sys\n"
    f"sys.path.insert(0, '/{GUEST_VALIDATOR_DIR}')\n"
    "import validator\n"
    "sys.exit(validator.main(json.load(open(sys.argv[1]))))\n"
)
EXIT_MARKER = "bpfcompat-exit="


@dataclass
class RawOutcome:
    """What one validator process produced; evidence only, classified later."""

    result: dict[str, Any] | None
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
        self.transport.run(f"mkdir -p {GUEST_DIR}/a", 30)
        self.transport.put_bytes(RUNNER.encode(), f"{GUEST_DIR}/run.py")
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

    def validate(self, artifact: Artifact, index: int) -> RawOutcome:
        """Validate once; on infrastructure failure reboot and retry once."""
        self.ensure_booted()
        outcome = self._attempt(artifact, index)
        if outcome.infra_error is not None and not outcome.crash and not self.stop.is_set():
            self.ensure_booted()
            outcome = self._attempt(artifact, index)
        return outcome

    def _attempt(self, artifact: Artifact, index: int) -> RawOutcome:
        started = time.monotonic()
        try:
            return self._run_validator(artifact, index, started)
        except GuestCrash as exc:
            self.shutdown()
            return self._failed(str(exc), started, crash=True, tail=exc.console_tail)
        except (TransportError, VMError) as exc:
            vm = self.vm
            crash_line = vm.crash_line() if vm else None
            tail = vm.console_tail() if vm else None
            self.shutdown()
            if crash_line:
                return self._failed(f"guest crashed: {crash_line}", started, crash=True, tail=tail)
            return self._failed(str(exc), started, crash=False, tail=tail)

    def _failed(self, message: str, started: float, *, crash: bool, tail: str | None) -> RawOutcome:
        return RawOutcome(None, None, None, None, message, crash, tail, time.monotonic() - started)

    def _run_validator(self, artifact: Artifact, index: int, started: float) -> RawOutcome:
        transport = self.transport
        assert transport is not None and self.vm is not None
        cell_dir = f"{GUEST_DIR}/a/{index}"
        transport.run(f"mkdir -p {cell_dir}", 30)
        # User-controlled names never reach a shell: files get index-based names and the
        # arguments travel as JSON.
        transport.put_bytes(artifact.data, f"{cell_dir}/artifact.bpf.o")
        args = [
            "--artifact",
            f"{cell_dir}/artifact.bpf.o",
            "--out",
            f"{cell_dir}/result.json",
            "--log-dir",
            cell_dir,
            *artifact.manifest.validator_args(),
        ]
        manifest = artifact.manifest
        if manifest.programs or manifest.metadata:
            transport.put_bytes(
                json.dumps(manifest.validator_manifest()).encode(), f"{cell_dir}/manifest.json"
            )
            args += ["--manifest", f"{cell_dir}/manifest.json"]
        plan = manifest.functional_plan()
        timeout = self.artifact_timeout
        if plan is not None:
            transport.put_bytes(json.dumps(plan).encode(), f"{cell_dir}/plan.json")
            args += ["--functional-plan", f"{cell_dir}/plan.json"]
            timeout += sum(t.timeout for t in manifest.functional_tests)
        transport.put_bytes(json.dumps(args).encode(), f"{cell_dir}/args.json")
        res = transport.run(
            f"python3 {GUEST_DIR}/run.py {cell_dir}/args.json"
            f" >{cell_dir}/stdout 2>{cell_dir}/stderr; echo {EXIT_MARKER}$?",
            timeout,
        )
        self.vm.check()
        if res.timed_out:
            raise VMError(f"validator did not finish within {timeout:.0f} s")
        exit_code = _parse_exit(res.stdout)
        signal = exit_code - 128 if exit_code is not None and exit_code > 128 else None
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
                time.monotonic() - started,
            )
        return RawOutcome(
            result, raw, exit_code, signal, None, False, None, time.monotonic() - started
        )


def _parse_exit(stdout: str) -> int | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(EXIT_MARKER):
            try:
                return int(line[len(EXIT_MARKER) :])
            except ValueError:
                return None
    return None


def _parse_result(raw: str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def describe_error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, BpfcompatError) else f"{type(exc).__name__}: {exc}"
