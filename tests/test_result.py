"""The typed model of a validator result, read once at ingestion (bpfcompat.matrix.result).

Real results recorded from the guests must read back unchanged; hostile ones (a guest
that ran the artifact as root wrote them) must read as bounded, typed data or as one
named problem, never as an exception. Property tests of the same live in test_properties.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bpfcompat.matrix.classify import cell_fields, classify, classify_result
from bpfcompat.matrix.result import (
    MAX_DEPTH,
    MAX_FIELD_CHARS,
    MAX_ITEMS,
    MAX_RESULT_BYTES,
    MAX_TEXT_CHARS,
    ResultModel,
    ResultProblem,
    parse_result,
)
from bpfcompat.matrix.store import ValidatorResult
from bpfcompat.validator.result import SCHEMA_VERSION, skeleton

RECORDED = Path(__file__).resolve().parent / "data" / "recorded"


def recorded_results() -> list[dict[str, Any]]:
    return [
        c["result"]
        for path in sorted(RECORDED.glob("*.json"))
        for c in json.loads(path.read_text())["cells"]
        if c["result"] is not None
    ]


def model(data: Any) -> ResultModel:
    parsed = parse_result(json.dumps(data))
    assert isinstance(parsed, ResultModel), parsed
    return parsed


def problem(raw: bytes | str) -> ResultProblem:
    parsed = parse_result(raw)
    assert isinstance(parsed, ResultProblem), parsed
    return parsed


_ABSENT = object()


def missing(raw: Any, read: Any, path: str = "") -> list[str]:
    """Paths of `raw` whose value `read` does not hold (lists compared entry by entry)."""
    if isinstance(raw, dict):
        if not isinstance(read, dict):
            return [path]
        return [p for k, v in raw.items() for p in missing(v, read.get(k, _ABSENT), f"{path}.{k}")]
    if isinstance(raw, list):
        if not isinstance(read, list) or len(read) != len(raw):
            return [path]
        pairs = enumerate(zip(raw, read, strict=True))
        return [p for i, (a, b) in pairs for p in missing(a, b, f"{path}[{i}]")]
    return [] if raw == read and type(raw) is type(read) else [path]


def test_every_recorded_result_reads_back_unchanged() -> None:
    results = recorded_results()
    assert len(results) > 50
    for raw in results:
        data = model(raw).as_dict()
        assert missing(raw, data) == [], missing(raw, data)[:5]
        json.dumps(data, allow_nan=False)


def test_recorded_verifier_statistics_read_back_typed() -> None:
    """Every program the recorded whole-object loads loaded carries the verifier's summary;
    the host reads it as numbers, with what a kernel did not print as None."""
    seen = 0
    for raw in recorded_results():
        m = model(raw)
        for prog, entry in zip(m.discovery.programs, raw["discovery"]["programs"], strict=True):
            stats = entry.get("verifier_stats")
            if stats is None:
                assert prog.verifier_stats is None
                continue
            seen += 1
            assert prog.verifier_stats is not None
            assert prog.verifier_stats.insns_processed == stats["insns_processed"]
            assert stats["insns_processed"] > 0 or entry["load_status"] == "fail"
            assert prog.verifier_stats.stack_depth == (
                tuple(stats["stack_depth"]) if stats["stack_depth"] is not None else None
            )
    assert seen > 50
    bad = {"discovery": {"programs": [{"name": "p", "verifier_stats": {
        "insns_processed": "9", "stack_depth": [1, "x", 2], "verify_usec": 2**70}}]}}  # fmt: skip
    stats = model(bad).discovery.programs[0].verifier_stats
    assert stats is not None
    assert (stats.insns_processed, stats.stack_depth, stats.verify_usec) == (None, (1, 2), None)


def test_the_model_has_every_key_of_the_validators_skeleton() -> None:
    config = SimpleNamespace(
        artifact="/tmp/a.bpf.o", manifest_path=None, plan_path=None, attach_mode="best-effort",
        probe_features=True, log_dir="/tmp", raw_max_entries=["m=4"], raw_inner_ringbuf=[],
        variant_groups=[{"raw": "g=p1:bpf_loop,p2"}], btf_custom_path="/tmp/vmlinux.btf",
    )  # fmt: skip
    written = skeleton(config, {"total": 1.5}, [{"step": "load", "message": "x"}], [])
    assert written["schema_version"] == SCHEMA_VERSION
    assert missing(written, model(written).as_dict()) == []


def test_a_field_of_the_wrong_type_reads_as_its_default() -> None:
    m = model({
        "warnings": 5, "errors": "boom", "status": ["pass"],
        "load": {"libbpf_messages": "one message", "error_code": "22", "verifier_log": 7,
                 "status": "fail"},
        "discovery": {"programs": [1, "p", None, {"name": "real", "attach_errno": True}]},
        "btf": {"kernel_btf_available": "yes"},
        "capabilities": {"map_types": {"ringbuf": "true", "hash": True}, "helpers": 3},
        "functional": [],
    })  # fmt: skip
    assert m.warnings == () and m.errors == () and m.status is None
    assert m.load.libbpf_messages == () and m.load.error_code == 0 and m.load.verifier_log == ""
    assert m.load.status == "fail"  # the sound fields of a part are kept
    assert [p.name for p in m.discovery.programs] == ["real"]
    assert m.discovery.programs[0].attach_errno == 0  # a bool is not an errno
    assert m.btf.kernel_btf_available is None
    assert m.capabilities.map_types == {"hash": True} and m.capabilities.helpers == {}
    assert m.functional.tests == ()


HOSTILE_VALUES = (None, True, -1, 10**400, -(10**400), 2**64, 1.5, "x" * 300, [], [1, "a"], {})


# Objects keyed by data (program types, helper names, steps), not by the schema.
DATA_KEYED = {("timings",), ("capabilities", "map_types"), ("capabilities", "program_types"),
              ("capabilities", "helpers"), ("capabilities", "helper_program_types"),
              ("capabilities", "probe_errors")}  # fmt: skip


def leaf_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path of the schema in `node` (each list, and each object keyed by data, by
    its first entry only)."""
    if isinstance(node, dict):
        items = list(node.items())[:1] if path in DATA_KEYED else node.items()
        return [path] + [p for k, v in items for p in leaf_paths(v, (*path, k))]
    if isinstance(node, list) and node:
        return [path, *leaf_paths(node[0], (*path, 0))]
    return [path]


