"""Property-based tests of every host-side parser of untrusted input.

The inputs here come from users (manifests, kernels.yaml), from the artifact under test
(ELF bytes) or from a guest that just ran that artifact as root (validator results). A
parser that raises anything but its own one-line error turns into a host traceback, so
each property is "any input: the documented outcome, never an exception". Examples are
bounded (`max_examples`, `deadline`) so the whole file runs well under a minute.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bpfcompat.errors import ConfigError
from bpfcompat.matrix.classify import (
    CODES,
    REGISTRY,
    cell_fields,
    classify,
    classify_result,
    notes_for,
)
from bpfcompat.matrix.config import KernelMatrix, load_kernel_matrix, load_manifest
from bpfcompat.matrix.manifest import Manifest
from bpfcompat.matrix.plan import elf_problem
from bpfcompat.matrix.result import MAX_DEPTH, ResultModel, ResultProblem, parse_result
from bpfcompat.matrix.store import ValidatorResult
from bpfcompat.matrix.verdict import Verdict
from bpfcompat.validator import args as guest_args
from bpfcompat.validator import elf as guest_elf
from conftest import EXAMPLES, ROOT

RECORDED = ROOT / "tests" / "data" / "recorded"
STATUSES = {"pass", "fail", "error"}
SETTINGS = settings(
    max_examples=150,
    deadline=2000,  # ms per example; the slowest parser here needs a few ms
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # CI must not find a new failure on a rerun of the same commit
)


# --- shared strategies -------------------------------------------------------------------


def _recorded_results() -> list[dict[str, Any]]:
    """Every real validator result recorded from the guests: seeds for mutation."""
    results = []
    for path in sorted(RECORDED.glob("*.json")):
        for cell in json.loads(path.read_text())["cells"]:
            if isinstance(cell.get("result"), dict):
                results.append(cell["result"])
    return results


RESULTS = _recorded_results()


def _keys(node: Any, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            out.add(key)
            _keys(value, out)
    elif isinstance(node, list):
        for value in node:
            _keys(value, out)
    return out


# Keys the classifier looks up, so random dicts reach its deep paths, not just the top.
RESULT_KEYS = sorted(set().union(*(_keys(r, set()) for r in RESULTS)))
# Lines in the shape of the messages the rules match, with hostile payloads.
LOG_LINES = st.sampled_from(
    [
        "libbpf: map 'rb': failed to create: Invalid argument(-22)",
        "map 'x': failed to create: " * 50,
        "program of this type cannot use helper bpf_probe_read#4",
        "unknown func bpf_loop#181",
        "invalid func unknown#195896080",
        "invalid func unknown#-99999999999999999999",
        "invalid func unknown#2002" + "9" * 40,
        "elf: 'x' is not a proper ELF object",
        "prog 'p': BPF program load failed: Permission denied",
        "R1 type=ctx expected=fp\n" * 20,
        "processed 1000001 insns (limit 1000000)",
        "-- BEGIN PROG LOAD LOG --\n0: (b7) r0 = 0\n-- END PROG LOAD LOG --",
        "failed (-95) to create BPF token from '/sys/fs/bpf', skipping optional step",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=-(10**400), max_value=10**400)  # beyond any float
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | LOG_LINES
    | st.sampled_from(["pass", "fail", "warn", "skipped", "load", "open", "elf", "attach"])
)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(RESULT_KEYS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)
RANDOM_RESULTS = st.dictionaries(
    st.sampled_from(RESULT_KEYS) | st.text(max_size=8), JSONISH, max_size=8
)


@st.composite
def mutated_results(draw: st.DrawFn) -> dict[str, Any]:
    """A real recorded result with 1-4 subtrees replaced by arbitrary JSON values: the
    shape a buggy or hostile validator would write, deep enough to reach every rule."""
    return _mutated(draw, draw(st.sampled_from(RESULTS)))


def _recorded_analyses() -> list[dict[str, Any]]:
    """Every static reading the recorded run kept with its cells (floor, findings,
    requirements)."""
    found = []
    for path in sorted(RECORDED.glob("*.json")):
        found += [c["analysis"] for c in json.loads(path.read_text())["cells"] if c.get("analysis")]
    return found


@st.composite
def mutated_analyses(draw: st.DrawFn) -> dict[str, Any]:
    """A recorded static reading with subtrees replaced: a damaged analysis column."""
    return _mutated(draw, draw(st.sampled_from(_recorded_analyses())))


def _mutated(draw: st.DrawFn, original: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 4))):
        node: Any = result
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = draw(st.sampled_from(keys))
            child = node[key]
            if isinstance(child, dict | list) and child and draw(st.booleans()):
                node = child
                continue
            node[key] = draw(JSONISH)
            break
    return result


ANY_RESULT = mutated_results() | RANDOM_RESULTS


@dataclass
class StoredRow:
    """The duck type classify() reads: a stored ValidatorResult row."""

    raw: dict[str, Any] | None
    crash: bool
    signal: int | None
    infra_error: str | None
    console_tail: str | None

    def result(self) -> dict[str, Any] | None:
        return self.raw


def assert_verdict(verdict: Verdict) -> None:
    assert isinstance(verdict, Verdict)
    assert verdict.status in STATUSES, verdict
    assert verdict.code is None or verdict.code in CODES, verdict
    if verdict.status == "pass":
        assert verdict.code is None, verdict
    else:
        assert isinstance(verdict.evidence, str), verdict
        assert verdict.rule in REGISTRY and REGISTRY[verdict.rule].code == verdict.code, verdict


# --- validator-result ingestion ----------------------------------------------------------


@SETTINGS
@given(
    result=ANY_RESULT,
    release=st.text(max_size=12) | st.just("6.1.0-50-cloud-amd64"),
    problem=st.none() | st.text(max_size=40),
)
def test_classify_result_never_raises(
    result: dict[str, Any], release: str, problem: str | None
) -> None:
    assert_verdict(classify_result(result, release, artifact_problem=problem))


@SETTINGS
@given(
    raw=st.none() | ANY_RESULT,
    crash=st.booleans(),
    signal=st.none() | st.integers(min_value=-(2**31), max_value=2**31),
    infra_error=st.none() | st.text(max_size=40),
    console_tail=st.none() | st.text(max_size=80) | st.just("[ 1.0] Kernel panic - not syncing"),
    problem=st.none() | st.text(max_size=40),
)
def test_classify_stored_row_never_raises(
    raw: dict[str, Any] | None,
    crash: bool,
    signal: int | None,
    infra_error: str | None,
    console_tail: str | None,
    problem: str | None,
) -> None:
    row = StoredRow(raw, crash, signal, infra_error, console_tail)
    assert_verdict(classify(row, artifact_problem=problem, release="6.1.0-50-cloud-amd64"))


@SETTINGS
@given(result=mutated_results(), analysis=st.none() | mutated_analyses() | JSONISH)
def test_classify_with_any_static_reading_never_raises(
    result: dict[str, Any], analysis: Any
) -> None:
    """The explanations read the stored static reading: any shape of it still classifies,
    and what the cell stores (needs, pinpoint) is plain data."""
    verdict = classify_result(result, "5.10.0-32-cloud-amd64", analysis=analysis)
    assert_verdict(verdict)
    fields = cell_fields(verdict, result)
    assert fields["needs"] is None or fields["needs"].startswith("needs >= ")
    pin = json.loads(fields["pinpoint_json"] or "null")
    assert pin is None or isinstance(pin, dict)


@SETTINGS
@given(result=ANY_RESULT)
def test_notes_for_never_raises(result: dict[str, Any]) -> None:
    notes = notes_for(result)
    assert isinstance(notes, list) and all(isinstance(n, str) for n in notes)


@SETTINGS
@given(result=st.none() | ANY_RESULT)
def test_cell_fields_never_raise(result: dict[str, Any] | None) -> None:
    """What the runner stores for a cell (verdict, notes, variant and fixup details)."""
    verdict = classify_result(result or {})
    fields = cell_fields(verdict, result)
    assert fields["status"] in STATUSES
    assert isinstance(json.loads(fields["notes_json"]), list)
    details = json.loads(fields["details_json"])
    assert isinstance(details["variants"], list) and isinstance(details["map_fixups"], list)


def test_hostile_logs_are_classified_quickly() -> None:
    """A guest controls every log string; quadratic regex work on a long line would stall
    the host. 256 KiB lines (the validator's own log cap) built from the rules' prefixes."""
    base = next(r for r in RESULTS if (r.get("load") or {}).get("status") == "fail")
    for payload in (
        "map 'm': failed to create: ",
        "invalid func unknown#",
        "prog 'p': ",
        "elf: ",
        "R1=",
        "(" * 8 + "x",
    ):
        hostile = copy.deepcopy(base)
        line = (payload * (256 * 1024 // len(payload) + 1))[: 256 * 1024]
        hostile["load"]["verifier_log"] = line
        hostile["load"]["libbpf_messages"] = [line]
        hostile["logs"]["libbpf_load"] = line
        started = time.monotonic()
        assert_verdict(classify_result(hostile))
        notes_for(hostile)
        assert time.monotonic() - started < 10, f"{payload!r}: {time.monotonic() - started:.1f} s"


# --- validator results as raw text: parse_result, then everything that reads the model ------

JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(RESULT_KEYS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=40,
)


@st.composite
def deep_json(draw: st.DrawFn) -> str:
    """Nesting around and beyond the cap, in lists, objects or both, possibly cut short or
    inside a result's own keys."""
    depth = draw(
        st.integers(0, 3) | st.integers(MAX_DEPTH - 2, MAX_DEPTH + 2) | st.integers(1000, 200_000)
    )
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"b":', "}]")]))
    inner = opener * depth + "0" + closer * (depth if draw(st.booleans()) else depth // 2)
    key = draw(st.sampled_from(["status", "load", "discovery", "warnings", "timings"]))
    return f'{{"{key}": {inner}}}' if draw(st.booleans()) else inner


RAW_RESULTS = (
    st.binary(max_size=300).map(lambda b: b.decode("utf-8", "replace"))
    | st.text(max_size=300)
    | JSON_VALUES.map(json.dumps)
    | ANY_RESULT.map(json.dumps)
    | deep_json()
)


def read_everything(parsed: ResultModel | ResultProblem) -> None:
    """What the host does with a parsed result: classify it, note it, store it, export it."""
    if isinstance(parsed, ResultProblem):
        assert parsed.reason and "\n" not in parsed.reason
        return
    assert_verdict(classify_result(parsed, "6.1.0-50-cloud-amd64", artifact_problem=None))
    verdict = classify_result(parsed)
    assert all(isinstance(n, str) for n in notes_for(parsed))
    fields = cell_fields(verdict, parsed)
    assert isinstance(json.loads(fields["notes_json"]), list)
    assert isinstance(json.loads(fields["details_json"]), dict)
    json.dumps(parsed.as_dict(), allow_nan=False)


@SETTINGS
@given(raw=RAW_RESULTS)
def test_parse_result_never_raises_and_what_it_reads_classifies(raw: str) -> None:
    parsed = parse_result(raw)
    assert isinstance(parsed, ResultModel | ResultProblem)
    read_everything(parsed)
    assert isinstance(parse_result(raw.encode("utf-8", "surrogatepass")), type(parsed))


@SETTINGS
@given(data=st.binary(max_size=600))
def test_parse_result_never_raises_on_bytes(data: bytes) -> None:
    read_everything(parse_result(data))


@SETTINGS
@given(raw=deep_json())
def test_deep_nesting_is_a_problem_not_a_recursion_error(raw: str) -> None:
    parsed = parse_result(raw)
    depth = raw.count("[") + raw.count("{")  # every opener comes before every closer
    too_deep = isinstance(parsed, ResultProblem) and parsed.kind == "too-deep"
    assert too_deep == (depth > MAX_DEPTH), (depth, parsed)
    read_everything(parsed)


@SETTINGS
@given(
    raw=st.none() | RAW_RESULTS,
    crash=st.booleans(),
    signal=st.none() | st.integers(min_value=-(2**31), max_value=2**31),
    infra_error=st.none() | st.text(max_size=40),
    problem=st.none() | st.text(max_size=40),
)
def test_classify_a_real_row_never_raises(
    raw: str | None, crash: bool, signal: int | None, infra_error: str | None, problem: str | None
) -> None:
    row = ValidatorResult(
        cache_key="k", artifact_sha256="", kernel_id="k1", raw_json=raw, crash=crash,
        signal=signal, infra_error=infra_error,
    )  # fmt: skip
    assert_verdict(classify(row, artifact_problem=problem, release="6.1.0-50-cloud-amd64"))


# --- the host ELF pre-check ----------------------------------------------------------------

EXAMPLE_OBJECTS = sorted(p.read_bytes() for p in EXAMPLES.glob("*/*.bpf.o") if p.stat().st_size)


@st.composite
def mutated_objects(draw: st.DrawFn) -> bytes:
    """A real example object, then flipped bits, overwritten header fields or a cut."""
    assume(EXAMPLE_OBJECTS)
    data = bytearray(draw(st.sampled_from(EXAMPLE_OBJECTS)))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data) - 1))
        if pos < 64 and draw(st.booleans()):  # header fields: whole bytes, extreme values
            data[pos] = draw(st.sampled_from([0, 1, 2, 0x7F, 0x80, 0xFF]))
        else:
            data[pos] ^= 1 << draw(st.integers(0, 7))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


