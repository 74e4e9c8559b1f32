"""The validator's command line and the JSON files it names (--manifest, --functional-plan).

Every check here mirrors a host-side one (the manifest models import the same limits from
``limits``), so a manifest the host accepts is never refused by this parser.
"""

from __future__ import annotations

import argparse
import json
import os

from .limits import (
    FUNCTIONAL_TIMEOUT_DEFAULT,
    FUNCTIONAL_TIMEOUT_MAX,
    MAX_MAP_ENTRIES,
    MAX_MAP_VALUE_BYTES,
    MAX_TEST_RETRIES,
    command_problem,
    name_problem,
)
from .result import VALIDATOR_VERSION
from .tables import (
    ATTACH_TYPE_NAMES,
    PROG_TYPE_NAMES,
    helper_id_from_name,
    helper_name_from_id,
    type_id,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any

PROG = "bpfcompat-validator"

ATTACH_MODES = ("disabled", "best-effort", "required")


class UsageError(Exception):
    """A bad command line or input file: one line on stderr, exit 1, no result written."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() prints exactly one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {value!r} (use true/false/1/0/yes/no)")


def _split_assignment(value: str, what: str) -> tuple[str, str]:
    name, sep, rhs = value.partition("=")
    name, rhs = name.strip(), rhs.strip()
    if not sep or not name or not rhs:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: expected {what}")
    _check_name(value, name)
    return name, rhs


def _check_name(value: str, name: str) -> None:
    problem = name_problem(name)
    if problem:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: name {name!r} {problem}")


def _positive_int(text: str, limit: int) -> int | None:
    if not text.isdigit():
        return None
    number = int(text)
    return number if 0 < number <= limit else None


def parse_map_max_entries(value: str) -> tuple[str, str]:
    """``<map>=<n|cpus>``; the raw right-hand side is kept (the result reports it)."""
    name, rhs = _split_assignment(value, "<map>=<n|cpus>")
    if rhs.lower() == "cpus":
        return name, "cpus"
    if _positive_int(rhs, MAX_MAP_ENTRIES) is None:
        raise argparse.ArgumentTypeError(
            f"invalid value {value!r}: max entries must be 'cpus' or an integer 1..4294967295"
        )
    return name, str(int(rhs))


def parse_inner_ringbuf(value: str) -> tuple[str, int]:
    """``<map>=<bytes>``: the size of the BPF_MAP_TYPE_RINGBUF inner-map prototype."""
    name, rhs = _split_assignment(value, "<map>=<bytes>")
    size = _positive_int(rhs, 0xFFFFFFFF)
    if size is None:
        raise argparse.ArgumentTypeError(
            f"invalid value {value!r}: bytes must be an integer 1..4294967295"
        )
    return name, size


def parse_map_size(value: str) -> tuple[str, int]:
    """``<map>=<bytes>`` for a map's value or key size."""
    name, rhs = _split_assignment(value, "<map>=<bytes>")
    size = _positive_int(rhs, MAX_MAP_VALUE_BYTES)
    if size is None:
        raise argparse.ArgumentTypeError(
            f"invalid value {value!r}: size must be an integer 1..{MAX_MAP_VALUE_BYTES}"
        )
    return name, size


def parse_attach_target(value: str) -> tuple[str, str]:
    """``<prog>=<function>``: the kernel function a tracing program attaches to."""
    name, rhs = _split_assignment(value, "<prog>=<function>")
    _check_name(value, rhs)
    return name, rhs


def parse_attach_program(value: str) -> tuple[str, dict[str, str]]:
    """``<prog>=<object path>:<program>``: the loaded BPF program an extension (freplace)
    program replaces a function of; the function is --set-prog-attach-target's."""
    name, rhs = _split_assignment(value, "<prog>=<object path>:<program>")
    path, sep, target = rhs.rpartition(":")
    if not sep or not path or not target:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: expected <path>:<program>")
    _check_name(value, target)
    return name, {"object": path, "program": target}


def parse_autoload(value: str) -> tuple[str, bool]:
    name, rhs = _split_assignment(value, "<prog>=<true|false>")
    return name, parse_bool(rhs)


def parse_prog_type(value: str) -> tuple[str, dict[str, Any]]:
    """``<prog>=<type>[/<expected attach type>]``: what a loader sets for a section libbpf
    cannot type (``socket/x``, ``classifier``), by libbpf's names or the kernel's."""
    name, rhs = _split_assignment(value, "<prog>=<type>[/<attach type>]")
    type_name, _, attach_name = rhs.partition("/")
    type_num = type_id(PROG_TYPE_NAMES, type_name)
    if type_num is None:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: unknown program type")
    attach_num = type_id(ATTACH_TYPE_NAMES, attach_name) if attach_name else None
    if attach_name and attach_num is None:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: unknown attach type")
    return name, {
        "type": PROG_TYPE_NAMES[type_num],
        "type_id": type_num,
        "expected_attach_type": ATTACH_TYPE_NAMES[attach_num] if attach_num is not None else None,
        "expected_attach_type_id": attach_num,
    }


def parse_global(value: str) -> tuple[str, Any]:
    """``<name>=<JSON value>``: a global variable a loader sets before load."""
    name, rhs = _split_assignment(value, "<name>=<JSON value>")
    try:
        parsed = json.loads(rhs)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: not a JSON value") from None
    if isinstance(parsed, (dict, float)) or parsed is None:
        raise argparse.ArgumentTypeError(
            f"invalid value {value!r}: a number, boolean, string or list of them"
        )
    return name, parsed


def resolve_helper(token: str) -> tuple[str | None, int]:
    """A variant's helper: decimal id or known name; 0 means unconditional."""
    token = token.strip()
    if token.isdigit():
        helper_id = int(token)
        if helper_id >= 1 << 31:
            raise ValueError(f"helper id {token} out of range")
        return (helper_name_from_id(helper_id) if helper_id else None), helper_id
    helper_id = helper_id_from_name(token)
    if helper_id is None:
        raise ValueError(f"unknown helper {token!r}")
    return helper_name_from_id(helper_id), helper_id


def parse_prog_variants(value: str) -> dict[str, Any]:
    """``<group>=<prog>:<helper>,...``; an entry without a helper (or ``:0``) is the fallback."""
    group, rhs = _split_assignment(value, "<group>=<prog>[:<helper>],...")
    variants: list[dict[str, Any]] = []
    seen: set[str] = set()
    for raw in rhs.split(","):
        prog, _, helper = raw.strip().partition(":")
        prog = prog.strip()
        if not prog:
            raise argparse.ArgumentTypeError(f"invalid value {value!r}: empty program name")
        _check_name(value, prog)
        if prog in seen:
            raise argparse.ArgumentTypeError(
                f"invalid value {value!r}: program {prog!r} listed twice"
            )
        seen.add(prog)
        try:
            name, helper_id = resolve_helper(helper) if helper.strip() else (None, 0)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid value {value!r}: {exc}") from None
        variants.append({"program": prog, "helper": name, "helper_id": helper_id})
    return {"group": group, "variants": variants, "raw": value}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Open, probe, load, attach and exercise one compiled BPF object on the "
        "running kernel and write a validator.v0.4 JSON result.",
        epilog="Exit status: 0 pass, 2 fail, 1 usage/output/internal error.",
    )
    parser.add_argument("--artifact", required=True, metavar="PATH", help="the .bpf.o to validate")
    parser.add_argument(
        "--out", required=True, metavar="PATH", help="where to write the result JSON"
    )
    parser.add_argument(
        "--manifest", metavar="PATH", help="JSON manifest (programs[].attach.required)"
    )
    parser.add_argument("--functional-plan", metavar="PATH", help="JSON plan of functional tests")
    parser.add_argument(
        "--log-dir", metavar="DIR", help="directory for libbpf.log and verifier logs"
    )
    parser.add_argument(
        "--attach-mode",
        choices=ATTACH_MODES,
        default="best-effort",
        help="disabled: no attach; best-effort: failures warn; required: failures fail",
    )
    parser.add_argument(
        "--probe-features",
        type=parse_bool,
        default=True,
        metavar="<bool>",
        help="run capability probes and isolated per-program load probes (default true)",
    )
    parser.add_argument(
        "--set-map-max-entries",
        type=parse_map_max_entries,
        action="append",
        default=[],
        metavar="<map>=<n|cpus>",
        help="size a map before load (repeatable)",
    )
    parser.add_argument(
        "--set-map-inner-ringbuf",
        type=parse_inner_ringbuf,
        action="append",
        default=[],
        metavar="<map>=<bytes>",
        help="install a RINGBUF of <bytes> as a map-in-map's inner map (repeatable)",
    )
    parser.add_argument(
        "--prog-variants",
        type=parse_prog_variants,
        action="append",
        default=[],
        metavar="<group>=<prog>:<helper_id>,...",
        help="keep the first program whose helper the kernel supports (repeatable)",
    )
    for flag, kind, meta, what in (
        ("--set-map-value-size", parse_map_size, "<map>=<bytes>", "set a map's value size"),
        ("--set-map-key-size", parse_map_size, "<map>=<bytes>", "set a map's key size"),
        ("--set-prog-attach-target", parse_attach_target, "<prog>=<function>",
         "set a tracing program's attach target (bpf_program__set_attach_target)"),
        ("--set-prog-attach-program", parse_attach_program, "<prog>=<object path>:<program>",
         "load <object path> first and attach an extension program to its <program>"),
        ("--set-prog-autoload", parse_autoload, "<prog>=<bool>", "load a program or not"),
        ("--set-prog-type", parse_prog_type, "<prog>=<type>[/<attach type>]",
         "set a program's type (and expected attach type)"),
        ("--set-global", parse_global, "<name>=<JSON value>",
         "set a global variable (.rodata/.data/.bss) before load"),
    ):  # fmt: skip
        parser.add_argument(
            flag, type=kind, action="append", default=[], metavar=meta, help=what + " (repeatable)"
        )
    parser.add_argument(
        "--no-auto-fixups",
        action="store_true",
        help="do not size maps compiled with max_entries/value_size 0 (the loader's job)",
    )
    parser.add_argument(
        "--btf-custom-path",
        metavar="PATH",
        help="BTF file for CO-RE relocations instead of the kernel's own "
        "(libbpf bpf_object_open_opts.btf_custom_path)",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {VALIDATOR_VERSION}")
    return parser


def load_manifest(path: str) -> list[dict[str, Any]]:
    """The manifest's ``programs`` list; other manifest keys are the host's business."""
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read())
    except OSError as exc:
        raise UsageError(f"--manifest {path!r}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"--manifest {path!r}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--manifest {path!r}: top level must be an object")
    programs = data.get("programs") or []
    if not isinstance(programs, list):
        raise UsageError(f"--manifest {path!r}: programs must be a list")
    result: list[dict[str, Any]] = []
    for index, entry in enumerate(programs):
        where = f"--manifest {path!r}: programs[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UsageError(f"{where}: needs a string name")
        attach = entry.get("attach") or {}
        required = attach.get("required", False) if isinstance(attach, dict) else None
        if not isinstance(required, bool):
            raise UsageError(f"{where}: attach.required must be a boolean")
        result.append({"name": entry["name"], "attach_required": required})
    return result


_PLAN_TEST_KEYS = {
    "name": (str,),
    "command": (str,),
    "required": (bool,),
    "timeout_seconds": (int, float),
    "expect_exit_code": (int,),
    "expect_stdout_contains": (str, type(None)),
    "expect_stderr_contains": (str, type(None)),
    "retries": (int,),
}


def parse_functional_plan(data: object) -> list[dict[str, Any]]:
    """Strictly check a plan: unknown keys or wrong types are errors (ValueError)."""
    if not isinstance(data, dict):
        raise ValueError("plan must be a JSON object")
    unknown = sorted(set(data) - {"tests"})
    if unknown:
        raise ValueError(f"unknown top-level key(s): {', '.join(unknown)}")
    tests = data.get("tests")
    if not isinstance(tests, list):
        raise ValueError("'tests' must be a list")
    parsed: list[dict[str, Any]] = []
    names: set[str] = set()
    for index, test in enumerate(tests):
        where = f"tests[{index}]"
        if not isinstance(test, dict):
            raise ValueError(f"{where} must be an object")
        for key, value in test.items():
            if key not in _PLAN_TEST_KEYS:
                raise ValueError(f"{where}: unknown key {key!r}")
            allowed = _PLAN_TEST_KEYS[key]
            if isinstance(value, bool) and bool not in allowed:
                raise ValueError(f"{where}.{key}: wrong type bool")
            if not isinstance(value, allowed):
                raise ValueError(f"{where}.{key}: wrong type {type(value).__name__}")
        for key in ("name", "command"):
            if not test.get(key, "").strip():
                raise ValueError(f"{where}: {key} is required and must be non-empty")
        problem = command_problem(test["command"])
        if problem:
            raise ValueError(f"{where}.command: {problem}")
        retries = test.get("retries", 0)
        if not 0 <= retries <= MAX_TEST_RETRIES:
            raise ValueError(f"{where}.retries: must be in [0, {MAX_TEST_RETRIES}]")
        timeout = float(test.get("timeout_seconds", FUNCTIONAL_TIMEOUT_DEFAULT))
        if not 0 < timeout <= FUNCTIONAL_TIMEOUT_MAX:
            raise ValueError(f"{where}.timeout_seconds: must be in (0, {FUNCTIONAL_TIMEOUT_MAX:g}]")
        if test["name"] in names:
            raise ValueError(f"{where}: duplicate test name {test['name']!r}")
        names.add(test["name"])
        parsed.append(
            {
                "name": test["name"],
                "command": test["command"],
                "required": test.get("required", True),
                "timeout_seconds": timeout,
                "expect_exit_code": test.get("expect_exit_code", 0),
                "expect_stdout_contains": test.get("expect_stdout_contains"),
                "expect_stderr_contains": test.get("expect_stderr_contains"),
                "retries": retries,
            }
        )
    return parsed


def load_functional_plan(path: str) -> tuple[list[dict[str, Any]], str | None]:
    """(tests, None) or ([], error): a bad plan becomes a failing test, not a usage error."""
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read())
        return parse_functional_plan(data), None
    except OSError as exc:
        return [], f"cannot read functional plan {path!r}: {exc.strerror}"
    except ValueError as exc:
        return [], f"invalid functional plan {path!r}: {exc}"


