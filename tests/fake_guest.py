"""A fake guest for testing the orchestration without booting anything.

`FakeWorld` plays the guest side of the real protocol: the host stages files with
`put_files`, starts the driver with `stream`, and reads each job's result.json with
`get_bytes`, exactly as over SSH. What each artifact does in the guest is scripted per
attempt (a recorded real result, a kernel crash, a hang, a dropped connection, forged
protocol lines, ...), so retries, crash attribution, caching and interrupts are tested in
seconds. Recorded results come from real runs (tests/data/recorded).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpfcompat.errors import GuestCrash, OversizeError, TransportError, VMError
from bpfcompat.matrix.options import Backend
from bpfcompat.vm.console import crash_evidence, oom_evidence
from bpfcompat.vm.image import GuestImage
from bpfcompat.vm.kernels import KernelBuild
from bpfcompat.vm.migration import RestoreStream, SaveStream
from bpfcompat.vm.qemu import BootSpec
from bpfcompat.vm.snapshot import HostFacts, SnapshotCache
from bpfcompat.vm.spec import KernelSpec
from bpfcompat.vm.ssh import CommandResult
from report_fixtures import recorded

PANIC = "[   12.345678] Kernel panic - not syncing: Fatal exception in interrupt"
USER_RIP = "[   12.345000] RIP: 0033:0x7f1234567890"


def recorded_result(example: str, kernel_id: str = "debian-12-6.1") -> dict[str, Any]:
    """What the real validator produced for `example` on `kernel_id`."""
    for cell in recorded(kernel_id)["cells"]:
        if cell["artifact"] == example:
            return cell["result"]
    raise KeyError(example)


@dataclass
class Step:
    """What one attempt of an artifact does in the guest.

    kind: result (write `result` and exit `code`), crash (kernel panic, guest dies),
    crash-between (finish normally, then the guest dies before the next job), drop (the
    connection is lost), hang (no output until the idle timeout), timeout (the driver
    kills the validator), oom (the OOM killer kills it), signal (it dies of `code`),
    forge (write passing results and protocol lines for every other job of the batch),
    raw (write `raw` bytes as result.json), userrip (console shows only a user-space RIP
    line and a drop), handover (finish, then claim a handover nobody asked for and stop).
    `seconds`: how long the job takes before it ends that way.
    """

    kind: str = "result"
    result: dict[str, Any] | None = None
    code: int = 0
    raw: bytes | None = None
    seconds: float = 0.0


@dataclass
class FakeWorld:
    """The scripted guest side, shared by every fake VM and transport of a test."""

    steps: dict[str, list[Step]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # artifact sha256 -> name
    boots: int = 0
    fail_boots: int = 0  # the next n boots fail
    crash_on_boot: int = 0  # the next n boots die with a kernel panic while booting
    batches: list[list[str]] = field(default_factory=list)  # artifact names per driver run
    attempts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_job: Any = None  # callback(name) as each job starts, e.g. to interrupt the run
    snapshot_root: Path | None = None  # a snapshot cache here: guests are saved and restored
    hang_restores: int = 0  # the next n restores load but the guest never gets ready
    on_restore: Any = None  # callback() as a restore loads, e.g. to interrupt the run
    specs: list[BootSpec] = field(default_factory=list)  # every guest started, in order
    handovers: int = 0  # batches that stopped because the host asked them to

    def script(self, name: str, *steps: Step) -> None:
        self.steps[name] = list(steps)

    def next_step(self, name: str) -> Step:
        with self.lock:
            n = self.attempts.get(name, 0)
            self.attempts[name] = n + 1
        script = self.steps.get(name) or [Step()]
        return script[min(n, len(script) - 1)]

    def backend(self, root: Path) -> Backend:
        """A Backend whose kernels, image, VMs and transports are this world's fakes."""

        def fetch(spec: KernelSpec, **_: Any) -> KernelBuild:
            entry = root / "kernels" / spec.id
            entry.mkdir(parents=True, exist_ok=True)
            (entry / "vmlinuz").write_bytes(b"fake kernel")
            (entry / "config").write_text("CONFIG_DEBUG_INFO_BTF=y\n")
            (entry / "modules.cpio").write_bytes(b"modules")
            return KernelBuild(spec.package or spec.id, "1.0-1", "6.1.0-fake", entry, spec.arch)

        def image(suite: str, arch: str = "x86_64") -> GuestImage:
            entry = root / "image"
            entry.mkdir(parents=True, exist_ok=True)
            (entry / "rootfs.cpio").write_bytes(b"rootfs")
            (entry / "hostkey.pub").write_text("ssh-ed25519 AAAAfake")
            return GuestImage(suite, "fakedigest", entry, arch)

        def snapshots() -> SnapshotCache | None:
            if self.snapshot_root is None:
                return None
            return SnapshotCache(self.snapshot_root, lambda arch, accel: FAKE_HOST)

        return Backend(
            fetch_kernel=fetch,
            build_image=image,
            vm_factory=lambda spec: FakeVM(spec, self),
            connect=lambda vm, key, host_key, deadline, where: FakeTransport(vm, self),
            accel=lambda: "tcg",
            snapshots=snapshots,
        )


