"""The verdict of one cell: the one model the classifier produces and the store, every
report format and the terminal read.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Status = Literal["pass", "fail", "error"]
Confidence = Literal["high", "medium", "low"]
# How much of a loaded object attached: all, some, none, or off (attach mode disabled).
Attached = Literal["all", "some", "none", "off"]


class Verdict(BaseModel):
    """What the classifier concluded and the line that proves it.

    `status` is pass, fail (the kernel, the artifact or the loader contract said no) or
    error (our infrastructure could not tell: never cached, never final).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: Status
    code: str | None = None
    confidence: Confidence | None = None
    stage: str | None = None
    program: str | None = None
    evidence: str | None = None
    remediation: str | None = None
    rule: str | None = None
    detail: str | None = None  # the inputs that decided it (probe, lockdown, release), in words
    # For a pass: whether its programs attached. A pass where nothing (or not everything)
    # attached is shown apart from a full pass in every format.
    attached: Attached | None = None

    @classmethod
    def stored(cls, source: object) -> Verdict:
        """The verdict a store row or export entry holds (its fields by name): a verdict
        read back, never a new judgement."""
        get = source.get if isinstance(source, dict) else lambda f: getattr(source, f, None)
        return cls(**{f: get(f) for f in cls.model_fields})

    @property
    def label(self) -> str:
        """`pass`, `pass, not attached`, or the status with its code (`fail
        VERIFIER_REJECTION`)."""
        if self.status == "pass" and self.attached in ATTACH_LABELS:
            return f"pass, {ATTACH_LABELS[self.attached]}"
        return self.status + (f" {self.code}" if self.code else "")

    @property
    def full_pass(self) -> bool:
        return self.status == "pass" and self.attached not in ("some", "none")


ATTACH_LABELS = {"some": "partly attached", "none": "not attached", "off": "attach off"}
PASS = Verdict(status="pass")
VERDICT_FIELDS = tuple(Verdict.model_fields)
