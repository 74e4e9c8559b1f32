"""The verdict of one cell: the one model the classifier produces and the store, every
report format and the terminal read.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

Status = Literal["pass", "fail", "error"]
Confidence = Literal["high", "medium", "low"]
# How much of a loaded object attached: all, some, none, or off (attach mode disabled).
Attached = Literal["all", "some", "none", "off"]


PINPOINT_CHARS = 300  # each pinpoint field: one line of a log


class Pinpoint(BaseModel):
    """Where the verifier stopped: the failing program's instruction, the C source line
    the verifier printed for it (BTF line info) and the register state before it, read
    on the host from the stored verifier log. Every field is text the guest wrote."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    program: str | None = None
    insn: int | None = None  # the instruction index the verifier printed
    instruction: str | None = None  # "(79) r1 = *(u64 *)(r0 +8)"
    source: str | None = None  # "return *next != 0;"
    location: str | None = None  # "verifier-oob.bpf.c:30" (kernels that print it)
    state: str | None = None  # "R0_w=map_value(map=counters,ks=4,vs=8)"
    log: str | None = None  # which stored log it was read from

    @field_validator("program", "instruction", "source", "location", "state", "log")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        return " ".join(value.split())[:PINPOINT_CHARS] if value is not None else None

    @classmethod
    def read(cls, data: object) -> Pinpoint | None:
        """A stored pinpoint, or None when it is absent or not one (a damaged column
        reads as no pinpoint, never as a broken report)."""
        if isinstance(data, Pinpoint) or data is None:
            return data
        if not isinstance(data, dict):
            return None
        try:
            return cls.model_validate(data)
        except ValidationError:
            return None

    @property
    def where(self) -> str:
        """`file.c:30 `return *next != 0;` (insn 8)`: the pinpoint on one line."""
        parts = []
        if self.location:
            parts.append(self.location)
        if self.source:
            parts.append(f"`{self.source}`")
        if self.insn is not None:
            parts.append(f"(insn {self.insn})" if parts else f"insn {self.insn}")
        return " ".join(parts)


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
    # For a missing feature: "needs >= 5.16 for map type bloom_filter (this kernel: 5.10)".
    needs: str | None = None
    # For a verifier failure: where in the program and the source the verifier stopped.
    pinpoint: Pinpoint | None = None

    @classmethod
    def stored(cls, source: object) -> Verdict:
        """The verdict a store row or export entry holds (its fields by name): a verdict
        read back, never a new judgement."""
        get = source.get if isinstance(source, dict) else lambda f: getattr(source, f, None)
        fields = {f: get(f) for f in cls.model_fields}
        fields["pinpoint"] = Pinpoint.read(fields["pinpoint"])
        return cls(**fields)

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
