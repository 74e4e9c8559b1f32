"""Build a kernel from a Debian kernel source package (`source: build` in kernels.yaml).

The source package is fetched with apt like any kernel package; the config is a make
*config base with the entry's CONFIG_X=... lines applied over it, and every line is
checked to hold afterwards, because kconfig silently drops an option whose dependencies
are unmet. Only the boot image is built (no modules: what the guest needs is built in).
DWARF is kept so pahole can generate the kernel's BTF as a detached file even when the
kernel itself has none (CONFIG_DEBUG_INFO_BTF=n).

Every step runs under a time limit and a stall detector (no output for `stall_s`), is
killed when the run is interrupted, and fails with one line naming the step; the build
log is kept beside the cache for the details. Nothing reaches the cache unless every
step succeeded (the caller writes the entry atomically).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bpfcompat.errors import BuildError, FetchError
from bpfcompat.vm.apt import AptWorkspace, discover_mirror
from bpfcompat.vm.arch import get_arch, host_arch
from bpfcompat.vm.cache import entry_lock
from bpfcompat.vm.kernels import KernelFiles, extract_deb
from bpfcompat.vm.proc import die_with_parent
from bpfcompat.vm.spec import BuildSpec, KernelSpec

BUILD_RECIPE = 1  # bump when the steps below change what gets built
TOOLS = ("make", "gcc", "bc", "bison", "flex", "perl", "pahole", "tar", "xz")
LOG_TAIL = 200  # lines kept in memory for the error message


@dataclass
class Built:
    files: KernelFiles
    meta: dict[str, str]


def recipe_identity(spec: KernelSpec) -> str:
    """What determines the built kernel (the cache entry's name carries it)."""
    build = spec.build or BuildSpec()
    parts = [str(BUILD_RECIPE), spec.arch, str(spec.suite), str(spec.package), build.base]
    return hashlib.sha256("\0".join(parts + build.config).encode()).hexdigest()[:16]


def build_log_path(root: Path, spec: KernelSpec) -> Path:
    return root / "kernels" / "build-logs" / f"{spec.id}.log"


def build_kernel(
    spec: KernelSpec,
    root: Path,
    scratch: Path,
    mirror: str | None,
    stop: threading.Event | None,
    say: Callable[[str], None],
) -> Built:
    assert spec.build is not None and spec.suite is not None and spec.package is not None
    arch = get_arch(spec.arch)
    if arch.name != host_arch():
        raise BuildError(
            f"building an {arch.name} kernel on an {host_arch()} host is not supported "
            "(no cross toolchain is set up)"
        )
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise BuildError(f"kernel build needs {', '.join(missing)}: run scripts/setup.sh")
    log_path = build_log_path(root, spec)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    runner = _StepRunner(log_path, spec.build, stop, say)
    with log_path.open("w") as log:
        runner.log = log
        say("fetching the source")
        deb, version = _fetch_source(spec, root, scratch, mirror)
        src = runner.unpack(deb, scratch)
        make = ["make", f"ARCH={arch.kernel_arch}"]
        runner.step("configure", [*make, spec.build.base], src)
        with (src / ".config").open("a") as config:
            config.write("".join(f"{line}\n" for line in spec.build.config))
        runner.step("configure", [*make, "olddefconfig"], src)
        _check_config(src / ".config", spec.build.config)
        jobs = str(os.cpu_count() or 1)
        runner.step("compile", [*make, f"-j{jobs}", arch.image_target], src)
        release = (src / "include/config/kernel.release").read_text().strip()
        btf = scratch / "vmlinux.btf"
        runner.step(
            "generate BTF", ["pahole", f"-j{jobs}", f"--btf_encode_detached={btf}", "vmlinux"], src
        )
        if not btf.is_file() or btf.stat().st_size == 0:
            raise BuildError(f"build step generate BTF: pahole wrote no BTF (log: {log_path})")
    image = src / arch.image_path
    # The recipe is part of the version: results validated on one config are never reused
    # for a kernel built with another.
    meta = {
        "package": spec.package,
        "version": f"{version} (recipe {recipe_identity(spec)})",
        "suite": spec.suite,
    }
    return Built(KernelFiles(image, release, src / ".config", [], btf), meta)


def _fetch_source(
    spec: KernelSpec, root: Path, scratch: Path, mirror: str | None
) -> tuple[Path, str]:
    assert spec.suite is not None and spec.package is not None
    arch = get_arch(host_arch()).debian
    workspace = AptWorkspace.for_suite(root, spec.suite, arch, mirror or discover_mirror())
    try:
        with entry_lock(workspace.root):
            workspace.prepare()
            fields = workspace.show(spec.package)
            deb = workspace.download(spec.package, fields["Version"], scratch / "debs")
    except FetchError as exc:
        raise BuildError(f"build step fetch source: {exc}") from None
    return deb, fields["Version"]


def _check_config(config: Path, wanted: list[str]) -> None:
    """Every requested line must hold in the final .config (n: absent or not set)."""
    final: dict[str, str] = {}
    for line in config.read_text(errors="replace").splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            final[key] = value
    for line in wanted:
        key, _, value = line.partition("=")
        got = final.get(key, "n")
        if got != value:
            shown = f"{key}={got}" if key in final else f"{key} is not set"
            raise BuildError(
                f"build step configure: {line} did not take effect ({shown} after "
                "olddefconfig: an unmet dependency or a choice that overrides it)"
            )


class _StepRunner:
    """Runs build steps with the time limit, the stall detector and the stop flag."""

    def __init__(
        self,
        log_path: Path,
        build: BuildSpec,
        stop: threading.Event | None,
        say: Callable[[str], None],
    ) -> None:
        self.log_path = log_path
        self.log = None  # type: ignore[assignment]
        self.deadline = time.monotonic() + build.timeout_s
        self.timeout_s = build.timeout_s
        self.stall_s = build.stall_s
        self.stop = stop or threading.Event()
        self.say = say

    def unpack(self, deb: Path, scratch: Path) -> Path:
        """The source tree from the package's linux-source-*.tar.* ."""
        pkg = scratch / "pkg"
        try:
            extract_deb(deb, pkg)
        except FetchError as exc:
            raise BuildError(f"build step unpack source: {exc}") from None
        tarballs = sorted((pkg / "usr/src").glob("linux-source-*.tar.*"))
        if not tarballs:
            raise BuildError(f"build step unpack source: {deb.name} holds no linux-source tarball")
        out = scratch / "src"
        out.mkdir()
        self.step("unpack source", ["tar", "-xf", str(tarballs[0]), "--strip-components=1"], out)
        tarballs[0].unlink()
        return out

    def step(self, name: str, cmd: list[str], cwd: Path) -> None:
        self.say(name)
        env = dict(os.environ)
        env.update(
            LC_ALL="C",
            KBUILD_BUILD_TIMESTAMP="@0",
            KBUILD_BUILD_USER="bpfcompat",
            KBUILD_BUILD_HOST="bpfcompat",
        )
        assert self.log is not None
        self.log.write(f"$ {' '.join(cmd)}\n")
        self.log.flush()
        tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
        started = time.monotonic()
        cpu_before = _children_cpu()
        last = [started]
        parent = os.getpid()
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: die_with_parent(parent),
            )
        except OSError as exc:
            raise BuildError(f"build step {name}: cannot run {cmd[0]}: {exc}") from None

        def read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                tail.append(line)
                self.log.write(line + "\n")  # type: ignore[union-attr]
                last[0] = time.monotonic()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        why = None
        try:
            while proc.poll() is None:
                now = time.monotonic()
                if self.stop.is_set():
                    why = "interrupted"
                elif now > self.deadline:
                    why = f"the build took longer than {self.timeout_s:.0f} s (build.timeout_s)"
                elif now - last[0] > self.stall_s:
                    why = f"no output for {self.stall_s:.0f} s (stalled; build.stall_s)"
                if why:
                    break
                time.sleep(0.25)
        finally:  # also on Ctrl-C in this thread: the whole process group goes
            if proc.poll() is None:
                _kill(proc)
        reader.join(timeout=10)
        cpu = _children_cpu() - cpu_before
        self.log.write(f"# {name}: {time.monotonic() - started:.1f} s wall, {cpu:.1f} s CPU\n")
        self.log.flush()
        if why:
            raise BuildError(f"build step {name}: {why} (log: {self.log_path})")
        if proc.returncode != 0:
            raise BuildError(
                f"build step {name} failed ({' '.join(cmd[:1] + cmd[-1:])}, exit "
                f"{proc.returncode}): {_first_error(tail)} (log: {self.log_path})"
            )


def _children_cpu() -> float:
    """CPU seconds of waited-for children: the build's cost apart from other load."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def _first_error(lines: collections.deque[str]) -> str:
    """The line that says what went wrong: compilers and make print 'error' first."""
    for line in lines:
        lowered = line.lower()
        if "error" in lowered and not lowered.startswith("make"):
            return line.strip()[:300]
    return (lines[-1].strip() if lines else "no output")[:300]
