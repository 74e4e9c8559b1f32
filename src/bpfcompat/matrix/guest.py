"""One booted kernel, validating artifacts one process each, rebooted when it dies.

All artifacts of a kernel are staged at once and run by one guest-side driver that has
imported the validator once and forks a fresh process per artifact: start-up is paid
once per boot, while a libbpf crash (a signal) still costs only that artifact.

The guest is not trusted. Everything from it is bounded (protocol lines, result size,
console), every protocol line must name the job the host expects next by its random
token, and an artifact whose manifest runs commands (functional tests run as root) is
assumed able to tamper with its boot: it runs alone in a fresh guest, after which that
guest is discarded. A guest that dies with a kernel crash while a job runs is only
charged to that job if the crash happens again when the job runs alone on a fresh boot;
otherwise the job keeps its own verdict and the kernel is noted as unstable.
A job the guest's OOM killer stops runs again in a guest with more memory (our choice
of memory is not the object's fault), after the batch, with any others that needed it.
Getting a guest ready is launch.py's.

A batch of trusted jobs can be handed over: when another guest of the same kernel is
ready to share the work, the driver is asked to stop before its next job and the jobs it
never started go back to the caller (matrix/share.py splits them between the guests).
"""

from __future__ import annotations

import contextlib
import errno
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bpfcompat.errors import (
    BpfcompatError,
    GuestCrash,
    OversizeError,
    TransportError,
    VMError,
)
from bpfcompat.matrix.launch import Connector, GuestLauncher, VMFactory
from bpfcompat.matrix.plan import Artifact
from bpfcompat.matrix.result import MAX_RESULT_BYTES, ResultModel, parse_result
from bpfcompat.vm.image import GUEST_DRIVER_COMMAND, GuestImage
from bpfcompat.vm.kernels import KernelBuild
from bpfcompat.vm.qemu import GuestVM, QemuVM
from bpfcompat.vm.snapshot import SnapshotCache
from bpfcompat.vm.spec import KernelSpec
from bpfcompat.vm.ssh import ssh_connect

GUEST_DIR = "/tmp/bpfc"
# An external BTF file for the kernel (its `btf:`), staged once per batch.
GUEST_BTF = f"{GUEST_DIR}/btf/vmlinux.btf"
KILLED = 128 + 9
MAX_IGNORED_LINES = 20  # protocol lines that named no live job, kept as evidence
# Kernel crashes outside any job (between jobs, while staging) before the kernel itself is
# called unstable and its remaining cells are given up.
MAX_UNCHARGED_CRASHES = 2
# A job the guest kernel's OOM killer stopped runs again alone with this many times the
# kernel's memory, up to a cap (big objects' verification takes hundreds of MB in-kernel).
OOM_GROWTH = 4
OOM_MAX_MB = 4096


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
    retryable: bool = True  # an infra error that a reboot may cure
    unstable: str | None = None  # the kernel crashed once under this job, not again alone
    oom: bool = False  # out of guest memory: the OOM killer, or a map it could not allocate
    memory_mb: int | None = None  # the guest's memory, when it was grown for this job


@dataclass(frozen=True)
class Job:
    index: int
    artifact: Artifact
    token: str = field(default_factory=lambda: secrets.token_hex(16))

    @property
    def dir(self) -> str:
        # Not guessable from the index: one job cannot aim at another's files by name.
        return f"{GUEST_DIR}/a/{self.token}"

    @property
    def taints(self) -> bool:
        """Its manifest runs commands as root in the guest, which may outlive the job."""
        return bool(self.artifact.manifest.functional_tests)


@dataclass
class _Unit:
    """Jobs run in one boot; `fresh` asks for a new guest first, `confirm` carries the
    first crash of a job being re-run alone to see whether the crash is its own."""

    jobs: list[Job]
    fresh: bool = False
    confirm: RawOutcome | None = None
    memory_mb: int | None = None  # a guest this big, for a job the OOM killer stopped


