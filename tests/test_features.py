"""Feature facts (analysis/data/features.yaml) and their loader.

Known entries are checked against releases stated by bcc's kernel-versions.md and
ebpf-docs; the whole-table checks catch transcription slips (a skipped helper id, a
duplicated enum value, an unquoted 5.10 read as 5.1) that a spot check would not.
"""

from __future__ import annotations

import copy
import itertools
import re
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from bpfcompat.analysis import features as F

ROOT = Path(__file__).resolve().parents[1]
RAW = F.load_raw()
ENUM_SECTIONS = ("helpers", "map_types", "program_types", "attach_types", "link_types")


@pytest.mark.parametrize(
    ("lookup", "key", "name", "ident", "since"),
    [
        (F.map_type, "ringbuf", "ringbuf", 27, (5, 8)),
        (F.map_type, "bloom_filter", "bloom_filter", 30, (5, 16)),
        (F.map_type, "cgrp_storage", "cgrp_storage", 32, (6, 2)),
        (F.map_type, "struct_ops", "struct_ops", 26, (5, 6)),
        (F.helper, 181, "bpf_loop", 181, (5, 17)),
        (F.helper, 113, "bpf_probe_read_kernel", 113, (5, 5)),
        (F.helper, 130, "bpf_ringbuf_output", 130, (5, 8)),
        (F.helper, 158, "bpf_get_current_task_btf", 158, (5, 11)),
        (F.helper, "bpf_trace_vprintk", "bpf_trace_vprintk", 177, (5, 16)),
        (F.helper, 7, "bpf_get_prandom_u32", 7, (4, 1)),
        (F.program_type, "netfilter", "netfilter", 32, (6, 4)),
        (F.program_type, "tracing", "tracing", 26, (5, 5)),
        (F.program_type, "lsm", "lsm", 29, (5, 7)),
        (F.program_type, "struct_ops", "struct_ops", 27, (5, 6)),
        (F.program_type, "syscall", "syscall", 31, (5, 14)),
        (F.attach_type, "trace_fentry", "trace_fentry", 24, (5, 5)),
        (F.attach_type, "netfilter", "netfilter", 45, (6, 4)),
        (F.link_type, "kprobe_multi", "kprobe_multi", 8, (5, 18)),
        (F.kfunc, "bpf_task_from_pid", "bpf_task_from_pid", None, (6, 2)),
        (F.kfunc, "bpf_dynptr_is_rdonly", "bpf_dynptr_is_rdonly", None, (6, 5)),
        (F.feature, "atomics", "atomics", None, (5, 12)),
        (F.feature, "bounded_loops", "bounded_loops", None, (5, 3)),
        (F.feature, "isa_v4", "isa_v4", None, (6, 6)),
    ],
)
def test_known_entries(lookup, key, name, ident, since):
    f = lookup(key)
    assert f is not None, key
    assert (f.name, f.id, f.since) == (name, ident, since)


def test_lookup_accepts_uapi_spellings():
    assert F.helper("BPF_FUNC_loop") == F.helper("loop") == F.helper(181)
    assert F.map_type("BPF_MAP_TYPE_RINGBUF") == F.map_type(27)
    assert F.map_type("BPF_MAP_TYPE_CGROUP_STORAGE_DEPRECATED").name == "cgroup_storage"
    assert F.program_type("BPF_PROG_TYPE_TRACING") == F.program_type(26)
    assert F.attach_type("BPF_TRACE_FENTRY") == F.attach_type(24)
    assert F.link_type("BPF_LINK_TYPE_XDP").id == 6


def test_unknown_lookups_are_none():
    assert F.helper(0) is None  # unspec is not a helper
    assert F.helper(100000) is None
    assert F.helper(True) is None  # a bool is not an id
    assert F.map_type("no_such_map") is None
    assert F.kfunc("bpf_no_such_kfunc") is None
    assert F.feature("no_such_feature") is None


def test_gpl_only_is_true_or_unknown():
    assert F.helper("bpf_probe_read_kernel").gpl_only is True
    assert F.helper("bpf_trace_printk").gpl_only is True
    assert F.helper("bpf_map_lookup_elem").gpl_only is None
    assert {row.get("gpl_only", True) for row in RAW["helpers"]} == {True}