ELF_BYTES = (
    st.binary(max_size=200)
    | st.binary(max_size=120).map(lambda b: b"\x7fELF" + b)
    | st.binary(max_size=120).map(lambda b: b"\x7fELF\x02\x01\x01" + b)
    | mutated_objects()
)


@settings(SETTINGS, max_examples=400)
@given(data=ELF_BYTES)
def test_elf_problem_never_raises(data: bytes) -> None:
    problem = elf_problem(data)
    assert problem is None or (isinstance(problem, str) and problem)


# --- the validator's own ELF parser (runs in the guest before libbpf) ----------------------


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bpfcompat-props-") as tmp:
        yield Path(tmp)


@settings(SETTINGS, max_examples=400)
@given(data=ELF_BYTES)
def test_validator_elf_parser_never_raises(scratch: Path, data: bytes) -> None:
    path = scratch / "artifact.bpf.o"
    path.write_bytes(data)
    info = guest_elf.inspect_elf(str(path))
    assert info["size"] == len(data)
    if info["elf_valid"]:
        assert info["elf_error"] is None and isinstance(info["sections"], list)
        assert info["section_count"] == len(info["sections"]) or info["section_count"] > 1024
    else:
        assert isinstance(info["elf_error"], str) and info["elf_error"], info


def test_validator_elf_parser_accepts_every_real_example() -> None:
    for obj in EXAMPLES.glob("*/*.bpf.o"):
        info = guest_elf.inspect_elf(str(obj))
        expected_invalid = elf_problem(obj.read_bytes()) is not None
        assert info["elf_valid"] is not expected_invalid, (obj.name, info["elf_error"])


