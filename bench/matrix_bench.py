"""Benchmark the matrix on this machine; prints figures and a RESULT line (run by hand).

    .venv/bin/python bench/matrix_bench.py [--skip-per-cell] [--kernel ID ...]

Measures, in one run:
- the bare-boot floor per kernel: the same kernel, command line and QEMU flags, a
  trivial init (static busybox of the kernel's architecture: the host's for x86-64, the
  guest image's for arm64) that powers off at once (reboots, with -no-reboot, on a
  kernel without ACPI, which cannot power off);
- our boot-to-ready per kernel: QEMU start until SSH answers (the driver is baked into
  the image, so nothing else is needed before the first artifact);
- restore-to-ready per kernel: the same for a guest restored from the kernel's snapshot,
  and what taking that snapshot cost (restore_bench.py, private snapshot cache);
  all three are medians of --boots boots, interleaved, this machine being noisy;
- the marginal seconds per extra small artifact: (T(N copies) - T(1 copy)) / (N - 1) in
  one boot;
- the wall time of the default matrix (kernels.yaml x examples/, no cache), every guest
  booted, and again with the snapshots taken above;
- the wall time of the same matrix with one cold boot per cell (--boot-per-artifact, what
  a tool that boots a VM per artifact and kernel pays);
- the wall time of a cached rerun of the default matrix (the whole CLI process);
- the peak RSS of a QEMU process;
- with --corpus DIR (repeatable): corpus_bench.py over those objects on the same kernels
  (its corpus_s, max_cell_s and cells join the RESULT line).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bpfcompat.matrix.config import default_kernels_file, load_kernel_matrix
from bpfcompat.matrix.guest import GuestSession
from bpfcompat.matrix.launch import base_cmdline
from bpfcompat.matrix.options import Backend, RunOptions
from bpfcompat.matrix.plan import Plan, discover_artifacts
from bpfcompat.matrix.runner import run_plan
from bpfcompat.matrix.store import Store
from bpfcompat.vm.cpio import CpioWriter, extract_newc
from bpfcompat.vm.image import build_image
from bpfcompat.vm.kernels import fetch_kernel
from bpfcompat.vm.qemu import BootSpec, QemuVM
from bpfcompat.vm.snapshot import SnapshotCache

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def static_busybox(arch: str, tmp: Path) -> bytes:
    """A static busybox for `arch`: the host's (busybox-static) for its own architecture,
    else the one in that architecture's guest image."""
    if arch == "x86_64":
        busybox = Path("/bin/busybox")
        if not busybox.is_file():
            sys.exit("bench: static busybox missing (apt-get install busybox-static)")
        return busybox.read_bytes()
    image = build_image(load_kernel_matrix(default_kernels_file()).guest_suite, arch=arch)
    out = tmp / f"image-{arch}"
    with image.rootfs_cpio.open("rb") as fh:
        extract_newc(fh, out)
    return (out / "usr/bin/busybox").read_bytes()


def bare_initrd(path: Path, busybox: bytes, stop: str) -> Path:
    with path.open("wb") as fh:
        writer = CpioWriter(fh)
        writer.file("bin/busybox", busybox, 0o755)
        writer.file("init", f"#!/bin/busybox sh\n/bin/busybox {stop} -f\n".encode(), 0o755)
        writer.chardev("dev/console", 5, 1)
        writer.close()
    return path


def bare_boot(kernel_spec, tmp: Path) -> float:  # type: ignore[no-untyped-def]
    build = fetch_kernel(kernel_spec)
    # Power-off needs ACPI on x86 (PSCI on arm64); a kernel built without it halts
    # instead, so it reboots, which -no-reboot turns into QEMU exiting.
    acpi = build.arch != "x86_64" or build.config_value("CONFIG_ACPI") == "y"
    stop = "poweroff" if acpi else "reboot"
    initrd = tmp / f"bare-{build.arch}-{stop}.cpio"
    if not initrd.is_file():
        bare_initrd(initrd, static_busybox(build.arch, tmp), stop)
    spec = BootSpec(
        build.vmlinuz,
        initrd,
        base_cmdline(build.arch),
        kernel_spec.memory_mb,
        kernel_spec.cpus,
        tmp / f"bare-{kernel_spec.id}.log",
        arch=build.arch,
    )
    vm = QemuVM(spec)
    vm.start()
    assert vm.proc is not None
    try:
        vm.proc.wait(timeout=120)
    finally:
        vm.stop()
    return time.monotonic() - vm.started_at


def ready_boot(kernel_spec, tmp: Path) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    build = fetch_kernel(kernel_spec)
    suite = load_kernel_matrix(default_kernels_file()).guest_suite
    image = build_image(suite, arch=build.arch)
    session = GuestSession(kernel_spec, build, image, tmp, threading.Event(), set())
    try:
        seconds = session.boot()
    finally:
        session.shutdown()
    return seconds, session.peak_rss_kb / 1024


