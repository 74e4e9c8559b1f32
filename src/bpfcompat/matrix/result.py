"""The validator's result (validator.v0.4) as the host reads it: one typed model, read once.

The guest writes result.json after running the artifact under test as root, so every
byte of it is untrusted. `parse_result` bounds the parse itself (size, nesting depth
checked without recursion before json.loads ever sees the text) and `ResultModel` gives
each key a type: a field of the wrong JSON type reads as its default, non-finite
numbers are dropped, strings and lists are cut to the caps below, list entries of the
wrong shape are skipped and unknown keys are ignored. Keys missing from older schema
versions read as their defaults, so the classifier, notes, cell fields and reclassify
never look at raw JSON. Defaults are what "absent" means to the classifier, which is
sometimes not the validator's skeleton value (an absent `kernel_btf_available` is
unknown, not false).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Mapping
from itertools import accumulate
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

MAX_RESULT_BYTES = 16 << 20  # a real result is ~200 KB; the validator caps its own logs
MAX_DEPTH = 64  # the schema nests 5 deep; json.loads recurses once per level
MAX_TEXT_CHARS = 1 << 20  # log text (the validator keeps at most 512 KiB per message)
MAX_FIELD_CHARS = 4096  # names, states, paths, one-line messages
MAX_ITEMS = 1 << 16  # entries of any one list or mapping (programs, helpers, ...)
_INT_BOUND = 1 << 63  # beyond a 64-bit integer no field of the schema means anything


class ResultProblem(BaseModel):
    """Why a raw result could not be read at all (a verdict, never an exception)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["too-large", "too-deep", "not-json", "not-an-object"]
    reason: str


# --- bounded scalar types -----------------------------------------------------------------


