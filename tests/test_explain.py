"""Verdicts in the user's terms, on recorded results from a real run (tests/data/recorded):
what the kernel lacks and since when, helpers named and traced back to the macro or libbpf
rewrite that produced them, cell-specific remediations and where the verifier stopped.
Edits to recorded results are minimal and described where they are made.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from bpfcompat.matrix.classify import classify_result
from bpfcompat.matrix.classify.pinpoint import MAX_LOG_CHARS, read_pinpoint
from bpfcompat.matrix.manifest import Manifest
from bpfcompat.matrix.verdict import Verdict

RECORDED = Path(__file__).resolve().parent / "data" / "recorded"
KERNELS = sorted(p.stem for p in RECORDED.glob("*.json"))
# no `@ file:line` after source lines (the 5.10 and 6.1 kernels, arm64 and no-BTF builds too)
OLD_FORMAT = ("debian-11-5.10", "debian-12-6.1", "debian-11-5.10-arm64", "debian-12-6.1-arm64",
              "debian-12-6.1-nobtf")  # fmt: skip


@cache
def _recording(kernel_id: str) -> dict[str, Any]:
    return json.loads((RECORDED / f"{kernel_id}.json").read_text())


def _cell(kernel_id: str, artifact: str) -> dict[str, Any]:
    """A private copy of one recorded cell (result, release and the run's static reading)."""
    for c in _recording(kernel_id)["cells"]:
        if c["artifact"] == artifact:
            return copy.deepcopy(c)
    raise KeyError(f"{artifact} not recorded on {kernel_id}")


def judge(kernel_id: str, artifact: str, edit: Any = None) -> Verdict:
    c = _cell(kernel_id, artifact)
    if edit is not None:
        edit(c)
    return classify_result(c["result"], c["release"], analysis=c["analysis"])


# --- 1. needs >= X.Y for NAME (this kernel: A.B) ------------------------------------------------

# (artifact, kernel) -> (what, name, since, this kernel)
NEEDS_OF = {
    ("bloom-filter-map", "debian-11-5.10"): ("map type", "bloom_filter", "5.16", "5.10"),
    ("cgrp-storage-map", "debian-11-5.10"): ("map type", "cgrp_storage", "6.2", "5.10"),
    ("cgrp-storage-map", "debian-12-6.1"): ("map type", "cgrp_storage", "6.2", "6.1"),
    ("bpf-loop-no-fallback", "debian-11-5.10"): ("helper", "bpf_loop", "5.17", "5.10"),
    ("kfunc-new", "debian-11-5.10"): ("kfunc", "bpf_task_from_pid", "6.2", "5.10"),
    ("kfunc-new", "debian-12-6.1"): ("kfunc", "bpf_task_from_pid", "6.2", "6.1"),
    ("netfilter-prog", "debian-11-5.10"): ("program type", "netfilter", "6.4", "5.10"),
    ("netfilter-prog", "debian-12-6.1"): ("program type", "netfilter", "6.4", "6.1"),
    ("printk-many-args", "debian-11-5.10"): ("helper", "bpf_trace_vprintk", "5.16", "5.10"),
}
# The arm64 kernels need what their x86-64 twins need; the 6.1 build without BTF lacks what
# 6.1 lacks, except where missing kernel BTF stops the load first (cgrp-storage-map and
# kfunc-new there are MISSING_BTF, which names no release).
for (_artifact, _kernel), _need in list(NEEDS_OF.items()):
    NEEDS_OF[(_artifact, f"{_kernel}-arm64")] = _need
NEEDS_OF[("netfilter-prog", "debian-12-6.1-nobtf")] = ("program type", "netfilter", "6.4", "6.1")
NEEDS = {
    cell: f"needs >= {since} for {what} {name} (this kernel: {kernel})"
    for cell, (what, name, since, kernel) in NEEDS_OF.items()
}
MISSING_FEATURE_CODES = {"UNSUPPORTED_MAP_TYPE", "UNSUPPORTED_HELPER", "UNSUPPORTED_PROGRAM_TYPE",
                         "UNSUPPORTED_KFUNC", "UNSUPPORTED_TRANSPORT"}  # fmt: skip


@pytest.mark.parametrize(("artifact", "kernel_id"), sorted(NEEDS))
def test_missing_feature_cells_say_what_they_need(artifact: str, kernel_id: str) -> None:
    verdict = judge(kernel_id, artifact)
    assert verdict.code in MISSING_FEATURE_CODES
    assert verdict.needs == NEEDS[(artifact, kernel_id)]


def test_only_missing_features_carry_needs() -> None:
    """Every recorded cell: needs exactly on the cells above, none on any other verdict."""
    for kernel_id in KERNELS:
        for c in _recording(kernel_id)["cells"]:
            verdict = judge(kernel_id, c["artifact"])
            where = (c["artifact"], kernel_id)
            assert verdict.needs == NEEDS.get(where), where


def test_needs_only_where_the_kernel_is_older_than_the_feature() -> None:
    # edit: the same refused cgrp_storage map on a kernel as new as the map type
    res = _cell("debian-12-6.1", "cgrp-storage-map")
    verdict = classify_result(res["result"], "6.12.1-custom", analysis=res["analysis"])
    assert verdict.code == "UNSUPPORTED_MAP_TYPE" and verdict.needs is None
    assert "cgrp_storage is upstream since 6.2, which this kernel is not older than" in (
        verdict.detail or ""
    )


def test_a_struct_ops_struct_only_newer_kernels_have() -> None:
    def newer_kernels_have_it(c: dict[str, Any]) -> None:
        # edit: the host's BTF check found the struct in the run's newer kernels
        (finding,) = [f for f in c["analysis"]["loader_setup"] if f["kind"] == "struct_ops"]
        finding["level"] = "kernel"
        finding["detail"].update(kernels_with=["7.2", "6.12"], kernels_without=["6.1", "5.10"])

    verdict = judge("debian-12-6.1", "struct-ops-unknown", newer_kernels_have_it)
    assert verdict.code == "UNSUPPORTED_PROGRAM_TYPE"
    assert verdict.needs == (
        "needs >= 6.12 for struct_ops struct bpfcompat_demo_ops (this kernel: 6.1)"
    )
    assert verdict.remediation.startswith("bpfcompat_demo_ops is in the BTF of 7.2, 6.12 of")


def test_an_attach_target_only_newer_kernels_have() -> None:
    def newer_kernels_have_it(c: dict[str, Any]) -> None:
        # edit: the host's BTF check found the fentry target in the run's newer kernels
        c["analysis"]["loader_setup"] = [{
            "kind": "attach_target_missing", "subject": "fentry_missing", "level": "kernel",
            "why": "bpfcompat_no_such_function is not in the BTF of 6.1, 5.10",
            "manifest": {}, "manifest_lines": [], "declared_in": None,
            "detail": {"target": "bpfcompat_no_such_function", "kernels_with": ["6.12", "7.2"],
                       "kernels_without": ["6.1", "5.10"]},
        }]  # fmt: skip

    verdict = judge("debian-12-6.1", "fentry-missing-target", newer_kernels_have_it)
    assert verdict.code == "MISSING_ATTACH_TARGET"
    assert verdict.needs == (
        "needs >= 6.12 for attach target bpfcompat_no_such_function (this kernel: 6.1)"
    )
    # a target no kernel of the run has stays the loader's to set, with no release to need
    assert judge("debian-12-6.1", "fentry-missing-target").needs is None


def test_a_missing_ring_buffer_names_the_perf_buffer() -> None:
    def ringbuf_on_an_old_kernel(c: dict[str, Any]) -> None:
        # edit: the refused map is a ring buffer, the type probe says the kernel lacks it, and
        # the kernel predates it (5.4)
        c["release"] = "5.4.0-150-generic"
        res = c["result"]
        (m,) = [m for m in res["discovery"]["maps"] if m["name"] == "seen_tgids"]
        m["type"] = "ringbuf"
        res["capabilities"]["map_types"] = {"ringbuf": False}

    verdict = judge("debian-11-5.10", "bloom-filter-map", ringbuf_on_an_old_kernel)
    assert verdict.code == "UNSUPPORTED_TRANSPORT"
    assert verdict.needs == "needs >= 5.8 for map type ringbuf (this kernel: 5.4)"
    assert "Map seen_tgids is a ringbuf map (Linux 5.8)" in verdict.remediation
    assert "perf event array written with bpf_perf_event_output" in verdict.remediation


# --- 2. helpers by name, macros and libbpf's rewrites named -----------------------------------


def test_an_unknown_helper_id_is_named_and_traced_to_bpf_printk() -> None:
    verdict = judge("debian-11-5.10", "printk-many-args")
    assert verdict.evidence == "invalid func unknown#177"
    detail = verdict.detail or ""
    assert "unknown#177 is bpf_trace_vprintk (Linux 5.16)" in detail
    assert 'pulled in by bpf_printk at `bpf_printk("execve pid %u tgid %u cpu %u %s",' in detail
    assert "bpf_printk with more than 3 format arguments expands to bpf_trace_vprintk" in detail
    assert verdict.remediation.startswith("Keep the bpf_printk at `bpf_printk(")
    assert "to 3 format arguments (it then calls bpf_trace_printk, 4.1)" in verdict.remediation


def test_without_the_source_line_the_macro_is_only_the_likely_origin() -> None:
    def no_line_info(c: dict[str, Any]) -> None:
        # edit: an object built without -g: the verifier prints no source lines
        for p in c["result"]["discovery"]["programs"]:
            p["load_log"] = "\n".join(
                ln for ln in p["load_log"].splitlines() if not ln.startswith(";")
            )

    detail = judge("debian-11-5.10", "printk-many-args", no_line_info).detail or ""
    assert "unknown#177 is bpf_trace_vprintk (Linux 5.16), most likely from bpf_printk" in detail


def test_lockdown_names_the_helper_libbpf_rewrote() -> None:
    verdict = judge("debian-13-6.12-lockdown", "lockdown-probe-read")
    assert verdict.evidence == "program of this type cannot use helper bpf_probe_read#4"
    assert (
        "the object calls bpf_probe_read_kernel, not bpf_probe_read: libbpf rewrote the call "
        "because its own probe of bpf_probe_read_kernel failed on this kernel "
        "(lockdown=confidentiality withholds both, so the rewrite cannot help)"
    ) in (verdict.detail or "")
    assert verdict.pinpoint is not None
    assert verdict.pinpoint.source == "if (bpf_probe_read_kernel(&tgid, sizeof(tgid),"


def test_the_rewrite_is_read_from_the_hosts_static_reading() -> None:
    def only_the_host_reading(c: dict[str, Any]) -> None:
        # edit: a validator that recorded no per-program helpers; the host's reading remains
        for p in c["result"]["discovery"]["programs"]:
            p["helpers"] = None

    detail = judge("debian-13-6.12-lockdown", "lockdown-probe-read", only_the_host_reading).detail
    assert "the object calls bpf_probe_read_kernel, not bpf_probe_read" in (detail or "")

    def calls_probe_read_itself(c: dict[str, Any]) -> None:
        # edit: an object whose source calls bpf_probe_read (4) itself: nothing was rewritten
        only_the_host_reading(c)
        for r in c["analysis"]["requirements"]:
            if r["name"] == "bpf_probe_read_kernel":
                r.update(name="bpf_probe_read", id=4, since="4.1")

    detail = judge("debian-13-6.12-lockdown", "lockdown-probe-read", calls_probe_read_itself).detail
    assert "rewrote" not in (detail or "")


# --- 3. remediations for this cell ------------------------------------------------------------


def test_remediations_name_this_cells_map_helper_kfunc_and_program() -> None:
    bloom = judge("debian-11-5.10", "bloom-filter-map").remediation
    assert bloom.startswith("Map seen_tgids is a bloom_filter map (Linux 5.16)")
    assert "bpf_map__set_autocreate(map, false)) and use a hash map used as a set" in bloom
    kfunc = judge("debian-12-6.1", "kfunc-new").remediation
    assert "Declare bpf_task_from_pid __weak" in kfunc
    assert "bpf_ksym_exists(bpf_task_from_pid)" in kfunc
    nf = judge("debian-11-5.10", "netfilter-prog").remediation
    assert "[{name: nf_accept_all, autoload: false}]" in nf
    skb = judge("debian-13-6.12", "helper-not-allowed").remediation
    assert skb.startswith("bpf_skb_load_bytes may not be called from tracepoint programs")
    assert "helper-not-allowed.bpf.c:21" in skb and "socket_filter, sched_cls" in skb
    gpl = judge("debian-sid-7.2", "gpl-helper-proprietary").remediation
    assert gpl.startswith("bpf_get_current_task is GPL-only (proprietary_current_task at ")
    core = judge("debian-12-6.1", "core-relocation-fail").remediation
    assert core.startswith("struct bpfcompat_no_such_type___x.f does not exist")
    kprobe = judge("debian-sid-7.2", "unsupported-attach-required").remediation
    assert kprobe.startswith("bpfcompat_no_such_function does not exist on this kernel")


def test_a_missing_helper_gets_a_variant_manifest_that_parses() -> None:
    fix = judge("debian-11-5.10", "bpf-loop-no-fallback").remediation
    assert "bounded loop" in fix and fix.endswith("or require Linux 5.17.")
    snippet = fix[fix.index("program_variants:") : fix.index("\nor require")]
    manifest = Manifest.model_validate(yaml.safe_load(snippet))
    (group,) = manifest.program_variants
    assert [(p.name, p.requires_helper) for p in group.programs] == [
        ("loop_only", "bpf_loop"), ("FALLBACK_PROGRAM", None)
    ]  # fmt: skip


def test_a_rules_own_cell_remediation_is_kept() -> None:
    """Manifest lines a loader-setup rule wrote for this cell are not replaced."""
    fix = judge("debian-12-6.1", "fentry-missing-target").remediation
    assert fix.startswith("Declare what the object's loader does, in its manifest:")


# --- 4. where the verifier stopped --------------------------------------------------------------


@pytest.mark.parametrize("kernel_id", KERNELS)
def test_verifier_oob_points_at_the_source_line(kernel_id: str) -> None:
    verdict = judge(kernel_id, "verifier-oob")
    pin = verdict.pinpoint
    assert pin is not None and verdict.code == "VERIFIER_REJECTION"
    assert (pin.program, pin.insn, pin.instruction) == (
        "read_past_value", 8, "(79) r1 = *(u64 *)(r0 +8)"
    )  # fmt: skip
    assert pin.source == "return *next != 0;"
    assert pin.location == (None if kernel_id in OLD_FORMAT else "verifier-oob.bpf.c:30")
    assert pin.state and pin.state.startswith("R0") and "map_value" in pin.state
    assert pin.log == "isolated probe of read_past_value"
    fix = verdict.remediation
    assert fix.startswith("Fix read_past_value at ") and "`return *next != 0;`" in fix
    assert "it reads 8 bytes at offset 8 of the 8-byte map value" in fix


@pytest.mark.parametrize("kernel_id", KERNELS)
def test_verifier_limit_points_at_the_instruction(kernel_id: str) -> None:
    verdict = judge(kernel_id, "verifier-limit")
    pin = verdict.pinpoint
    assert pin is not None and verdict.code == "VERIFIER_LIMIT"
    assert (pin.program, pin.insn, pin.instruction) == (
        "too_many_branches", 16389, "(2d) if r6 > r7 goto pc+1"
    )  # fmt: skip
    assert pin.state and "R8" in pin.state
    # the stored log tail starts thousands of instructions after the last source line
    assert pin.source is None
    assert "too_many_branches hits a verifier limit at instruction 16389" in verdict.remediation


def test_the_whole_object_log_when_the_probe_log_is_missing() -> None:
    def probe_log_lost(c: dict[str, Any]) -> None:
        # edit: the isolated probe kept no log; the whole-object load still has one
        for p in c["result"]["discovery"]["programs"]:
            p["load_log"] = ""

    pin = judge("debian-sid-7.2", "verifier-oob", probe_log_lost).pinpoint
    assert pin is not None and pin.log == "whole-object load"
    assert (pin.insn, pin.source) == (8, "return *next != 0;")


def test_only_the_tail_of_a_log_is_read() -> None:
    log = _cell("debian-sid-7.2", "verifier-oob")["result"]["load"]["verifier_log"]
    huge = "; far away @ x.c:1\n" + "0: (b7) r0 = 0\n" * (MAX_LOG_CHARS // 8) + log
    pin = read_pinpoint(huge, "invalid access to map value, value_size=8 off=8 size=8")
    assert pin is not None and (pin.insn, pin.location) == (8, "verifier-oob.bpf.c:30")
    # a failure whose source line lies before the tail: no source line, never a wrong one
    cut = log.replace("; return *next != 0; @ verifier-oob.bpf.c:30\n", "")
    far = "; return *next != 0; @ verifier-oob.bpf.c:30\n" + "\n" * MAX_LOG_CHARS + cut
    pin = read_pinpoint(far, None)
    assert pin is not None and pin.insn == 8 and pin.source == "if (!value)"


def test_no_pinpoint_without_an_instruction() -> None:
    for kernel_id, artifact in (("debian-11-5.10", "bloom-filter-map"),
                                ("debian-11-5.10", "bpf-loop-no-fallback"),
                                ("debian-12-6.1", "kfunc-new")):  # fmt: skip
        assert judge(kernel_id, artifact).pinpoint is None, artifact