def test_every_helper_id_once_with_bpf_name():
    ids = [row["id"] for row in RAW["helpers"]]
    assert max(ids) >= 211
    assert sorted(ids) == list(range(1, max(ids) + 1))
    names = [row["name"] for row in RAW["helpers"]]
    assert all(isinstance(n, str) and n.startswith("bpf_") for n in names)
    assert len(set(names)) == len(ids)


@pytest.mark.parametrize("section", ENUM_SECTIONS)
def test_ids_and_names_unique_per_section(section):
    rows = RAW[section]
    for field in ("id", "name"):
        dupes = [v for v, n in Counter(row[field] for row in rows).items() if n > 1]
        assert not dupes, f"{section}: duplicate {field}s {dupes}"


@pytest.mark.parametrize(("section", "first"), [
    ("map_types", 1), ("program_types", 1), ("attach_types", 0), ("link_types", 1),
])  # fmt: skip
def test_enum_values_are_contiguous(section, first):
    # The uapi enums have no gaps (UNSPEC = 0 is left out), so a gap is a missed line.
    ids = sorted(row["id"] for row in RAW[section])
    assert ids == list(range(first, first + len(ids)))


def test_helper_releases_follow_id_order():
    # Helper ids are appended in merge order: a higher id never predates a lower one.
    rows = sorted(RAW["helpers"], key=lambda r: r["id"])
    for prev, cur in itertools.pairwise(rows):
        assert F.parse_release(cur["since"]) >= F.parse_release(prev["since"]), cur


def _all_since_values():
    for section in ENUM_SECTIONS:
        for row in RAW[section]:
            yield f"{section}.{row['name']}", row["since"]
    for name, since in RAW["kfuncs"].items():
        yield f"kfuncs.{name}", since
    for key, row in RAW["features"].items():
        yield f"features.{key}", row["since"]
    for key, row in RAW["libbpf_rewrites"]["rewrites"].items():
        if "since" in row:
            yield f"libbpf_rewrites.{key}", row["since"]


def test_every_since_is_a_quoted_release():
    values = list(_all_since_values())
    assert len(values) > 600
    for where, since in values:
        # A bare 5.10 in YAML is the float 5.1: every release must be a quoted string.
        assert isinstance(since, str) and re.fullmatch(r"\d+\.\d+", since), (where, since)
        major, minor = F.parse_release(since)
        assert 3 <= major <= 9 and 0 <= minor <= 20, (where, since)


def test_entries_cover_every_kind():
    counts = {kind: sum(1 for _ in F.entries(kind)) for kind in F.KINDS}
    assert counts["helper"] == len(RAW["helpers"])
    assert counts["kfunc"] == len(RAW["kfuncs"]) > 100
    assert all(n > 0 for n in counts.values()), counts
    with pytest.raises(ValueError):
        F.entries("helpers")


def test_estimated_entries_are_marked():
    rhash = F.map_type("rhash")
    assert rhash is not None and rhash.estimated
    assert not F.map_type("ringbuf").estimated


@pytest.mark.parametrize(
    ("text", "release"),
    [
        ("6.1.0-50-cloud-amd64", (6, 1)),
        ("5.10.0-32-cloud-amd64", (5, 10)),
        ("7.2.13+deb14-cloud-amd64", (7, 2)),
        ("6.12.117+deb13-cloud-amd64", (6, 12)),
        ("v5.8", (5, 8)),
        ("4.19", (4, 19)),
    ],
)
def test_parse_release(text, release):
    assert F.parse_release(text) == release


@pytest.mark.parametrize("text", ["", "6", "linux-6.1", "abc", "6.x"])
def test_parse_release_rejects(text):
    with pytest.raises(ValueError):
        F.parse_release(text)


def test_available_on():
    loop = F.helper("bpf_loop")
    assert not loop.available_on("5.15.0-100-generic")
    assert loop.available_on("5.17.0")
    assert loop.available_on((6, 1))
    assert loop.since_text == "5.17"
    assert F.map_type("task_storage").since_text == "5.11"