def _clean_text(value: str, limit: int, *, keep_tail: bool) -> str:
    """`value` within `limit` characters and encodable as UTF-8 (JSON escapes can carry
    lone surrogates, which no report could write out)."""
    if len(value) > limit:
        value = value[-limit:] if keep_tail else value[:limit]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _is_number(value: Any) -> bool:
    """A finite JSON number a float can hold (json.loads makes ints of any size)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -_INT_BOUND < value < _INT_BOUND
    return isinstance(value, float) and math.isfinite(value)


def _number(value: Any) -> Any:
    """Checked before pydantic converts an int to a float (which overflows past 1e308)."""
    if not _is_number(value):
        raise ValueError("not a finite number")
    return value


def _bounded_int(value: int) -> int:
    if not -_INT_BOUND < value < _INT_BOUND:
        raise ValueError("integer out of range")
    return value


Text = Annotated[str, AfterValidator(lambda v: _clean_text(v, MAX_TEXT_CHARS, keep_tail=True))]
Name = Annotated[str, AfterValidator(lambda v: _clean_text(v, MAX_FIELD_CHARS, keep_tail=False))]
Int = Annotated[int, AfterValidator(_bounded_int)]
Float = Annotated[float, BeforeValidator(_number)]


# --- bounded containers: entries of the wrong shape are skipped, not fatal -----------------


def _is_name(value: Any) -> bool:
    return isinstance(value, str)


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entries(keep: Callable[[Any], bool]) -> BeforeValidator:
    """A JSON list as a tuple of at most MAX_ITEMS entries that pass `keep`; anything
    else passes through unchanged, to fail the type check and read as the default."""

    def select(value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value
        kept = [v for v in value[: MAX_ITEMS * 2] if keep(v)]
        return tuple(kept[:MAX_ITEMS])

    return BeforeValidator(select)


_SKIP = object()  # what a `_mapping` converter returns to leave an entry out


def _mapping(convert: Callable[[Any], Any]) -> BeforeValidator:
    """A JSON object with string keys of at most MAX_FIELD_CHARS, values through
    `convert` (which returns `_SKIP` to leave the entry out), at most MAX_ITEMS entries."""

    def select(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out = {}
        for key, item in value.items():
            if len(out) >= MAX_ITEMS:
                break
            if isinstance(key, str) and len(key) <= MAX_FIELD_CHARS:
                converted = convert(item)
                if converted is not _SKIP:
                    out[_clean_text(key, MAX_FIELD_CHARS, keep_tail=False)] = converted
        return out

    return BeforeValidator(select)


def _bool_value(item: Any) -> Any:
    return item if isinstance(item, bool) else _SKIP


def _number_value(item: Any) -> Any:
    return item if _is_number(item) else _SKIP


def _names_value(item: Any) -> Any:
    if not isinstance(item, list | tuple):
        return _SKIP
    return tuple(v for v in item[:MAX_ITEMS] if isinstance(v, str))


def _names_or_none(item: Any) -> Any:
    """A helper list, or None where bpftool recorded none (the classifier tells the two
    apart: a type with no list still counts as a recorded table)."""
    names = _names_value(item)
    return None if names is _SKIP else names


def _text_value(item: Any) -> Any:
    return item if isinstance(item, str) else _SKIP


def _plain(value: Any, depth: int = 0) -> Any:
    """Free-form JSON (legacy lists the host never reads), bounded like the rest."""
    if depth > MAX_DEPTH:
        return None
    if isinstance(value, str):
        return _clean_text(value, MAX_FIELD_CHARS, keep_tail=False)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -_INT_BOUND < value < _INT_BOUND else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value[:MAX_ITEMS]]
    if isinstance(value, dict):
        items = list(value.items())[:MAX_ITEMS]
        return {str(k)[:MAX_FIELD_CHARS]: _plain(v, depth + 1) for k, v in items}
    return None


Names = Annotated[tuple[Name, ...], _entries(_is_name)]
Texts = Annotated[tuple[Text, ...], _entries(_is_name)]
Ints = Annotated[tuple[Int, ...], _entries(_is_int)]
Free = Annotated[
    tuple[Any, ...], BeforeValidator(lambda v: tuple(_plain(v)) if isinstance(v, list) else v)
]
Flags = Annotated[dict[Name, bool], _mapping(_bool_value)]
Seconds = Annotated[dict[Name, Float], _mapping(_number_value)]
NameLists = Annotated[dict[Name, Names], _mapping(_names_value)]
NameListsOrNone = Annotated[dict[Name, Names | None], _mapping(_names_or_none)]
Messages = Annotated[dict[Name, Text], _mapping(_text_value)]


def _objects(model: type[BaseModel]) -> Any:
    return Annotated[tuple[model, ...], _entries(_is_object)]  # type: ignore[valid-type]


class _Part(BaseModel):
    """A part of the result: a field that fails its type check reads as its default."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    @field_validator("*", mode="wrap")
    @classmethod
    def _default_when_malformed(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        try:
            return handler(value)
        except ValidationError:
            assert info.field_name is not None
            return cls.model_fields[info.field_name].get_default(call_default_factory=True)


# --- the schema (validator/result.py skeleton() and the steps that fill it) ----------------


class Host(_Part):
    sysname: Name | None = None
    nodename: Name | None = None
    release: Name | None = None
    version: Name | None = None
    machine: Name | None = None
    python_version: Name | None = None
    boot_id: Name | None = None
    cmdline: Name | None = None
    possible_cpus: Name | None = None
    libbpf_version: Name | None = None
    libbpf_soname: Name | None = None
    libbpf_path: Name | None = None
    memlock_raised: bool | None = None
    memlock_limit: Int | None = None


class Input(_Part):
    artifact: Name | None = None
    manifest: Name | None = None
    functional_plan: Name | None = None
    attach_mode: Name | None = None
    probe_features: bool | None = None
    log_dir: Name | None = None
    set_map_max_entries: Names = ()
    set_map_inner_ringbuf: Names = ()
    prog_variants: Names = ()
    btf_custom_path: Name | None = None


class ArtifactInfo(_Part):
    """The validator's own ELF check of the artifact (its `artifact` key)."""

    size: Int | None = None
    elf_valid: bool | None = None
    elf_error: Text | None = None
    section_count: Int | None = None
    sections: Names = ()
    has_btf: bool | None = None
    has_btf_ext: bool | None = None


class MapFixup(_Part):
    name: Name | None = None
    requested: Name | None = None
    applied_entries: Int | None = None
    inner_ringbuf_bytes: Int | None = None
    value_size: Int | None = None
    key_size: Int | None = None
    status: Name | None = None
    error: Text | None = None


class AutoFixup(_Part):
    """A map the validator sized because the object left it zero and no manifest did."""

    name: Name | None = None
    type: Name | None = None
    field: Name | None = None
    compiled: Int | None = None
    applied: Int | None = None
    reason: Text | None = None
    manifest: Text | None = None
    status: Name | None = None
    error: Text | None = None


class GlobalSet(_Part):
    """A global variable the manifest had the validator set before load."""

    name: Name | None = None
    value: Any = None
    section: Name | None = None
    offset: Int | None = None
    size: Int | None = None
    status: Name | None = None
    error: Text | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        text = json.dumps(value, default=str)
        return value if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS]


class ProgramSetup(_Part):
    """What the manifest had the validator set on a program before load."""

    name: Name | None = None
    attach_target: Name | None = None
    attach_program: Messages | None = None  # {object, program}: what freplace replaces into
    autoload: bool | None = None
    type: Name | None = None
    expected_attach_type: Name | None = None
    status: Name | None = None
    error: Text | None = None


