"""The validator's result (validator.v0.4): its shape is written down once, here.

``skeleton`` returns every key a result has, with the value it keeps when the step that
fills it never runs; each step then fills its part. The host reads results through one
typed model (bpfcompat.matrix.result) that tolerates older schema versions, so keys are
only ever added.
"""

from __future__ import annotations

from .util import utc_timestamp

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any

VALIDATOR_VERSION = "0.4.0"
SCHEMA_VERSION = "validator.v0.4"

EXIT_PASS = 0
EXIT_ERROR = 1
EXIT_FAIL = 2

HOST_KEYS = (
    "sysname", "nodename", "release", "version", "machine", "python_version", "boot_id",
    "cmdline", "possible_cpus", "libbpf_version", "libbpf_soname", "libbpf_path",
    "memlock_raised", "memlock_limit",
)  # fmt: skip

# Steps whose crash leaves the kernel verdict unknown: their errors make the exit code 1.
CORE_STEPS = ("libbpf", "open", "discovery", "variants", "fixups", "load", "attach", "functional")


def skeleton(
    c: Any, timings: dict[str, float], errors: list[dict[str, str]], warnings: list[dict[str, str]]
) -> dict[str, Any]:
    """Every key of a result, for the run configured by ``c`` (an args.Config)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "validator_version": VALIDATOR_VERSION,
        "timestamp": utc_timestamp(),
        "status": "fail",
        "host": dict.fromkeys(HOST_KEYS),
        "input": {
            "artifact": c.artifact,
            "manifest": c.manifest_path,
            "functional_plan": c.plan_path,
            "attach_mode": c.attach_mode,
            "probe_features": c.probe_features,
            "log_dir": c.log_dir,
            "set_map_max_entries": c.raw_max_entries,
            "set_map_inner_ringbuf": c.raw_inner_ringbuf,
            "prog_variants": [g["raw"] for g in c.variant_groups],
            "btf_custom_path": c.btf_custom_path,
        },
        "artifact": {},
        "map_fixups": [],
        "auto_sized_maps": [],
        "auto_typed_programs": [],
        "program_setup": [],
        "globals_set": [],
        "program_type_overrides": [],
        "program_variants": [],
        "btf": {
            "kernel_btf_available": False,
            "kernel_btf_path": None,
            "kernel_btf_size": None,
            "artifact_has_btf": False,
            "artifact_has_btf_ext": False,
            # An external BTF file given with --btf-custom-path, and which BTF libbpf
            # relocates CO-RE against: "custom", "kernel" or None (neither exists).
            "custom_btf_path": c.btf_custom_path,
            "custom_btf_size": None,
            "core_btf_source": None,
        },
        "security": {
            "lockdown": None,
            "lockdown_raw": None,
            "lockdown_error": None,
            "securityfs_mounted_by_validator": False,
            "lockdown_denials": [],
            "lockdown_denials_error": None,
        },
        "capabilities": {
            "bpftool_available": False,
            "bpftool_path": None,
            "bpftool_probe_ok": False,
            "bpftool_probe_output_path": None,
            "bpftool_probe_cached": False,
            "bpftool_probe_error": None,
            "map_types": {},
            "program_types": {},
            "probe_errors": {},
            "helpers": {},
            "helper_program_types": {},
            "attach_prereqs": {
                "tracefs": False,
                "tracefs_path": None,
                "kprobe_events": False,
                "tracepoint_events": False,
                "kprobe_pmu": False,
                "debugfs_tracing": False,
            },
        },
        "discovery": {
            "program_count": 0,
            "map_count": 0,
            "programs": [],
            "maps": [],
            "probe_loads": 0,
        },
        "load": {
            "status": "fail",
            "stage": None,
            "error_code": 0,
            "error": None,
            "errno_name": None,
            "failed_program": None,
            "failed_map": None,
            "libbpf_error_code": None,
            "libbpf_messages": [],
            "verifier_log": "",
        },
        "attach": {
            "mode": c.attach_mode,
            "status": "skipped",
            "attempted": 0,
            "passed": 0,
            "failed": 0,
            "skipped": 0,
            "required_failed": [],
        },
        "functional": {"status": "skipped", "tests": [], "flaky": False},
        "logs": {
            "libbpf": "",
            "libbpf_load": "",
            "libbpf_log_path": None,
            "libbpf_messages": 0,
            "libbpf_dropped": 0,
        },
        "timings": timings,
        "errors": errors,
        "warnings": warnings,
    }