@pytest.mark.parametrize(
    ("section", "prog_type", "attach_type"),
    [
        ("tp/syscalls/sys_enter_execve", "tracepoint", None),
        ("tracepoint/syscalls/sys_enter_execve", "tracepoint", None),
        ("fentry/do_unlinkat", "tracing", "trace_fentry"),
        ("fexit/do_unlinkat", "tracing", "trace_fexit"),
        ("tp_btf/sched_switch", "tracing", "trace_raw_tp"),
        ("netfilter", "netfilter", "netfilter"),
        ("kprobe/x", "kprobe", None),
        ("kprobe", "kprobe", None),
        ("kprobe.multi/x*", "kprobe", "trace_kprobe_multi"),
        ("xdp", "xdp", "xdp"),
        ("xdp/devmap", "xdp", "xdp_devmap"),
        ("struct_ops/x", "struct_ops", None),
        ("lsm.s/file_open", "lsm", "lsm_mac"),
        ("sk_reuseport/migrate", "sk_reuseport", "sk_reuseport_select_or_migrate"),
        ("sk_reuseport", "sk_reuseport", "sk_reuseport_select"),
        ("cgroup_skb/ingress", "cgroup_skb", "cgroup_inet_ingress"),
        ("socket", "socket_filter", None),
        ("?fentry/do_unlinkat", "tracing", "trace_fentry"),
    ],
)
def test_section_def(section, prog_type, attach_type):
    d = F.section_def(section)
    assert d is not None, section
    assert (d.prog_type, d.attach_type) == (prog_type, attach_type)
    assert F.program_type(d.prog_type) is not None


@pytest.mark.parametrize(
    "section",
    ["socket/tail", "kprobex", "xdp/foo", "netfilter/x", "sched_cls", "maps", ".text", ""],
)
def test_section_def_no_match(section):
    # libbpf 1.5 matches "socket" and "xdp" only exactly, and "kprobe+" needs a "/".
    assert F.section_def(section) is None


def test_section_def_flags():
    fentry = F.section_def("fentry/do_unlinkat")
    assert fentry.attach_btf and not fentry.sleepable and fentry.auto_attach
    assert F.section_def("fentry.s/do_unlinkat").sleepable
    assert not F.section_def("xdp").auto_attach
    assert "exp_attach_opt" in F.section_def("xdp").flags
    assert F.section_def("kprobe/x").attach_btf is False
    assert F.section_defs_libbpf_version() == "1.5.0"


def test_libbpf_rewrites():
    fallback = F.libbpf_rewrite("probe_read_kernel_fallback")
    assert fallback.stage == "load" and fallback.since == (5, 5)
    assert fallback.helpers["bpf_probe_read_user_str"] == "bpf_probe_read_str"
    for new, old in fallback.helpers.items():
        # The fallback only helps because the old helper predates the new one.
        assert F.helper(old).since < F.helper(new).since == (5, 5)
    printk = F.libbpf_rewrite("bpf_printk_vprintk")
    assert printk.stage == "compile"
    assert F.helper(printk.helpers["bpf_printk"]).since == printk.since == (5, 16)
    # A rewrite tied to a feature takes that feature's release.
    assert F.libbpf_rewrite("bpf_printk_fmt_rodata").since == F.feature("global_data").since
    for rw in F.libbpf_rewrites():
        assert rw.stage in {"compile", "load", "attach"}, rw.key
        for target in rw.helpers.values():
            assert F.helper(target) is not None, (rw.key, target)


def test_build_rejects_bad_data():
    raw = copy.deepcopy(RAW)
    raw["map_types"].append(dict(raw["map_types"][0]))
    with pytest.raises(ValueError, match="duplicate"):
        F._build(raw)
    raw = copy.deepcopy(RAW)
    raw["helpers"][0]["since"] = 5.1
    with pytest.raises(ValueError, match="quoted"):
        F._build(raw)
    raw = copy.deepcopy(RAW)
    raw["section_defs"]["table"][0]["prog_type"] = "no_such_type"
    with pytest.raises(ValueError, match="unknown program type"):
        F._build(raw)


def test_data_file_ships_with_the_package():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "analysis/data/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["bpfcompat"]