# --- manifests and kernels.yaml ------------------------------------------------------------

MANIFEST_KEYS = sorted(
    set(Manifest.model_fields)
    | {
        "name",
        "max_entries",
        "inner_ringbuf_bytes",
        "group",
        "programs",
        "requires_helper",
        "command",
        "timeout",
        "required",
        "expect_exit_code",
        "attach",
        "bogus",
    }
)
KERNEL_KEYS = sorted(
    set(KernelMatrix.model_fields)
    | {
        "id",
        "suite",
        "package",
        "required",
        "memory_mb",
        "cpus",
        "cmdline",
        "boot_timeout_s",
        "description",
        "colour",
        "arch",
        "source",
        "build",
        "btf",
        "deb",
        "rpm",
        "vmlinuz",
        "modules",
        "sha256",
        "base",
        "config",
    }
)
YAML_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "cpus",
            "5s",
            "500ms",
            "-1s",
            "1e9",
            "linux-image-6.1.0-50-cloud-amd64",
            "debian-12-6.1",
            "bookworm",
            "bpf_loop",
            "sh -c 'id; $(touch x)'",
            "aarch64",
            "build",
            "apt",
            "file:///etc/passwd",
            "https://host/k.rpm",
            "CONFIG_BPF=y",
        ]
    )
)


