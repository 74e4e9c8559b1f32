"""Strict config models: the kernel matrix (kernels.yaml) and per-artifact manifests.

Every unknown key or bad value is a ConfigError naming the file, the entry and the key,
because silently ignored configuration is a bug users only find in production.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from bpfcompat.errors import ConfigError
from bpfcompat.matrix.expect import Expectations
from bpfcompat.validator.limits import (
    FUNCTIONAL_TIMEOUT_DEFAULT,
    FUNCTIONAL_TIMEOUT_MAX,
    MAX_COMMAND_CHARS,
    MAX_HELPER_ID,
    MAX_MAP_ENTRIES,
    MAX_MAP_VALUE_BYTES,
    MAX_NAME_CHARS,
    MAX_RINGBUF_BYTES,
    MAX_TEST_RETRIES,
    NAME_SEPARATORS,
    command_problem,
    name_problem,
)
from bpfcompat.validator.tables import ATTACH_TYPE_NAMES, PROG_TYPE_NAMES, type_id
from bpfcompat.vm.spec import SUITE_PATTERN, KernelSpec, Strict

M = TypeVar("M", bound=BaseModel)


class KernelMatrix(Strict):
    guest_suite: Annotated[str, Field(pattern=SUITE_PATTERN)] = "trixie"
    kernels: Annotated[list[KernelSpec], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_ids(self) -> KernelMatrix:
        seen: set[str] = set()
        for index, kernel in enumerate(self.kernels):
            if kernel.id in seen:
                raise ValueError(f"kernels[{index}].id: duplicate kernel id {kernel.id!r}")
            seen.add(kernel.id)
        for index, kernel in enumerate(self.kernels):
            if kernel.expect_like is not None and (
                kernel.expect_like not in seen or kernel.expect_like == kernel.id
            ):
                raise ValueError(
                    f"kernels[{index}].expect_like: {kernel.expect_like!r} is not another "
                    "kernel of this matrix"
                )
        return self

    def select(self, ids: list[str] | None) -> list[KernelSpec]:
        """Kernels named by `ids` in the order given, or all of them."""
        if not ids:
            return list(self.kernels)
        by_id = {k.id: k for k in self.kernels}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ConfigError(f"unknown kernel id {unknown[0]!r} (known: {', '.join(by_id)})")
        return [by_id[i] for i in dict.fromkeys(ids)]


# --- manifests ---------------------------------------------------------------------------


def _flag_safe(value: str) -> str:
    """Names travel to the guest inside `<name>=<value>` flags: the validator's own rule."""
    problem = name_problem(value)
    if problem:
        raise ValueError(f"{value!r} {problem}")
    return value


def _runnable(value: str) -> str:
    problem = command_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# The JSON Schema states the name rule too, so editors flag what the models refuse.
_NAME_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_NAME_CHARS,
    "pattern": f"^[^{re.escape(NAME_SEPARATORS)}\\x00-\\x1f\\x7f]+$",
}
Name = Annotated[str, AfterValidator(_flag_safe), WithJsonSchema(_NAME_SCHEMA)]
_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 0, "maximum": FUNCTIONAL_TIMEOUT_MAX},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m)?\s*$"},
    ]
}
GlobalValue = int | bool | Annotated[str, Field(max_length=4096)] | list[int | bool]


