"""Run a plan: each kernel booted once (in parallel up to a limit), every artifact
validated in that boot, every cell stored as soon as it is known.

Cells already in the store under the same cache key are reused and cost no boot; only
final verdicts are reused (a pass, or a kernel's deterministic answer), never an
infrastructure error, a crash, a functional test that failed or passed only on a retry.
Ctrl-C / SIGTERM set a stop flag and kill every live VM; finished cells stay stored; any
other exception marks the run failed with its error before it propagates.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bpfcompat import __version__
from bpfcompat.errors import BpfcompatError
from bpfcompat.matrix.classify import CLASSIFIER_VERSION, cell_fields, classify, kernel_failed
from bpfcompat.matrix.expect import kernel_chain, matches
from bpfcompat.matrix.guest import GuestSession, RawOutcome, describe_error
from bpfcompat.matrix.launch import Connector, VMFactory
from bpfcompat.matrix.plan import Artifact, Plan, cache_key
from bpfcompat.matrix.policy import EXIT_INTERRUPTED, CellOutcome, run_exit_code
from bpfcompat.matrix.result import ResultModel, ResultProblem
from bpfcompat.matrix.statics import RunAnalysis
from bpfcompat.matrix.store import (
    Cell,
    Run,
    RunKernel,
    Store,
    ValidatorResult,
    process_identity,
    utcnow,
)
from bpfcompat.matrix.verdict import Verdict
from bpfcompat.validator import VALIDATOR_VERSION
from bpfcompat.vm.arch import host_arch
from bpfcompat.vm.image import GuestImage, build_image
from bpfcompat.vm.kernels import KernelBuild, btf_digest, btf_file_for, fetch_kernel
from bpfcompat.vm.qemu import GuestVM, QemuVM, detect_accel
from bpfcompat.vm.snapshot import SnapshotCache, snapshots_enabled
from bpfcompat.vm.spec import KernelSpec
from bpfcompat.vm.ssh import ssh_connect


class Progress(Protocol):
    def __call__(self, kernel: str, stage: str, detail: str = "") -> None: ...


def _quiet(kernel: str, stage: str, detail: str = "") -> None:
    return None


@dataclass
class Backend:
    """Where kernels, the guest image and guests come from: the real ones by default,
    fakes when the orchestration is tested without booting anything."""

    # fetch_kernel(spec, stop=Event, progress=fn(step)); build_image(suite, arch=...)
    fetch_kernel: Callable[..., KernelBuild] = fetch_kernel
    build_image: Callable[..., GuestImage] = build_image
    vm_factory: VMFactory = QemuVM
    connect: Connector = ssh_connect
    accel: Callable[[], str] = detect_accel
    snapshots: Callable[[], SnapshotCache | None] = SnapshotCache


@dataclass
class RunOptions:
    concurrency: int = 0  # 0: decide from CPUs and memory
    use_cache: bool = True
    workdir: Path = Path(".bpfcompat/work")
    boot_per_artifact: bool = False  # one cold boot per cell, for benchmarks
    # Start guests from saved snapshots (vm/snapshot.py); off: every guest boots.
    snapshots: bool = field(default_factory=snapshots_enabled)
    progress: Progress = _quiet
    backend: Backend = field(default_factory=Backend)
    labels: dict[str, str] = field(default_factory=dict)  # e.g. git sha, branch: shown everywhere


@dataclass
class RunSummary:
    run_id: int
    exit_code: int
    status: str
    cells: list[Cell] = field(default_factory=list)
    kernels: list[RunKernel] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def default_concurrency(kernels: list[KernelSpec]) -> int:
    """One VM per core (TCG is CPU-bound), fewer if memory would run short."""
    cpus = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as fh:
            avail_kb = next(int(ln.split()[1]) for ln in fh if ln.startswith("MemAvailable"))
    except (OSError, StopIteration, ValueError):
        avail_kb = 2 * 1024 * 1024
    per_vm_mb = max((k.memory_mb for k in kernels), default=512) + 256  # QEMU's own overhead
    by_memory = max(1, int(avail_kb / 1024 * 0.7 // per_vm_mb))
    return max(1, min(cpus, by_memory, len(kernels)))


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
                self._record_cell(spec, artifact, hit, kernel, cached=True)
            else:
                todo.append((index, artifact, key))
        if not todo:
            self._update_kernel(row, status="cached")
            progress(spec.id, "done", "all cells cached")
            return
        with gate:
            self._validate_all(spec, row, kernel, image, todo, btf_file)

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
        workdir = self.options.workdir / f"run-{self.run_id}"
        workdir.mkdir(parents=True, exist_ok=True)
        session = GuestSession(
            spec,
            kernel,
            image,
            workdir,
            self.stop,
            self.live_vms,
            vm_factory=self.backend.vm_factory,
            connect=self.backend.connect,
            attach_mode=self.plan.attach_mode,
            auto_fixups=self.plan.auto_fixups,
            btf_file=btf_file,
            snapshots=self.backend.snapshots() if self.options.snapshots else None,
        )
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
            by_index = {index: (artifact, key) for index, artifact, key in todo}
            finished: set[int] = set()

            def started(index: int) -> None:
                name = by_index[index][0].name
                progress(spec.id, "validating", f"{len(finished) + 1}/{len(todo)} {name}")

            jobs = [(index, artifact) for index, artifact, _ in todo]
            try:
                for index, outcome in session.validate_many(
                    jobs, started, boot_per_artifact=self.options.boot_per_artifact
                ):
                    if self.stop.is_set() and outcome.infra_error:
                        return  # killed by our own interrupt: not a verdict
                    artifact, key = by_index[index]
                    stored = self._store_result(key, artifact, spec, image, outcome)
                    notes = [outcome.unstable] if outcome.unstable else []
                    if outcome.memory_mb is not None:
                        notes.append(
                            f"out of memory in the kernel's {spec.memory_mb} MB guest (the "
                            "OOM killer, or a map the kernel could not allocate); this answer "
                            f"is from a guest with {outcome.memory_mb} MB alone"
                        )
                    self._record_cell(spec, artifact, stored, kernel, cached=False, notes=notes)
                    finished.add(index)
            except BpfcompatError as exc:
                if self.stop.is_set():
                    return
                remaining = [a for i, a, _ in todo if i not in finished]
                self._kernel_failed(
                    spec,
                    row,
                    f"reboot failed: {describe_error(exc)}",
                    remaining,
                    boots=session.boots,
                )
                return
            if self.stop.is_set():
                return
            self._update_kernel(row, boots=session.boots)
            progress(spec.id, "done", f"{len(todo)} validated, {session.boots} boot(s)")
        finally:
            session.shutdown()
            if session.ready_via:
                self._update_kernel(row, restores=session.ready_via.count("restore"))
            if session.peak_rss_kb:
                self._update_kernel(row, peak_rss_mb=round(session.peak_rss_kb / 1024, 1))
            notes = list(session.notes)
            if session.ignored_lines:
                shown = "; ".join(repr(line) for line in session.ignored_lines[:3])
                notes.append(
                    f"ignored {len(session.ignored_lines)} guest protocol line(s) that named no "
                    f"running job: {shown}"
                )
            if notes:
                self._update_kernel(row, notes_json=json.dumps(notes))

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
            self._add_cell(spec, artifact, verdict, None, 0.0, cached=False)

    def _store_result(
        self,
        key: str,
        artifact: Artifact,
        spec: KernelSpec,
        image: GuestImage,
        outcome: RawOutcome,
    ) -> ValidatorResult:
        return self.store.add(
            ValidatorResult(
                cache_key=key,
                artifact_sha256=artifact.sha256,
                kernel_id=spec.id,
                validator_version=VALIDATOR_VERSION,
                image_digest=image.digest,
                exit_code=outcome.exit_code,
                signal=outcome.signal,
                raw_json=outcome.raw_json,
                infra_error=outcome.infra_error,
                crash=outcome.crash,
                console_tail=outcome.console_tail,
                seconds=round(outcome.seconds, 3),
            )
        )

    def _record_cell(
        self,
        spec: KernelSpec,
        artifact: Artifact,
        stored: ValidatorResult,
        kernel: KernelBuild,
        *,
        cached: bool,
        notes: list[str] | None = None,
    ) -> None:
        if cached:
            # The same evidence judged by the same classifier: reuse that verdict rather
            # than parse and classify again (keeps a fully cached rerun near-instant).
            prior = self.store.prior_cell(stored.id, CLASSIFIER_VERSION)
            if prior is not None:
                fields = prior.model_dump(
                    exclude={"id", "run_id", "artifact", "artifact_path", "manifest_path", "cached"}
                )
                # Expectations are this run's to judge: they may have changed since.
                fields.update(self._judged(artifact, spec, prior.status, prior.code))
                manifest = str(artifact.manifest_path) if artifact.manifest_path else None
                self.store.add(
                    Cell(
                        **fields,
                        run_id=self.run_id,
                        artifact=artifact.name,
                        artifact_path=str(artifact.path),
                        manifest_path=manifest,
                        cached=True,
                    )
                )
                return
        statics = self.analysis.of(artifact) if artifact.invalid_reason is None else {}
        verdict = classify(
            stored,
            artifact_problem=artifact.invalid_reason,
            release=kernel.release,
            analysis=statics,
        )
        result = stored.result()
        flaky = is_flaky(result)
        cell = self._add_cell(
            spec,
            artifact,
            verdict,
            stored,
            stored.seconds,
            cached=cached,
            result=result,
            analysis=statics,
        )
        extra = list(notes or [])
        if flaky:
            extra.append("flaky: a functional test passed only on a retry")
        if extra or flaky:
            self.store.update_cell(cell.id, flaky=flaky, notes=[*cell.notes, *extra])
        if not cached and is_final(verdict.status, verdict.code, flaky):
            self.store.mark_final(stored.id)

    def _add_cell(
        self,
        spec: KernelSpec,
        artifact: Artifact,
        verdict: Verdict,
        stored: ValidatorResult | None,
        seconds: float,
        *,
        cached: bool,
        result: ResultModel | ResultProblem | None = None,
        analysis: dict[str, Any] | None = None,
    ) -> Cell:
        return self.store.add(
            Cell(
                run_id=self.run_id,
                artifact=artifact.name,
                artifact_path=str(artifact.path),
                artifact_sha256=artifact.sha256,
                manifest_path=str(artifact.manifest_path) if artifact.manifest_path else None,
                manifest_hash=artifact.manifest_hash,
                kernel_id=spec.id,
                seconds=round(seconds, 3),
                cached=cached,
                result_id=stored.id if stored else None,
                artifact_problem=artifact.invalid_reason,
                analysis_json=json.dumps(analysis) if analysis else None,
                **cell_fields(verdict, result),
                **self._judged(artifact, spec, verdict.status, verdict.code),
            )
        )

    def _judged(
        self, artifact: Artifact, spec: KernelSpec, status: str, code: str | None
    ) -> dict[str, Any]:
        """Whether the cell is what the project expects (None: it states no expectation)."""
        if artifact.expect is None:
            return {"expected": None, "expectation": None}
        want = artifact.expect.verdict(kernel_chain(self.plan.kernels, spec.id))
        return {"expected": matches(want, status, code), "expectation": want.label}


# Verdicts that say something about the kernel and the object every time; everything else
# (errors, crashes, functional tests that failed or only passed on a retry) is re-run.
_NOT_FINAL_CODES = frozenset({"FUNCTIONAL_TEST_FAILURE", "KERNEL_CRASH"})


def is_final(status: str, code: str | None, flaky: bool) -> bool:
    """Whether a verdict may be reused from the cache by a later run."""
    if flaky:
        return False
    return status == "pass" or (status == "fail" and code not in _NOT_FINAL_CODES)


def is_flaky(result: ResultModel | ResultProblem | None) -> bool:
    return isinstance(result, ResultModel) and result.functional.flaky


def run_plan(plan: Plan, store: Store, options: RunOptions) -> tuple[MatrixRunner, RunSummary]:
    runner = MatrixRunner(plan, store, options)
    return runner, runner.run()