def matrix_wall(store_path: Path, kernels, artifacts_dir: Path, **opts) -> tuple[float, dict]:  # type: ignore[no-untyped-def]
    matrix = load_kernel_matrix(default_kernels_file())
    plan = Plan(kernels, discover_artifacts([artifacts_dir]), matrix.guest_suite)
    started = time.monotonic()
    opts.setdefault("snapshots", False)  # every guest boots unless asked otherwise
    _, summary = run_plan(plan, Store(store_path), RunOptions(**opts))
    wall = time.monotonic() - started
    return wall, {
        "exit": summary.exit_code,
        "boots": sum(k.boots for k in summary.kernels),
        "restores": sum(k.restores for k in summary.kernels),
        "rss": max((k.peak_rss_mb or 0) for k in summary.kernels),
    }


def cli_wall(*args: str) -> float:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "bpfcompat", *args],
        capture_output=True,
        check=False,
        env={"CI": "1", **dict(__import__("os").environ)},
    )
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", action="append", help="limit to these kernel ids")
    parser.add_argument("--skip-per-cell", action="store_true", help="skip the slow per-cell run")
    parser.add_argument("--copies", type=int, default=9, help="artifacts for the marginal cost")
    parser.add_argument("--boots", type=int, default=5, help="boots per kernel for the medians")
    parser.add_argument(
        "--corpus", action="append", type=Path, default=[], help="objects for corpus_bench.py"
    )
    args = parser.parse_args()
    matrix = load_kernel_matrix(default_kernels_file())
    kernels = matrix.select(args.kernel)
    tmp = Path(tempfile.mkdtemp(prefix="bpfcompat-bench-"))
    subprocess.run(["make", "-s", "-C", str(EXAMPLES)], check=True)

    import restore_bench  # it imports this module's floor and boot helpers

    snapshots = SnapshotCache(tmp / "snapshots")
    print(f"{restore_bench.HEADER}  rss_mb  (medians of {args.boots})")
    ratios, rss, figures = [], [], {}
    for spec in kernels:
        figures[spec.id] = f = restore_bench.kernel_figures(spec, tmp, args.boots, snapshots)
        ratios.append(f["boot_ratio"])
        rss.append(f["rss_mb"])
        print(f"{restore_bench.line(spec.id, f)}  {f['rss_mb']:6.0f}", flush=True)

    copies = tmp / "copies"
    marg_kernel = next((k for k in kernels if k.id == "debian-12-6.1"), kernels[0])
    walls = {}
    for n in (1, args.copies):
        d = copies / str(n)
        d.mkdir(parents=True)
        for i in range(n):
            shutil.copy(EXAMPLES / "simple-pass" / "simple-pass.bpf.o", d / f"c{i}.bpf.o")
        walls[n], _ = matrix_wall(
            tmp / f"marg{n}.db", [marg_kernel], d, use_cache=False, workdir=tmp / "w"
        )
    marginal = (walls[args.copies] - walls[1]) / (args.copies - 1)
    print(
        f"marginal per extra artifact on {marg_kernel.id}: {marginal:.2f} s "
        f"(1 copy {walls[1]:.1f} s, {args.copies} copies {walls[args.copies]:.1f} s)"
    )

    db = tmp / "default.db"
    default_wall, info = matrix_wall(db, kernels, EXAMPLES, use_cache=False, workdir=tmp / "w")
    rss.append(info["rss"])
    print(
        f"default matrix ({len(kernels)} kernels x examples): {default_wall:.1f} s, "
        f"{info['boots']} boots, exit {info['exit']}"
    )
    warm_wall, warm = matrix_wall(
        tmp / "warm.db",
        kernels,
        EXAMPLES,
        use_cache=False,
        workdir=tmp / "w",
        snapshots=True,
        backend=Backend(snapshots=lambda: snapshots),
    )
    print(
        f"default matrix, snapshots taken: {warm_wall:.1f} s, {warm['boots']} guests "
        f"({warm['restores']} restored), exit {warm['exit']}"
    )
    kernel_args = [a for k in kernels for a in ("--kernel", k.id)]
    cached = cli_wall(
        "matrix",
        "run",
        str(EXAMPLES),
        "--db",
        str(db),
        "--out-dir",
        str(tmp / "cached"),
        *kernel_args,
    )
    print(f"cached rerun (whole CLI process, report included): {cached:.2f} s")
    if args.skip_per_cell:
        speedup = float("nan")
        print("per-cell run skipped")
    else:
        per_cell, info2 = matrix_wall(
            tmp / "percell.db",
            kernels,
            EXAMPLES,
            use_cache=False,
            workdir=tmp / "w",
            boot_per_artifact=True,
            snapshots=False,
        )
        speedup = per_cell / default_wall
        print(
            f"one boot per cell: {per_cell:.1f} s, {info2['boots']} boots (speedup {speedup:.1f}x)"
        )
    result = {
        "boot_ratio": round(max(ratios), 2),
        "marginal_s": round(marginal, 2),
        "speedup_vs_per_cell": round(speedup, 1),
        "cached_s": round(cached, 2),
        "peak_rss_mb": round(max(rss)),
        **restore_bench.result(figures),
    }
    if args.corpus:
        import corpus_bench

        corpus = corpus_bench.bench(args.corpus, [k.id for k in kernels])
        if corpus is None:
            raise SystemExit("matrix_bench: the corpus run failed (above)")
        result.update({k: corpus[k] for k in ("corpus_s", "cells", "max_cell_s", "helpers")})
    (tmp / "result.json").write_text(json.dumps(result))
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
