"""The Action's cache key for the kernel and guest-image cache, with its restore keys and
paths, written as step outputs (GITHUB_OUTPUT) and printed.

    bpfcompat-v1-<runner os>-<arch>-<tool version>-<guest suite>-<sha256 of the kernels file>

The kernels file is the `kernels-file` input, or the default matrix shipped in the package.
The restore keys drop the trailing parts one at a time, so a changed matrix or a new
version starts from the entries it shares with the last cache (every entry is verified
and rebuilt when stale, so a partial cache is never wrong, only incomplete).

Run with the interpreter bpfcompat is installed in: python cache_key.py [KERNELS_FILE]
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import uuid
from pathlib import Path

from bpfcompat import __version__
from bpfcompat.errors import BpfcompatError
from bpfcompat.matrix.config import default_kernels_file, load_kernel_matrix
from bpfcompat.vm.cache import cache_root

PREFIX = "bpfcompat-v1"


def cache_key(kernels_file: Path, runner_os: str, arch: str) -> tuple[str, list[str]]:
    """(key, restore keys) for a kernels file; the file is validated first."""
    suite = load_kernel_matrix(kernels_file).guest_suite
    digest = hashlib.sha256(kernels_file.read_bytes()).hexdigest()
    parts = [PREFIX, runner_os, arch, __version__, suite, digest]
    key = "-".join(parts)
    restore = ["-".join(parts[:n]) + "-" for n in range(len(parts) - 1, 2, -1)]
    return key, restore


def cache_paths() -> list[str]:
    """What is cached: fetched kernels and built guest images (not apt's lists)."""
    root = cache_root()
    return [str(root / "kernels"), str(root / "images")]


def _write_output(name: str, lines: list[str]) -> None:
    target = os.environ.get("GITHUB_OUTPUT")
    if len(lines) == 1:
        text = f"{name}={lines[0]}\n"
    else:
        delim = f"bpfcompat_{uuid.uuid4().hex}"
        text = f"{name}<<{delim}\n" + "\n".join(lines) + f"\n{delim}\n"
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(text)
    print(text, end="")


def main(argv: list[str]) -> int:
    given = argv[0] if argv and argv[0] else ""
    path = Path(given) if given else default_kernels_file()
    runner_os = os.environ.get("RUNNER_OS") or platform.system()
    try:
        key, restore = cache_key(path, runner_os, platform.machine())
    except BpfcompatError as exc:
        print(f"bpfcompat action: kernels-file: {exc}", file=sys.stderr)
        return 1
    _write_output("cache-key", [key])
    _write_output("cache-restore-keys", restore)
    _write_output("cache-path", cache_paths())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
