"""What a project's loader does between open and load, mirrored: size maps the object
leaves for it to size, set programs' types, attach targets and autoload.

Declared steps come from the manifest (the flags). Without them an object that relies on
its loader fails for the loader's reason on every kernel and hides the kernel's own
answer, so maps compiled with a zero size are given the size a loader would give them
(automatic fixups, each recorded with the manifest lines that declare it); a declared
value always wins, and --no-auto-fixups turns this off. Applied to the whole-object load
and to every isolated probe alike.
"""

from __future__ import annotations

import ctypes

from .globals import resolve as resolve_global
from .limits import AUTO_RINGBUF_BYTES, AUTO_STACK_VALUE_BYTES
from .state import RunState
from .tables import (
    BPF_MAP_TYPE_ARRAY_OF_MAPS,
    BPF_MAP_TYPE_HASH_OF_MAPS,
    MAP_TYPE_NAMES,
    error_text,
    map_type_name,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any

# Map types whose max_entries the kernel or libbpf wants as 0, or sets itself: local
# storage, cgroup storage and struct_ops maps must be 0; libbpf sizes a perf event array
# with max_entries 0 to the CPU count on its own; an arena counts pages.
_ZERO_IS_FINE = frozenset(
    MAP_TYPE_NAMES.index(n)
    for n in (
        "perf_event_array", "struct_ops", "sk_storage", "inode_storage", "task_storage",
        "cgrp_storage", "cgroup_storage", "percpu_cgroup_storage", "arena",
    )
)  # fmt: skip
_RINGBUFS = frozenset(MAP_TYPE_NAMES.index(n) for n in ("ringbuf", "user_ringbuf"))
_STACK_TRACE = MAP_TYPE_NAMES.index("stack_trace")


def manifest_lines(name: str, field: str, value: object) -> str:
    """The manifest lines that declare one map setting (YAML)."""
    return f"maps:\n  - name: {name}\n    {field}: {value}"


class FixupSteps(RunState):
    """Applied to the whole-object load and to every isolated probe alike."""

    def _possible_cpus(self) -> int:
        if self.cpus is None:
            assert self.lib is not None
            self.cpus = self.lib.num_possible_cpus()
        return self.cpus

    def _ringbuf_fd(self, size: int) -> int:
        if size not in self.ringbuf_fds:
            assert self.lib is not None
            self.ringbuf_fds[size] = self.lib.create_ringbuf(size)
        return self.ringbuf_fds[size]

    def _apply_fixups(self, obj: int, record: bool) -> dict[str, list[dict[str, Any]]]:
        """Every loader step on ``obj``, between open and load; with ``record``, what was
        done (result keys map_fixups, auto_sized_maps, program_setup)."""
        lib = self.lib
        assert lib is not None
        maps: dict[str, int] = {}
        for bpf_map in lib.maps(obj):
            maps.setdefault(lib.map_name(bpf_map), bpf_map)
        declared = [
            self._declared_map(name, want, maps.get(name))
            for name, want in self.config.fixups.items()
        ]
        auto = self._auto_fixups(maps) if self.config.auto_fixups else []
        programs = self._program_setup(obj, record)
        values = self._set_globals(obj)
        return {
            "map_fixups": declared,
            "auto_sized_maps": auto,
            "program_setup": programs,
            "globals_set": values,
        }

    def _set_globals(self, obj: int) -> list[dict[str, Any]]:
        """Write each declared global into libbpf's copy of its data section."""
        lib = self.lib
        assert lib is not None
        done: list[dict[str, Any]] = []
        for name, value in self.config.globals.items():
            item: dict[str, Any] = {"name": name, "value": value, "section": None}
            try:
                if self._artifact_bytes is None:
                    with open(self.config.artifact, "rb") as handle:
                        self._artifact_bytes = handle.read()
                spec, raw = resolve_global(self._artifact_bytes, name, value)
                item.update(section=spec.section, offset=spec.offset, size=spec.size)
                bpf_map = lib.find_map(obj, spec.section)
                address, size = lib.initial_value(bpf_map) if bpf_map else (None, 0)
                if address is None:
                    raise ValueError(f"libbpf has no writable copy of {spec.section}")
                if spec.offset + len(raw) > size:
                    raise ValueError(f"{spec.section} is {size} bytes, too short for {name}")
                ctypes.memmove(address + spec.offset, raw, len(raw))
                item.update(status="applied", error=None)
            except (OSError, ValueError) as exc:
                item.update(status="error", error=str(exc))
            done.append(item)
        return done

    def _declared_map(self, name: str, want: dict[str, Any], bpf_map: int | None) -> dict[str, Any]:
        """Sizes and inner ringbufs the manifest declares for one map.

        Inner maps are never resized with bpf_map__set_max_entries (libbpf dereferences
        their NULL object pointer); they get a ready-made map via set_inner_map_fd."""
        lib = self.lib
        assert lib is not None
        item: dict[str, Any] = {
            "name": name,
            "requested": want["requested"],
            "applied_entries": None,
            "inner_ringbuf_bytes": want["inner"],
            "value_size": want.get("value_size"),
            "key_size": want.get("key_size"),
            "status": "applied",
            "error": None,
        }
        if bpf_map is None:
            item["status"] = "not_found"
            item["error"] = f"map {name!r} is not in the object"
            return item
        problems = []
        if want["requested"] is not None:
            entries = (
                self._possible_cpus() if want["requested"] == "cpus" else int(want["requested"])
            )
            if entries <= 0:
                problems.append(f"cannot count possible CPUs: {error_text(-entries)}")
            else:
                rc = lib.set_max_entries(bpf_map, entries)
                if rc < 0:
                    problems.append(f"set_max_entries({entries}): {error_text(-rc)}")
                else:
                    item["applied_entries"] = entries
        for key, setter in (("value_size", lib.set_value_size), ("key_size", lib.set_key_size)):
            if want.get(key) is not None:
                rc = setter(bpf_map, want[key])
                if rc < 0:
                    problems.append(f"set {key}({want[key]}): {error_text(-rc)}")
        if want["inner"] is not None:
            if lib.map_type(bpf_map) not in (BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_HASH_OF_MAPS):
                problems.append("inner ringbuf requested for a map that is not a map-in-map")
            else:
                fd = self._ringbuf_fd(want["inner"])
                if fd < 0:
                    problems.append(
                        f"cannot create a {want['inner']}-byte RINGBUF: {error_text(-fd)}"
                    )
                else:
                    rc = lib.set_inner_map_fd(bpf_map, fd)
                    if rc < 0:
                        problems.append(f"set_inner_map_fd: {error_text(-rc)}")
        if problems:
            item["status"] = "error"
            item["error"] = "; ".join(problems)
        return item

    def _auto_fixups(self, maps: dict[str, int]) -> list[dict[str, Any]]:
        """Size what the object left zero and the manifest did not declare."""
        lib = self.lib
        assert lib is not None
        done: list[dict[str, Any]] = []
        for name, bpf_map in maps.items():
            want = self.config.fixups.get(name, {})
            type_id = lib.map_type(bpf_map)
            wants: list[tuple[str, int, str, Any]] = []
            if want.get("requested") is None and lib.map_max_entries(bpf_map) == 0:
                if type_id in _RINGBUFS:
                    wants.append(("max_entries", AUTO_RINGBUF_BYTES, "a 256 KiB ring buffer",
                                  AUTO_RINGBUF_BYTES))  # fmt: skip
                elif type_id not in _ZERO_IS_FINE and self._possible_cpus() > 0:
                    cpus = self._possible_cpus()
                    wants.append(("max_entries", cpus, "one entry per possible CPU", "cpus"))
            if (
                type_id == _STACK_TRACE
                and want.get("value_size") is None
                and lib.map_value_size(bpf_map) == 0
            ):
                wants.append(("value_size", AUTO_STACK_VALUE_BYTES,
                              "127 stack frames of 8 bytes (PERF_MAX_STACK_DEPTH)",
                              AUTO_STACK_VALUE_BYTES))  # fmt: skip
            for field, value, why, declared in wants:
                setter = lib.set_max_entries if field == "max_entries" else lib.set_value_size
                rc = setter(bpf_map, value)
                done.append(
                    {
                        "name": name,
                        "type": map_type_name(type_id),
                        "field": field,
                        "compiled": 0,
                        "applied": value if rc >= 0 else None,
                        "reason": f"compiled with {field} 0 (its loader sizes it): {why}",
                        "manifest": manifest_lines(name, field, declared),
                        "status": "applied" if rc >= 0 else "error",
                        "error": None if rc >= 0 else error_text(-rc),
                    }
                )
        return done

    def _program_setup(self, obj: int, record: bool) -> list[dict[str, Any]]:
        """Program types, attach targets and (for the whole object) autoload, as declared.

        Isolated probes choose autoload themselves (one program at a time), so only the
        whole-object load (``record``) applies the manifest's autoload."""
        lib = self.lib
        assert lib is not None
        if not self.config.programs:
            return []
        progs: dict[str, int] = {}
        for prog in lib.programs(obj):
            progs.setdefault(lib.prog_name(prog), prog)
        done: list[dict[str, Any]] = []
        for name, want in self.config.programs.items():
            item: dict[str, Any] = {"name": name, **{k: v for k, v in want.items() if k != "type"}}
            kind = want.get("type")
            if kind is not None:
                item["type"] = kind["type"]
                item["expected_attach_type"] = kind["expected_attach_type"]
            prog = progs.get(name)
            problems = []
            if prog is None:
                problems.append(f"program {name!r} is not in the object")
            else:
                if kind is not None:
                    rc = lib.set_prog_type(prog, kind["type_id"])
                    if rc >= 0 and kind["expected_attach_type_id"] is not None:
                        rc = lib.set_expected_attach_type(prog, kind["expected_attach_type_id"])
                    if rc < 0:
                        problems.append(f"set type {kind['type']}: {error_text(-rc)}")
                target_fd = 0
                if want.get("attach_program"):
                    target_fd, problem = self._target_program_fd(want["attach_program"])
                    if problem:
                        problems.append(problem)
                if want.get("attach_target") or target_fd > 0:
                    rc = lib.set_attach_target(prog, want.get("attach_target"), target_fd)
                    if rc < 0:
                        problems.append(
                            f"set attach target {want.get('attach_target')!r}: {error_text(-rc)}"
                        )
                if record and "autoload" in want:
                    rc = lib.set_autoload(prog, want["autoload"])
                    if rc < 0:
                        problems.append(f"set autoload: {error_text(-rc)}")
            item["status"] = "error" if problems else "applied"
            item["error"] = "; ".join(problems) or None
            done.append(item)
        return done

    def _target_program_fd(self, target: dict[str, str]) -> tuple[int, str | None]:
        """The fd of a program of another object, loaded once per run (kept open until
        cleanup): what an extension program replaces a function of."""
        lib = self.lib
        assert lib is not None
        path = target["object"]
        if path not in self.target_objects:
            obj, err = lib.open_file(path, self.config.btf_custom_path)
            if obj is None:
                return -1, f"cannot open target object {path!r}: {error_text(-err)}"
            rc = lib.load_object(obj)
            if rc < 0:
                lib.close(obj)
                return -1, f"target object {path!r} did not load: {error_text(-rc)}"
            self.target_objects[path] = obj
        prog = lib.find_program(self.target_objects[path], target["program"])
        fd = lib.prog_fd(prog) if prog else -1
        if fd < 0:
            return -1, f"target object {path!r} has no loaded program {target['program']!r}"
        return fd, None

    def step_fixups(self) -> None:
        assert self.obj is not None
        applied = self._apply_fixups(self.obj, record=True)
        self.result.update(applied)
        self.result["program_type_overrides"] = [
            {"program": p["name"], "type": p.get("type"),
             "expected_attach_type": p.get("expected_attach_type"), "status": p["status"]}
            for p in applied["program_setup"]
            if p.get("type")
        ]  # fmt: skip
        entries = {e["name"]: e for e in self.result["discovery"]["programs"]}
        for item in applied["program_setup"]:
            if "autoload" in item and item["status"] == "applied" and item["name"] in entries:
                entries[item["name"]]["autoload"] = item["autoload"]
        for key in ("map_fixups", "auto_sized_maps", "program_setup", "globals_set"):
            for item in applied[key]:
                if item["status"] != "applied":
                    self.warn(
                        "fixups", f"{key} {item['name']!r}: {item['status']}: {item['error']}"
                    )
