"""One validation run's state and bookkeeping, shared by the step mixins (probes, loading,
fixups, functional) that ``run.Validator`` combines.
"""

from __future__ import annotations

import os
import time

from .limits import PROBE_LOG_TAIL
from .log import (
    _FAILED_MAP_RES,
    _FAILED_PROG_RES,
    _LOAD_ERRNO_TEXT_RE,
    LibbpfLog,
    extract_verifier_log,
    warnings_of,
    window_text,
)
from .result import skeleton
from .system import BootCache
from .tables import errno_from_text, errno_name, error_text
from .util import describe_exception, tail_text

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any, Callable

    from .args import Config
    from .libbpf import Libbpf
    from .system import KernelLog


class RunState:
    """What every step reads and writes; ``result`` is the JSON being built."""

    def __init__(self, config: Config, started: float) -> None:
        self.config = config
        self.started = started
        self.lib: Libbpf | None = None
        self.log = LibbpfLog()
        self.obj: int | None = None
        self.progs: list[int] = []  # libbpf program pointers, discovery order
        self.map_ptrs: dict[str, int] = {}
        self.links: list[int] = []
        self.ringbuf_fds: dict[int, int] = {}  # inner ringbuf bytes -> fd
        self.cpus: int | None = None
        self.elf: dict[str, Any] = {}
        self.plan_tests: list[dict[str, Any]] = []
        self.plan_error: str | None = None
        self.cache = BootCache()
        self.kernel_log: KernelLog | None = None
        self.bpftool_probe: dict[str, Any] | None = None  # parsed `bpftool feature probe -j`
        self._vbuf: Any = None
        self._vbuf_map: Any = None
        self._stats_ok: bool | None = None  # the kernel prints BPF_LOG_STATS summaries
        self._stats_map: Any = None
        self._stats_view: Any = None
        self._stats_count = 0
        self._stats_slice = 0
        self.whole_load: Any = None  # the whole-object load's Attempt (vstats)
        self.probe_loads = 0  # object loads the per-program probes did
        self.probe_insns = 0  # instructions the verifier processed in them
        self._old_print: int | None = None
        self.errors: list[dict[str, str]] = []
        self.warnings: list[dict[str, str]] = []
        self.timings: dict[str, float] = {}
        self.libbpf_log_path: str | None = None
        self.load_log_text = ""
        self._artifact_bytes: bytes | None = None  # read once, for globals' BTF
        self.target_objects: dict[str, int] = {}  # loaded objects extension programs target
        self.result = skeleton(config, self.timings, self.errors, self.warnings)

    def error(self, step: str, message: str) -> None:
        self.errors.append({"step": step, "message": message})

    def warn(self, step: str, message: str) -> None:
        self.warnings.append({"step": step, "message": message})

    def step(self, name: str, func: Callable[[], None]) -> None:
        """Run one step, timed; an exception becomes an ``errors`` entry, never a traceback."""
        begin = time.monotonic()
        try:
            func()
        except Exception as exc:
            self.error(name, describe_exception(exc))
        finally:
            self.timings[name] = round(time.monotonic() - begin, 4)

    def set_load_failure(self, stage: str, code: int, window: list[tuple[int, str]]) -> None:
        """Fill ``load`` for a failed open/load: errno, its names, libbpf's own words."""
        load = self.result["load"]
        text = window_text(window)
        messages = warnings_of(window)
        if code >= 4000:  # libbpf 0.x: recover the kernel's errno from its message
            found = _LOAD_ERRNO_TEXT_RE.findall(text)
            real = errno_from_text(found[-1]) if found else None
            if real:
                load["libbpf_error_code"] = code
                code = real
        load.update(
            status="fail",
            stage=stage,
            error_code=code,
            error=error_text(code),
            errno_name=errno_name(code),
            libbpf_messages=messages,
            verifier_log=tail_text(extract_verifier_log(text), PROBE_LOG_TAIL),
        )
        for regexes, key in ((_FAILED_PROG_RES, "failed_program"), (_FAILED_MAP_RES, "failed_map")):
            for regex in regexes:
                found = regex.findall(text)
                if found:
                    load[key] = found[-1]
                    break

    def _output_path(self, name: str) -> str:
        if self.config.log_dir:
            return os.path.join(self.config.log_dir, name)
        return f"{self.config.out}.{name}"
