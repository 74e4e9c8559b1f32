"""A seeded, reproducible generator of hostile artifacts.

`generate(out, examples)` writes one sub-directory per category below `out`, each file
named *.bpf.o so `bpfcompat matrix run out` discovers all of them in one run. The same
seed gives the same bytes (checked by the test suite), so a verdict that changes between
two runs is a change in bpfcompat, never in the inputs.

Run it by hand to look at the inputs:

    python tests/hostile.py OUT_DIR [--seed N] [--bitflips N] [--programs N]
"""

from __future__ import annotations

import argparse
import random
import shutil
import struct
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bpfcompat.matrix.plan import MAX_ARTIFACT_BYTES  # noqa: E402

DEFAULT_SEED = 7
DEFAULT_BITFLIPS = 50
# 2000 programs: "thousands", yet it compiles in ~2 s. It once cost 2 x 90 s (the job
# limit) under TCG: per-program probes are O(n^2) and 1024 fds ran out (docs/robustness.md).
DEFAULT_PROGRAMS = 2000
BASE = "simple-pass"  # the real object most categories start from: one tracepoint program

# A manifest whose functional test kills the validator process (the test's parent) with
# SIGSEGV: what a libbpf crash looks like from the host, made deterministic, because no
# bit flip crashed the guests' libbpf 1.5 in 3500 tries (docs/robustness.md).
SEGV_MANIFEST = """\
functional_tests:
  - name: segfault-the-validator
    command: "sh -c 'kill -SEGV $PPID; sleep 5'"
    timeout: 20s
"""
# A manifest whose functional test makes the validator the guest kernel's OOM victim
# (oom_score_adj 1000) and runs the real OOM killer (sysrq f): a SIGKILL the driver did
# not send, which must be reported as what it is, not as a timeout.
OOM_MANIFEST = """\
functional_tests:
  - name: oom-kill-the-validator
    command: "sh -c 'echo 1000 > /proc/$PPID/oom_score_adj; echo f > /proc/sysrq-trigger; sleep 5'"
    timeout: 20s
"""
# A manifest whose functional test plays a hostile guest: it replaces the validator's
# result with JSON of the right top-level keys and wrong types, then kills the validator
# (SIGTERM: a SIGKILL would be read as the OOM killer's, whose victim left no result)
# so nothing overwrites it. The host must ingest it without a traceback.
FORGED_RESULT = (
    '{"schema_version": 4, "status": ["pass"], "load": 5, "attach": "x", "functional": [],'
    ' "discovery": {"programs": 7, "maps": {"a": 1}}, "program_variants": 9,'
    ' "map_fixups": {"name": 1}, "errors": [{"step": []}], "logs": 3, "host": null}'
)
FORGE_MANIFEST = f"""\
functional_tests:
  - name: forge-the-result
    command: >-
      sh -c 'd=$(dirname "$(readlink /proc/$PPID/fd/1)");
      printf "%s" "$0" > "$d/result.json"; kill -TERM $PPID; sleep 5'
      '{FORGED_RESULT}'
    timeout: 20s
"""


@dataclass(frozen=True)
class Hostile:
    """One generated input: its category, where it is, and what makes it hostile."""

    category: str
    path: Path
    what: str

    @property
    def name(self) -> str:
        """The artifact name bpfcompat gives it (file name without .bpf.o)."""
        return self.path.name.removesuffix(".bpf.o")


def _sections(data: bytes) -> list[tuple[str, int, int, int, int]]:
    """(name, index, type, offset, size) of each section of a well-formed ELF64 LE object."""
    (shoff,) = struct.unpack_from("<Q", data, 40)
    shnum, shstrndx = struct.unpack_from("<HH", data, 60)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * 64) for i in range(shnum)]
    strtab_off = headers[shstrndx][4]
    out = []
    for index, (name_off, sh_type, _f, _a, offset, size, *_r) in enumerate(headers):
        start = strtab_off + name_off
        name = data[start : data.index(b"\0", start)].decode()
        out.append((name, index, sh_type, offset, size))
    return out


def _section_header_offset(data: bytes, wanted: str) -> int:
    """File offset of the section header of section `wanted`."""
    (shoff,) = struct.unpack_from("<Q", data, 40)
    index = next(i for name, i, *_ in _sections(data) if name == wanted)
    return shoff + index * 64


