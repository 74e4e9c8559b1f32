"""Boot a kernel under QEMU with no disk, watch its console, always tear it down.

Accelerator choice looks at the CPU, not just /dev/kvm: on nested or trimmed hosts the
device node answers while guests cannot run under it (see docs), so KVM is used only
when the CPU advertises vmx/svm as well.
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
from dataclasses import dataclass, field
from pathlib import Path

from bpfcompat.errors import GuestCrash, VMError

ACCEL_ENV = "BPFCOMPAT_ACCEL"
READY_MARKER = "bpfcompat-guest-ready"
# Lines the kernel prints when it dies or is about to; the first one seen is the evidence.
CRASH_PATTERNS = re.compile(
    r"Kernel panic - not syncing|BUG: kernel NULL pointer|BUG: unable to handle|"
    r"general protection fault|Oops: |kernel BUG at|sysrq: Trigger a crash"
)
# mm/oom_kill.c: "Out of memory: Killed process %d (%s) total-vm:..." (older kernels:
# "Out of memory: Kill process"; memory cgroups: "Memory cgroup out of memory: ..."), to
# the end of the line: the console watch finds it, the classifier quotes it.
OOM_KILL = re.compile(r"(?:Memory cgroup )?[Oo]ut of memory: Kill(?:ed)? process.*")
QEMU_BINARY = "qemu-system-x86_64"


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


class QemuVM:
    """One running guest. Use as a context manager so it is always killed."""

    def __init__(self, spec: BootSpec) -> None:
        self.spec = spec
        self.ssh_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_at = 0.0
        self.last_peak_rss_kb: int | None = None

    def command(self) -> list[str]:
        spec = self.spec
        cpu = (
            ["-accel", "kvm", "-cpu", "host"]
            if spec.accel == "kvm"
            else ["-accel", "tcg,thread=multi,tb-size=64", "-cpu", "max"]
        )
        cmd = [
            QEMU_BINARY,
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-machine",
            "pc",
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
            f"file,id=con0,path={spec.console_log}",
            "-serial",
            "chardev:con0",
            "-no-reboot",
            "-monitor",
            "none",
        ]
        if spec.with_network:
            # restrict=on: the guest reaches nothing, not even the host; only the
            # forward (bound to loopback) lets the host in.
            cmd += [
                "-netdev",
                f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
                "-device",
                "virtio-net-pci,netdev=n0",
            ]
        return cmd

    def start(self) -> None:
        if shutil.which(QEMU_BINARY) is None:
            raise VMError(f"{QEMU_BINARY} not found: run scripts/setup.sh (qemu-system-x86)")
        self.spec.console_log.parent.mkdir(parents=True, exist_ok=True)
        self.spec.console_log.write_bytes(b"")
        self.ssh_port = free_local_port()
        self.started_at = time.monotonic()
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # Ctrl-C on the terminal must not reach QEMU first
            )

    def console(self) -> str:
        try:
            return self.spec.console_log.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console().splitlines()[-lines:])

    def crash_line(self) -> str | None:
        match = CRASH_PATTERNS.search(self.console())
        if not match:
            return None
        text = self.console()
        start = text.rfind("\n", 0, match.start()) + 1
        end = text.find("\n", match.end())
        return text[start : end if end >= 0 else len(text)].strip()

    def oom_line(self) -> str | None:
        """The console's last OOM-killer report ("Out of memory: Killed process ...")."""
        lines = [ln.strip() for ln in self.console().splitlines() if OOM_KILL.search(ln)]
        return lines[-1][:500] if lines else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Raise GuestCrash/VMError when the guest has died or is dying."""
        line = self.crash_line()
        if line is not None:
            raise GuestCrash(f"guest crashed: {line}", self.console_tail())
        if not self.alive():
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
        """Block until init reports ready; return seconds since start."""
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            self.check()
            if READY_MARKER in self.console():
                self.ready_at = time.monotonic()
                return self.ready_at - self.started_at
            time.sleep(0.02)
        raise VMError(
            f"guest not ready after {timeout:.0f} s; console tail: "
            + (self.console_tail(3).replace("\n", " | ") or "(empty)")
        )

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
            return
        self.last_peak_rss_kb = self.peak_rss_kb()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def __enter__(self) -> QemuVM:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
