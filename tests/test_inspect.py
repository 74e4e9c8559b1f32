"""`bpfcompat inspect` and `bpfcompat manifest suggest`: floors of the examples (checked
against examples/README.md's table), and one fixture per loader-contract pattern."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from analysis_fixtures import (  # noqa: F401
    FIXTURES,
    analysis_objects,
    compile_bpf,
    insn,
    patch_insns,
)
from bpfcompat.analysis.insns import analyse
from bpfcompat.analysis.inspect import inspect_object, render_text
from bpfcompat.analysis.objfile import read_object
from bpfcompat.matrix.statics import matrix_kernels
from bpfcompat.vm import kbtf
from conftest import run_cli

# The release each example needs, and why (examples/README.md's "feature / release" column,
# where the example exercises a kernel feature; otherwise what its programs use).
EXAMPLE_FLOORS = {
    "bloom-filter-map": ("5.16", "map_type", "bloom_filter"),
    "bpf-loop-no-fallback": ("5.17", "helper", "bpf_loop"),
    "cgrp-storage-map": ("6.2", "map_type", "cgrp_storage"),
    "netfilter-prog": ("6.4", "program_type", "netfilter"),
    "kfunc-new": ("6.2", "kfunc", "bpf_task_from_pid"),
    "ringbuf": ("5.8", "map_type", "ringbuf"),
    "runtime-sized-maps": ("5.8", "map_type", "ringbuf"),  # the inner ring buffer
    "program-variants": ("5.17", "helper", "bpf_loop"),  # loop_x; loop_old_x alone is older
    "functional-execve": ("5.2", "feature", "global_data"),  # bpf_printk's format in .rodata
    "gpl-helper-proprietary": ("5.2", "feature", "global_data"),  # a .bss variable
    "lockdown-probe-read": ("5.4", "feature", "core"),  # probe_read_kernel falls back
    "printk-many-args": ("5.16", "helper", "bpf_trace_vprintk"),  # bpf_printk, 4 arguments
    "core-relocation-fail": ("5.4", "feature", "core"),
    "fentry-missing-target": ("5.5", "program_type", "tracing"),
    "fentry-attach": ("5.5", "program_type", "tracing"),  # x86-64; arm64 attaches from 6.x
    "simple-pass": ("4.7", "program_type", "tracepoint"),
    "tail-calls": ("4.7", "program_type", "tracepoint"),
    "helper-not-allowed": ("4.7", "program_type", "tracepoint"),
    "verifier-oob": ("4.7", "program_type", "tracepoint"),
    "verifier-limit": ("4.7", "program_type", "tracepoint"),
    "unsupported-attach": ("4.1", "program_type", "kprobe"),
    "unsupported-attach-required": ("4.1", "program_type", "kprobe"),
    # The loader-contract examples: what they need once the loader has done its part.
    "zero-sized-maps": ("5.8", "map_type", "ringbuf"),
    "stack-trace-map": ("4.7", "program_type", "tracepoint"),
    "fentry-placeholder": ("5.5", "program_type", "tracing"),
    "fentry-retarget": ("5.5", "program_type", "tracing"),
    "fentry-unset-target": ("5.5", "program_type", "tracing"),
    "freplace-target": ("5.6", "program_type", "ext"),
    "kconfig-externs": ("5.2", "feature", "global_data"),  # libbpf's .kconfig map
    "loader-section": ("3.19", "program_type", "socket_filter"),  # suggested type
    "loader-section-typed": ("3.19", "program_type", "socket_filter"),
    "struct-ops-unknown": ("5.6", "program_type", "struct_ops"),
    "freplace-with-target": ("5.6", "program_type", "ext"),
    "rodata-globals": ("5.2", "feature", "global_data"),  # the globals a loader sets
}
# Loader-contract examples: (finding kind, subject, declared by the example's manifest).
EXAMPLE_FINDINGS = {
    "zero-sized-maps": [
        ("map_sized_at_runtime", "per_cpu_stats", False),
        ("map_sized_at_runtime", "events", False),
    ],
    "stack-trace-map": [("map_sized_at_runtime", "stacks", False)],
    "fentry-placeholder": [("attach_target_placeholder", "trace_read", False)],
    "fentry-retarget": [("attach_target_placeholder", "trace_read", True)],
    "fentry-unset-target": [("attach_target_unset", "trace_any", False)],
    "freplace-target": [("freplace_target", "replacement_hook", False)],
    "loader-section": [("untypable_section", "tail_filter", False)],
    "loader-section-typed": [("untypable_section", "tail_filter", True)],
    "struct-ops-unknown": [("struct_ops", "demo_ops", False)],
    "runtime-sized-maps": [
        ("map_sized_at_runtime", "auxiliary_maps", True),
        ("map_sized_at_runtime", "ringbuf_maps", True),
    ],
}
UNREADABLE = {"invalid-object": "no ELF magic", "truncated-elf": "truncated ELF"}


@pytest.fixture(scope="module")
def example_reports(built_examples: Path) -> dict[str, dict[str, Any]]:
    objs = sorted(str(p) for p in built_examples.glob("*/*.bpf.o"))
    proc = run_cli("inspect", *objs, "--json")
    assert proc.returncode == 1, proc.stderr  # the two deliberately broken objects
    reports = json.loads(proc.stdout)
    return {Path(r["artifact"]).parent.name: r for r in reports}


def test_every_example_has_its_floor(example_reports: dict[str, dict[str, Any]]) -> None:
    assert set(example_reports) == set(EXAMPLE_FLOORS) | set(UNREADABLE)
    for name, (since, kind, what) in EXAMPLE_FLOORS.items():
        report = example_reports[name]
        assert report["floor"] == since, (name, report["floor_reason"])
        top = report["floor_requirement"]
        assert (top["kind"], top["name"], top["since"]) == (kind, what, since), name
        assert what in report["floor_reason"] and since in report["floor_reason"]


def test_loader_contract_examples(example_reports: dict[str, dict[str, Any]]) -> None:
    for name, expected in EXAMPLE_FINDINGS.items():
        required = [f for f in example_reports[name]["loader_setup"] if f["level"] != "info"]
        got = [(f["kind"], f["subject"], f["declared_in"] is not None) for f in required]
        assert got == expected, name
    stacks = example_reports["stack-trace-map"]["loader_setup"][0]["manifest"]["maps"][0]
    assert stacks["value_size"] == 1016
    struct_ops = example_reports["struct-ops-unknown"]["loader_setup"][0]
    assert struct_ops["level"] == "required" and struct_ops["detail"]["kernels_with"] == []
    kconfig = {f["subject"] for f in example_reports["kconfig-externs"]["loader_setup"]}
    assert "LINUX_KERNEL_VERSION" in kconfig


def test_json_shape(example_reports: dict[str, dict[str, Any]]) -> None:
    for name, report in example_reports.items():
        for key in (
            "artifact",
            "floor",
            "floor_reason",
            "requirements",
            "loader_setup",
            "manifest",
        ):
            assert key in report, (name, key)
        for req in report["requirements"]:
            assert {"kind", "name", "since", "programs"} <= set(req), req
        for finding in report["loader_setup"]:
            assert {"kind", "subject", "why", "manifest_lines"} <= set(finding), finding


def test_unreadable_examples_say_why(example_reports: dict[str, dict[str, Any]]) -> None:
    for name, needle in UNREADABLE.items():
        report = example_reports[name]
        assert report["readable"] is False and needle in report["error"]
        assert report["floor"] is None and report["requirements"] == []


def test_example_details(example_reports: dict[str, dict[str, Any]]) -> None:
    reqs = {
        name: {(r["kind"], r["name"]): r for r in rep["requirements"]}
        for name, rep in example_reports.items()
    }
    # bpf_probe_read_kernel is rewritten by libbpf on older kernels: listed, not the floor.
    probe = reqs["lockdown-probe-read"][("helper", "bpf_probe_read_kernel")]
    assert probe["since"] == "5.5" and probe["sets_floor"] is False
    assert "bpf_probe_read" in probe["note"]
    # bpf_loop's callback is an ld_imm64 of a function.
    assert ("feature", "callbacks") in reqs["bpf-loop-no-fallback"]
    # Per-program floors tell the variants apart.
    progs = {p["name"]: p for p in example_reports["program-variants"]["programs"]}
    assert progs["loop_x"]["floor"] == "5.17" and progs["loop_old_x"]["floor"] == "4.7"
    helpers = {h["name"]: h["id"] for h in progs["loop_x"]["helpers"]}
    assert helpers["bpf_loop"] == 181
    # Loader contract of runtime-sized-maps, exactly as its manifest declares it.
    findings = example_reports["runtime-sized-maps"]["loader_setup"]
    frags = {f["subject"]: f["manifest"]["maps"][0] for f in findings}
    assert frags["auxiliary_maps"] == {"name": "auxiliary_maps", "max_entries": "cpus"}
    assert frags["ringbuf_maps"]["max_entries"] == "cpus"
    assert "inner_ringbuf_bytes" in frags["ringbuf_maps"]
    # A non-GPL licence with a GPL-only helper is the artifact's own defect.
    (issue,) = example_reports["gpl-helper-proprietary"]["issues"]
    assert issue["kind"] == "gpl_only_with_non_gpl_license"
    core = example_reports["core-relocation-fail"]["core_relocations"]
    assert core["count"] == 1 and core["types"] == ["bpfcompat_no_such_type"]
    assert core["records"][0]["spec"] == "struct bpfcompat_no_such_type___x.f"
    # The examples that need no loader step get no finding.
    for name in ("simple-pass", "ringbuf", "bloom-filter-map", "kfunc-new", "netfilter-prog"):
        assert example_reports[name]["loader_setup"] == [], name


def test_fentry_placeholder_example_against_the_matrix(
    example_reports: dict[str, dict[str, Any]],
) -> None:
    checks = example_reports["fentry-missing-target"]["kernel_checks"]
    assert checks["needed"] is True
    assert checks["checked"] is True, checks["unchecked"]  # kernels are cached (setup.sh)
    (finding,) = example_reports["fentry-missing-target"]["loader_setup"]
    assert finding["kind"] == "attach_target_placeholder" and finding["level"] == "required"
    assert "exists in no kernel of the matrix" in finding["why"]
    assert finding["detail"]["kernels_with"] == []


def test_text_output(built_examples: Path) -> None:
    proc = run_cli("inspect", str(built_examples / "bloom-filter-map" / "bloom-filter-map.bpf.o"))
    assert proc.returncode == 0, proc.stderr
    assert "floor: Linux 5.16: map type bloom_filter needs Linux 5.16" in proc.stdout
    assert "bpf_map_peek_elem#89 (4.20)" in proc.stdout
    assert "loader setup: nothing beyond" in proc.stdout


# --- fixtures: one per loader-contract pattern ---------------------------------------------


@pytest.fixture(scope="module")
def fixture_reports(analysis_objects: dict[str, Path]) -> dict[str, dict[str, Any]]:  # noqa: F811
    kernels = matrix_kernels(None)
    return {name: inspect_object(path, kernels) for name, path in analysis_objects.items()}


def findings(report: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {f["subject"]: f for f in report["loader_setup"] if f["kind"] == kind}


def test_zero_sized_maps(fixture_reports: dict[str, dict[str, Any]]) -> None:
    report = fixture_reports["zero_sized_maps"]
    sized = findings(report, "map_sized_at_runtime")
    assert set(sized) == {"scratch", "seen", "stacks", "events", "opaque"}
    assert sized["events"]["manifest"]["maps"][0] == {
        "name": "events",
        "key_size": 4,
        "value_size": 4,
    }
    assert "no known size" in sized["opaque"]["why"] and "opaque_value" in sized["opaque"]["why"]
    assert sized["scratch"]["manifest"] == {"maps": [{"name": "scratch", "max_entries": "cpus"}]}
    assert sized["stacks"]["manifest"]["maps"][0] == {"name": "stacks", "value_size": 127 * 8}
    assert "PERF_MAX_STACK_DEPTH" in "\n".join(sized["stacks"]["manifest_lines"])
    assert sized["seen"]["manifest"]["maps"][0]["max_entries"] == 1024
    assert sized["seen"]["detail"]["guessed"] == ["max_entries"]
    assert all(f["level"] == "required" for f in sized.values())


def test_attach_targets(fixture_reports: dict[str, dict[str, Any]]) -> None:
    report = fixture_reports["attach_targets"]
    placeholder = findings(report, "attach_target_placeholder")["retargeted"]
    assert "dummy_file_open" in placeholder["why"]
    assert "exists in no kernel of the matrix" in placeholder["why"]
    unset = findings(report, "attach_target_unset")["untargeted"]
    assert unset["manifest"]["programs"][0]["attach_target"] == "FUNCTION"
    # Real targets: a finding only where a kernel of the matrix lacks them.
    names = [kbtf.kernel_names(k.entry) for k in matrix_kernels(None).load().kernels]
    for prog, symbol, kind in (
        ("real_fentry", "do_unlinkat", "funcs"),
        ("real_lsm", "bpf_lsm_file_open", "funcs"),
        ("real_tp_btf", "btf_trace_sched_switch", "typedefs"),
    ):
        lacking = [n for n in names if symbol not in getattr(n, kind)]
        found = findings(report, "attach_target_missing").get(prog)
        assert (found is not None) == bool(lacking), prog
        assert prog not in findings(report, "attach_target_placeholder")


def test_freplace(fixture_reports: dict[str, dict[str, Any]]) -> None:
    finding = findings(fixture_reports["freplace"], "freplace_target")["replacement"]
    entry = finding["manifest"]["programs"][0]
    assert entry["attach_target"] == "decide"
    assert set(entry["attach_target_program"]) == {"object", "program"}


def test_struct_ops(fixture_reports: dict[str, dict[str, Any]]) -> None:
    report = fixture_reports["struct_ops"]
    ops = findings(report, "struct_ops")
    assert ops["fixture_cc"]["detail"]["struct"] == "tcp_congestion_ops"
    assert ops["fixture_cc"]["detail"]["kernels_without"] == []
    assert ops["fixture_cc"]["detail"]["programs"] == [
        "cc_ssthresh",
        "cc_cong_avoid",
        "cc_undo_cwnd",
    ]
    sched = ops["fixture_sched"]["detail"]
    assert sched["struct"] == "sched_ext_ops"
    names = {k.release: kbtf.kernel_names(k.entry) for k in matrix_kernels(None).load().kernels}
    expected = sorted(r for r, n in names.items() if "bpf_struct_ops_sched_ext_ops" in n.structs)
    assert sorted(sched["kernels_with"]) == expected
    assert "5.10" in sched["kernels_without"]  # sched_ext came in 6.12 (as a config option)
    maps = {m["name"]: m for m in report["maps"]}
    assert maps["fixture_sched"]["section"] == ".struct_ops.link"
    assert report["floor"] == "5.10"  # the sleepable struct_ops program


def test_untypable_sections(fixture_reports: dict[str, dict[str, Any]]) -> None:
    report = fixture_reports["untypable"]
    untyped = findings(report, "untypable_section")
    assert set(untyped) == {"socket_tail", "steer", "tc_ingress", "cilium_style", "unknown_kind"}
    types = {k: f["manifest"]["programs"][0] for k, f in untyped.items()}
    assert types["socket_tail"] == {"name": "socket_tail", "type": "socket_filter"}
    assert types["steer"] == {
        "name": "steer",
        "type": "sk_lookup",
        "expected_attach_type": "sk_lookup",
    }
    assert types["tc_ingress"]["type"] == "sched_cls"
    assert "Cilium" in untyped["cilium_style"]["why"]
    # libbpf 1.5 still knows the bare "classifier".
    progs = {p["name"]: p for p in report["programs"]}
    assert progs["tc_plain"]["type_source"] == "libbpf"


def test_externs_and_rodata(fixture_reports: dict[str, dict[str, Any]]) -> None:
    report = fixture_reports["externs"]
    kconfig = findings(report, "kconfig_extern")
    assert set(kconfig) == {"LINUX_KERNEL_VERSION", "CONFIG_HZ", "CONFIG_BPF_JIT_ALWAYS_ON"}
    assert kconfig["CONFIG_BPF_JIT_ALWAYS_ON"]["detail"]["weak"] is True
    assert all(f["level"] == "info" for f in kconfig.values())
    rodata = findings(report, "rodata_config")
    assert {k: f["manifest"]["globals"][k] for k, f in rodata.items()} == {
        "target_pid": 42,
        "verbose": True,
        "comm_filter": "bash",
        "sample_rate": 100,
    }
    assert "hits" not in rodata  # .bss, not const volatile
    reqs = {(r["kind"], r["name"]): r for r in report["requirements"]}
    assert reqs[("kfunc", "bpf_task_from_pid")]["sets_floor"] is False  # __weak
    assert reqs[("feature", "kfunc_calls")]["sets_floor"] is False
    assert reqs[("feature", "typed_ksyms")]["sets_floor"] is True  # bpf_prog_active
    ksyms = {e["name"]: e for e in report["externs"]["ksyms"]}
    assert ksyms["bpf_prog_active"]["typed"] and not ksyms["bpf_link_fops"]["typed"]
    assert report["floor"] == "5.10"


def test_isa_features(fixture_reports: dict[str, dict[str, Any]]) -> None:
    report = fixture_reports["isa"]
    (prog,) = report["programs"]
    assert {
        "atomics",
        "jmp32",
        "bounded_loops",
        "bpf_to_bpf_calls",
        "callbacks",
        "tail_calls",
        "tail_calls_in_subprogs",
        "global_data",
    } <= set(prog["features"])
    reqs = {(r["kind"], r["name"]): r for r in report["requirements"]}
    vprintk = reqs[("helper", "bpf_trace_vprintk")]
    assert vprintk["since"] == "5.16" and "more than 3 arguments" in vprintk["note"]
    assert report["floor"] == "5.17"
    assert findings(report, "prog_array_filled_by_loader")


@pytest.mark.parametrize(
    ("raw", "feature"),
    [
        (insn(0xBF, 1, 2, off=8), "isa_v4"),  # movsx r1 = (s8) r2
        (insn(0x3F, 1, 2, off=1), "isa_v4"),  # sdiv r1, r2
        (insn(0xD7, 1, imm=16), "isa_v4"),  # bswap16 r1
        (insn(0x91, 1, 2), "isa_v4"),  # ldsx r1 = *(s8 *)(r2 + 0)
        (insn(0x06, imm=0), "isa_v4"),  # gotol +0
        (insn(0xDB, 1, 2, imm=0x100), "load_acquire_store_release"),
        (insn(0xDB, 1, 2, imm=0xE1), "atomics"),  # xchg
        (insn(0xDB, 1, 2, imm=0x00), None),  # plain add: the old XADD
        (insn(0x05, off=-1), "bounded_loops"),  # ja -1: a loop on itself
        (insn(0x05, off=0), None),  # ja +0: forward
    ],
)
def test_patched_encodings(
    analysis_objects: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    raw: bytes,
    feature: str | None,
) -> None:
    obj_path = patch_insns(analysis_objects["nops"], "socket", 2, raw, tmp_path / "p.bpf.o")
    uses = analyse(read_object(obj_path))["room"]
    isa = {"isa_v4", "load_acquire_store_release", "atomics", "bounded_loops"}
    assert (set(uses.features) & isa) == ({feature} if feature else set())


def test_object_without_btf(tmp_path: Path) -> None:
    obj = compile_bpf(FIXTURES / "zero_sized_maps.bpf.c", tmp_path / "nobtf.bpf.o", debug=False)
    proc = run_cli("inspect", str(obj), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["readable"] and report["btf"]["present"] is False
    assert report["problems"][0].startswith("no .BTF section")
    (prog,) = report["programs"]
    assert [h["name"] for h in prog["helpers"]] == [
        "bpf_map_lookup_elem",
        "bpf_get_stackid",
        "bpf_map_update_elem",
    ]
    assert report["floor"] == "4.9"  # perf_event programs


def test_bad_inputs_one_line(tmp_path: Path, built_examples: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    good = built_examples / "simple-pass" / "simple-pass.bpf.o"
    proc = run_cli("inspect", str(text), str(good))
    assert proc.returncode == 1
    assert f"{text}\n  cannot read: not an ELF file (no ELF magic)" in proc.stdout
    assert "floor: Linux 4.7" in proc.stdout  # the good one is still reported
    proc = run_cli("inspect", str(tmp_path / "missing.bpf.o"))
    assert proc.returncode == 1 and "cannot read" in proc.stdout
    proc = run_cli("inspect", str(good), "--kernels", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "not found" in proc.stderr


def test_manifest_suggest(analysis_objects: dict[str, Path], built_examples: Path) -> None:  # noqa: F811
    proc = run_cli("manifest", "suggest", str(analysis_objects["zero_sized_maps"]))
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    assert {m["name"]: m for m in doc["maps"]}["stacks"] == {"name": "stacks", "value_size": 1016}
    proc = run_cli("manifest", "suggest", str(analysis_objects["attach_targets"]))
    doc = yaml.safe_load(proc.stdout)
    progs = {p["name"]: p for p in doc["programs"]}
    assert progs["retargeted"] == {"name": "retargeted", "autoload": False}
    assert "# attach_target: FUNCTION" in proc.stdout
    proc = run_cli("manifest", "suggest", str(analysis_objects["externs"]))
    assert yaml.safe_load(proc.stdout) is None  # only comments: nothing is required
    assert "#   target_pid: 42" in proc.stdout
    proc = run_cli(
        "manifest", "suggest", str(built_examples / "truncated-elf" / "truncated-elf.bpf.o")
    )
    assert proc.returncode == 1 and "truncated ELF" in proc.stderr


def test_unused_map_sets_the_plain_load_floor(fixture_reports: dict[str, dict[str, Any]]) -> None:
    report = fixture_reports["unused_map"]
    assert report["floor"] == "5.16" and "used by no program" in report["floor_reason"]
    assert report["floor_without_unused_maps"] == "4.1"  # kprobe
    (finding,) = [f for f in report["loader_setup"] if f["kind"] == "map_unused"]
    assert finding["subject"] == "probe_bloom" and "bpf_map__set_autocreate" in finding["why"]


def test_unfetched_kernels_are_reported_unchecked(
    tmp_path: Path,
    built_examples: Path,
    analysis_objects: dict[str, Path],  # noqa: F811
) -> None:
    matrix = tmp_path / "kernels.yaml"
    matrix.write_text(
        "kernels:\n"
        "  - {id: never-fetched, suite: bookworm, package: linux-image-0.0-bpfcompat-none,"
        " required: true, memory_mb: 512, cpus: 1}\n"
    )
    obj = built_examples / "fentry-missing-target" / "fentry-missing-target.bpf.o"
    proc = run_cli("inspect", str(obj), "--json", "--kernels", str(matrix))
    report = json.loads(proc.stdout)
    checks = report["kernel_checks"]
    assert checks["checked"] is False and "never-fetched: not fetched" in checks["unchecked"][0]
    assert report["loader_setup"] == []  # no evidence either way: nothing is claimed
    proc = run_cli("inspect", str(obj), "--kernels", str(matrix))
    assert "not checked against: never-fetched: not fetched" in proc.stdout
    # A placeholder-looking name is still reported, and says it was not checked.
    proc = run_cli(
        "inspect", str(analysis_objects["attach_targets"]), "--json", "--kernels", str(matrix)
    )
    (finding,) = [
        f
        for f in json.loads(proc.stdout)["loader_setup"]
        if f["kind"] == "attach_target_placeholder"
    ]
    assert "not checked against kernel BTF" in finding["why"]


def test_unset_map_sizes_read_as_unset(fixture_reports: dict[str, dict[str, Any]]) -> None:
    """A map without max_entries is printed as the loader's to size, never as `None`."""
    text = render_text(fixture_reports["zero_sized_maps"])
    events = next(line for line in text.splitlines() if line.strip().startswith("events "))
    assert "max_entries unset (libbpf: one per CPU)" in events, events
    assert "None" not in text


def test_a_ring_buffer_reads_as_its_size_alone(built_examples: Path) -> None:
    """Ring buffers have no keys or values: their line gives the size in bytes only."""
    proc = run_cli("inspect", str(built_examples / "ringbuf" / "ringbuf.bpf.o"))
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if "  ringbuf  max_entries" in x]
    assert "key" not in line and "value" not in line, line
