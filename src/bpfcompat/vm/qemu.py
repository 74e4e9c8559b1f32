"""Boot a kernel under QEMU with no disk, watch its console, always tear it down.

Accelerator choice looks at the CPU, not just /dev/kvm: on nested or trimmed hosts the
device node answers while guests cannot run under it (see docs), so KVM is used only
when the CPU advertises vmx/svm as well.

QEMU dies with the process that started it (PR_SET_PDEATHSIG), so a bpfcompat killed with
SIGKILL leaves no guest behind, and its console is capped so a flooding guest cannot fill
the host's disk.

In agent mode (a BootSpec with a handoff) the guest waits on its console for the run's
keys; QEMU's stdin feeds that console and a QMP channel drives it, so the guest can be
saved to a file while it waits (`save_to`) or started from such a file (`restore_from`)
instead of booting. The console is still logged to the same file and watched the same way.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bpfcompat.errors import GuestCrash, SnapshotError, VMError
from bpfcompat.vm.arch import get_arch, host_arch
from bpfcompat.vm.console import ConsoleWatch
from bpfcompat.vm.handoff import Handoff
from bpfcompat.vm.migration import (
    SAVE_BANDWIDTH,
    Qmp,
    RestoreStream,
    SavedGuest,
    SaveStream,
    wait_migration,
)
from bpfcompat.vm.proc import die_with_parent

ACCEL_ENV = "BPFCOMPAT_ACCEL"
# A guest printing without end is stopped here rather than filling the host's disk.
MAX_CONSOLE_BYTES = 64 << 20


def detect_accel() -> str:
    """'kvm' when /dev/kvm is usable AND the CPU has vmx/svm, else 'tcg'."""
    forced = os.environ.get(ACCEL_ENV, "").strip().lower()
    if forced in {"kvm", "tcg"}:
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "tcg"
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return "kvm" if flags & {"vmx", "svm"} else "tcg"


def free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class BootSpec:
    vmlinuz: Path
    initrd: Path
    cmdline: str
    memory_mb: int
    cpus: int
    console_log: Path
    accel: str = field(default_factory=detect_accel)
    with_network: bool = True
    arch: str = "x86_64"
    # Agent mode: the guest waits for this on its console (no key on the command line).
    handoff: Handoff | None = None
    # Agent mode: save the guest here, zstd-compressed, once it waits; then go on.
    save_to: Path | None = None
    # Agent mode: start from this saved guest instead of booting.
    restore_from: SavedGuest | None = None

    @property
    def effective_accel(self) -> str:
        """KVM runs only guests of the host's own architecture; others are emulated."""
        return self.accel if self.arch == host_arch() else "tcg"


class GuestVM(Protocol):
    """A running guest as the orchestration sees it: QEMU, or a fake in tests."""

    ssh_port: int
    started_at: float
    last_peak_rss_kb: int | None
    save_error: str | None  # why `save_to` was not written (None: written, or not asked)
    save_seconds: float

    def start(self) -> None: ...
    def wait_ready(self, timeout: float) -> float: ...
    def alive(self) -> bool: ...
    def check(self) -> None: ...
    def stop(self) -> None: ...
    def console_offset(self) -> int: ...
    def console_tail(self, lines: int = 40) -> str: ...
    def crash_line(self, since: int = 0) -> str | None: ...
    def oom_line(self, since: int = 0) -> str | None: ...


