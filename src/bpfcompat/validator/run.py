"""bpfcompat in-guest validator: one BPF object, one kernel, one JSON result (validator.v0.4).

The package is baked into every guest image and run as ``python3 -m bpfcompat.validator
--artifact X --out Y``. It therefore uses only the standard library and ctypes (the
guest's libbpf is the loader under test), keeps to syntax that runs on Python 3.9 through
3.14, and imports nothing heavy up front: guests run under software emulation where every
import and every syscall costs ~10x.

Order of work (each step timed in ``timings``): host facts (and the kernel log position)
-> BTF and lockdown facts -> capability probes (bpftool, cached per boot; libbpf type
probes) -> open -> discovery (with the helpers each program's instructions call) -> helper
probes for each program's own type (cached per boot) -> variant selection -> map fixups ->
whole-object load (with each program's verifier statistics) -> per-program load results
(what the whole-object load left unknown: programs.py) -> auto-attach -> functional tests
while links are alive -> lockdown lines the kernel logged meanwhile -> JSON + libbpf log.

The validator never dies with a traceback: a step that raises is recorded in ``errors``
and the run goes on. Exit codes: 0 pass, 2 fail (the kernel rejected the object, an
attach the user requires, or a required functional test), 1 usage or output error, or an
internal error that makes the result inconclusive (libbpf missing, a step that crashed).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import sys
import time

from .args import PROG, UsageError, parse_args
from .elf import inspect_elf
from .functional import FunctionalSteps
from .libbpf import Libbpf
from .limits import LOG_JSON_CHARS
from .loading import LoadSteps
from .log import make_print_callback, window_text
from .probes import ProbeSteps
from .programs import ProgramProbeSteps
from .result import CORE_STEPS, EXIT_ERROR, EXIT_FAIL, EXIT_PASS
from .system import KernelLog, lockdown_denials
from .util import describe_exception, mount_fs, read_mounts, read_text, tail_text, write_atomic

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any


class Validator(ProbeSteps, LoadSteps, ProgramProbeSteps, FunctionalSteps):
    """One validation run: each step fills its part of ``self.result`` and is timed."""

    # -- the steps
    def run(self) -> int:
        self.step("host", self.step_host)
        self.step("libbpf", self.step_libbpf)
        self.step("btf", self.step_btf)
        self.step("capabilities", self.step_capabilities)
        if self.lib is not None:
            self.step("open", self.step_open)
        if self.obj is not None:
            self.step("discovery", self.step_discovery)
        if self.config.probe_features and self.lib is not None:
            self.step("type_probes", self.step_type_probes)  # the fixed set even if open failed
        if self.obj is not None:
            if self.config.probe_features:
                self.step("helper_probes", self.step_helper_probes)
            self.log.mark("whole-object load")
            self.log.open_window()
            self.step("variants", self.step_variants)
            self.step("fixups", self.step_fixups)
            self.step("load", self.step_load)
            self.load_log_text += window_text(self.log.close_window())
            if self.config.probe_features:
                self.step("probes", self.step_program_probes)
            self.step("attach", self.step_attach)
        self.step("functional", self.step_functional)
        self.step("cleanup", self.step_cleanup)
        self.step("kernel_log", self.step_kernel_log)
        return self.finish()

    def step_host(self) -> None:
        self.kernel_log = KernelLog()  # first: everything the kernel says from here is ours
        uname = os.uname()
        host = self.result["host"]
        host.update(
            sysname=uname.sysname,
            nodename=uname.nodename,
            release=uname.release,
            version=uname.version,
            machine=uname.machine,
            python_version=sys.version.split()[0],
            boot_id=self.cache.boot_id,
            cmdline=(read_text("/proc/cmdline") or "").strip() or None,
            possible_cpus=(read_text("/sys/devices/system/cpu/possible") or "").strip() or None,
        )
        self._raise_memlock(host)
        self._raise_nofile()

    def step_libbpf(self) -> None:
        """Load the guest's libbpf and route its print stream into our log for the run."""
        lib, problem = Libbpf.load()
        if lib is None:
            self.error("libbpf", problem or "libbpf not found")
            load = self.result["load"]
            load.update(status="fail", stage="libbpf", error=problem)
            load.update(error_code=errno.ENOENT, errno_name="ENOENT")
            return
        self.lib = lib
        version = lib.version()
        self.result["host"].update(
            libbpf_version=version["version"],
            libbpf_soname=version["soname"],
            libbpf_path=version["path"],
        )
        thunk = make_print_callback(self.log)
        self._old_print = lib.set_print(ctypes.cast(thunk, ctypes.c_void_p))

    def _raise_memlock(self, host: dict[str, Any]) -> None:
        """Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; libbpf 0.x never bumps it."""
        try:
            import resource

            limit = resource.RLIMIT_MEMLOCK
            _, hard = resource.getrlimit(limit)
            try:
                resource.setrlimit(limit, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            except (ValueError, OSError):
                resource.setrlimit(limit, (hard, hard))  # no CAP_SYS_RESOURCE: soft up to hard
                self.warn("host", "RLIMIT_MEMLOCK raised only to its hard limit")
            host["memlock_raised"] = True
            host["memlock_limit"] = resource.getrlimit(limit)[0]
        except (ImportError, ValueError, OSError) as exc:
            self.warn("host", f"cannot raise RLIMIT_MEMLOCK: {exc}")

    def _raise_nofile(self) -> None:
        """Every loaded program, map and link holds an fd: with the default soft limit of
        1024 an object of a few thousand programs fails with EMFILE, which says nothing
        about the kernel. Real loaders raise the limit; so do we (this process only)."""
        try:
            import resource

            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = 65536 if hard == resource.RLIM_INFINITY else max(hard, 65536)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            except (ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ImportError, ValueError, OSError) as exc:
            self.warn("host", f"cannot raise RLIMIT_NOFILE: {exc}")

    def step_btf(self) -> None:
        btf = self.result["btf"]
        path = "/sys/kernel/btf/vmlinux"
        try:
            btf["kernel_btf_size"] = os.stat(path).st_size
            btf["kernel_btf_available"] = True
            btf["kernel_btf_path"] = path
        except OSError:
            pass
        custom = self.config.btf_custom_path
        if custom is not None:
            try:
                btf["custom_btf_size"] = os.stat(custom).st_size
            except OSError as exc:
                self.warn("btf", f"cannot stat --btf-custom-path {custom!r}: {exc.strerror}")
        btf["core_btf_source"] = (
            "custom" if custom is not None else "kernel" if btf["kernel_btf_available"] else None
        )
        self.elf = inspect_elf(self.config.artifact)
        btf["artifact_has_btf"] = self.elf["has_btf"]
        btf["artifact_has_btf_ext"] = self.elf["has_btf_ext"]
        self.result["artifact"] = self.elf
        self._lockdown()

    def _lockdown(self) -> None:
        """Lockdown changes what the verifier allows; only this file says it is the cause."""
        sec = self.result["security"]
        path = "/sys/kernel/security/lockdown"
        raw = read_text(path)
        if raw is None and read_mounts().get("/sys/kernel/security") != "securityfs":
            problem = mount_fs("securityfs", "/sys/kernel/security")
            sec["securityfs_mounted_by_validator"] = problem is None
            raw = read_text(path)
        if raw is None:
            sec["lockdown_error"] = "no /sys/kernel/security/lockdown (no lockdown LSM)"
            return
        sec["lockdown_raw"] = raw.strip()
        match = re.search(r"\[(\w+)\]", raw)
        sec["lockdown"] = match.group(1) if match else None

    def step_kernel_log(self) -> None:
        """Lockdown refusals the kernel logged while this run (and its tests) went on."""
        sec = self.result["security"]
        watch = self.kernel_log
        if watch is None:
            sec["lockdown_denials_error"] = "the kernel log was not opened (host step failed)"
            return
        try:
            sec["lockdown_denials"] = lockdown_denials(watch.messages())
        finally:
            watch.close()
        problems = [watch.error] if watch.error else []
        if watch.lost:
            problems.append("kernel log records were overwritten before they were read")
        sec["lockdown_denials_error"] = "; ".join(problems) or None

    # -- cleanup and output
    def step_cleanup(self) -> None:
        lib = self.lib
        if lib is None:
            return
        for link in self.links:
            lib.destroy_link(link)
        self.links = []
        if self.obj is not None:
            lib.close(self.obj)
            self.obj = None
        for obj in self.target_objects.values():
            lib.close(obj)
        self.target_objects = {}
        for fd in self.ringbuf_fds.values():
            if fd >= 0:
                os.close(fd)
        self.ringbuf_fds = {}

    def finish(self) -> int:
        """Decide status and exit code, write libbpf.log and the JSON (atomically)."""
        result = self.result
        load_ok = result["load"]["status"] == "pass"
        failed = (
            not load_ok
            or result["attach"]["status"] == "fail"
            or result["functional"]["status"] == "fail"
        )
        result["status"] = "fail" if failed else "pass"
        if self.lib is not None and self._old_print is not None:
            self.lib.set_print(self._old_print)
        full_log = self.log.render()
        logs = result["logs"]
        logs["libbpf"] = tail_text(full_log, LOG_JSON_CHARS)
        logs["libbpf_load"] = tail_text(self.load_log_text, LOG_JSON_CHARS)
        logs["libbpf_messages"] = self.log.count
        logs["libbpf_dropped"] = self.log.dropped
        log_path = self._output_path("libbpf.log")
        try:
            write_atomic(log_path, full_log.encode("utf-8", "replace"))
            logs["libbpf_log_path"] = log_path
        except OSError as exc:
            self.error("output", f"cannot write {log_path}: {exc.strerror}")
        self.timings["total"] = round(time.monotonic() - self.started, 4)
        startup = self._startup_seconds()
        if startup is not None:
            self.timings["process_start_to_main"] = startup
        internal = any(e["step"] in CORE_STEPS for e in self.errors)
        try:
            payload = json.dumps(result, indent=2, allow_nan=False, default=str)
            write_atomic(self.config.out, payload.encode("ascii") + b"\n")
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"{PROG}: error: cannot write --out {self.config.out!r}: {exc}\n")
            return EXIT_ERROR
        sys.stdout.write(
            f"{PROG}: {result['status']} (load {result['load']['status']}, attach "
            f"{result['attach']['status']}, functional {result['functional']['status']}"
            f"{', internal errors' if internal else ''}) -> {self.config.out}\n"
        )
        if internal:
            return EXIT_ERROR
        return EXIT_FAIL if failed else EXIT_PASS

    @staticmethod
    def _startup_seconds() -> float | None:
        """Seconds from process start to now minus our own runtime: interpreter start-up."""
        stat = read_text("/proc/self/stat")
        uptime = read_text("/proc/uptime")
        if not stat or not uptime:
            return None
        try:
            start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
            age = float(uptime.split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
        except (ValueError, IndexError, OSError):
            return None
        return round(max(age - (time.monotonic() - _MODULE_START), 0.0), 3)


_MODULE_START = time.monotonic()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 pass, 2 fail, 1 error)."""
    started = time.monotonic()
    try:
        config = parse_args(argv)
    except UsageError as exc:
        message = " ".join(str(exc).split())
        sys.stderr.write(f"{PROG}: error: {message}\n")
        return EXIT_ERROR
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return Validator(config, started).run()
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: error: interrupted\n")
        return EXIT_ERROR
    except Exception as exc:  # last line of defence: still no traceback
        sys.stderr.write(f"{PROG}: error: internal error: {describe_exception(exc)}\n")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