def _parse_duration(value: Any) -> float:
    """Accept 5, 2.5, "5s", "500ms", "1m" — the contract writes `timeout: 5s`."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 5s or 500ms")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", value)
        if not match:
            raise ValueError(f"{value!r} is not a duration like 5s or 500ms")
        number, unit = float(match.group(1)), match.group(2) or "s"
        seconds = number / 1000 if unit == "ms" else number * 60 if unit == "m" else number
    else:
        raise ValueError("must be a duration like 5s or 500ms")
    if not 0 < seconds <= FUNCTIONAL_TIMEOUT_MAX:
        raise ValueError(
            f"duration must be between 0 and {FUNCTIONAL_TIMEOUT_MAX:g} seconds, got {seconds:g}"
        )
    return seconds


MapSize = Annotated[int, Field(ge=1, le=MAX_MAP_VALUE_BYTES)]


class MapFixup(Strict):
    """A map the loader sizes at run time: the validator applies the same sizes before
    loading. At least one of max_entries, inner_ringbuf_bytes, value_size and key_size
    is given."""

    name: Annotated[Name, Field(description="The map's name in the object.", examples=["events"])]
    max_entries: Literal["cpus"] | Annotated[int, Field(ge=1, le=MAX_MAP_ENTRIES)] | None = Field(
        None,
        description="Set the map's max_entries before load: a number, or `cpus` for the "
        "guest's number of possible CPUs (per-CPU ring buffers, perf event arrays).",
        examples=["cpus", 4096],
    )
    inner_ringbuf_bytes: Annotated[int, Field(ge=4096, le=MAX_RINGBUF_BYTES)] | None = Field(
        None,
        description="For a map of ring buffers: create the inner ring buffer with this size "
        "(a power of two, at least 4096) and install it as the inner map, as the loader does.",
        examples=[8388608],
    )
    value_size: MapSize | None = Field(
        None,
        description="Set the map's value size in bytes before load "
        "(bpf_map__set_value_size), for maps compiled with a size the loader replaces.",
        examples=[64],
    )
    key_size: MapSize | None = Field(
        None,
        description="Set the map's key size in bytes before load (bpf_map__set_key_size).",
        examples=[4],
    )

    @field_validator("inner_ringbuf_bytes")
    @classmethod
    def _power_of_two(cls, value: int | None) -> int | None:
        if value is not None and value & (value - 1):
            raise ValueError("must be a power of two (the kernel's ringbuf size rule)")
        return value

    @model_validator(mode="after")
    def _something(self) -> MapFixup:
        if all(
            v is None
            for v in (self.max_entries, self.inner_ringbuf_bytes, self.value_size, self.key_size)
        ):
            raise ValueError("needs max_entries, inner_ringbuf_bytes, value_size or key_size")
        return self


class VariantProgram(Strict):
    """One candidate program of a variant group."""

    name: Annotated[
        Name, Field(description="The program's name in the object.", examples=["loop_x"])
    ]
    requires_helper: str | Annotated[int, Field(ge=0, le=MAX_HELPER_ID)] | None = Field(
        None,
        description="The BPF helper this variant needs, by name (`bpf_loop`) or id; the first "
        "program of the group whose helper the kernel supports is loaded. Absent or 0: "
        "unconditional, the fallback.",
        examples=["bpf_loop"],
    )

    @field_validator("requires_helper")
    @classmethod
    def _known_helper(cls, value: str | int | None) -> str | int | None:
        if isinstance(value, str):
            from bpfcompat.validator import helper_id_from_name

            if helper_id_from_name(value) is None:
                raise ValueError(f"unknown helper name {value!r}")
        return value


class VariantGroup(Strict):
    """Programs of which the loader loads exactly one, chosen by helper support; the
    others get autoload off, as a loader calling bpf_program__set_autoload would."""

    group: Annotated[
        Name, Field(description="A name for the group, used in reports.", examples=["loop_x"])
    ]
    programs: Annotated[list[VariantProgram], Field(min_length=1)] = Field(
        description="The candidates, in the loader's order of preference; the last one "
        "usually has no requires_helper, the fallback.",
        examples=[[{"name": "loop_x", "requires_helper": "bpf_loop"}, {"name": "loop_old_x"}]],
    )


class FunctionalTest(Strict):
    """A command run in the guest while the object is loaded and its programs attached:
    it proves the programs do their job, not only that they load."""

    name: Annotated[
        Name, Field(description="The test's name in reports.", examples=["execve-marker"])
    ]
    command: Annotated[
        str,
        AfterValidator(_runnable),
        Field(
            description="Run as root by busybox `sh -c` in the guest, which has busybox's "
            "applets, python3 and bpftool (no bash, no coreutils). At most "
            f"{MAX_COMMAND_CHARS} characters.",
            examples=["timeout 3 grep -m1 my-marker /sys/kernel/tracing/trace_pipe"],
        ),
    ]
    required: bool = Field(
        True,
        description="A failing required test fails the cell; a failing optional one is "
        "reported only.",
        examples=[True],
    )
    timeout: Annotated[float, WithJsonSchema(_DURATION_SCHEMA)] = Field(
        FUNCTIONAL_TIMEOUT_DEFAULT,
        description="How long the command may run: seconds, or a duration such as `5s`, "
        f"`500ms`, `1m` (at most {FUNCTIONAL_TIMEOUT_MAX:g} s).",
        examples=["5s"],
    )
    expect_exit_code: Annotated[int, Field(ge=0, le=255)] = Field(
        0, description="The exit status the command must end with.", examples=[0]
    )
    expect_stdout_contains: str | None = Field(
        None,
        description="Text the command's standard output must contain.",
        examples=["my-marker"],
    )
    expect_stderr_contains: str | None = Field(
        None,
        description="Text the command's standard error must contain.",
        examples=["attached"],
    )

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return _parse_duration(value)


class AttachExpectation(Strict):
    """How the loader treats this program's attach."""

    required: bool = Field(
        False,
        description="The program must attach: a failed attach fails the cell even when "
        "the run's --attach-mode is best-effort.",
        examples=[True],
    )