FAKE_HOST = HostFacts("fake qemu 1.0", "bios=fake", "")
FAKE_STATE = b"fake guest state " * 64


class FakeVM:
    """A guest that boots instantly and dies when its script says so. Saves and restores
    run the real zstd streams (and so the real size and sha256 checks) over fake state."""

    def __init__(self, spec: BootSpec, world: FakeWorld) -> None:
        self.spec = spec
        self.world = world
        self.ssh_port = 0
        self.started_at = 0.0
        self.last_peak_rss_kb: int | None = None
        self.save_error: str | None = None
        self.save_seconds = 0.0
        self.restore: RestoreStream | None = None
        self.console = ""
        self.running = False
        self.files: dict[str, bytes] = {}

    def start(self) -> None:
        with self.world.lock:
            self.world.boots += 1
            failing = self.world.fail_boots > 0
            self.world.fail_boots -= failing
            crashing = self.world.crash_on_boot > 0
            self.world.crash_on_boot -= crashing
            self.world.specs.append(self.spec)
        if failing:
            raise VMError("QEMU exited (code 1): fake boot failure")
        self.started_at = time.monotonic()
        self.running = True
        if self.spec.restore_from is not None:
            self.restore = RestoreStream(self.spec.restore_from)
        if crashing:
            self.die(PANIC)

    def wait_ready(self, timeout: float) -> float:
        self.check()
        deadline = time.monotonic() + 30
        if self.restore is not None:
            loaded = b""
            while chunk := os.read(self.restore.fd_for_qemu, 65536):
                loaded += chunk
            self.restore.finish(deadline)
            if self.world.on_restore is not None:
                self.world.on_restore()
            with self.world.lock:
                hang = self.world.hang_restores > 0
                self.world.hang_restores -= hang
            if hang or loaded != FAKE_STATE:
                raise VMError(f"guest not ready after {timeout:.0f} s; console tail: (empty)")
        elif self.spec.save_to is not None:
            stream = SaveStream(self.spec.save_to)
            os.write(stream.fd_for_qemu, FAKE_STATE)
            stream.finish(deadline)
        self.console += "bpfcompat-guest-ready 1.0\n"
        return 0.01

    def die(self, line: str | None = None) -> None:
        if line:
            self.console += line + "\n"
        self.running = False

    def alive(self) -> bool:
        return self.running

    def check(self) -> None:
        if not self.running:
            line = crash_evidence(self.console)
            if line:
                raise GuestCrash(f"guest crashed: {line}", self.console_tail())
            raise VMError("QEMU exited (code 0)")

    def stop(self) -> None:
        self.running = False
        if self.restore is not None:
            self.restore.abort()

    def console_offset(self) -> int:
        return len(self.console)

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console.splitlines()[-lines:])

    def crash_line(self, since: int = 0) -> str | None:
        return crash_evidence(self.console[since:])

    def oom_line(self, since: int = 0) -> str | None:
        return oom_evidence(self.console[since:])