class Config:
    """The validated command line."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.artifact: str = args.artifact
        self.out: str = args.out
        self.manifest_path: str | None = args.manifest
        self.plan_path: str | None = args.functional_plan
        self.log_dir: str | None = args.log_dir
        self.attach_mode: str = args.attach_mode
        self.probe_features: bool = args.probe_features
        self.btf_custom_path: str | None = args.btf_custom_path
        self.manifest_programs: list[dict[str, Any]] = []
        # map name -> fixup request, in first-mention order
        self.fixups: dict[str, dict[str, Any]] = {}
        self.variant_groups: list[dict[str, Any]] = args.prog_variants
        self.raw_max_entries = [f"{n}={v}" for n, v in args.set_map_max_entries]
        self.raw_inner_ringbuf = [f"{n}={v}" for n, v in args.set_map_inner_ringbuf]
        for name, requested in args.set_map_max_entries:
            entry = self.fixups.setdefault(name, {"requested": None, "inner": None})
            if entry["requested"] is not None:
                raise UsageError(f"argument --set-map-max-entries: map {name!r} given twice")
            entry["requested"] = requested
        for name, size in args.set_map_inner_ringbuf:
            entry = self.fixups.setdefault(name, {"requested": None, "inner": None})
            if entry["inner"] is not None:
                raise UsageError(f"argument --set-map-inner-ringbuf: map {name!r} given twice")
            entry["inner"] = size
        for flag, key, pairs in (
            ("--set-map-value-size", "value_size", args.set_map_value_size),
            ("--set-map-key-size", "key_size", args.set_map_key_size),
        ):
            for name, size in pairs:
                entry = self.fixups.setdefault(name, {"requested": None, "inner": None})
                if entry.get(key) is not None:
                    raise UsageError(f"argument {flag}: map {name!r} given twice")
                entry[key] = size
        # program name -> what the loader sets on it, in first-mention order
        self.programs: dict[str, dict[str, Any]] = {}
        for flag, key, pairs in (
            ("--set-prog-attach-target", "attach_target", args.set_prog_attach_target),
            ("--set-prog-attach-program", "attach_program", args.set_prog_attach_program),
            ("--set-prog-autoload", "autoload", args.set_prog_autoload),
            ("--set-prog-type", "type", args.set_prog_type),
        ):
            for name, value in pairs:
                entry = self.programs.setdefault(name, {})
                if key in entry:
                    raise UsageError(f"argument {flag}: program {name!r} given twice")
                entry[key] = value
        self.auto_fixups: bool = not args.no_auto_fixups
        self.globals: dict[str, Any] = {}
        for name, value in args.set_global:
            if name in self.globals:
                raise UsageError(f"argument --set-global: {name!r} given twice")
            self.globals[name] = value
        groups = [g["group"] for g in self.variant_groups]
        for group in groups:
            if groups.count(group) > 1:
                raise UsageError(f"argument --prog-variants: group {group!r} given twice")


def parse_args(argv: list[str] | None) -> Config:
    """Parse and check the command line; UsageError for anything the run cannot start with."""
    args = build_parser().parse_args(argv)
    config = Config(args)
    if not os.path.isfile(config.artifact):
        raise UsageError(f"--artifact {config.artifact!r}: no such file")
    out_dir = os.path.dirname(os.path.abspath(config.out))
    if not os.path.isdir(out_dir):
        raise UsageError(f"--out {config.out!r}: directory {out_dir!r} does not exist")
    if config.log_dir:
        try:
            os.makedirs(config.log_dir, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--log-dir {config.log_dir!r}: {exc.strerror}") from None
    if config.btf_custom_path is not None and not os.path.isfile(config.btf_custom_path):
        raise UsageError(f"--btf-custom-path {config.btf_custom_path!r}: no such file")
    if config.manifest_path:
        config.manifest_programs = load_manifest(config.manifest_path)
    return config