def test_every_field_of_every_type_reads_without_raising() -> None:
    """Each field of a real result replaced by each hostile JSON value: a typed model (or
    the default in its place) that the classifier, notes and exports all take."""
    results = recorded_results()
    bases = [
        next(r for r in results if predicate(r))
        for predicate in (
            lambda r: r["program_variants"],
            lambda r: r["map_fixups"],
            lambda r: r["load"]["status"] == "fail" and r["errors"] == [],
            lambda r: r["functional"]["tests"],
            lambda r: r["attach"]["status"] == "warn",
            lambda r: any(p["helpers"] for p in r["discovery"]["programs"]),
        )
    ]
    seen = set()
    for original in bases:
        paths = [p for p in leaf_paths(original)[1:] if tuple(map(str, p)) not in seen]
        seen.update(tuple(map(str, p)) for p in paths)
        for path in paths:
            for value in HOSTILE_VALUES:
                doc = json.loads(json.dumps(original))
                node = doc
                for key in path[:-1]:
                    node = node[key]
                node[path[-1]] = value
                m = model(doc)
                json.dumps(m.as_dict(), allow_nan=False)
                verdict = classify_result(m)
                assert verdict.status in ("pass", "fail", "error"), (path, value)
                cell_fields(verdict, m)


def test_non_finite_numbers_are_dropped() -> None:
    raw = '{"timings": {"load": NaN, "open": Infinity, "attach": -Infinity, "total": 1.5},'
    raw += ' "discovery": {"programs": [{"name": "p", "load_seconds": NaN}]}}'
    m = parse_result(raw)
    assert isinstance(m, ResultModel)
    assert m.timings == {"total": 1.5}
    assert m.discovery.programs[0].load_seconds is None
    json.dumps(m.as_dict(), allow_nan=False)