def _patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _header_cases(base: bytes) -> dict[str, tuple[bytes, str]]:
    """ELF headers with absurd counts, offsets and sizes, each a one-field patch."""
    btf = _section_header_offset(base, ".BTF")
    text = next(i for name, i, t, _o, size in _sections(base) if t == 1 and size and "/" in name)
    (shoff,) = struct.unpack_from("<Q", base, 40)
    prog_hdr = shoff + text * 64
    return {
        "shnum-65535": (_patched(base, 60, "<H", 0xFFFF), "e_shnum = 65535"),
        "shnum-0-ext-4g": (
            _patched(_patched(base, 60, "<H", 0), shoff + 32, "<Q", 2**32),
            "e_shnum = 0 and section 0's sh_size (extended count) = 2**32",
        ),
        "shoff-2p63": (_patched(base, 40, "<Q", 2**63), "e_shoff = 2**63"),
        "shoff-past-eof": (_patched(base, 40, "<Q", len(base) + 4096), "e_shoff past EOF"),
        "shoff-max": (_patched(base, 40, "<Q", 2**64 - 1), "e_shoff = 2**64-1 (wraps)"),
        "shentsize-0": (_patched(base, 58, "<H", 0), "e_shentsize = 0"),
        "shentsize-65535": (_patched(base, 58, "<H", 0xFFFF), "e_shentsize = 65535"),
        "shstrndx-65534": (_patched(base, 62, "<H", 0xFFFE), "e_shstrndx = 65534"),
        "btf-size-2p62": (_patched(base, btf + 32, "<Q", 2**62), ".BTF sh_size = 2**62"),
        "btf-offset-2p63": (_patched(base, btf + 24, "<Q", 2**63), ".BTF sh_offset = 2**63"),
        "prog-size-max": (
            _patched(base, prog_hdr + 32, "<Q", 2**64 - 8),
            "program section sh_size = 2**64-8",
        ),
        "btf-nobits": (
            _patched(base, btf + 4, "<I", 8),
            ".BTF as SHT_NOBITS (libbpf issue #894: a segfault before 1.6)",
        ),
        "elfclass32": (_patched(base, 4, "<B", 1), "EI_CLASS = ELFCLASS32"),
        "big-endian": (_patched(base, 5, "<B", 2), "EI_DATA = big-endian (fields byte-swapped)"),
        "et-exec": (_patched(base, 16, "<H", 2), "e_type = ET_EXEC"),
        "machine-0": (_patched(base, 18, "<H", 0), "e_machine = EM_NONE"),
    }