def yaml_docs(keys: list[str]) -> st.SearchStrategy[Any]:
    """Arbitrary YAML-able trees whose keys are mostly the schema's own."""
    return st.recursive(
        YAML_SCALARS,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=20,
    )


def write_doc(scratch: Path, name: str, doc: Any) -> Path:
    path = scratch / name
    if isinstance(doc, str):
        path.write_text(doc, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_text(
            yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8", errors="surrogatepass"
        )
    return path


def outcome(loader: Callable[[Path], Any], path: Path) -> Any:
    """The loaded model, or None after checking the ConfigError is one line naming the file."""
    try:
        return loader(path)
    except ConfigError as exc:
        message = str(exc)
        assert len(message.splitlines()) == 1, message
        assert message.startswith(f"{path}: "), message
        return None


YAML_TEXT = st.text(
    alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"# \n\t\\,.0123456789%@`")), max_size=80
) | st.text(max_size=60)


@SETTINGS
@given(
    doc=YAML_TEXT
    | yaml_docs(MANIFEST_KEYS)
    | st.fixed_dictionaries(
        {}, optional={k: yaml_docs(MANIFEST_KEYS) for k in Manifest.model_fields}
    )
)
def test_manifest_parser_only_raises_config_errors(scratch: Path, doc: Any) -> None:
    loaded = outcome(load_manifest, write_doc(scratch, "manifest.yaml", doc))
    assert loaded is None or isinstance(loaded, Manifest)
    if loaded is not None:  # what the host derives from a manifest must not raise either
        loaded.validator_args()
        json.dumps(loaded.functional_plan())
        json.dumps(loaded.validator_manifest())


