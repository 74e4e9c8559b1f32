"""What the kernel supports, asked without the artifact: bpftool, libbpf's type probes
and the helpers each program calls, probed for its own program type (cached per boot).
Each program's own load result is programs.py's.
"""

from __future__ import annotations

import json
import os

from .limits import BPFTOOL_TIMEOUT
from .state import RunState
from .tables import (
    FIXED_PROBE_MAP_TYPES,
    FIXED_PROBE_PROG_TYPES,
    MAP_TYPE_NAMES,
    PROG_TYPE_NAMES,
    map_type_name,
    prog_type_name,
)
from .util import decode, find_executable, tail_text, write_atomic

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any

HELPER_PROBE_CACHE_REV = "1"  # bump when the meaning of a cached helper probe changes


class ProbeSteps(RunState):
    """Capability, type and helper probes."""

    def step_capabilities(self) -> None:
        caps = self.result["capabilities"]
        self._attach_prereqs(caps["attach_prereqs"])
        bpftool = find_executable("bpftool")
        caps["bpftool_available"] = bpftool is not None
        caps["bpftool_path"] = bpftool
        if bpftool and self.config.probe_features:
            self._bpftool_probe(bpftool, caps)

    def _attach_prereqs(self, prereqs: dict[str, Any]) -> None:
        """Where tracefs is: libbpf 1.x uses /sys/kernel/tracing, 0.x only debugfs's copy."""
        for path in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
            if os.path.isdir(os.path.join(path, "events")):
                if not prereqs["tracefs"]:
                    prereqs["tracefs"] = True
                    prereqs["tracefs_path"] = path
                    prereqs["kprobe_events"] = os.path.exists(f"{path}/kprobe_events")
                    prereqs["tracepoint_events"] = True
                if path.startswith("/sys/kernel/debug"):
                    prereqs["debugfs_tracing"] = True
        prereqs["kprobe_pmu"] = os.path.exists("/sys/bus/event_source/devices/kprobe/type")

    def _bpftool_probe(self, bpftool: str, caps: dict[str, Any]) -> None:
        """``bpftool feature probe -j``, once per boot: it loads hundreds of test programs."""
        key = bpftool_key(bpftool)
        output = self.cache.get("bpftool-probe", key)
        if isinstance(output, str):
            caps["bpftool_probe_cached"] = True
        else:
            output, error = run_bpftool_probe(bpftool)
            if error:
                caps["bpftool_probe_error"] = error
                if output is None:
                    return
        if output is not None:
            try:
                parsed = json.loads(output)
            except ValueError as exc:
                caps["bpftool_probe_error"] = f"output is not JSON: {exc}"
                parsed = None
            if isinstance(parsed, dict):
                caps["bpftool_probe_ok"] = True
                self.bpftool_probe = parsed
                if not caps["bpftool_probe_cached"]:
                    self.cache.put("bpftool-probe", key, output)
            path = self._output_path("bpftool-feature-probe.json")
            write_atomic(path, output.encode())
            caps["bpftool_probe_output_path"] = path

    def step_type_probes(self) -> None:
        """libbpf's own map/program type probes: the artifact's types plus a fixed set."""
        lib = self.lib
        assert lib is not None
        caps = self.result["capabilities"]
        disc = self.result["discovery"]
        map_ids = {MAP_TYPE_NAMES.index(n) for n in FIXED_PROBE_MAP_TYPES}
        map_ids.update(m["type_id"] for m in disc["maps"] if m["type_id"] > 0)
        prog_ids = {PROG_TYPE_NAMES.index(n) for n in FIXED_PROBE_PROG_TYPES}
        prog_ids.update(p["type_id"] for p in disc["programs"] if p["type_id"] > 0)
        key = str(self.result["host"].get("libbpf_path") or lib.soname)
        cached = self.cache.get("libbpf-type-probes", key) or {}
        store: dict[str, dict[str, bool]] = {
            "map": dict(cached.get("map", {})),
            "prog": dict(cached.get("prog", {})),
        }
        for kind, ids, namer, prober, target in (
            ("map", map_ids, map_type_name, lib.probe_map_type, caps["map_types"]),
            ("prog", prog_ids, prog_type_name, lib.probe_prog_type, caps["program_types"]),
        ):
            for type_id in sorted(ids):
                name = namer(type_id)
                if name in store[kind]:
                    target[name] = store[kind][name]
                    continue
                supported, problem = prober(type_id)
                target[name] = supported
                if supported is None:
                    caps["probe_errors"][f"{kind}:{name}"] = problem
                else:
                    store[kind][name] = supported
        self.cache.put("libbpf-type-probes", key, store)

    # -- helpers each program calls
    def step_helper_probes(self) -> None:
        """Probe each program's helpers for its own program type; bpftool's lists for its types.

        One BPF_PROG_LOAD per (program type, helper) not yet known this boot: conclusive
        answers are cached per boot like the type probes, inconclusive ones (libbpf cannot
        probe tracing/lsm/ext/struct_ops helpers) are recorded in helper_probe_error.
        """
        lib = self.lib
        assert lib is not None
        caps = self.result["capabilities"]
        entries = self.result["discovery"]["programs"]
        key = f"{self.result['host'].get('libbpf_path') or lib.soname}:{HELPER_PROBE_CACHE_REV}"
        cached = self.cache.get("libbpf-helper-probes", key)
        store: dict[str, bool] = {}
        if isinstance(cached, dict):
            store = {k: v for k, v in cached.items() if isinstance(v, bool)}
        stored = len(store)
        seen: dict[str, tuple[bool | None, str | None]] = {}
        for entry in entries:
            if not entry["helpers"]:
                continue
            if entry["type_id"] <= 0:
                entry["helper_probe_error"] = "program type unknown to this libbpf"
                continue
            if caps["program_types"].get(entry["type"]) is False:
                # libbpf's helper probe "assumes supported" when the type itself fails to load
                entry["helper_probe_error"] = (
                    f"not probed: the program type probe found {entry['type']} unsupported"
                )
                continue
            problems: dict[str, None] = {}
            for helper in entry["helpers"]:
                probe_key = f"{entry['type_id']}:{helper['id']}"
                if probe_key in store:
                    helper["supported"] = store[probe_key]
                    continue
                if probe_key not in seen:
                    seen[probe_key] = lib.probe_helper(entry["type_id"], helper["id"])
                supported, problem = seen[probe_key]
                helper["supported"] = supported
                if supported is None:
                    problems[problem or "inconclusive"] = None
                else:
                    store[probe_key] = supported
            if problems:
                entry["helper_probe_error"] = "; ".join(problems)
        if len(store) > stored:
            self.cache.put("libbpf-helper-probes", key, store)
        self._bpftool_helpers(caps, entries)

    def _bpftool_helpers(self, caps: dict[str, Any], entries: list[dict[str, Any]]) -> None:
        """bpftool's per-type helper lists, for the artifact's program types only.

        bpftool writes "<type>_available_helpers" lists; an empty list means it could not
        probe that type (tracing, lsm, ext, struct_ops, or a type the kernel lacks), so it
        is recorded as null. helper_program_types names, for each helper some program may
        not call, every program type bpftool found it usable from (empty: none). Where this
        run's own probe refused a helper for a type, that type is taken out of both: bpftool
        linked against libbpf < 1.5 lists every helper the kernel knows for every type.
        """
        table = (self.bpftool_probe or {}).get("helpers")
        if not isinstance(table, dict):
            return
        suffix = "_available_helpers"
        refused = {
            (e["type"], h["name"])
            for e in entries
            for h in e["helpers"] or []
            if h["supported"] is False
        }
        for entry in entries:
            names = table.get(entry["type"] + suffix)
            if entry["type_id"] > 0 and entry["type"] not in caps["helpers"]:
                listed = isinstance(names, list) and names
                caps["helpers"][entry["type"]] = (
                    [n for n in names if (entry["type"], n) not in refused] if listed else None
                )
        for _, name in sorted(refused):
            if name and name not in caps["helper_program_types"]:
                caps["helper_program_types"][name] = [
                    key[: -len(suffix)]
                    for key, names in table.items()
                    if key.endswith(suffix)
                    and isinstance(names, list)
                    and name in names
                    and (key[: -len(suffix)], name) not in refused
                ]


def bpftool_key(bpftool: str) -> str:
    """What a cached probe answer depends on besides the boot: this bpftool binary."""
    st = os.stat(bpftool)
    return f"{os.path.realpath(bpftool)}:{st.st_size}:{st.st_mtime_ns}"


def run_bpftool_probe(bpftool: str) -> tuple[str | None, str | None]:
    """(stdout, error) of ``bpftool feature probe -j``; stdout is None when it did not run
    or failed."""
    import subprocess

    try:
        proc = subprocess.run(
            [bpftool, "feature", "probe", "-j"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=BPFTOOL_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {BPFTOOL_TIMEOUT:g}s"
    except OSError as exc:
        return None, str(exc)
    if proc.returncode != 0:
        return None, f"exit {proc.returncode}: {tail_text(decode(proc.stderr).strip(), 1024)}"
    return decode(proc.stdout), None
