"""The loader's own path: open, discovery, variant selection, whole-object load, auto-attach."""

from __future__ import annotations

import errno

from .elf import decode_calls
from .fixups import FixupSteps
from .log import load_errno, warnings_of, window_text
from .tables import (
    BPF_PROG_TYPE_RAW_TRACEPOINT,
    error_text,
    helper_entry_name,
    map_type_name,
    prog_type_name,
)
from .vstats import LoadEvidence

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any


class LoadSteps(FixupSteps, LoadEvidence):
    """open -> discovery -> variants -> load -> attach."""

    def step_open(self) -> None:
        lib = self.lib
        assert lib is not None
        if self.elf and not self.elf["elf_valid"]:  # (empty if the btf step crashed)
            load = self.result["load"]
            load.update(
                status="fail",
                stage="open",  # the ELF check is the first half of opening; libbpf never sees it
                error_code=errno.ENOEXEC,
                errno_name="ENOEXEC",
                error=f"not a valid BPF ELF object: {self.elf.get('elf_error')}",
            )
            return
        self.log.mark(f"open {self.config.artifact}")
        self.log.open_window()
        obj, err = lib.open_file(self.config.artifact, self.config.btf_custom_path)
        window = self.log.close_window()
        self.load_log_text += window_text(window)
        if obj is None:
            self.set_load_failure("open", -err, window)
            return
        self.obj = obj

    def step_discovery(self) -> None:
        lib = self.lib
        assert lib is not None and self.obj is not None
        required = {p["name"]: p["attach_required"] for p in self.config.manifest_programs}
        disc = self.result["discovery"]
        self.progs = lib.programs(self.obj)
        probing = self.config.probe_features
        for prog in self.progs:
            name = lib.prog_name(prog)
            type_id = lib.prog_type(prog)
            insns = lib.prog_insns(prog)
            helpers = None
            helper_problem = "libbpf has no bpf_program__insns (before 0.6)"
            if insns is not None:
                helpers = [
                    {"id": i, "name": helper_entry_name(i), "supported": None}
                    for i in decode_calls(insns)[0]
                ]
                helper_problem = "feature probing disabled" if helpers and not probing else None
            disc["programs"].append(
                {
                    "name": name,
                    "section": lib.prog_section(prog),
                    "type": prog_type_name(type_id),
                    "type_id": type_id,
                    "autoload": lib.prog_autoload(prog),
                    "variant_group": None,
                    "attach_required": required.get(name, False),
                    "attach_status": "skipped",
                    "attach_error": None,
                    "attach_errno": 0,
                    "attach_skip_reason": None,
                    "load_status": "skipped",
                    "load_errno": 0,
                    "load_errno_name": None,
                    "load_log": "",
                    "load_log_path": None,
                    "load_skip_reason": None if probing else "feature probing disabled",
                    "load_seconds": None,
                    "helpers": helpers,
                    "kfuncs": None,
                    "helper_probe_error": helper_problem,
                    "verifier_stats": None,
                }
            )
        for bpf_map in lib.maps(self.obj):
            name = lib.map_name(bpf_map)
            type_id = lib.map_type(bpf_map)
            self.map_ptrs.setdefault(name, bpf_map)
            disc["maps"].append(
                {
                    "name": name,
                    "type": map_type_name(type_id),
                    "type_id": type_id,
                    "max_entries": lib.map_max_entries(bpf_map),
                    "value_size": lib.map_value_size(bpf_map),
                    "key_size": lib.map_key_size(bpf_map),
                }
            )
        disc["program_count"] = len(disc["programs"])
        disc["map_count"] = len(disc["maps"])
        known = {p["name"] for p in disc["programs"]}
        for name in required:
            if name not in known:
                self.warn("manifest", f"manifest program {name!r} is not in the object")

    # -- variant selection
    def step_variants(self) -> None:
        lib = self.lib
        assert lib is not None
        entries = self.result["discovery"]["programs"]
        by_name = {e["name"]: i for i, e in reversed(list(enumerate(entries)))}
        helper_cache: dict[int, tuple[bool | None, str | None]] = {}
        for group in self.config.variant_groups:
            record: dict[str, Any] = {
                "group": group["group"],
                "chosen": None,
                "disabled": [],
                "probes": [],
                "status": "error",
                "error": None,
            }
            self.result["program_variants"].append(record)
            missing = [v["program"] for v in group["variants"] if v["program"] not in by_name]
            if missing:
                record["error"] = f"program(s) not in the object: {', '.join(missing)}"
                continue
            chosen = None
            for variant in group["variants"]:
                helper_id = variant["helper_id"]
                problem = None
                if helper_id == 0:
                    supported: bool | None = True
                else:
                    if helper_id not in helper_cache:
                        helper_cache[helper_id] = lib.probe_helper(
                            BPF_PROG_TYPE_RAW_TRACEPOINT, helper_id
                        )
                    supported, problem = helper_cache[helper_id]
                probe = {
                    "program": variant["program"],
                    "helper": variant["helper"],
                    "helper_id": helper_id,
                    "supported": supported,
                }
                if problem:
                    probe["error"] = problem
                record["probes"].append(probe)
                if chosen is None and supported:
                    chosen = variant["program"]
            if chosen is None:
                record["status"] = "unsatisfied"
                record["error"] = (
                    "no variant's helper is supported and there is no unconditional "
                    "fallback; all variants are left enabled"
                )
                continue
            record["chosen"] = chosen
            record["status"] = "selected"
            for variant in group["variants"]:
                index = by_name[variant["program"]]
                entries[index]["variant_group"] = group["group"]
                if variant["program"] != chosen:
                    rc = lib.set_autoload(self.progs[index], False)
                    if rc < 0:
                        record["status"] = "error"
                        record["error"] = f"cannot disable {variant['program']}: {error_text(-rc)}"
                        continue
                    entries[index]["autoload"] = False
                    record["disabled"].append(variant["program"])
                else:
                    lib.set_autoload(self.progs[index], True)
                    entries[index]["autoload"] = True

    # -- whole-object load
    def step_load(self) -> None:
        """Load the object as its loader would; with probing on, every program's
        statistics log is armed, so the per-program probes start from what it proves."""
        lib = self.lib
        assert lib is not None and self.obj is not None
        every = list(range(len(self.progs)))
        armed = (
            self.config.probe_features
            and self.stats_supported()
            and self._arm_stats(self.progs, every)
        )
        self.log.open_window()
        rc = lib.load_object(self.obj)
        window = self.log.close_window()
        if armed and rc < 0 and load_errno(rc, window_text(window)) == errno.ENOSPC:
            # A statistics slice overflowed (our buffer, not the kernel's verdict): load
            # again as the loader would, without any log.
            self.warn("load", "a verifier statistics log overflowed; loaded again without")
            rc, window = self._load_again()
            armed = False
        loaded = [i for i, prog in enumerate(self.progs) if lib.prog_autoload(prog)]
        attempt = self._record_attempt(self.progs, loaded, rc, window, armed)
        self.whole_load = attempt
        if rc == 0:
            self.result["load"].update(status="pass", stage="load")
            for index in loaded:
                entry = self.result["discovery"]["programs"][index]
                if entry["kfuncs"] is None:
                    entry["kfuncs"] = attempt.kfuncs.get(index)
            return
        self.set_load_failure("load", -rc, window)

    def _load_again(self) -> tuple[int, list[tuple[int, str]]]:
        """The whole-object load from a fresh open: the same autoload choices and fixups
        (already recorded), no log; attach then uses this object's programs."""
        lib = self.lib
        assert lib is not None and self.obj is not None
        obj, err = lib.open_file(self.config.artifact, self.config.btf_custom_path)
        if obj is None:
            return err, []
        progs = lib.programs(obj)
        for position, prog in enumerate(progs):
            old = self.progs[position] if position < len(self.progs) else None
            lib.set_autoload(prog, old is not None and lib.prog_autoload(old))
        self._apply_fixups(obj, record=False)
        lib.close(self.obj)
        self.obj, self.progs = obj, progs
        self.log.open_window()
        rc = lib.load_object(obj)
        return rc, self.log.close_window()

    # -- attach
    def step_attach(self) -> None:
        lib = self.lib
        assert lib is not None
        attach = self.result["attach"]
        entries = self.result["discovery"]["programs"]
        mode = self.config.attach_mode
        loaded = self.result["load"]["status"] == "pass"
        for entry in entries:
            if not loaded:
                entry["attach_skip_reason"] = "object did not load"
            elif mode == "disabled":
                entry["attach_skip_reason"] = "attach mode disabled"
            elif not entry["autoload"]:
                entry["attach_skip_reason"] = "program not loaded (autoload off)"
        if not loaded or mode == "disabled":
            attach["skipped"] = len(entries)
            return
        self.log.mark("auto-attach")
        for index, entry in enumerate(entries):
            if not entry["autoload"]:
                attach["skipped"] += 1
                continue
            self.log.open_window()
            link, err = lib.attach(self.progs[index])
            window = self.log.close_window()
            if link is not None:
                self.links.append(link)
                entry["attach_status"] = "pass"
                attach["passed"] += 1
                continue
            code = -err
            messages = warnings_of(window, 3)
            if code in (errno.EOPNOTSUPP, errno.ESRCH) and not messages:
                # libbpf has no auto-attach for this section (SEC("xdp"), SEC("kprobe"), ...)
                entry["attach_skip_reason"] = (
                    f"libbpf cannot auto-attach section {entry['section']!r}"
                )
                attach["skipped"] += 1
                continue
            entry["attach_status"] = "fail"
            entry["attach_errno"] = code
            entry["attach_error"] = messages[-1] if messages else error_text(code)
            attach["failed"] += 1
        attach["attempted"] = attach["passed"] + attach["failed"]
        for entry in entries:
            if entry["attach_required"] and entry["attach_status"] != "pass":
                if entry["autoload"]:
                    attach["required_failed"].append(entry["name"])
                else:
                    self.warn("attach", f"required program {entry['name']!r} was not loaded")
        if attach["required_failed"] or (mode == "required" and attach["failed"]):
            attach["status"] = "fail"
        elif attach["failed"]:
            attach["status"] = "warn"
        elif attach["passed"]:
            attach["status"] = "pass"