@SETTINGS
@given(
    doc=YAML_TEXT
    | yaml_docs(KERNEL_KEYS)
    | st.fixed_dictionaries(
        {"kernels": st.lists(yaml_docs(KERNEL_KEYS), max_size=3)},
        optional={"guest_suite": YAML_SCALARS},
    )
)
def test_kernel_matrix_parser_only_raises_config_errors(scratch: Path, doc: Any) -> None:
    loaded = outcome(load_kernel_matrix, write_doc(scratch, "kernels.yaml", doc))
    assert loaded is None or isinstance(loaded, KernelMatrix)


# --- hostile configuration, case by case ---------------------------------------------------

KERNEL = (
    "  - id: k1\n    suite: trixie\n    package: linux-image-6.12.117+deb13-cloud-amd64-unsigned\n"
)

HOSTILE_MANIFESTS = {
    "malformed": ("functional_tests: [\n", "malformed YAML at line"),
    "tab indent": ("maps:\n\t- name: x\n", "malformed YAML"),
    "deep nesting": ("[" * 5000 + "]" * 5000, "nested too deeply"),
    "deep mapping": ("metadata: " + "{a: " * 3000 + "1" + "}" * 3000, "nested too deeply"),
    "not a mapping": ("- a\n- b\n", "expected a mapping at the top level"),
    "unknown key": ("colour: red\n", "colour: Extra inputs"),
    "unknown nested key": ("maps:\n  - name: m\n    max_entries: 4\n    typo: 1\n", "typo"),
    "newline in a key": ('"a\\nb": 1\n', "a\\nb"),
    "escape in a key": ('"red\\e": 1\n', "red\\x1b"),
    "wrong type": ("maps: 7\n", "maps:"),
    "max_entries 2**40": (f"maps:\n  - name: m\n    max_entries: {2**40}\n", "max_entries"),
    "max_entries 0": ("maps:\n  - name: m\n    max_entries: 0\n", "max_entries"),
    "max_entries bool": ("maps:\n  - name: m\n    max_entries: true\n", "max_entries"),
    "ringbuf not power of two": (
        "maps:\n  - name: m\n    inner_ringbuf_bytes: 5000\n",
        "power of two",
    ),
    "negative timeout": (
        "functional_tests:\n  - name: t\n    command: id\n    timeout: -5s\n",
        "timeout",
    ),
    "huge timeout": (
        "functional_tests:\n  - name: t\n    command: id\n    timeout: 1e9\n",
        "timeout",
    ),
    "nan timeout": (
        "functional_tests:\n  - name: t\n    command: id\n    timeout: .nan\n",
        "timeout",
    ),
    "helper id out of range": (
        "program_variants:\n  - group: g\n    programs:\n"
        "      - name: p\n        requires_helper: 5000\n",
        "requires_helper",
    ),
    "negative helper id": (
        "program_variants:\n  - group: g\n    programs:\n"
        "      - name: p\n        requires_helper: -1\n",
        "requires_helper",
    ),
    "unknown helper name": (
        "program_variants:\n  - group: g\n    programs:\n"
        "      - name: p\n        requires_helper: bpf_nope\n",
        "bpf_nope",
    ),
    "exit code 256": (
        "functional_tests:\n  - name: t\n    command: id\n    expect_exit_code: 256\n",
        "expect_exit_code",
    ),
    "empty command": ("functional_tests:\n  - name: t\n    command: ''\n", "command"),
    "binary junk": ("\x00\x01\x02\ufffe", ""),
}


