"""Faults survived: shared stores, locked stores, corrupt and full caches, interrupts.
Each run must end by itself, keep the store intact and leave no QEMU behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bpfcompat.errors import FetchError
from bpfcompat.matrix.config import load_kernel_matrix
from bpfcompat.vm.cache import cache_root
from bpfcompat.vm.kernels import cached_kernel, fetch_kernel, kernel_entry_dir
from conftest import ROOT, require_tool, run_cli

MATRIX = load_kernel_matrix(ROOT / "kernels.yaml")


def qemu_processes(marker: str) -> list[str]:
    # -ww: without it ps cuts lines at 80 columns when stdout is not a terminal (as under
    # pytest), the marker (a path late in QEMU's argv) is never seen and the check is vacuous.
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if "qemu-system" in ln and marker in ln]


def integrity(db: Path) -> str:
    return sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0]


@pytest.mark.vm
def test_two_runs_share_one_store(built_examples: Path, tmp_path: Path) -> None:
    require_tool("qemu-system-x86_64")
    db = tmp_path / "shared.db"
    arts = [str(built_examples / "simple-pass"), str(built_examples / "ringbuf"),
            str(built_examples / "bloom-filter-map")]  # fmt: skip
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bpfcompat",
                "matrix",
                "run",
                *arts,
                "--kernel",
                kernel,
                "--db",
                str(db),
                "--no-cache",
                "--out-dir",
                str(tmp_path / kernel),
                "--json",
                str(tmp_path / f"{kernel}.json"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CI": "1"},
        )
        for kernel in ("debian-11-5.10", "debian-12-6.1")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode in (0, 2), err[-2000:]
    assert integrity(db) == "ok"
    conn = sqlite3.connect(db)
    assert conn.execute("select count(*) from run where status = 'completed'").fetchone()[0] == 2
    assert conn.execute("select count(*) from cell").fetchone()[0] == 6
    for kernel in ("debian-11-5.10", "debian-12-6.1"):
        export = json.loads((tmp_path / f"{kernel}.json").read_text())
        assert len(export["cells"]) == 3


def test_locked_store_waits_for_the_other_writer(tmp_path: Path) -> None:
    """Another process holds the write lock for 3 s: our writes wait, then land."""
    from bpfcompat.matrix.store import Run, Store

    db = tmp_path / "locked.db"
    Store(db)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(3.0, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    run = Store(db).add(Run(accel="tcg"))
    assert run.id is not None and time.monotonic() - started >= 2.5
    release.join()
    assert integrity(db) == "ok"


def test_corrupt_kernel_cache_entry_is_refetched(tmp_path: Path) -> None:
    spec = MATRIX.select(["debian-12-6.1"])[0]
    real = kernel_entry_dir(spec)
    if cached_kernel(spec) is None:
        fetch_kernel(spec)
    cache = tmp_path / "cache"
    entry = kernel_entry_dir(spec, cache / "bpfcompat")
    shutil.copytree(real, entry)
    size = (entry / "vmlinuz").stat().st_size
    with (entry / "vmlinuz").open("r+b") as fh:
        fh.truncate(size // 2)
    assert cached_kernel(spec, cache / "bpfcompat") is None  # detected, not booted
    build = fetch_kernel(spec, cache / "bpfcompat")
    assert build.vmlinuz.stat().st_size == size
    # Same-size corruption is caught by the digest.
    with (entry / "vmlinuz").open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\xff" * 16)
    assert cached_kernel(spec, cache / "bpfcompat") is None


@pytest.mark.root
def test_full_disk_leaves_no_partial_entry(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root to mount a small tmpfs", pytrace=False)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(small)], check=True)
    try:
        spec = MATRIX.select(["debian-13-6.12"])[0]
        with pytest.raises(FetchError) as info:
            fetch_kernel(spec, small / "bpfcompat")
        assert "\n" not in str(info.value)
        kernels_dir = kernel_entry_dir(spec, small / "bpfcompat").parent
        # Only the (empty) lock file may remain: no entry, no temp dir.
        found = list(kernels_dir.iterdir()) if kernels_dir.exists() else []
        leftovers = [p for p in found if not p.name.endswith(".lock")]
        assert leftovers == [], leftovers
        root_dir = small / "bpfcompat"
        scratch = [p for p in root_dir.iterdir() if p.name.startswith("bpfcompat-fetch")]
        assert scratch == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


@pytest.mark.vm
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_everything(built_examples: Path, tmp_path: Path, signum: int) -> None:
    require_tool("qemu-system-x86_64")
    out = tmp_path / "out"
    db = tmp_path / "db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bpfcompat", "matrix", "run", str(built_examples), "--db", str(db),
         "--no-cache", "--out-dir", str(out), "--kernel", "debian-12-6.1",
         "--kernel", "debian-13-6.12"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "CI": "1"},
    )  # fmt: skip
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if "validating 3/" in line:
            break
    else:
        proc.kill()
        pytest.fail(f"never started validating: {seen[-2000:]}")
    proc.send_signal(signum)
    sent = time.monotonic()
    proc.wait(timeout=60)
    assert time.monotonic() - sent < 30, "did not stop within 30 s"
    assert proc.returncode == 130
    assert qemu_processes(str(out)) == []
    conn = sqlite3.connect(db)
    assert conn.execute("select status from run").fetchone()[0] == "interrupted"
    assert conn.execute("select count(*) from cell").fetchone()[0] >= 2
    assert integrity(db) == "ok"
    assert not conn.execute("select 1 from cell where code = 'INFRA_ERROR'").fetchall()


def test_cache_root_honours_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "bpfcompat"


def test_unknown_kernel_leaves_store_untouched(tmp_path: Path) -> None:
    db = tmp_path / "db"
    proc = run_cli("matrix", "run", str(ROOT / "examples" / "simple-pass"), "--kernel", "nope",
                   "--db", str(db))  # fmt: skip
    assert proc.returncode == 1
    assert not db.exists()


# --- guest-side faults -------------------------------------------------------------------


def _stage(root: Path, src: Path, manifests: dict[str, str]) -> list[Path]:
    """One directory per artifact (a copy of `src`), with a manifest where given."""
    dirs = []
    for name, manifest in manifests.items():
        (root / name).mkdir(parents=True)
        shutil.copy(src, root / name / f"{name}.bpf.o")
        if manifest:
            (root / name / "manifest.yaml").write_text(manifest)
        dirs.append(root / name)
    return dirs


class _Run:
    """`matrix run` in the background, its progress lines collected as they come."""

    def __init__(self, tmp: Path, inputs: list[Path], *extra: str) -> None:
        self.out, self.db, self.json = tmp / "out", tmp / "db", tmp / "run.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bpfcompat", "matrix", "run", *map(str, inputs),
             "--db", str(self.db), "--no-cache", "--out-dir", str(self.out),
             "--json", str(self.json), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "CI": "1"},
        )  # fmt: skip
        self.lines: list[str] = []
        self.out_lines: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, sink), daemon=True)
            for stream, sink in ((self.proc.stderr, self.lines), (self.proc.stdout, self.out_lines))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    def wait_for(self, text: str, count: int = 1, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while sum(text in ln for ln in self.lines) < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"no {text!r} (x{count}) in: {''.join(self.lines)[-3000:]}")
            time.sleep(0.1)

    def finish(self, timeout: float) -> dict:
        self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        stderr = "".join(self.lines)
        assert "Traceback" not in stderr, stderr[-3000:]
        assert self.json.is_file(), stderr[-3000:]
        return json.loads(self.json.read_text())

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        """After a failed assertion: SIGTERM (the runner then kills its own VMs), and as a
        last resort kill what is left of this run by pid, never by name."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for pid in _qemu_pids(str(self.out)):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def runs() -> Iterator[list[_Run]]:
    """Runs a test started: stopped at teardown, so a failed assertion leaves no VM."""
    started: list[_Run] = []
    yield started
    for run in started:
        run.stop()


