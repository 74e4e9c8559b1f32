"""Per-artifact manifest models: what a loader does between open and load (fixups,
variants, rodata, functional tests) and what the user expects of each program.

Strict like the kernel matrix: an unknown key or bad value is an error naming the key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

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
from bpfcompat.vm.spec import Strict


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
