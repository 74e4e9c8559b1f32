"""Agreement with an independent loader, in the same guest kernels.

For every object of a directory that needs no loader setup (the host's static reading
finds no required step), boots each kernel once, loads the object with `bpftool prog
loadall` (bpftool's own loader) and compares load success with bpfcompat's verdict for
that cell in a run export (`matrix run DIR --json RUN.json`): pass vs. a verdict other
than pass. Prints a table per kernel and every disagreement, then a RESULT line.

    .venv/bin/python bench/loader_agreement.py DIR RUN.json [--kernel ID ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

from bpfcompat.analysis.inspect import inspect_object
from bpfcompat.matrix.config import default_kernels_file, load_kernel_matrix
from bpfcompat.matrix.guest import GuestSession
from bpfcompat.matrix.statics import matrix_kernels
from bpfcompat.vm.image import build_image
from bpfcompat.vm.kernels import fetch_kernel

GUEST_DIR = "/tmp/agree"
LOAD_TIMEOUT_S = 120


def needs_no_setup(paths: list[Path]) -> list[Path]:
    kernels = matrix_kernels(None)
    keep = []
    for path in paths:
        report = inspect_object(path, kernels)
        if report["readable"] and not any(
            f.get("level") == "required" for f in report["loader_setup"]
        ):
            keep.append(path)
    return keep


def bpftool_loads(spec, objects: list[Path], tmp: Path) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """name -> bpftool's exit code for `prog loadall` of each object, in one boot."""
    kernel = fetch_kernel(spec)
    image = build_image(load_kernel_matrix(default_kernels_file()).guest_suite)
    session = GuestSession(spec, kernel, image, tmp, threading.Event(), set())
    try:
        session.boot()
        assert session.transport is not None
        files = {f"o/{i}.o": p.read_bytes() for i, p in enumerate(objects)}
        session.transport.put_files(files, GUEST_DIR)
        script = (
            f"cd {GUEST_DIR}; i=0; while [ -f o/$i.o ]; do "
            f"timeout {LOAD_TIMEOUT_S} bpftool prog loadall o/$i.o /sys/fs/bpf/a$i "
            ">/dev/null 2>&1; echo $i $?; rm -rf /sys/fs/bpf/a$i; i=$((i+1)); done"
        )
        out = session.transport.run(script, LOAD_TIMEOUT_S * (len(objects) + 1))
    finally:
        session.shutdown()
    codes: dict[str, int] = {}
    for line in out.stdout.splitlines():
        index, _, code = line.partition(" ")
        if index.isdigit() and code.strip().lstrip("-").isdigit():
            codes[objects[int(index)].name.removesuffix(".bpf.o")] = int(code)
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("export", type=Path, help="bpfcompat's run export for DIR")
    parser.add_argument("--kernel", action="append", default=[])
    args = parser.parse_args()
    export = json.loads(args.export.read_text())
    ours = {(c["artifact"], c["kernel"]): c for c in export["cells"]}
    matrix = load_kernel_matrix(default_kernels_file())
    specs = matrix.select(args.kernel or [k["id"] for k in export["kernels"]])
    objects = needs_no_setup(sorted(args.dir.glob("*.bpf.o")))
    print(f"{len(objects)} objects need no loader setup (of {len(list(args.dir.glob('*.bpf.o')))})")
    agree = total = 0
    for spec in specs:
        with tempfile.TemporaryDirectory(prefix="bpfc-agree-") as tmp:
            codes = bpftool_loads(spec, objects, Path(tmp))
        both = {"pass/ok": 0, "fail/fail": 0, "pass/fail": 0, "fail/ok": 0}
        for name, code in sorted(codes.items()):
            cell = ours.get((name, spec.id))
            if cell is None:
                continue
            we_pass = cell["status"] == "pass"
            key = f"{'pass' if we_pass else 'fail'}/{'ok' if code == 0 else 'fail'}"
            both[key] += 1
            total += 1
            if we_pass == (code == 0):
                agree += 1
            else:
                print(f"  {spec.id}: {name}: bpfcompat {cell['status']} {cell['code'] or ''}, "
                      f"bpftool exit {code}")  # fmt: skip
        print(f"{spec.id}: " + ", ".join(f"{k} {v}" for k, v in both.items()))
    rate = agree / total if total else 0.0
    print(f"RESULT loader_agreement={rate:.3f} cells={total} agree={agree}")
    sys.exit(0)


if __name__ == "__main__":
    main()