class QemuVM:
    """One running guest. Use as a context manager so it is always killed."""

    def __init__(self, spec: BootSpec) -> None:
        self.spec = spec
        self.ssh_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_at = 0.0
        self.last_peak_rss_kb: int | None = None
        self.watch = ConsoleWatch(spec.console_log)
        self.qmp: Qmp | None = None
        self.save_error: str | None = None
        self.save_seconds = 0.0
        self._restore: RestoreStream | None = None
        self._qmp_fd = -1
        # Seconds since start at each step of getting ready, for the benchmarks.
        self.marks: dict[str, float] = {}

    def _mark(self, name: str) -> None:
        self.marks[name] = time.monotonic() - self.started_at

    @property
    def agent(self) -> bool:
        return self.spec.handoff is not None

    def command(self) -> list[str]:
        return self._command(
            self.ssh_port, str(self.spec.console_log), self.agent, self._qmp_fd, self._incoming_fd
        )

    def shape(self) -> list[str]:
        """The agent-mode command line with every per-run value blanked (console path,
        forwarded port, descriptors, the kernel's and initrd's paths): two guests with the
        same shape and the same file contents are the same machine, whatever cache they
        came from."""
        args = self._command(0, "CONSOLE", True, -1, None)
        files = {str(self.spec.vmlinuz): "KERNEL", str(self.spec.initrd): "INITRD"}
        return [files.get(arg, arg) for arg in args]

    @property
    def _incoming_fd(self) -> int | None:
        return self._restore.fd_for_qemu if self._restore is not None else None

    def _command(
        self, port: int, console: str, agent: bool, qmp_fd: int, incoming_fd: int | None
    ) -> list[str]:
        spec = self.spec
        arch = get_arch(spec.arch)
        if agent:
            # The console reads QEMU's stdin (the handoff) and is logged as before.
            serial = f"stdio,id=con0,logfile={console},signal=off"
            monitor = ["-chardev", f"socket,id=qmp,fd={qmp_fd}", "-mon", "chardev=qmp,mode=control"]
        else:
            serial = f"file,id=con0,path={console}"
            monitor = ["-monitor", "none"]
        cpu = (
            ["-accel", "kvm", "-cpu", "host"]
            if spec.effective_accel == "kvm"
            else ["-accel", "tcg,thread=multi,tb-size=64", "-cpu", arch.tcg_cpu]
        )
        cmd = [
            arch.qemu_binary,
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            *arch.machine,
            *cpu,
            "-smp",
            str(spec.cpus),
            "-m",
            str(spec.memory_mb),
            "-kernel",
            str(spec.vmlinuz),
            "-initrd",
            str(spec.initrd),
            "-append",
            spec.cmdline,
            "-chardev",
            serial,
            "-serial",
            "chardev:con0",
            "-no-reboot",
            *monitor,
        ]
        if spec.with_network:
            # restrict=on: the guest reaches nothing, not even the host; only the
            # forward (bound to loopback) lets the host in. The forward is host-side
            # configuration, not guest state: a restored guest gets a new port.
            cmd += [
                "-netdev",
                f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
                "-device",
                "virtio-net-pci,netdev=n0",
            ]
        if incoming_fd is not None:
            cmd += ["-incoming", f"fd:{incoming_fd}"]
        return cmd

    def start(self) -> None:
        arch = get_arch(self.spec.arch)
        if shutil.which(arch.qemu_binary) is None:
            raise VMError(
                f"{arch.qemu_binary} not found: run scripts/setup.sh ({arch.qemu_package})"
            )
        self.spec.console_log.parent.mkdir(parents=True, exist_ok=True)
        self.spec.console_log.write_bytes(b"")
        self.ssh_port = free_local_port()
        handoff = self.spec.handoff
        self.watch = ConsoleWatch(self.spec.console_log, handoff.nonce if handoff else None)
        self.started_at = time.monotonic()
        parent = os.getpid()
        ours = theirs = None
        if self.agent:
            ours, theirs = socket.socketpair()
            self._qmp_fd = theirs.fileno()
            if self.spec.restore_from is not None:
                self._restore = RestoreStream(self.spec.restore_from)
        passed = [fd for fd in (self._qmp_fd, self._incoming_fd) if fd is not None and fd >= 0]
        try:
            with self.stderr_path.open("wb") as err:
                self.proc = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.PIPE if self.agent else subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    pass_fds=passed,
                    start_new_session=True,  # Ctrl-C on the terminal must not reach QEMU first
                    preexec_fn=lambda: die_with_parent(parent),
                )
        except BaseException:
            if ours is not None:
                ours.close()
            if self._restore is not None:
                self._restore.abort()
            raise
        finally:
            if theirs is not None:
                theirs.close()  # QEMU holds its own copies now
            if self._restore is not None:
                self._restore.handed_over()
        if ours is not None:
            self.qmp = Qmp(ours, f"QEMU ({self.spec.console_log.name})")

    def console_offset(self) -> int:
        """Bytes of console read so far: a crash seen later happened after this point."""
        self.watch.poll()
        return self.watch.offset

    def console_tail(self, lines: int = 40) -> str:
        self.watch.poll()
        return self.watch.tail_lines(lines)

    def crash_line(self, since: int = 0) -> str | None:
        """The kernel's own crash report on the console (at or after byte `since`)."""
        self.watch.poll()
        return self.watch.crash_line(since)

    def oom_line(self, since: int = 0) -> str | None:
        """The console's last OOM-killer report ("Out of memory: Killed process ...")."""
        self.watch.poll()
        return self.watch.oom_line(since)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Raise GuestCrash when the guest died with a kernel crash report on its console,
        VMError when QEMU stopped otherwise or the console overflowed.

        A crash line alone proves nothing while QEMU runs (root in the guest can write
        any text to the console); a real panic or oops ends the VM (panic=-1, oops=panic,
        -no-reboot)."""
        self.watch.poll()
        if self.watch.offset > MAX_CONSOLE_BYTES:
            self.stop()
            raise VMError(f"guest wrote over {MAX_CONSOLE_BYTES >> 20} MiB to its console: stopped")
        if not self.alive():
            line = self.watch.crash_line()
            if line is not None:
                raise GuestCrash(f"guest crashed: {line}", self.watch.tail_lines())
            code = self.proc.returncode if self.proc else None
            err = self._stderr()
            raise VMError(f"QEMU exited (code {code}){': ' + err if err else ''}")

    @property
    def stderr_path(self) -> Path:
        return self.spec.console_log.with_suffix(".qemu-stderr")

    def _stderr(self) -> str:
        with contextlib.suppress(OSError, IndexError):
            return self.stderr_path.read_text(errors="replace").strip().splitlines()[-1]
        return ""

    def wait_ready(self, timeout: float) -> float:
        """Block until init reports ready; return seconds since start. In agent mode the
        guest is first restored or saved as asked, then handed the run's keys."""
        deadline = self.started_at + timeout
        handoff = self.spec.handoff
        if handoff is not None:
            if self.spec.restore_from is not None:
                self._finish_restore(deadline)
            else:
                self._until(lambda: self.watch.waiting, deadline, timeout)
                self._mark("waiting")
                if self.spec.save_to is not None:
                    self._save(self.spec.save_to, deadline)
                    self._mark("saved")
            self._send(handoff.line())
            self._mark("handed")
        self._until(lambda: self.watch.ready, deadline, timeout)
        self._mark("ready")
        self.ready_at = time.monotonic()
        return self.ready_at - self.started_at

    def _until(self, done: Callable[[], bool], deadline: float, timeout: float) -> None:
        while time.monotonic() < deadline:
            self.check()
            if done():
                return
            time.sleep(0.01)
        raise VMError(
            f"guest not ready after {timeout:.0f} s; console tail: "
            + (self.watch.tail_lines(3).replace("\n", " | ") or "(empty)")
        )

    def _control(self) -> Qmp:
        if self.qmp is None:
            raise VMError("QEMU was started without its control channel")
        return self.qmp

    def _finish_restore(self, deadline: float) -> None:
        """The stream loaded, zstd ended cleanly, the file's sha256 is the recorded one:
        only then does the guest run and get the handoff."""
        qmp, stream = self._control(), self._restore
        assert stream is not None
        wait_migration(qmp, deadline, self.check)
        self._mark("loaded")
        stream.finish(deadline)
        self._mark("verified")
        qmp.execute("cont", deadline)

    def _save(self, path: Path, deadline: float) -> None:
        """Pause the waiting guest, write it to `path`, resume it. A failure is recorded
        in `save_error`, never raised: this guest is still good for the run."""
        qmp = self._control()
        started = time.monotonic()
        stream: SaveStream | None = None
        try:
            stream = SaveStream(path)
            qmp.execute("stop", deadline)
            qmp.execute("migrate-set-parameters", deadline, **{"max-bandwidth": SAVE_BANDWIDTH})
            qmp.execute("getfd", deadline, fds=(stream.fd_for_qemu,), fdname="snapshot")
            stream.handed_over()
            qmp.execute("migrate", deadline, uri="fd:snapshot")
            wait_migration(qmp, deadline, self.check)
            stream.finish(deadline)
            self.save_seconds = time.monotonic() - started
        except (SnapshotError, OSError) as exc:
            self.save_error = str(exc)
            if stream is not None:
                stream.abort()
            with contextlib.suppress(OSError):
                path.unlink()
        finally:
            if self.alive():
                qmp.execute("cont", deadline)

    def _send(self, line: bytes) -> None:
        stdin = self.proc.stdin if self.proc else None
        try:
            assert stdin is not None
            stdin.write(line)
            stdin.flush()
        except (OSError, ValueError):
            self.check()
            raise VMError("QEMU stopped reading the guest's console input") from None

    def peak_rss_kb(self) -> int | None:
        """QEMU's high-water resident set (VmHWM), while it still runs."""
        if self.proc is None:
            return None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        return int(match.group(1)) if match else None

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            self._release()
            return
        self.last_peak_rss_kb = self.peak_rss_kb()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        self._release()

    def _release(self) -> None:
        if self.qmp is not None:
            self.qmp.close()
        if self._restore is not None:
            self._restore.abort()
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def __enter__(self) -> QemuVM:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