def _qemu_pids(marker: str) -> list[int]:
    return [int(ln.split()[0]) for ln in qemu_processes(marker)]


def _verdicts(export: dict) -> dict[str, tuple[str, str | None]]:
    return {c["artifact"]: (c["status"], c["code"]) for c in export["cells"]}


@pytest.mark.vm
def test_qemu_killed_mid_validation_costs_one_cell(
    built_examples: Path, tmp_path: Path, runs: list[_Run]
) -> None:
    """kill -9 of QEMU while b-victim runs (its functional test sleeps; an artifact that
    runs commands gets a guest of its own: it runs first, in the guest just booted, and
    a-first and c-after share the next one): the runner reboots and retries b once; QEMU
    is killed again, so b is INFRA_ERROR with the evidence of the dead VM, and the others
    are untouched."""
    require_tool("qemu-system-x86_64")
    sleeper = "functional_tests:\n  - name: slow\n    command: sleep 40\n    timeout: 60s\n"
    inputs = _stage(tmp_path / "in", built_examples / "simple-pass" / "simple-pass.bpf.o",
                    {"a-first": "", "b-victim": sleeper, "c-after": ""})  # fmt: skip
    run = _Run(tmp_path, inputs, "--kernel", "debian-12-6.1")
    runs.append(run)
    killed: list[int] = []
    for attempt in (1, 2):
        run.wait_for("validating 1/3 b-victim", count=attempt)
        time.sleep(3)  # inside the 40 s functional test
        pids = [p for p in _qemu_pids(str(run.out)) if p not in killed]
        assert len(pids) == 1, (pids, killed)
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])
    export = run.finish(timeout=300)
    assert _verdicts(export) == {"a-first": ("pass", None), "b-victim": ("error", "INFRA_ERROR"),
                                 "c-after": ("pass", None)}, run.stderr[-3000:]  # fmt: skip
    victim = next(c for c in export["cells"] if c["artifact"] == "b-victim")
    assert re.search(r"QEMU exited|SSH|connection", victim["evidence"]), victim["evidence"]
    assert export["kernels"][0]["boots"] == 3
    assert export["run"]["status"] == "completed" and run.proc.returncode == 1
    assert integrity(run.db) == "ok"
    assert qemu_processes(str(run.out)) == []