class VariantProbe(_Part):
    program: Name | None = None
    helper: Name | None = None
    helper_id: Int | None = None
    supported: bool | None = None
    error: Text | None = None


class Variant(_Part):
    group: Name | None = None
    chosen: Name | None = None
    disabled: Names = ()
    probes: _objects(VariantProbe) = ()
    status: Name | None = None
    error: Text | None = None


class Btf(_Part):
    kernel_btf_available: bool | None = None  # absent: unknown, not "no BTF"
    kernel_btf_path: Name | None = None
    kernel_btf_size: Int | None = None
    artifact_has_btf: bool | None = None
    artifact_has_btf_ext: bool | None = None
    # --btf-custom-path: the file given, and which BTF CO-RE used (custom, kernel or None)
    custom_btf_path: Name | None = None
    custom_btf_size: Int | None = None
    core_btf_source: Name | None = None


class Security(_Part):
    lockdown: Name | None = None
    lockdown_raw: Name | None = None
    lockdown_error: Text | None = None
    securityfs_mounted_by_validator: bool | None = None
    lockdown_denials: Texts = ()
    lockdown_denials_error: Text | None = None


class AttachPrereqs(_Part):
    """Absent means not probed: the classifier only acts on an explicit false."""

    tracefs: bool | None = None
    tracefs_path: Name | None = None
    kprobe_events: bool | None = None
    tracepoint_events: bool | None = None
    kprobe_pmu: bool | None = None
    debugfs_tracing: bool | None = None


class Capabilities(_Part):
    bpftool_available: bool | None = None
    bpftool_path: Name | None = None
    bpftool_probe_ok: bool | None = None
    bpftool_probe_output_path: Name | None = None
    bpftool_probe_cached: bool | None = None
    bpftool_probe_error: Text | None = None
    map_types: Flags = {}
    program_types: Flags = {}
    probe_errors: Messages = {}
    helpers: NameListsOrNone = {}  # program type -> helpers bpftool lists for it
    helper_program_types: NameLists = {}  # helper -> program types that may call it
    attach_prereqs: AttachPrereqs = AttachPrereqs()


class HelperProbe(_Part):
    id: Int | None = None
    name: Name | None = None
    supported: bool | None = None


class VerifierStats(_Part):
    """The verifier's summary of one program it checked; a field its kernel did not print
    (or a level-1 log of a refused program lacks: time, stack depth) is None."""

    insns_processed: Int | None = None
    insn_limit: Int | None = None
    max_states_per_insn: Int | None = None
    states_total: Int | None = None
    states_peak: Int | None = None
    stack_depth: Ints | None = None  # per subprogram, main program first
    verify_usec: Int | None = None


class Program(_Part):
    name: Name | None = None
    section: Name | None = None
    type: Name | None = None
    type_id: Int | None = None
    autoload: bool = True
    variant_group: Name | None = None
    attach_required: bool | None = None
    attach_status: Name | None = None
    attach_error: Text | None = None
    attach_errno: Int = 0
    attach_skip_reason: Text | None = None
    load_status: Name | None = None
    load_errno: Int = 0
    load_errno_name: Name | None = None
    load_log: Text = ""
    load_log_path: Name | None = None
    load_skip_reason: Text | None = None
    load_seconds: Float | None = None
    helpers: _objects(HelperProbe) | None = None  # the helpers its instructions call
    kfuncs: Ints | None = None
    helper_probe_error: Text | None = None
    verifier_stats: VerifierStats | None = None


class Map(_Part):
    name: Name | None = None
    type: Name | None = None
    type_id: Int | None = None
    max_entries: Int | None = None
    value_size: Int | None = None
    key_size: Int | None = None


class Discovery(_Part):
    program_count: Int = 0
    map_count: Int = 0
    programs: _objects(Program) = ()
    maps: _objects(Map) = ()
    probe_loads: Int = 0  # object loads the per-program probes did after the whole load


class Load(_Part):
    status: Name | None = None
    stage: Name | None = None
    error_code: Int = 0
    error: Text | None = None
    errno_name: Name | None = None
    failed_program: Name | None = None
    failed_map: Name | None = None
    libbpf_error_code: Int | None = None
    libbpf_messages: Texts = ()
    verifier_log: Text = ""


class Attach(_Part):
    mode: Name | None = None
    status: Name | None = None
    attempted: Int = 0
    passed: Int = 0
    failed: Int = 0
    skipped: Int = 0
    required_failed: Names = ()


