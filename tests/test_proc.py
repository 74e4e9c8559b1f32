"""Every external program runs bounded: a hang, a stall or a flood ends the step with one
line naming it, and nothing of the program is left running."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bpfcompat.errors import FetchError
from bpfcompat.vm import proc
from bpfcompat.vm.proc import run_bounded


def _alive(marker: str) -> bool:
    out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return any(marker in line and "ps -ww" not in line for line in out.splitlines())


def test_output_and_exit_code_come_back() -> None:
    done = run_bounded([sys.executable, "-c", "print('hi'); import sys; sys.exit(3)"], "t")
    assert (done.returncode, done.out.strip()) == (3, "hi")


def test_a_silent_program_is_stopped_as_stalled_with_its_children() -> None:
    assert not _alive("bpfcompat-stall-test-7731")
    marker = "bpfcompat-stall-test-7731"
    child = f"sleep 60; echo {marker}"  # the shell stays alive, its argv names the marker
    script = (
        f"import subprocess, time; subprocess.Popen(['sh', '-c', {child!r}]); "
        "print('x', flush=True); time.sleep(60)"
    )
    with pytest.raises(FetchError, match=r"^apt-get update: stalled: no output for 1 s"):
        run_bounded([sys.executable, "-c", script], "apt-get update", error=FetchError, stall=1.0)
    assert not _alive(marker)


def test_a_program_that_keeps_talking_still_hits_the_time_limit() -> None:
    script = "import time\nwhile True:\n    print('.', flush=True); time.sleep(0.1)"
    with pytest.raises(FetchError, match="did not finish within 1 s"):
        run_bounded([sys.executable, "-c", script], "step", error=FetchError, timeout=1.0, stall=5)


def test_a_flood_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proc, "MAX_OUTPUT_BYTES", 1 << 20)
    script = "import sys\nwhile True: sys.stdout.write('x' * 65536)"
    with pytest.raises(FetchError, match="printed over 1 MiB"):
        run_bounded([sys.executable, "-c", script], "flood", error=FetchError)


def test_a_missing_program_is_one_line() -> None:
    with pytest.raises(FetchError, match="no-such-tool-xyz not found"):
        run_bounded(["no-such-tool-xyz"], "step", error=FetchError)