def _known(names: tuple[str, ...], what: str) -> Any:
    def check(value: str | None) -> str | None:
        if value is not None and type_id(names, value) is None:
            raise ValueError(f"unknown {what} {value!r}")
        return value

    return AfterValidator(check)


class TargetProgram(Strict):
    """A program of another object that an extension (freplace) program replaces a
    function of: the loader loads that object first and passes the program."""

    object: Annotated[
        str,
        Field(
            min_length=1,
            max_length=4096,
            description="The other object's path, relative to the manifest's directory.",
            examples=["../dispatcher/dispatcher.bpf.o"],
        ),
    ]
    program: Annotated[
        Name,
        Field(
            description="The program of that object whose function is replaced.",
            examples=["dispatcher"],
        ),
    ]


class ProgramExpectation(Strict):
    """One program: what must hold for it, and what the project's loader sets on it."""

    name: Annotated[
        Name, Field(description="The program's name in the object.", examples=["handle_exec"])
    ]
    attach: AttachExpectation = Field(
        AttachExpectation(), description="Expectations on attaching the program."
    )
    # bpf_program__set_attach_target: the function a tracing program (fentry/fexit/
    # fmod_ret/lsm/tp_btf/freplace) really attaches to, for objects compiled with a
    # placeholder the loader replaces.
    attach_target: Name | None = Field(
        None,
        description="The function a tracing program (fentry, fexit, fmod_ret, lsm, tp_btf, "
        "freplace) really attaches to, set before load as the loader does with "
        "bpf_program__set_attach_target, for objects compiled with a placeholder.",
        examples=["do_unlinkat"],
    )
    attach_target_program: TargetProgram | None = Field(
        None,
        description="For an extension (freplace) program: the program of another object "
        "whose function it replaces; that object is loaded first, as the loader does.",
    )
    autoload: bool | None = Field(
        None,
        description="Whether the loader loads this program at all "
        "(bpf_program__set_autoload); absent: as compiled.",
        examples=[False],
    )
    # For sections libbpf cannot type (another loader's convention): libbpf's program
    # type name, e.g. socket_filter, sched_cls, and the expected attach type if needed.
    type: Annotated[str | None, _known(PROG_TYPE_NAMES, "program type")] = Field(
        None,
        description="The program type, for sections libbpf cannot type (another loader's "
        "convention): libbpf's name (`socket_filter`, `sched_cls`, ...) or the kernel's "
        "(`BPF_PROG_TYPE_SOCKET_FILTER`).",
        examples=["socket_filter"],
    )
    expected_attach_type: Annotated[str | None, _known(ATTACH_TYPE_NAMES, "attach type")] = Field(
        None,
        description="The expected attach type that goes with `type` (and needs it), when "
        "the program type needs one: libbpf's name (`cgroup_inet_ingress`, ...) or the "
        "kernel's.",
        examples=["cgroup_inet_ingress"],
    )

    @model_validator(mode="after")
    def _type_first(self) -> ProgramExpectation:
        if self.expected_attach_type is not None and self.type is None:
            raise ValueError("expected_attach_type needs type")
        return self