@pytest.mark.vm
@pytest.mark.parametrize(
    ("case", "cmdline", "boot_timeout", "evidence"),
    [
        # init blocks reading the console: the guest never says it is ready.
        ("hangs", "rdinit=/bin/cat", 20, r"not ready after 20 s; console tail: "),
        # init exits at once: the kernel panics ("Attempted to kill init!").
        ("panics", "rdinit=/bin/false", 60, r"guest crashed: .*Kernel panic .*kill init"),
    ],
)
def test_guest_that_never_boots_ends_the_run_by_itself(
    built_examples: Path, tmp_path: Path, runs: list[_Run], case: str, cmdline: str,
    boot_timeout: int, evidence: str,
) -> None:  # fmt: skip
    """Two boot attempts, each bounded by boot_timeout_s, then every cell of that kernel
    is INFRA_ERROR naming the boot failure (with the console's own words)."""
    require_tool("qemu-system-x86_64")
    spec = MATRIX.select(["debian-12-6.1"])[0]
    kernels = tmp_path / "kernels.yaml"
    entry = spec.model_dump() | {"id": f"noboot-{case}", "cmdline": cmdline,
                                 "boot_timeout_s": boot_timeout}  # fmt: skip
    kernels.write_text(json.dumps({"guest_suite": MATRIX.guest_suite, "kernels": [entry]}))
    inputs = _stage(tmp_path / "in", built_examples / "simple-pass" / "simple-pass.bpf.o",
                    {"one": "", "two": ""})  # fmt: skip
    started = time.monotonic()
    run = _Run(tmp_path, inputs, "--kernels", str(kernels))
    runs.append(run)
    export = run.finish(timeout=2 * boot_timeout + 120)
    elapsed = time.monotonic() - started
    assert elapsed < 2 * boot_timeout + 60, elapsed
    assert _verdicts(export) == {"one": ("error", "INFRA_ERROR"), "two": ("error", "INFRA_ERROR")}
    for cell in export["cells"]:
        assert cell["evidence"].startswith("boot failed: "), cell["evidence"]
        assert re.search(evidence, cell["evidence"]), cell["evidence"]
    kernel = export["kernels"][0]
    assert kernel["status"] == "error" and kernel["boots"] == 2, kernel
    assert run.proc.returncode == 1
    assert f"kernel noboot-{case}: boot failed" in run.stderr
    assert integrity(run.db) == "ok"
    assert qemu_processes(str(run.out)) == []


