"""Map fixups between open and load: what a project's loader does to size maps the object
leaves for it to size.
"""

from __future__ import annotations

from .state import RunState
from .tables import BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_HASH_OF_MAPS, error_text

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any


class FixupSteps(RunState):
    """Applied to the whole-object load and to every isolated probe alike."""

    # -- map fixups
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

    def _apply_fixups(self, obj: int, record: bool) -> list[dict[str, Any]]:
        """Size maps and install inner ringbufs on ``obj``, between open and load.

        Inner maps are never resized with bpf_map__set_max_entries (libbpf dereferences
        their NULL object pointer); they get a ready-made map via set_inner_map_fd.
        """
        lib = self.lib
        assert lib is not None
        if not self.config.fixups:
            return []
        maps = {}
        for bpf_map in lib.maps(obj):
            maps.setdefault(lib.map_name(bpf_map), bpf_map)
        results = []
        for name, want in self.config.fixups.items():
            item: dict[str, Any] = {
                "name": name,
                "requested": want["requested"],
                "applied_entries": None,
                "inner_ringbuf_bytes": want["inner"],
                "status": "applied",
                "error": None,
            }
            results.append(item)
            bpf_map = maps.get(name)
            if bpf_map is None:
                item["status"] = "not_found"
                item["error"] = f"map {name!r} is not in the object"
                continue
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
            if want["inner"] is not None:
                if lib.map_type(bpf_map) not in (
                    BPF_MAP_TYPE_ARRAY_OF_MAPS,
                    BPF_MAP_TYPE_HASH_OF_MAPS,
                ):
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
        return results if record else []

    def step_fixups(self) -> None:
        assert self.obj is not None
        self.result["map_fixups"] = self._apply_fixups(self.obj, record=True)
        for item in self.result["map_fixups"]:
            if item["status"] != "applied":
                self.warn("fixups", f"map {item['name']!r}: {item['status']}: {item['error']}")