class Manifest(Strict):
    """What a project's loader does that a generic loader cannot guess."""

    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="Free-form text recorded with each result (owner, description, ...).",
        examples=[{"owner": "team-observability", "description": "exec tracer"}],
    )
    programs: list[ProgramExpectation] = Field(
        default_factory=list,
        description="Per-program expectations, and what the loader sets on each program.",
    )
    maps: list[MapFixup] = Field(
        default_factory=list, description="Maps the loader sizes at run time."
    )
    program_variants: list[VariantGroup] = Field(
        default_factory=list,
        description="Groups of alternative programs, one loaded per group by helper support.",
    )
    functional_tests: list[FunctionalTest] = Field(
        default_factory=list,
        description="Commands run in the guest while the programs are attached.",
    )
    retries: Annotated[int, Field(ge=0, le=MAX_TEST_RETRIES)] = Field(
        1,
        description="A failing functional test is run again (links still alive) up to this "
        "many times; one that passes on a retry is reported as flaky, never as a plain pass.",
        examples=[2],
    )
    shared: bool = Field(
        False,
        description="A directory's manifest.yaml written for several objects: programs and "
        "maps it names that an object lacks are not errors for that object.",
        examples=[True],
    )
    # Global variables (.rodata/.data/.bss, e.g. `const volatile` switches) the loader sets
    # before load; each value is checked against the variable's BTF type.
    globals: dict[Name, GlobalValue] = Field(
        default_factory=dict,
        description="Global variables (in .rodata, .data or .bss, such as `const volatile` "
        "switches) the loader sets before load, by name: an integer, a boolean, an enum's "
        "enumerator name, a string for a char array, or a list for an array. Each value is "
        "checked against the variable's BTF type and range.",
        examples=[{"target_pid": 1234, "verbose": True, "comm": "nginx"}],
    )
    expect: Expectations | None = Field(
        None,
        description="What the project expects on each kernel, instead of an expect.yaml "
        "beside the object: a cell that matches does not fail the run.",
    )

    def named(self) -> list[tuple[str, str, str]]:
        """(key, kind, name) of every program and map the manifest names."""
        out = [(f"maps[{i}].name", "map", m.name) for i, m in enumerate(self.maps)]
        out += [(f"programs[{i}].name", "program", p.name) for i, p in enumerate(self.programs)]
        for g, group in enumerate(self.program_variants):
            out += [
                (f"program_variants[{g}].programs[{i}].name", "program", p.name)
                for i, p in enumerate(group.programs)
            ]
        return out

    def validator_args(self) -> list[str]:
        """The contract's flags, generated from `maps`, `programs` and `program_variants`."""
        args: list[str] = []
        for fixup in self.maps:
            if fixup.max_entries is not None:
                args += ["--set-map-max-entries", f"{fixup.name}={fixup.max_entries}"]
            if fixup.inner_ringbuf_bytes is not None:
                args += ["--set-map-inner-ringbuf", f"{fixup.name}={fixup.inner_ringbuf_bytes}"]
            if fixup.value_size is not None:
                args += ["--set-map-value-size", f"{fixup.name}={fixup.value_size}"]
            if fixup.key_size is not None:
                args += ["--set-map-key-size", f"{fixup.name}={fixup.key_size}"]
        for name, value in self.globals.items():
            args += ["--set-global", f"{name}={json.dumps(value)}"]
        for prog in self.programs:
            if prog.attach_target is not None:
                args += ["--set-prog-attach-target", f"{prog.name}={prog.attach_target}"]
            if prog.autoload is not None:
                args += ["--set-prog-autoload", f"{prog.name}={str(prog.autoload).lower()}"]
            if prog.type is not None:
                kind = prog.type + (
                    f"/{prog.expected_attach_type}" if prog.expected_attach_type else ""
                )
                args += ["--set-prog-type", f"{prog.name}={kind}"]
        for group in self.program_variants:
            entries = [
                p.name if p.requires_helper is None else f"{p.name}:{p.requires_helper}"
                for p in group.programs
            ]
            args += ["--prog-variants", f"{group.group}={','.join(entries)}"]
        return args

    def functional_plan(self) -> dict[str, Any] | None:
        """The strict plan the validator runs while links are alive."""
        if not self.functional_tests:
            return None
        return {
            "tests": [
                {
                    "name": t.name,
                    "command": t.command,
                    "required": t.required,
                    "timeout_seconds": t.timeout,
                    "expect_exit_code": t.expect_exit_code,
                    "expect_stdout_contains": t.expect_stdout_contains,
                    "expect_stderr_contains": t.expect_stderr_contains,
                    "retries": self.retries,
                }
                for t in self.functional_tests
            ]
        }

    def targets(self) -> list[tuple[str, TargetProgram]]:
        """(program, target) for each extension program given a target program."""
        return [(p.name, p.attach_target_program) for p in self.programs if p.attach_target_program]

    def validator_inputs(
        self, directory: str, target_objects: Sequence[bytes] = ()
    ) -> tuple[list[str], dict[str, bytes]]:
        """Every manifest-derived validator argument, and the files (path -> bytes) they
        name inside `directory`: one mapping for the guest runner and host validation.
        `target_objects`: the bytes of each `targets()` object, in that order."""
        args = self.validator_args()
        files: dict[str, bytes] = {}
        for index, ((prog, target), data) in enumerate(
            zip(self.targets(), target_objects, strict=True)
        ):
            path = f"{directory}/target-{index}.bpf.o"
            files[path] = data
            args += ["--set-prog-attach-program", f"{prog}={path}:{target.program}"]
        if self.programs or self.metadata:
            path = f"{directory}/manifest.json"
            files[path] = json.dumps(self.validator_manifest()).encode()
            args += ["--manifest", path]
        plan = self.functional_plan()
        if plan is not None:
            path = f"{directory}/plan.json"
            files[path] = json.dumps(plan).encode()
            args += ["--functional-plan", path]
        return args, files

    def validator_manifest(self) -> dict[str, Any]:
        """The JSON the validator reads with --manifest (per-program expectations)."""
        return {
            "programs": [
                {"name": p.name, "attach": {"required": p.attach.required}} for p in self.programs
            ],
            "metadata": dict(self.metadata),
        }


