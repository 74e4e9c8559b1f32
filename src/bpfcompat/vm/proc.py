"""Every external program the tool starts runs through here: bounded in time, watched
for stalls, bounded in the output it may produce.

A program that hangs (apt on a full disk, a build waiting on a lock) must end the step with
one line naming the step and the limit it hit, not hang the run or CI.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bpfcompat.errors import BpfcompatError

MAX_OUTPUT_BYTES = 256 << 20  # what one program may print before it is stopped
PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h


def die_with_parent(parent: int) -> None:
    """In the child before exec: SIGKILL when the thread that started us dies.

    The signal follows the starting *thread*; the runner's worker threads outlive every
    VM they start, and when the whole process dies (even by SIGKILL) all of them go."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")


def run_bounded(
    cmd: list[str],
    what: str,
    *,
    error: type[BpfcompatError] = BpfcompatError,
    timeout: float = 900.0,
    stall: float | None = None,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
) -> Finished:
    """Run `cmd`; raise `error` naming `what` if it cannot start, runs past `timeout`
    seconds, prints nothing for `stall` seconds, or prints over MAX_OUTPUT_BYTES. The
    exit code is the caller's to judge."""
    # Input comes from a file, not a pipe: a program that writes before it has read all
    # its input would otherwise block us both.
    with tempfile.TemporaryFile() as feed:
        if stdin is not None:
            feed.write(stdin)
            feed.seek(0)
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=feed if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # so a stop takes the program's children too
            )
        except FileNotFoundError:
            raise error(f"{what}: {cmd[0]} not found (run scripts/setup.sh)") from None
        except OSError as exc:
            raise error(f"{what}: cannot start {cmd[0]}: {exc.strerror or exc}") from None
    chunks: dict[int, list[bytes]] = {1: [], 2: []}
    total = 0
    started = last = time.monotonic()
    problem: str | None = None
    with selectors.DefaultSelector() as sel:
        assert proc.stdout is not None and proc.stderr is not None
        sel.register(proc.stdout, selectors.EVENT_READ, 1)
        sel.register(proc.stderr, selectors.EVENT_READ, 2)
        while sel.get_map():
            now = time.monotonic()
            if now - started > timeout:
                problem = f"did not finish within {timeout:g} s"
                break
            if stall is not None and now - last > stall:
                problem = f"stalled: no output for {stall:g} s"
                break
            for key, _ in sel.select(timeout=0.5):
                data = os.read(key.fd, 1 << 16)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                last = time.monotonic()
                total += len(data)
                chunks[key.data].append(data)
            if total > MAX_OUTPUT_BYTES:
                problem = f"printed over {MAX_OUTPUT_BYTES >> 20} MiB"
                break
    if problem is not None:
        _kill(proc)
        raise error(f"{what}: {problem} (stopped)")
    try:
        proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise error(f"{what}: did not exit within {timeout:g} s (stopped)") from None
    return Finished(proc.returncode, b"".join(chunks[1]), b"".join(chunks[2]))


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
