"""What the kernel supports, asked without the artifact (bpftool, libbpf's type and helper
probes, cached per boot) and with it (each program loaded alone, with its verifier log).
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import time

from .elf import decode_calls
from .fixups import FixupSteps
from .limits import (
    BPFTOOL_TIMEOUT,
    MAX_ISOLATED_PROBES,
    PROBE_LOG_TAIL,
    VERIFIER_BUF_BYTES,
    VERIFIER_FILE_CHARS,
)
from .log import (
    _LOAD_ERRNO_TEXT_RE,
    _SLOT_INIT_TEXT,
    extract_verifier_log,
    warnings_of,
    window_text,
)
from .tables import (
    FIXED_PROBE_MAP_TYPES,
    FIXED_PROBE_PROG_TYPES,
    MAP_TYPE_NAMES,
    PROG_TYPE_NAMES,
    errno_from_text,
    errno_name,
    map_type_name,
    prog_type_name,
)
from .util import (
    decode,
    describe_exception,
    find_executable,
    safe_filename,
    tail_text,
    write_atomic,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any

HELPER_PROBE_CACHE_REV = "1"  # bump when the meaning of a cached helper probe changes


class ProbeSteps(FixupSteps):
    """Capability probes and isolated per-program load probes."""

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
        st = os.stat(bpftool)
        key = f"{os.path.realpath(bpftool)}:{st.st_size}:{st.st_mtime_ns}"
        output = self.cache.get("bpftool-probe", key)
        if isinstance(output, str):
            caps["bpftool_probe_cached"] = True
        else:
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
                caps["bpftool_probe_error"] = f"timed out after {BPFTOOL_TIMEOUT:g}s"
                return
            except OSError as exc:
                caps["bpftool_probe_error"] = str(exc)
                return
            output = decode(proc.stdout)
            if proc.returncode != 0:
                caps["bpftool_probe_error"] = (
                    f"exit {proc.returncode}: {tail_text(decode(proc.stderr).strip(), 1024)}"
                )
                output = None
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

    # -- isolated per-program load probes
    def step_isolated_probes(self) -> None:
        entries = self.result["discovery"]["programs"]
        if len(entries) > MAX_ISOLATED_PROBES:
            reason = f"{len(entries)} programs: over {MAX_ISOLATED_PROBES}, not probed one by one"
            self.warn("probes", f"isolated load probes skipped ({reason})")
            for entry in entries:
                entry["load_skip_reason"] = reason
            return
        for index, entry in enumerate(entries):
            if self.config.programs.get(entry["name"], {}).get("autoload") is False:
                entry["load_skip_reason"] = "not loaded: autoload off in the manifest"
                continue
            self.log.mark(f"isolated load probe of program {entry['name']!r}")
            begin = time.monotonic()
            try:
                self._probe_program(index, entry)
            except Exception as exc:
                self.error("probes", f"{entry['name']}: {describe_exception(exc)}")
                entry["load_skip_reason"] = "probe crashed (see errors)"
            entry["load_seconds"] = round(time.monotonic() - begin, 4)

    def _probe_program(self, index: int, entry: dict[str, Any]) -> None:
        """Fresh open, only this program autoloaded, the same fixups, log on failure.

        The program's log level stays 0, so a passing program is verified without a log
        (fast, and immune to ENOSPC from a too-small buffer); on failure libbpf retries at
        log level 1 into our bounded buffer. If even 16 MiB is too small, the probe is redone
        with libbpf's own growing buffer and the log is read from its print stream.
        """
        rc, window, vlog, kfuncs = self._probe_once(index, use_buf=True)
        if rc == -errno.ENOSPC and vlog:  # the log outgrew our buffer, masking the errno
            rc, window, vlog, kfuncs = self._probe_once(index, use_buf=False)
        text = window_text(window)
        if vlog is None:  # no bpf_program__set_log_buf in this libbpf
            vlog = extract_verifier_log(text)
        if rc == 0:
            entry["kfuncs"] = kfuncs
            entry["load_status"] = "pass"
            entry["load_skip_reason"] = None
            return
        code = -rc
        if code >= 4000:
            found = _LOAD_ERRNO_TEXT_RE.findall(text)
            code = (found and errno_from_text(found[-1])) or code
        if code == errno.EBADF and _SLOT_INIT_TEXT in text:
            entry["load_status"] = "skipped"
            entry["load_skip_reason"] = (
                "the object statically initialises prog-array (tail-call) slots, so its "
                "programs cannot be loaded one at a time"
            )
            return
        entry["load_status"] = "fail"
        entry["load_skip_reason"] = None
        entry["load_errno"] = code
        entry["load_errno_name"] = errno_name(code)
        log = vlog or "\n".join(warnings_of(window)) + "\n"
        entry["load_log"] = tail_text(log.strip("\n") + "\n", PROBE_LOG_TAIL)
        if self.config.log_dir:
            directory = os.path.join(self.config.log_dir, "verifier")
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, f"{index:03d}-{safe_filename(entry['name'])}.log")
            body = tail_text(vlog, VERIFIER_FILE_CHARS) if vlog else ""
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text if not body else body + "\n-- libbpf --\n" + text)
            entry["load_log_path"] = path

    def _probe_once(
        self, index: int, use_buf: bool
    ) -> tuple[int, list[tuple[int, str]], str | None, list[int] | None]:
        """(rc, libbpf messages, verifier log, kfunc ids after a load that passed)."""
        lib = self.lib
        assert lib is not None
        obj, err = lib.open_file(self.config.artifact, self.config.btf_custom_path)
        if obj is None:
            return err, [], None, None
        vlog: str | None = None
        kfuncs: list[int] | None = None
        try:
            progs = lib.programs(obj)
            for position, prog in enumerate(progs):
                lib.set_autoload(prog, position == index)
            self._apply_fixups(obj, record=False)
            has_buf = False
            if use_buf and index < len(progs):
                if self._vbuf is None:
                    # Anonymous mmap: zero pages on demand, so the 16 MiB buffer costs only
                    # the pages the verifier writes; create_string_buffer would zero-fill
                    # all 4096 pages in every validator process (slow under emulation).
                    self._vbuf_map = mmap.mmap(-1, VERIFIER_BUF_BYTES)
                    self._vbuf = (ctypes.c_char * VERIFIER_BUF_BYTES).from_buffer(self._vbuf_map)
                self._vbuf[0] = b"\0"
                has_buf = lib.set_log_buf(progs[index], self._vbuf, VERIFIER_BUF_BYTES)
            self.log.open_window()
            rc = lib.load_object(obj)
            window = self.log.close_window()
            if has_buf:
                vlog = decode(ctypes.string_at(self._vbuf))
            if rc == 0 and index < len(progs):
                kfuncs = self._kfunc_ids(progs[index])
        finally:
            lib.close(obj)
        return rc, window, vlog, kfuncs

    def _kfunc_ids(self, prog: int) -> list[int] | None:
        """BTF ids of the kfuncs a loaded program calls (libbpf wrote them in at load)."""
        assert self.lib is not None
        insns = self.lib.prog_insns(prog)
        return decode_calls(insns)[1] if insns is not None else None