class FunctionalTest(_Part):
    name: Name | None = None
    required: bool = True
    status: Name | None = None
    command: Text | None = None
    timeout_seconds: Float | None = None
    expected_exit_code: Int | None = None
    exit_code: Int | None = None
    timed_out: bool = False
    stdout_tail: Text = ""
    stderr_tail: Text = ""
    error: Text | None = None
    duration_seconds: Float | None = None
    attempts: Int = 0
    failed_attempts: Texts = ()
    flaky: bool = False


class Functional(_Part):
    status: Name | None = None
    tests: _objects(FunctionalTest) = ()
    flaky: bool = False  # a required test passed only on a retry


class Logs(_Part):
    libbpf: Text = ""
    libbpf_load: Text = ""
    libbpf_log_path: Name | None = None
    libbpf_messages: Int = 0
    libbpf_dropped: Int = 0


class StepMessage(_Part):
    step: Name | None = None
    message: Text | None = None


def _step_messages(value: Any) -> Any:
    """Older validators wrote warnings as bare strings: messages without a step."""
    if not isinstance(value, list):
        return value
    entries = [{"message": v} if isinstance(v, str) else v for v in value[: MAX_ITEMS * 2]]
    return tuple([v for v in entries if isinstance(v, dict)][:MAX_ITEMS])


StepMessages = Annotated[tuple[StepMessage, ...], BeforeValidator(_step_messages)]


class ResultModel(_Part):
    """One validator result; build it with `parse_result` (raw text) or `from_data`."""

    schema_version: Name | None = None
    validator_version: Name | None = None
    timestamp: Name | None = None
    status: Name | None = None
    host: Host = Host()
    input: Input = Input()
    artifact: ArtifactInfo = ArtifactInfo()
    map_fixups: _objects(MapFixup) = ()
    auto_sized_maps: _objects(AutoFixup) = ()
    program_setup: _objects(ProgramSetup) = ()
    globals_set: _objects(GlobalSet) = ()
    auto_typed_programs: Free = ()
    program_type_overrides: Free = ()
    program_variants: _objects(Variant) = ()
    btf: Btf = Btf()
    security: Security = Security()
    capabilities: Capabilities = Capabilities()
    discovery: Discovery = Discovery()
    load: Load = Load()
    attach: Attach = Attach()
    functional: Functional = Functional()
    logs: Logs = Logs()
    timings: Seconds = {}
    errors: StepMessages = ()
    warnings: StepMessages = ()

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> ResultModel:
        """The model of already-loaded JSON data (tests, the host-side validate command)."""
        return cls.model_validate(dict(data) if isinstance(data, Mapping) else {})

    def as_dict(self) -> dict[str, Any]:
        """Normalised plain data, for storing and rendering as JSON."""
        return self.model_dump(mode="json")


# --- parsing ------------------------------------------------------------------------------

# A JSON string (escapes consume the next character; an unterminated one runs to the end)
# and every character that is not a bracket: what the depth scan skips.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = [0] * 256
_DEPTH_STEP[ord("[")] = _DEPTH_STEP[ord("{")] = 1
_DEPTH_STEP[ord("]")] = _DEPTH_STEP[ord("}")] = -1


def nesting_depth(text: str) -> int:
    """How deep json.loads would recurse on `text`, found without recursing: strings
    removed, then a running sum over the brackets (map and accumulate run in C)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).encode("ascii")
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def parse_result(raw: bytes | str) -> ResultModel | ResultProblem:
    """Read one result.json as the guest wrote it: the model, or why it is unusable."""
    return _parse(raw)


@functools.lru_cache(maxsize=4)
def _parse(raw: bytes | str) -> ResultModel | ResultProblem:
    # Cached: the runner and reclassify read one stored row for its verdict and again
    # for the cell's notes; the model is frozen, so sharing it is safe.
    size = len(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else len(raw)
    if size > MAX_RESULT_BYTES:
        return ResultProblem(
            kind="too-large",
            reason=f"validator result is {size} bytes, over the {MAX_RESULT_BYTES} byte cap",
        )
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    depth = nesting_depth(text)
    if depth > MAX_DEPTH:
        return ResultProblem(
            kind="too-deep",
            reason=f"validator result nests {depth} levels deep, over the cap of {MAX_DEPTH}",
        )
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and ints over the digit limit
        return ResultProblem(kind="not-json", reason=f"validator result is not JSON: {exc}"[:300])
    if not isinstance(data, dict):
        return ResultProblem(
            kind="not-an-object",
            reason=f"validator result is a JSON {type(data).__name__}, not an object",
        )
    return ResultModel.from_data(data)
