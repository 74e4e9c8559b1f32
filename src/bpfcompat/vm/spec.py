"""What a kernel of the matrix is: the VM layer boots it, the matrix layer plans with it.

Kept here, below both, so the VM layer never imports the matrix layer's config.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# Debian package names: lower case, digits, + - . (policy 5.6.1).
PACKAGE_PATTERN = r"^[a-z0-9][a-z0-9+.-]+$"
SUITE_PATTERN = r"^[a-z][a-z0-9-]{1,31}$"


class Strict(BaseModel):
    """Every config model: unknown keys are errors, values are never coerced."""

    # strict: YAML already yields real ints and booleans, so `max_entries: true` (lax
    # pydantic: 1) or `required: 1` are typos to report, not values to coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, strict=True)


class KernelSpec(Strict):
    """One kernel of the matrix: a Debian kernel package booted with an optional command line."""

    id: Annotated[str, Field(pattern=ID_PATTERN)]
    suite: Annotated[str, Field(pattern=SUITE_PATTERN)]
    package: Annotated[str, Field(pattern=PACKAGE_PATTERN)]
    required: bool = True
    memory_mb: Annotated[int, Field(ge=256, le=16384)] = 512
    cpus: Annotated[int, Field(ge=1, le=64)] = 1
    cmdline: Annotated[str, Field(max_length=512)] = ""
    boot_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 180.0
    description: str = ""
    # Judge this kernel's cells by the expectations written for another kernel (e.g. the
    # same release on another architecture) unless an expectation names this one.
    expect_like: Annotated[str, Field(pattern=ID_PATTERN)] | None = None

    @field_validator("cmdline")
    @classmethod
    def _safe_cmdline(cls, value: str) -> str:
        # The command line is ours to build; quotes or control characters would let a
        # config value smuggle init arguments or confuse the parser in the guest.
        if re.search(r"[\"'`\\\x00-\x1f]", value):
            raise ValueError("may not contain quotes, backslashes or control characters")
        return value