class GuestSession(GuestLauncher):
    """Validates artifacts in the kernel's guest, getting a new one when needed."""

    def __init__(
        self,
        spec: KernelSpec,
        kernel: KernelBuild,
        image: GuestImage,
        workdir: Path,
        stop: threading.Event,
        registry: set[GuestVM],
        *,
        vm_factory: VMFactory = QemuVM,
        connect: Connector = ssh_connect,
        artifact_timeout: float = 90.0,
        attach_mode: str = "best-effort",
        auto_fixups: bool = True,
        btf_file: Path | None = None,
        snapshots: SnapshotCache | None = None,
    ) -> None:
        super().__init__(
            spec,
            kernel,
            image,
            workdir,
            stop,
            registry,
            vm_factory=vm_factory,
            connect=connect,
            snapshots=snapshots,
        )
        self.btf_file = btf_file
        self.artifact_timeout = artifact_timeout
        self.attach_mode = attach_mode
        self.auto_fixups = auto_fixups
        self.ignored_lines: list[str] = []
        self._uncharged_crashes = 0
        self._died_between_jobs = False
        self._batches = 0  # driver runs so far: each batch's files are named by its number
        self._handover_lock = threading.Lock()
        self._stop_file: str | None = None  # the running batch's, while it may be handed over
        self._handover_asked = False
        self._handed_over = False

    # --- scheduling ------------------------------------------------------------------------

    def _units(self, jobs: list[Job], boot_per_artifact: bool) -> list[_Unit]:
        """Trusted jobs share one boot; each job that taints its guest gets a fresh one."""
        if boot_per_artifact:
            return [_Unit([job], fresh=True) for job in jobs]
        clean = [job for job in jobs if not job.taints]
        units = [_Unit(clean)] if clean else []
        return units + [_Unit([job], fresh=True) for job in jobs if job.taints]

    def validate_many(
        self,
        jobs: list[tuple[int, Artifact]],
        on_start: Callable[[int], None] = lambda index: None,
        *,
        boot_per_artifact: bool = False,
        handback: Callable[[list[tuple[int, Artifact]]], None] | None = None,
        grow: Callable[[tuple[int, Artifact], float], None] | None = None,
        memory_mb: int | None = None,
    ) -> Iterator[tuple[int, RawOutcome]]:
        """Yield (index, outcome) as artifacts finish.

        An infrastructure failure is retried once after a reboot; a job the OOM killer
        stopped runs again in a bigger guest at the end; a kernel crash under a job is re-run
        alone on a fresh boot before anyone is blamed; a failing boot raises
        BpfcompatError (the kernel's problem, not a cell's). With `handback`, a batch of
        trusted jobs may be handed over (`request_handover`): the jobs it never started
        are passed to `handback` instead of being run here; with `grow`, a job the OOM
        killer stopped goes there (to run in a bigger guest, maybe another's) instead of
        waiting for this session's. `memory_mb`: these jobs already need a guest that big,
        and an OOM kill there is their answer."""
        units = self._units([Job(index, artifact) for index, artifact in jobs], boot_per_artifact)
        if memory_mb is not None:
            units = [replace(unit, memory_mb=memory_mb) for unit in units]
        retried: set[int] = set()
        grown: set[int] = set()  # jobs re-run in a bigger guest after an OOM kill
        bigger: _Unit | None = None  # where they run, after everything else
        while units and not self.stop.is_set():
            unit = units.pop(0)
            if not unit.jobs:
                continue
            self.ensure_booted(fresh=unit.fresh, memory_mb=unit.memory_mb)
            self._used = True
            self._died_between_jobs = False
            done: set[int] = set()
            shareable = handback is not None and not unit.fresh and unit.memory_mb is None
            for job, outcome in self._run_batch(unit.jobs, on_start, shareable=shareable):
                done.add(job.index)
                rest = [j for j in unit.jobs if j.index not in done]
                if unit.memory_mb is not None:
                    outcome = replace(outcome, memory_mb=unit.memory_mb)
                if unit.confirm is not None:
                    outcome = self._confirmed(unit.confirm, outcome)
                elif (
                    outcome.oom
                    and unit.memory_mb is None
                    and job.index not in grown
                    and grown_memory(self.spec)
                ):
                    # The guest's memory is our choice, not the object's fault: the job runs
                    # again in a bigger guest, and only that answer is its verdict. Such jobs
                    # wait for the end and share one big guest (one at a time, as always);
                    # the batch goes on here, its killed process's memory freed.
                    grown.add(job.index)
                    if grow is not None:
                        grow((job.index, job.artifact), outcome.seconds)
                        continue
                    if bigger is None or not any(u is bigger for u in units):
                        bigger = _Unit([], True, memory_mb=grown_memory(self.spec))
                        units.append(bigger)
                    bigger.jobs.append(job)
                    continue
                elif outcome.crash:
                    # Whose crash? Run the job alone on a fresh boot before deciding.
                    units[:0] = [_Unit([job], True, outcome), _Unit(rest, unit.fresh)]
                    break
                elif (
                    outcome.infra_error
                    and outcome.retryable
                    and job.index not in retried
                    and not self.stop.is_set()
                ):
                    retried.add(job.index)  # runs again first, after a reboot
                    units[:0] = [_Unit([job, *rest], unit.fresh)]
                    self.shutdown()
                    break
                yield job.index, outcome
            else:
                left = [j for j in unit.jobs if j.index not in done]
                if self._handed_over and handback is not None:
                    self._handed_over = False
                    handback([(j.index, j.artifact) for j in left])
                    left = []
                if self._died_between_jobs:
                    self._crashed_between_jobs()
                if left and not self.stop.is_set():
                    units[:0] = [_Unit(left, unit.fresh)]
            if boot_per_artifact or any(j.taints for j in unit.jobs):
                self.shutdown()  # a tainted guest never runs another job

    def request_handover(self) -> bool:
        """Ask the running batch, if it may be handed over, to stop before its next job.
        Called from another thread; False when there is no such batch (it ended, or was
        asked already)."""
        with self._handover_lock:
            path, transport = self._stop_file, self.transport
            if path is None or transport is None or self._handover_asked:
                return False
            self._handover_asked = True
        try:
            transport.run(f"touch {path}", timeout=10)
        except BpfcompatError:
            return False  # the batch's own thread meets whatever went wrong
        return True

    def _confirmed(self, first: RawOutcome, second: RawOutcome) -> RawOutcome:
        """The verdict after a crash was re-run alone: the job's if it crashed again, else
        the re-run's own outcome with the kernel's instability noted."""
        if second.crash:
            return second
        why = (first.infra_error or "guest crashed").removeprefix("guest crashed: ")
        note = f"the kernel crashed once while this artifact ran ({why}) but not when it ran alone"
        self.notes.append(note)
        return replace(second, unstable=note)

    def _crashed_between_jobs(self) -> None:
        self._uncharged_crashes += 1
        vm_note = f"guest died outside any job ({self._uncharged_crashes}x)"
        self.notes.append(vm_note)
        self.shutdown()
        if self._uncharged_crashes > MAX_UNCHARGED_CRASHES:
            raise VMError(f"kernel unstable: {vm_note}")

    # --- one boot's batch ------------------------------------------------------------------

    def _stage(self, job: Job, files: dict[str, bytes]) -> dict[str, Any]:
        """Add one job's input files to `files` (guest path -> bytes); return its entry
        in the batch's jobs file. User-controlled names never reach a shell: files get token-based
        names and the arguments travel as JSON."""
        cell_dir = job.dir
        files[f"{cell_dir}/artifact.bpf.o"] = job.artifact.data
        manifest = job.artifact.manifest
        extra, inputs = manifest.validator_inputs(cell_dir, job.artifact.target_objects)
        files.update(inputs)
        args = [
            "--artifact",
            f"{cell_dir}/artifact.bpf.o",
            "--out",
            f"{cell_dir}/result.json",
            "--log-dir",
            cell_dir,
            "--attach-mode",
            self.attach_mode,
            *([] if self.auto_fixups else ["--no-auto-fixups"]),
            *extra,
        ]
        if self.btf_file is not None:
            args += ["--btf-custom-path", GUEST_BTF]
        tests = manifest.functional_tests
        timeout = self.artifact_timeout + sum(t.timeout * (1 + manifest.retries) for t in tests)
        return {"token": job.token, "dir": cell_dir, "args": args, "timeout": timeout}

    def _run_batch(
        self, batch: list[Job], on_start: Callable[[int], None], *, shareable: bool = False
    ) -> Iterator[tuple[Job, RawOutcome]]:
        """Run a batch in the current boot; stop (VM shut down) at the first failure.

        Yields every job that finished or failed; a job the batch never reached is not
        yielded (the caller runs it again, or hands it back after a handover)."""
        self._batches += 1
        jobs_file = f"{GUEST_DIR}/jobs-{self._batches}.json"
        with self._handover_lock:
            self._stop_file = f"{jobs_file}.stop" if shareable else None
            self._handover_asked = self._handed_over = False
        try:
            yield from self._stream_batch(batch, on_start, jobs_file)
        finally:
            with self._handover_lock:
                self._stop_file = None

    def _stream_batch(
        self, batch: list[Job], on_start: Callable[[int], None], jobs_file: str
    ) -> Iterator[tuple[Job, RawOutcome]]:
        current: Job | None = None
        started = time.monotonic()
        since = 0
        pending = list(batch)
        transport, vm = self.transport, self.vm
        assert transport is not None and vm is not None
        try:
            entries, files = [], {}
            for job in batch:
                entries.append(self._stage(job, files))
            idle = max([30.0] + [e["timeout"] + 30 for e in entries])
            files[jobs_file] = json.dumps(entries).encode()
            if self.btf_file is not None:
                files[GUEST_BTF] = self.btf_file.read_bytes()
            prefix = f"{GUEST_DIR}/"
            assert all(path.startswith(prefix) for path in files)
            transport.put_files({p.removeprefix(prefix): d for p, d in files.items()}, GUEST_DIR)
            command = f"{GUEST_DRIVER_COMMAND} {jobs_file} 2>{GUEST_DIR}/driver.err"
            handed = False
            for line in transport.stream(command, idle):
                vm.check()
                parts = line.split()
                if current is None and parts[:1] == ["start"] and len(parts) == 2:
                    if pending and parts[1] == pending[0].token:
                        current = pending.pop(0)
                        started, since = time.monotonic(), vm.console_offset()
                        on_start(current.index)
                        continue
                elif (
                    current is not None and parts[:2] == ["done", current.token] and len(parts) == 5
                ):
                    job, current = current, None
                    outcome = self._collect(job, parts[2], parts[3], parts[4], started, since)
                    yield job, outcome
                    if outcome.infra_error is not None and outcome.retryable:
                        self.shutdown()  # a hung or killed validator: start clean
                        return
                    continue
                elif current is None and parts == ["handover"] and self._handover_asked:
                    handed = True  # the driver stopped as asked; the rest runs elsewhere
                    continue
                self._ignore(line)
            vm.check()
            if handed and current is None:
                self._handed_over = True
                return
            if pending or current is not None:
                raise TransportError(f"guest driver stopped with {len(pending)} job(s) left")
        except GuestCrash as exc:
            self.shutdown()
            if current is not None:
                yield current, self._failed(str(exc), started, crash=True, tail=exc.console_tail)
            else:
                self._died_between_jobs = True
        except OversizeError as exc:
            # A guest flooding the protocol channel does it again on a retry: not retried.
            self.shutdown()
            if current is not None:
                outcome = self._failed(str(exc), started, crash=False, tail=None)
                yield current, replace(outcome, retryable=False)
        except (TransportError, VMError) as exc:
            crash, tail = self._crash_after_drop(vm)
            message = str(exc)
            if not crash and not vm.alive() and not isinstance(exc, VMError):
                # The connection went because QEMU did: say so, not what SSH saw of it.
                message = f"QEMU exited while the guest worked ({exc})"
            self.shutdown()
            if current is not None:
                if crash:
                    yield current, self._failed(f"guest crashed: {crash}", started, True, tail)
                else:
                    yield current, self._failed(message, started, crash=False, tail=tail)
            elif crash:
                # Died between jobs: nobody's verdict; the caller reruns what is left.
                self._died_between_jobs = True
                return
            elif pending:
                # Failed before the next job started (staging, a lost connection): the next
                # job pays, once; it is retried on a fresh boot.
                yield pending[0], self._failed(message, started, crash=False, tail=tail)

    def _crash_after_drop(self, vm: GuestVM) -> tuple[str | None, str | None]:
        """After a lost connection: a kernel crash only if QEMU has really stopped with a
        crash report (a line root wrote to the console proves nothing)."""
        deadline = time.monotonic() + 3.0
        while vm.alive() and time.monotonic() < deadline:
            time.sleep(0.05)  # a panicking guest takes a moment to reboot (-no-reboot: exit)
        if vm.alive():
            return None, vm.console_tail()
        return vm.crash_line(), vm.console_tail()

    def _ignore(self, line: str) -> None:
        if len(self.ignored_lines) < MAX_IGNORED_LINES:
            self.ignored_lines.append(line[:200])

    def _failed(self, message: str, started: float, crash: bool, tail: str | None) -> RawOutcome:
        return RawOutcome(None, None, None, None, message, crash, tail, time.monotonic() - started)

    def _collect(
        self, job: Job, code_text: str, seconds_text: str, how: str, started: float, since: int
    ) -> RawOutcome:
        transport, vm = self.transport, self.vm
        assert transport is not None and vm is not None
        try:
            exit_code = int(code_text)
            # The guest's own clock: by the time the host reads a "start" line the job
            # may be over (the host was collecting the previous one).
            seconds = float(seconds_text)
        except ValueError:
            exit_code, seconds = -1, time.monotonic() - started
        if not 0 <= seconds < 1e6:
            seconds = time.monotonic() - started
        signal = exit_code - 128 if exit_code > 128 else None
        if how == "timeout":
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
            oom = vm.oom_line(since)
            why = f"validator killed by SIGKILL: {oom}" if oom else "validator killed by SIGKILL"
            return RawOutcome(
                None,
                None,
                exit_code,
                9,
                why,
                False,
                vm.console_tail() if oom else None,
                seconds,
                retryable=False,  # the same guest runs out again: a bigger one may not
                oom=bool(oom),
            )
        try:
            data = transport.get_bytes(f"{job.dir}/result.json", MAX_RESULT_BYTES)
            raw = data.decode("utf-8", "replace")
        except FileNotFoundError:
            raw = None
        except OversizeError as exc:
            why = f"result.json is {exc.size} bytes, over the {MAX_RESULT_BYTES} byte cap"
            return RawOutcome(None, None, exit_code, None, why, False, None, seconds, False)
        result, problem = _parse_result(raw)
        if result is None and signal is None:
            if problem:
                return RawOutcome(None, None, exit_code, None, problem, False, None, seconds, False)
            stderr_tail = ""
            with contextlib.suppress(FileNotFoundError, TransportError):
                stderr_tail = transport.get_bytes(f"{job.dir}/stderr", 64 << 10).decode(
                    "utf-8", "replace"
                )
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
        starved = result is not None and _map_out_of_memory(result)
        return RawOutcome(result, raw, exit_code, signal, None, False, None, seconds, oom=starved)


def grown_memory(spec: KernelSpec) -> int | None:
    """The memory for re-running a job the OOM killer stopped, if more is allowed."""
    grown = min(spec.memory_mb * OOM_GROWTH, OOM_MAX_MB)
    return grown if grown > spec.memory_mb else None


def _map_out_of_memory(result: ResultModel) -> bool:
    """A map the kernel could not allocate (ENOMEM at creation): the guest's memory, our
    choice, not the object's fault, until a bigger guest says the same."""
    load = result.load
    return load.status == "fail" and load.error_code == errno.ENOMEM and bool(load.failed_map)


def _parse_result(raw: str | None) -> tuple[ResultModel | None, str | None]:
    """(result, None); or (None, why) for a result that is there but over a cap (nesting,
    size); (None, None) when there is none or it is not a JSON object (a validator that
    died mid-write: its stderr says why)."""
    if not raw:
        return None, None
    parsed = parse_result(raw)
    if isinstance(parsed, ResultModel):
        return parsed, None
    return None, (parsed.reason if parsed.kind in ("too-large", "too-deep") else None)


def describe_error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, BpfcompatError) else f"{type(exc).__name__}: {exc}"