@pytest.mark.vm
def test_ssh_server_killed_in_the_guest_costs_one_cell(
    built_examples: Path, tmp_path: Path, runs: list[_Run]
) -> None:
    """A functional test kills dropbear (the guest's SSH server, ours included): the cell
    is retried once after a reboot, then INFRA_ERROR; the others (which run after it, in
    a guest of their own) pass."""
    require_tool("qemu-system-x86_64")
    killer = ("functional_tests:\n  - name: kill-sshd\n"
              "    command: \"sh -c 'killall dropbear; sleep 5'\"\n    timeout: 20s\n")  # fmt: skip
    inputs = _stage(tmp_path / "in", built_examples / "simple-pass" / "simple-pass.bpf.o",
                    {"a-first": "", "b-killssh": killer, "c-after": ""})  # fmt: skip
    run = _Run(tmp_path, inputs, "--kernel", "debian-12-6.1")
    runs.append(run)
    export = run.finish(timeout=400)
    assert _verdicts(export) == {"a-first": ("pass", None), "b-killssh": ("error", "INFRA_ERROR"),
                                 "c-after": ("pass", None)}, run.stderr[-3000:]  # fmt: skip
    cell = next(c for c in export["cells"] if c["artifact"] == "b-killssh")
    assert re.search(r"SSH|connection|driver stopped", cell["evidence"]), cell["evidence"]
    assert sum("validating 1/3 b-killssh" in ln for ln in run.lines) == 2  # one retry
    assert export["kernels"][0]["boots"] == 3
    assert run.proc.returncode == 1
    assert integrity(run.db) == "ok"
    assert qemu_processes(str(run.out)) == []


def test_concurrent_first_opens_of_a_new_store(tmp_path: Path) -> None:
    """Several processes creating the same fresh store at once all succeed (the schema
    check-then-create race once failed `matrix run` with 'table already exists')."""
    code = (
        "import sys; from pathlib import Path; from bpfcompat.matrix.store import Store, Run;"
        " Store(Path(sys.argv[1])).add(Run(accel='x'))"
    )
    for trial in range(4):
        db = tmp_path / f"s{trial}.db"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(db)], stderr=subprocess.PIPE, text=True
            )
            for _ in range(6)
        ]
        errors = [p.stderr.read() for p in procs if p.wait() != 0]  # type: ignore[union-attr]
        assert errors == [], errors[0][-500:]
        assert sqlite3.connect(db).execute("select count(*) from run").fetchone()[0] == 6


@pytest.mark.vm
def test_kill_9_leaves_no_guest_and_the_next_open_closes_the_run(
    built_examples: Path, tmp_path: Path, runs: list[_Run]
) -> None:
    """SIGKILL of bpfcompat mid-validation: nothing of it runs on (QEMU dies with the
    process that started it), and the next open of the store marks the run interrupted."""
    require_tool("qemu-system-x86_64")
    sleeper = "functional_tests:\n  - name: slow\n    command: sleep 40\n    timeout: 60s\n"
    inputs = _stage(tmp_path / "in", built_examples / "simple-pass" / "simple-pass.bpf.o",
                    {"a-slow": sleeper})  # fmt: skip
    run = _Run(tmp_path, inputs, "--kernel", "debian-12-6.1")
    runs.append(run)
    run.wait_for("validating 1/1 a-slow")
    assert len(_qemu_pids(str(run.out))) == 1
    started = time.monotonic()
    run.proc.kill()
    run.proc.wait(timeout=30)
    while _qemu_pids(str(run.out)) and time.monotonic() - started < 30:
        time.sleep(0.1)
    assert _qemu_pids(str(run.out)) == [], "QEMU outlived the bpfcompat that started it"
    assert integrity(run.db) == "ok"
    proc = run_cli("runs", "list", "--db", str(run.db))
    assert proc.returncode == 0, proc.stderr
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert "interrupted" in line, line