def _bitflip(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    flips = rng.randint(1, 8)
    where = []
    for _ in range(flips):
        pos = rng.randrange(len(out))
        bit = rng.randrange(8)
        out[pos] ^= 1 << bit
        where.append(f"{pos}.{bit}")
    return bytes(out), f"{flips} bit flip(s) at byte.bit {', '.join(where)}"


def many_programs_source(count: int, failing_every: int = 0) -> str:
    """C for `count` tiny tracepoint programs in one section, all on one rarely hit
    tracepoint (the kernel allows 64 BPF programs per tracepoint: the rest cannot attach).

    With `failing_every` k, programs k-1, 2k-1, ... read a constant address, which every
    verifier refuses (EACCES), so the object fails to load with known culprits."""
    lines = ["#include <linux/types.h>", "#include <bpf/bpf_helpers.h>", ""]
    for i in range(count):
        body = "return 0;"
        if failing_every and i % failing_every == failing_every - 1:
            body = "return *(volatile int *)0x1000;"
        lines.append(f'SEC("tracepoint/syscalls/sys_enter_sync") int p{i}(void *ctx) {{ {body} }}')
    lines.append('char LICENSE[] SEC("license") = "GPL";')
    return "\n".join(lines) + "\n"


def compile_bpf(source: Path, output: Path) -> None:
    arch = (
        subprocess.run(
            ["dpkg-architecture", "-qDEB_HOST_MULTIARCH"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        or "x86_64-linux-gnu"
    )
    subprocess.run(
        [
            "clang",
            "-target",
            "bpf",
            "-O2",
            "-g",
            f"-I/usr/include/{arch}",
            "-c",
            str(source),
            "-o",
            str(output),
        ],
        check=True,
    )


def generate(
    out: Path,
    examples: Path,
    seed: int = DEFAULT_SEED,
    bitflips: int = DEFAULT_BITFLIPS,
    programs: int = DEFAULT_PROGRAMS,
) -> list[Hostile]:
    """Write every hostile category below `out` (created; must not exist) and list them.

    `examples` must hold built example objects (make -C examples). A sibling directory
    `<out>-outside` receives the target of the escaping symlink.
    """
    rng = random.Random(seed)
    out.mkdir(parents=True)
    made: list[Hostile] = []

    def put(category: str, name: str, data: bytes, what: str) -> Path:
        path = out / category / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        made.append(Hostile(category, path, what))
        return path

    objects = sorted(examples.glob("*/*.bpf.o"))
    if not objects:
        raise FileNotFoundError(f"{examples}: no built *.bpf.o (run make -C examples)")
    base = (examples / BASE / f"{BASE}.bpf.o").read_bytes()

    put("empty", "empty.bpf.o", b"", "a zero-byte file")
    put(
        "text",
        "text.bpf.o",
        b'SEC("xdp") int prog(void) { return 2; }\n' * 20,
        "C source text, not an object",
    )

    (shoff,) = struct.unpack_from("<Q", base, 40)
    cuts = sorted(
        {
            1,
            3,
            4,
            5,
            16,
            52,
            63,
            64,
            65,
            200,
            len(base) // 2,
            shoff,
            shoff + 64,
            len(base) - 64,
            len(base) - 1,
        }
    )
    for cut in cuts:
        put(
            "truncated",
            f"trunc-{cut:05d}.bpf.o",
            base[:cut],
            f"{BASE}.bpf.o cut to {cut} of {len(base)} bytes",
        )

    true = Path(shutil.which("true") or "/bin/true").resolve()
    put("not-bpf", "x86-64-true.bpf.o", true.read_bytes(), f"a copy of {true}: x86-64, not BPF")

    for name, (data, what) in _header_cases(base).items():
        put("headers", f"hdr-{name}.bpf.o", data, what)

    for index in range(max(bitflips, len(objects))):
        source = objects[index % len(objects)]  # round-robin: every example gets flipped
        data = source.read_bytes()
        if not data:
            continue
        flipped, what = _bitflip(data, rng)
        put(
            "bitflip",
            f"flip-{index:03d}-{source.parent.name}.bpf.o",
            flipped,
            f"{source.name}: {what}",
        )

    many_dir = out / "many-programs"
    many_dir.mkdir()
    source_file = out.parent / f"{out.name}-many-programs.bpf.c"
    source_file.write_text(many_programs_source(programs))
    compile_bpf(source_file, many_dir / f"many-{programs}-programs.bpf.o")
    made.append(
        Hostile(
            "many-programs",
            many_dir / f"many-{programs}-programs.bpf.o",
            f"{programs} tracepoint programs in one object",
        )
    )

    oversize = out / "oversize" / "oversize.bpf.o"
    oversize.parent.mkdir()
    with oversize.open("wb") as fh:  # sparse: a real object, then a hole to the limit + 1
        fh.write(base)
        fh.truncate(MAX_ARTIFACT_BYTES + 1)
    made.append(Hostile("oversize", oversize, f"{MAX_ARTIFACT_BYTES + 1} bytes (sparse)"))

    for name in (
        "a b",
        "ünï",
        "$(touch pwned);x",
        "`id`",
        "-x --help",
        'it\'s "quoted"',
        "line\nbreak",
        "<img src=x onerror=alert(1)>",
    ):
        put("names", f"{name}.bpf.o", base, f"{BASE}.bpf.o under the name {name!r}")

    outside = out.parent / f"{out.name}-outside"
    outside.mkdir()
    (outside / "secret.bpf.o").write_bytes(base)
    links = out / "symlink"
    links.mkdir()
    (links / "escape.bpf.o").symlink_to(Path("..") / ".." / outside.name / "secret.bpf.o")
    made.append(Hostile("symlink", links / "escape.bpf.o", "symlink leaving the input dir"))
    (links / "inside.bpf.o").symlink_to(Path("..") / "names" / "a b.bpf.o")
    made.append(Hostile("symlink", links / "inside.bpf.o", "symlink within the input dir"))

    # Guest-side faults, in this order so the artifact right after each runs in the same
    # boot: crash/a-segv, crash/b-after, crash/c-forged, crash/d-after, crash/e-oom,
    # crash/f-after.
    for sub, manifest in (
        ("a-segv", SEGV_MANIFEST),
        ("c-forged", FORGE_MANIFEST),
        ("e-oom", OOM_MANIFEST),
    ):
        (out / "crash" / sub).mkdir(parents=True)
        (out / "crash" / sub / "manifest.yaml").write_text(manifest)
    put("crash", "a-segv/segv.bpf.o", base, "validator killed by SIGSEGV mid-run")
    put("crash", "b-after/after-segv.bpf.o", base, "a normal artifact right after the crash")
    put("crash", "c-forged/forged-result.bpf.o", base, "a guest that forges result.json")
    put("crash", "d-after/after-forged.bpf.o", base, "a normal artifact after the forgery")
    put("crash", "e-oom/oom.bpf.o", base, "validator killed by the guest's OOM killer")
    put("crash", "f-after/after-oom.bpf.o", base, "a normal artifact after the OOM kill")
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--examples", type=Path, default=ROOT / "examples")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--bitflips", type=int, default=DEFAULT_BITFLIPS)
    parser.add_argument("--programs", type=int, default=DEFAULT_PROGRAMS)
    args = parser.parse_args(argv)
    made = generate(args.out, args.examples, args.seed, args.bitflips, args.programs)
    for category, count in Counter(h.category for h in made).items():
        print(f"{category:14} {count}")
    print(f"{'total':14} {len(made)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
