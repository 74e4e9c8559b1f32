"""Run a plan: each kernel booted once (in parallel up to a limit), every artifact
validated in that boot, every cell stored as soon as it is known. A slot that no kernel
waits for lets another guest of the busiest kernel take over part of its work
(matrix/share.py), so a run's last kernel does not run alone on a machine with room.

Cells already in the store under the same cache key are reused and cost no boot; only
final verdicts are reused (a pass, or a kernel's deterministic answer), never an
infrastructure error, a crash, a functional test that failed or passed only on a retry.
Ctrl-C / SIGTERM set a stop flag and kill every live VM; finished cells stay stored; any
other exception marks the run failed with its error before it propagates.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bpfcompat import __version__
from bpfcompat.errors import BpfcompatError
from bpfcompat.matrix.classify import kernel_failed
from bpfcompat.matrix.guest import GuestSession, RawOutcome, describe_error, grown_memory
from bpfcompat.matrix.options import (
    RunOptions,
    RunSummary,
    default_concurrency,
    room_for,
)
from bpfcompat.matrix.plan import Artifact, Plan, cache_key
from bpfcompat.matrix.policy import EXIT_INTERRUPTED, CellOutcome, run_exit_code
from bpfcompat.matrix.record import CellRecorder
from bpfcompat.matrix.share import HelperReport, Job, KernelWork, SplitPolicy
from bpfcompat.matrix.statics import RunAnalysis
from bpfcompat.matrix.store import (
    Cell,
    Run,
    RunKernel,
    Store,
    process_identity,
    utcnow,
)
from bpfcompat.validator import VALIDATOR_VERSION
from bpfcompat.vm.arch import host_arch
from bpfcompat.vm.image import GuestImage
from bpfcompat.vm.kernels import KernelBuild, btf_digest, btf_file_for
from bpfcompat.vm.qemu import GuestVM
from bpfcompat.vm.spec import KernelSpec


@dataclass
class _KernelRun:
    """One kernel's validation in progress: what every guest of it needs to record cells."""

    spec: KernelSpec
    row: RunKernel
    kernel: KernelBuild
    image: GuestImage
    btf_file: Path | None
    by_index: dict[int, tuple[Artifact, str]]
    work: KernelWork
    finished: set[int] = field(default_factory=set)
    # What another guest costs to get ready: a boot's time when the kernel's guests boot,
    # next to nothing when they are restored from a snapshot.
    join_cost: float = 0.0