# --- loading -------------------------------------------------------------------------------


def _describe(loc: tuple[int | str, ...], data: Any) -> str:
    """Render a pydantic location as `kernels[1] (debian-12-6.1).memory_mb`."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and 0 <= item < len(node):
                node = node[item]
                ident = (
                    node.get("id") or node.get("name") or node.get("group")
                    if isinstance(node, dict)
                    else None
                )
                if isinstance(ident, str):
                    label += f" ({ident})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def format_validation_error(source: str, exc: ValidationError, data: Any) -> str:
    """One line for the first problem, the way users scan errors: file, entry, key, why."""
    err = exc.errors()[0]
    loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    # Drop pydantic's union-branch tags such as 'literal['cpus']' or 'int'.
    loc = tuple(x for x in loc if not (isinstance(x, str) and ("[" in x or x in {"int", "str"})))
    msg = err["msg"].removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    tail = f" (+{more} more problem{'s' if more > 1 else ''})" if more else ""
    # Keys and ids come from the file: a newline in one must not break the one-line rule.
    return f"{source}: {_one_line(_describe(loc, data))}: {_one_line(msg)}{tail}"


def _one_line(text: str) -> str:
    """`text` with control characters escaped (\\n, \\x1b) so it stays on one line."""
    return re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]", lambda m: repr(m.group())[1:-1], text)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; in a config that is a typo silently
    dropping a setting, so it is an error naming the line of the second one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then overriding a merged key is legitimate
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: the base constructor reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


MAX_CONFIG_BYTES = 1 << 20  # a kernels.yaml or manifest; real ones are a few KiB


def file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def read_regular(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, checked before reading (a
    FIFO would block, /dev/zero would never end), or ConfigError naming the file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise ConfigError(f"{path}: broken symlink ({what})") from None
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: {file_kind(st.st_mode)}, not a {what} file")
    if st.st_size > limit:
        raise ConfigError(f"{path}: {st.st_size} bytes, over the {limit} byte limit for a {what}")
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise ConfigError(f"{path}: over the {limit} byte limit for a {what}")
    return data


def load_yaml(path: Path, what: str = "YAML") -> Any:
    data = read_regular(path, MAX_CONFIG_BYTES, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read: not UTF-8 text ({exc.reason})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except RecursionError:  # PyYAML composes recursively: [[[[... thousands deep
        raise ConfigError(f"{path}: malformed YAML: nested too deeply") from None


def _validate(model: type[M], path: Path, data: Any) -> M:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        # Relative paths in a config (kernel files, BTF) are relative to the file itself.
        return model.model_validate(data, context={"base_dir": str(path.parent.resolve())})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc, data)) from None


def load_kernel_matrix(path: Path) -> KernelMatrix:
    return _validate(KernelMatrix, path, load_yaml(path, "kernel matrix"))


def load_expectations(path: Path) -> Expectations:
    return _validate(Expectations, path, load_yaml(path, "expectations"))


def load_manifest(path: Path) -> Manifest:
    data = load_yaml(path, "manifest")
    if data is None:
        return Manifest()
    return _validate(Manifest, path, data)


def default_kernels_file() -> Path:
    """The default matrix shipped inside the package: in a checkout,
    src/bpfcompat/kernels.yaml is a symlink to the repository root's kernels.yaml, and
    a built wheel holds a copy of it, so both find the same file from any directory."""
    return Path(str(resources.files("bpfcompat").joinpath("kernels.yaml")))