def test_strings_and_lists_are_bounded() -> None:
    log = "x" * (MAX_TEXT_CHARS + 10) + "\nthe reason"
    m = model({
        "load": {"verifier_log": log, "libbpf_messages": ["m"] * (MAX_ITEMS + 5),
                 "failed_program": "p" * (MAX_FIELD_CHARS * 3)},
    })  # fmt: skip
    assert len(m.load.verifier_log) == MAX_TEXT_CHARS
    assert m.load.verifier_log.endswith("the reason")  # logs keep their tail
    assert len(m.load.libbpf_messages) == MAX_ITEMS
    assert m.load.failed_program == "p" * MAX_FIELD_CHARS


def test_a_result_over_the_size_cap_is_a_problem_naming_the_cap() -> None:
    raw = b'{"status": "pass", "pad": "' + b"x" * MAX_RESULT_BYTES + b'"}'
    found = problem(raw)
    assert found.kind == "too-large" and str(MAX_RESULT_BYTES) in found.reason


@pytest.mark.parametrize(
    "raw",
    ["[" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000, "[{" * 50_000],
    ids=["lists", "objects", "mixed"],
)
def test_deep_nesting_is_refused_before_parsing(raw: str) -> None:
    found = problem(raw)  # json.loads would raise RecursionError on these
    assert found.kind == "too-deep" and str(MAX_DEPTH) in found.reason


def test_brackets_inside_strings_are_not_nesting() -> None:
    m = model({"load": {"verifier_log": "[{" * 100_000 + '\\"]'}, "status": "pass"})
    assert m.status == "pass" and m.load.verifier_log.startswith("[{[{")
    assert problem("[" * MAX_DEPTH + "]" * MAX_DEPTH).kind == "not-an-object"  # deep enough
    assert problem("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)).kind == "too-deep"


def test_unreadable_results_are_named_problems() -> None:
    assert problem(b"\x7fELF\x00").kind == "not-json"
    assert problem('{"status": "pass"').kind == "not-json"  # cut short while written
    assert problem("1" * 5000).kind == "not-json"  # an int over Python's digit limit
    assert problem("[1, 2]").kind == "not-an-object"


def test_older_schemas_and_unknown_keys() -> None:
    m = model({"schema_version": "validator.v0.1", "status": "pass", "future": {"x": 1}})
    assert m.schema_version == "validator.v0.1" and "future" not in m.as_dict()
    assert classify_result(m).status == "pass"
    m = model({"warnings": ["old-style bare string"], "load": {"status": "fail", "stage": "load"}})
    assert m.warnings[0].message == "old-style bare string" and m.warnings[0].step is None
    assert classify_result(m).code == "UNKNOWN"


def test_text_that_cannot_be_written_out_is_replaced() -> None:
    m = parse_result('{"load": {"error": "bad \\ud800 surrogate"}}')
    assert isinstance(m, ResultModel)
    assert m.load.error is not None
    m.load.error.encode("utf-8")  # a report can write it


def test_stored_rows_read_through_the_model() -> None:
    row = ValidatorResult(cache_key="k", artifact_sha256="", kernel_id="k1", raw_json="[" * 10**5)
    found = row.result()
    assert isinstance(found, ResultProblem) and found.kind == "too-deep"
    verdict = classify(row)
    assert (verdict.status, verdict.code, verdict.rule) == (
        "error",
        "INFRA_ERROR",
        "malformed-result",
    )
    assert verdict.evidence == found.reason
    assert ValidatorResult(cache_key="k", artifact_sha256="", kernel_id="k1").result() is None