class MatrixRunner:
    def __init__(self, plan: Plan, store: Store, options: RunOptions) -> None:
        self.plan = plan
        self.store = store
        self.options = options
        self.stop = threading.Event()
        self.live_vms: set[GuestVM] = set()
        self.backend = options.backend
        self.accel = self.backend.accel()
        self.analysis = RunAnalysis([k.id for k in plan.active_kernels()], self.stop)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._kernel_runs: dict[str, _KernelRun] = {}  # kernels whose guests are at work
        self._waiting_kernels = 0  # kernel threads waiting for a slot
        self._helper_threads: list[threading.Thread] = []

    # --- public ----------------------------------------------------------------------------

    def run(self) -> RunSummary:
        run = self.store.add(
            Run(
                accel=self.accel,
                tool_version=__version__,
                labels_json=json.dumps(self.options.labels),
                attach_mode=self.plan.attach_mode,
                plan_digest=self.plan.digest(),
                shard="/".join(map(str, self.plan.shard)) if self.plan.shard else None,
                **process_identity(),
            )
        )
        assert run.id is not None
        self.run_id = run.id
        self.recorder = CellRecorder(self.store, self.plan, self.analysis, run.id)
        mine = {a.name: a for _, a in self.plan.cells()}
        for artifact in mine.values():
            if artifact.invalid_reason:
                self.messages.append(f"{artifact.path}: {artifact.invalid_reason}")
        status = "completed"
        try:
            self._run_kernels()
        except KeyboardInterrupt:
            status = "interrupted"
            self.interrupt()
        except BaseException as exc:
            # Not ours to swallow, but the run must not stay `running` forever.
            self.interrupt()
            self.store.update_run(
                self.run_id, status="failed", error=describe_error(exc)[:1000], finished_at=utcnow()
            )
            raise
        finally:
            if self.stop.is_set() and status == "completed":
                status = "interrupted"
        kernels = self.store.kernels(self.run_id)
        cells = self.store.cells(self.run_id)
        exit_code = EXIT_INTERRUPTED if status == "interrupted" else self.exit_code(kernels, cells)
        self.store.update_run(self.run_id, status=status, exit_code=exit_code, finished_at=utcnow())
        return RunSummary(self.run_id, exit_code, status, cells, kernels, self.messages)

    def interrupt(self) -> None:
        """Stop scheduling and kill every guest now; workers then unwind quickly."""
        self.stop.set()
        for vm in list(self.live_vms):
            vm.stop()

    def exit_code(self, kernels: list[RunKernel], cells: list[Cell]) -> int:
        # An unusable input fails the run unless the project expects exactly what it got.
        unexpected = {c.artifact for c in cells if c.expected is not True}
        return run_exit_code(
            {k.kernel_id for k in kernels if k.required},
            {k.kernel_id for k in kernels if k.status == "error"},
            [CellOutcome(c.kernel_id, c.status, c.expected) for c in cells],
            invalid_inputs=any(
                a.invalid_reason and (a.expect is None or a.name in unexpected)
                for _, a in self.plan.cells()
            ),
        )

    # --- scheduling ------------------------------------------------------------------------

    def _run_kernels(self) -> None:
        kernels = self.plan.active_kernels()
        workers = self.options.concurrency or default_concurrency(kernels)
        # Every kernel gets a thread so fetches overlap with running VMs; the semaphore
        # bounds how many VMs run at once. The image build overlaps with the fetches.
        # One guest image per architecture in the plan (vm/image.py keys them).
        arches = list(dict.fromkeys(spec.arch for spec in kernels))
        pool_size = len(kernels) + len(arches)
        with ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="bpfc") as pool:
            images: dict[str, Future[GuestImage]] = {
                arch: pool.submit(self._build_image, arch) for arch in arches
            }
            gate = threading.Semaphore(workers)
            # Rows are made here, in plan order, so every report lists kernels as planned.
            rows = [self._kernel_row(spec) for spec in kernels]
            futures = [
                pool.submit(self._kernel_job, spec, row, images[spec.arch], gate)
                for spec, row in zip(kernels, rows, strict=True)
            ]
            try:
                while not all(f.done() for f in futures):
                    time.sleep(0.2)
                    self._maybe_help(gate)
                for thread in self._helper_threads:
                    thread.join()
            except KeyboardInterrupt:
                self.interrupt()
                for f in futures:
                    f.cancel()
                raise
            for f in futures:
                if f.exception() is not None and not isinstance(f.exception(), KeyboardInterrupt):
                    raise f.exception()  # type: ignore[misc]

    def _build_image(self, arch: str) -> GuestImage:
        self.options.progress("*", "building", f"guest image ({self.plan.guest_suite}, {arch})")
        return self.backend.build_image(self.plan.guest_suite, arch=arch)

    def _kernel_row(self, spec: KernelSpec) -> RunKernel:
        return self.store.add(
            RunKernel(
                run_id=self.run_id,
                kernel_id=spec.id,
                suite=spec.suite or "",
                package=spec.package or spec.source_label,
                cmdline=spec.cmdline,
                required=spec.required,
                arch=spec.arch,
                accel=self.accel if spec.arch == host_arch() else "tcg",
            )
        )

    def _kernel_job(
        self,
        spec: KernelSpec,
        row: RunKernel,
        image_future: Future[GuestImage],
        gate: threading.Semaphore,
    ) -> None:
        """One kernel's whole job; an unexpected error costs this kernel, not the run."""
        try:
            self._kernel_work(spec, row, image_future, gate)
        except Exception as exc:  # the boundary that keeps the other kernels going
            if not self.stop.is_set():
                done = {c.artifact for c in self.store.cells(self.run_id) if c.kernel_id == spec.id}
                left = [a for a in self.plan.artifacts_for(spec.id) if a.name not in done]
                self._kernel_failed(spec, row, f"internal error: {describe_error(exc)}", left)

    def _kernel_work(
        self,
        spec: KernelSpec,
        row: RunKernel,
        image_future: Future[GuestImage],
        gate: threading.Semaphore,
    ) -> None:
        progress = self.options.progress
        try:
            progress(spec.id, "fetching")
            fetched: KernelBuild | None = None
            try:
                fetched = kernel = self.backend.fetch_kernel(
                    spec, stop=self.stop, progress=lambda step: progress(spec.id, "fetching", step)
                )
            finally:
                self.analysis.kernel_fetched(spec.id, fetched)
            self._update_kernel(
                row, release=kernel.release, package_version=kernel.version, btf=kernel.has_btf
            )
            btf_file = btf_file_for(spec, kernel)
            image = image_future.result()
        except BpfcompatError as exc:
            self._kernel_failed(spec, row, describe_error(exc), self.plan.artifacts_for(spec.id))
            return
        todo: list[tuple[int, Artifact, str]] = []
        for index, artifact in enumerate(self.plan.artifacts_for(spec.id)):
            key = cache_key(
                artifact,
                spec,
                kernel.version,
                VALIDATOR_VERSION,
                image.digest,
                self.plan.attach_mode,
                self.plan.auto_fixups,
                btf_sha256=btf_digest(btf_file),
            )
            hit = self.store.cached_result(key) if self.options.use_cache else None
            if hit is not None:
                self.recorder.record_cell(spec, artifact, hit, kernel, cached=True)
            else:
                todo.append((index, artifact, key))
        if not todo:
            self._update_kernel(row, status="cached")
            progress(spec.id, "done", "all cells cached")
            return
        with self._lock:
            self._waiting_kernels += 1
        try:
            gate.acquire()
        finally:
            with self._lock:
                self._waiting_kernels -= 1
        try:
            self._validate_all(spec, row, kernel, image, todo, btf_file)
        finally:
            gate.release()

    def _validate_all(
        self,
        spec: KernelSpec,
        row: RunKernel,
        kernel: KernelBuild,
        image: GuestImage,
        todo: list[tuple[int, Artifact, str]],
        btf_file: Path | None = None,
    ) -> None:
        progress = self.options.progress
        share = self.options.split is not None and not self.options.boot_per_artifact
        movable = [(i, a) for i, a, _ in todo if share and not a.manifest.functional_tests]
        moving = {i for i, _ in movable}
        alone = [(i, a) for i, a, _ in todo if i not in moving]
        run = _KernelRun(
            spec,
            row,
            kernel,
            image,
            btf_file,
            {index: (artifact, key) for index, artifact, key in todo},
            KernelWork(
                movable,
                self.options.split or SplitPolicy(),
                self.stop,
                big_memory=grown_memory(spec),
                room_for_big=room_for,
            ),
        )
        session = self._session(run, spec.id)
        try:
            progress(spec.id, "booting")
            try:
                session.boot()
            except BpfcompatError as exc:
                if self.stop.is_set():
                    return
                progress(spec.id, "booting", f"retry after: {describe_error(exc)}")
                try:
                    session.boot()
                except BpfcompatError as exc2:
                    self._kernel_failed(
                        spec,
                        row,
                        f"boot failed: {describe_error(exc2)}",
                        [a for _, a, _ in todo],
                        boots=session.boots,
                    )
                    return
            self._update_kernel(
                row,
                boot_seconds=round(session.boot_seconds[0], 2),
                ready_via=session.ready_via[0],
                status="ok",
                boots=session.boots,
            )
            if session.ready_via[0] == "boot":
                run.join_cost = session.boot_seconds[0]
            with self._lock:
                self._kernel_runs[spec.id] = run
            try:
                # The jobs that run alone first (each in a fresh guest, the first in the
                # one just booted), then the shared ones in one more guest, which ends
                # with whatever a helper handed back: the first guest's boots are what
                # they are without sharing.
                if alone and not self.stop.is_set():
                    started = self._on_start(run, session)
                    for index, outcome in session.validate_many(
                        alone, started, boot_per_artifact=self.options.boot_per_artifact
                    ):
                        if self.stop.is_set() and outcome.infra_error:
                            return  # killed by our own interrupt: not a verdict
                        self._record_outcome(run, index, outcome)
                self._guest_loop(run, session, first=True)
            except BpfcompatError as exc:
                if self.stop.is_set():
                    return
                run.work.close()
                run.work.wait_helpers()
                remaining = [a for i, a, _ in todo if i not in run.finished]
                self._kernel_failed(
                    spec,
                    row,
                    f"reboot failed: {describe_error(exc)}",
                    remaining,
                    boots=session.boots,
                )
                return
            finally:
                with self._lock:
                    self._kernel_runs.pop(spec.id, None)
            if self.stop.is_set():
                return
            self._update_kernel(row, boots=session.boots)
            report = run.work.report
            helpers = (
                f", {report.joined} more guest(s) ran {report.jobs} of them"
                if report.joined
                else ""
            )
            progress(spec.id, "done", f"{len(todo)} validated, {session.boots} boot(s){helpers}")
        finally:
            session.shutdown()
            run.work.wait_helpers()
            self._kernel_stats(run, session)

    def _session(self, run: _KernelRun, label: str) -> GuestSession:
        workdir = self.options.workdir / f"run-{self.run_id}"
        workdir.mkdir(parents=True, exist_ok=True)
        session = GuestSession(
            run.spec,
            run.kernel,
            run.image,
            workdir,
            self.stop,
            self.live_vms,
            vm_factory=self.backend.vm_factory,
            connect=self.backend.connect,
            attach_mode=self.plan.attach_mode,
            auto_fixups=self.plan.auto_fixups,
            btf_file=run.btf_file,
            snapshots=self.backend.snapshots() if self.options.snapshots else None,
        )
        session.label = label
        return session

    def _guest_loop(self, run: _KernelRun, session: GuestSession, *, first: bool) -> None:
        """Take batches of the kernel's shared jobs until there are none (matrix/share.py);
        a batch handed over to another guest gives its unstarted jobs back."""
        work = run.work
        while batch := work.take(session, first=first):
            held = {index for index, _ in batch.jobs}

            def handback(jobs: list[Job], held: set[int] = held) -> None:
                held.difference_update(index for index, _ in jobs)
                work.give_back(jobs, returning=session)

            def grow(job: Job, seconds: float, held: set[int] = held) -> None:
                held.discard(job[0])
                work.grow(job, seconds)

            try:
                for index, outcome in session.validate_many(
                    batch.jobs,
                    self._on_start(run, session),
                    handback=handback,
                    grow=grow if work.big_memory else None,
                    memory_mb=batch.memory_mb,
                ):
                    if self.stop.is_set() and outcome.infra_error:
                        return  # killed by our own interrupt: not a verdict
                    held.discard(index)
                    self._record_outcome(run, index, outcome)
                    if session.label != run.spec.id:
                        work.helped()
            except BaseException:
                work.batch_done(session, back=False)
                left = [job for job in batch.jobs if job[0] in held]
                work.give_back(left, big=batch.memory_mb is not None)
                raise
            work.batch_done(session)

    def _on_start(self, run: _KernelRun, session: GuestSession) -> Callable[[int], None]:
        def started(index: int) -> None:
            run.work.started(session)
            name = run.by_index[index][0].name
            done = len(run.finished) + 1
            self.options.progress(run.spec.id, "validating", f"{done}/{len(run.by_index)} {name}")

        return started

    def _record_outcome(self, run: _KernelRun, index: int, outcome: RawOutcome) -> None:
        artifact, key = run.by_index[index]
        stored = self.recorder.store_result(key, artifact, run.spec, run.image, outcome)
        notes = [outcome.unstable] if outcome.unstable else []
        if outcome.memory_mb is not None:
            notes.append(
                f"out of memory in the kernel's {run.spec.memory_mb} MB guest (the OOM killer, "
                "or a map the kernel could not allocate); this answer is from a guest with "
                f"{outcome.memory_mb} MB"
            )
        self.recorder.record_cell(run.spec, artifact, stored, run.kernel, cached=False, notes=notes)
        run.work.finished(outcome.seconds)
        with self._lock:
            run.finished.add(index)

    def _kernel_stats(self, run: _KernelRun, session: GuestSession) -> None:
        """The kernel row's figures from its first guest and every guest that joined."""
        report = run.work.report
        if session.ready_via:
            self._update_kernel(run.row, restores=session.ready_via.count("restore"))
        peak = max(session.peak_rss_kb, report.peak_rss_kb)
        if peak:
            self._update_kernel(run.row, peak_rss_mb=round(peak / 1024, 1))
        if report.joined:
            self._update_kernel(run.row, helpers=report.joined)
        notes = [*session.notes, *report.notes]
        ignored = [*session.ignored_lines, *report.ignored_lines]
        if ignored:
            shown = "; ".join(repr(line) for line in ignored[:3])
            notes.append(
                f"ignored {len(ignored)} guest protocol line(s) that named no running job: {shown}"
            )
        if notes:
            self._update_kernel(run.row, notes_json=json.dumps(notes))

    # --- guests that join a kernel's work ------------------------------------------------

    def _maybe_help(self, gate: threading.Semaphore) -> None:
        """Start another guest for the kernel with the most work a new guest could take,
        when a slot is free and no kernel is waiting for one."""
        if self.stop.is_set() or self.options.split is None:
            return
        with self._lock:
            if self._waiting_kernels:
                return
            offers = [(run.work.wants_helper(), run) for run in self._kernel_runs.values()]
        seconds, run = max(offers, key=lambda offer: offer[0], default=(0.0, None))
        # A guest that must boot is worth it only for work well beyond its boot.
        if run is None or seconds <= max(0.0, 3 * run.join_cost):
            return
        if not gate.acquire(blocking=False):
            return
        run.work.join()
        label = f"{run.spec.id}+{run.work.report.joined + 1}"
        thread = threading.Thread(target=self._helper, args=(run, gate, label), daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: the kernel's first guest goes on alone
            run.work.ready(False)
            run.work.leave(lambda report: None)
            gate.release()
            return
        self._helper_threads.append(thread)

    def _helper(self, run: _KernelRun, gate: threading.Semaphore, label: str) -> None:
        """A guest that joined: it takes what the kernel's busiest guest hands over, and
        leaves when nothing is worth taking. Its failures are noted, never a cell's: the
        jobs it did not finish go back to the kernel's first guest."""
        session = self._session(run, label)
        note: str | None = None
        try:
            ok = False
            try:
                session.boot()
                ok = True
            except BpfcompatError as exc:
                note = f"another guest could not start to share the work: {describe_error(exc)}"
            finally:
                run.work.ready(ok)
            if ok:
                self.options.progress(run.spec.id, "validating", f"guest {label} joined")
                self._guest_loop(run, session, first=False)
        except Exception as exc:  # its jobs went back; the first guest runs them
            if not self.stop.is_set():
                note = f"a guest sharing the work stopped: {describe_error(exc)}"
        finally:
            session.shutdown()

            def merge(report: HelperReport) -> None:
                report.notes += [*session.notes, *([note] if note else [])]
                report.ignored_lines += session.ignored_lines
                report.peak_rss_kb = max(report.peak_rss_kb, session.peak_rss_kb)

            run.work.leave(merge)
            gate.release()

    # --- recording -------------------------------------------------------------------------

    def _update_kernel(self, row: RunKernel, **fields: object) -> None:
        def _apply(session) -> None:  # type: ignore[no-untyped-def]
            obj = session.get(RunKernel, row.id)
            for key, value in fields.items():
                setattr(obj, key, value)
            session.add(obj)

        self.store.write(_apply)

    def _kernel_failed(
        self,
        spec: KernelSpec,
        row: RunKernel,
        message: str,
        artifacts: list[Artifact],
        boots: int = 0,
    ) -> None:
        self.options.progress(spec.id, "error", message)
        with self._lock:
            self.messages.append(f"kernel {spec.id}: {message}")
        self._update_kernel(row, status="error", error=message, boots=boots)
        verdict = kernel_failed(message)
        for artifact in artifacts:
            self.recorder.add_cell(spec, artifact, verdict, None, 0.0, cached=False)


def run_plan(plan: Plan, store: Store, options: RunOptions) -> tuple[MatrixRunner, RunSummary]:
    runner = MatrixRunner(plan, store, options)
    return runner, runner.run()