def assert_one_config_error(load: Callable[[Path], object], path: Path, expected: str) -> None:
    """`load(path)` fails with one line that names the file and contains `expected`."""
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{path}: "), message
    assert expected in message, message


@pytest.mark.parametrize("case", sorted(HOSTILE_MANIFESTS))
def test_hostile_manifest_is_one_config_error(scratch: Path, case: str) -> None:
    text, expected = HOSTILE_MANIFESTS[case]
    assert_one_config_error(load_manifest, write_doc(scratch, "manifest.yaml", text), expected)


def test_billion_laughs_manifest_is_rejected_fast(scratch: Path) -> None:
    """YAML aliases nest 9**7 references; the loader must not expand them into memory."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdef", "bcdefg", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    lines.append("metadata: *g")
    path = write_doc(scratch, "manifest.yaml", "\n".join(lines) + "\n")
    started = time.monotonic()
    with pytest.raises(ConfigError):
        load_manifest(path)
    assert time.monotonic() - started < 5


HOSTILE_KERNELS = {
    "duplicate ids": ("kernels:\n" + KERNEL + KERNEL, "duplicate kernel id 'k1'"),
    "negative boot timeout": ("kernels:\n" + KERNEL + "    boot_timeout_s: -1\n", "boot_timeout_s"),
    "zero cpus": ("kernels:\n" + KERNEL + "    cpus: 0\n", "cpus"),
    "memory 2**40": ("kernels:\n" + KERNEL + f"    memory_mb: {2**40}\n", "memory_mb"),
    "quote in cmdline": ("kernels:\n" + KERNEL + "    cmdline: init=/bin/sh'\n", "quotes"),
    "newline in cmdline": ("kernels:\n" + KERNEL + '    cmdline: "a\\nb"\n', "cmdline"),
    "package with a shell": (
        "kernels:\n  - id: k1\n    suite: trixie\n    package: 'x;rm -rf /'\n",
        "package",
    ),
    "unknown key": ("kernels:\n" + KERNEL + "    colour: red\n", "colour"),
    "kernels not a list": ("kernels: {id: k1}\n", "kernels"),
    "deep nesting": ("kernels: " + "[" * 5000 + "]" * 5000, "nested too deeply"),
    "newline in an id": (
        'kernels:\n  - id: "a\\nb"\n    suite: trixie\n    package: p1\n',
        "(a\\nb)",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_KERNELS))
def test_hostile_kernel_matrix_is_one_config_error(scratch: Path, case: str) -> None:
    text, expected = HOSTILE_KERNELS[case]
    assert_one_config_error(load_kernel_matrix, write_doc(scratch, "kernels.yaml", text), expected)


@pytest.mark.parametrize(
    "command",
    [
        "sh -c 'touch /tmp/pwned; id'",
        "echo $(id) `id` && rm -rf / ; reboot | cat > /dev/null",
        "python3 -c 'import os; os.system(\"id\")'",
    ],
)
def test_functional_commands_with_shell_metacharacters_are_accepted(
    scratch: Path, command: str
) -> None:
    """They run inside the guest by design (as argv, without a shell unless they name
    one); the host only carries them there as JSON. That the host never runs them is
    checked by the AST scan in test_isolation.py (no shell=True, os.system, os.popen)."""
    doc = {"functional_tests": [{"name": "t", "command": command}]}
    manifest = load_manifest(write_doc(scratch, "manifest.yaml", doc))
    plan = manifest.functional_plan()
    assert plan is not None and plan["tests"][0]["command"] == command
    assert guest_args.parse_functional_plan(json.loads(json.dumps(plan)))[0]["command"] == (command)


def test_no_config_text_reaches_a_message_unescaped() -> None:
    """The one-line rule holds for the id shown in parentheses too (it is file text)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernels.yaml"
        path.write_text('kernels:\n  - id: "x\\u2028y"\n    suite: trixie\n    package: p\n')
        with pytest.raises(ConfigError) as info:
            load_kernel_matrix(path)
        assert len(str(info.value).splitlines()) == 1
        assert re.search(r"\\u2028", str(info.value))