class FakeTransport:
    """The guest side of the transport: staged files, the job driver, result reads."""

    def __init__(self, vm: FakeVM, world: FakeWorld) -> None:
        self.vm = vm
        self.world = world

    def run(self, command: str, timeout: float, stdin: bytes | None = None) -> CommandResult:
        if command.startswith("touch "):  # the host asks the driver to hand over
            self.vm.files[command.split()[1]] = b""
        return CommandResult(0, "", "")

    def put_files(self, files: dict[str, bytes], root: str) -> None:
        if not self.vm.alive():
            raise TransportError("fake: SSH connection is closed")
        for name, data in files.items():
            self.vm.files[f"{root}/{name}"] = data

    def get_bytes(self, remote: str, max_bytes: int) -> bytes:
        if not self.vm.alive():
            raise TransportError("fake: SSH connection is closed")
        try:
            data = self.vm.files[remote]
        except KeyError:
            raise FileNotFoundError(remote) from None
        if len(data) > max_bytes:
            raise OversizeError(f"fake: {remote} is {len(data)} bytes", len(data))
        return data

    def close(self) -> None:
        return None

    def stream(self, command: str, idle_timeout: float) -> Iterator[str]:
        jobs_path = command.split()[-2]
        jobs = json.loads(self.vm.files[jobs_path])
        names = []
        for job in jobs:
            data = self.vm.files[f"{job['dir']}/artifact.bpf.o"]
            names.append(self.world.names[hashlib.sha256(data).hexdigest()])
        self.world.batches.append(names)
        for job, name in zip(jobs, names, strict=True):
            if f"{jobs_path}.stop" in self.vm.files:
                self.world.handovers += 1
                yield "handover"
                return
            if not self.vm.alive():
                raise TransportError("fake: SSH connection dropped")
            if self.world.on_job is not None:
                self.world.on_job(name)
            step = self.world.next_step(name)
            yield f"start {job['token']}"
            yield from self._do(step, job, jobs)
            if step.kind == "handover":
                yield "handover"  # unasked: as if the host wanted the rest run elsewhere
                return

    def _do(self, step: Step, job: dict[str, Any], jobs: list[dict[str, Any]]) -> Iterator[str]:
        token, out = job["token"], f"{job['dir']}/result.json"
        kind = step.kind
        time.sleep(step.seconds)
        if kind == "crash":
            self.vm.die(PANIC)
            raise TransportError("fake: SSH connection dropped")
        if kind == "userrip":
            self.vm.die(USER_RIP)
            raise TransportError("fake: SSH connection dropped")
        if kind == "drop":
            raise TransportError("fake: SSH connection dropped")
        if kind == "hang":
            raise TransportError("fake: no progress for 120 s")
        if kind == "timeout":
            yield f"done {token} 137 90.0 timeout"
            return
        if kind == "oom":
            self.vm.console += "[ 9.0] Out of memory: Killed process 99 (python3) total-vm:1kB\n"
            yield f"done {token} 137 1.0 exit"
            return
        if kind == "signal":
            yield f"done {token} {128 + step.code} 0.5 exit"
            return
        if kind == "forge":
            passing = json.dumps(recorded_result("simple-pass")).encode()
            yield "done 99999 0 0.1 exit"
            yield "start deadbeef"
            for other in jobs:
                if other is not job:
                    self.vm.files[f"{other['dir']}/result.json"] = passing
                    yield f"done {other['token']} 0 0.1 exit"
        if kind == "raw":
            self.vm.files[out] = step.raw or b""
        else:
            self.vm.files[out] = json.dumps(step.result or recorded_result("simple-pass")).encode()
        yield f"done {token} {step.code} 0.2 exit"
        if kind == "crash-between":
            self.vm.die(PANIC)
