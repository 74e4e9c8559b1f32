"""Storing what a run learns: each validator result, and the verdict of each cell judged
against the project's expectations.

Only final verdicts are marked for reuse by later runs (a pass, or a kernel's
deterministic answer), never an infrastructure error, a crash, or a functional test that
failed or passed only on a retry.
"""

from __future__ import annotations

import json
from typing import Any

from bpfcompat.matrix.classify import CLASSIFIER_VERSION, cell_fields, classify
from bpfcompat.matrix.expect import kernel_chain, matches
from bpfcompat.matrix.guest import RawOutcome
from bpfcompat.matrix.plan import Artifact, Plan
from bpfcompat.matrix.result import ResultModel, ResultProblem
from bpfcompat.matrix.statics import RunAnalysis
from bpfcompat.matrix.store import Cell, Store, ValidatorResult
from bpfcompat.matrix.verdict import Verdict
from bpfcompat.validator import VALIDATOR_VERSION
from bpfcompat.vm.image import GuestImage
from bpfcompat.vm.kernels import KernelBuild
from bpfcompat.vm.spec import KernelSpec


class CellRecorder:
    """One run's cells, written to the store as soon as each is known (thread-safe: the
    store serialises writes)."""

    def __init__(self, store: Store, plan: Plan, analysis: RunAnalysis, run_id: int) -> None:
        self.store = store
        self.plan = plan
        self.analysis = analysis
        self.run_id = run_id

    def store_result(
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

    def record_cell(
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
        cell = self.add_cell(
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

    def add_cell(
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
