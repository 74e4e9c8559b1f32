"""The guest boundary under attack, measured: for each case, wall time, the bpfcompat
process's peak RSS, and the verdicts of the cells beside the attacker.

Cases: forged protocol lines and results, a 100 MB line without a newline, a 150 MB
result.json, a result nested 100,000 deep, kill -9 of bpfcompat mid-run, reclassify after
the artifacts were deleted, a corrupt store, a same-size corruption of the cached
initramfs. Each runs on one real kernel (default debian-12-6.1).

    .venv/bin/python bench/trust_bench.py [--kernel ID]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NEIGHBOURS = ("simple-pass", "verifier-oob")
JOB_DIR = 'd=$(dirname "$(readlink /proc/$PPID/fd/1)")'
ATTACKS = {
    "lines": "for p in /proc/[0-9]*; do grep -q validator.driver $p/cmdline 2>/dev/null && "
    'for i in 0 1 99999; do echo "done $i 0 0.1 exit" > $p/fd/1; done; done',
    "flood": "for p in /proc/[0-9]*; do grep -q validator.driver $p/cmdline 2>/dev/null && "
    "head -c 100000000 /dev/zero > $p/fd/1; done",
    "big-result": f"{JOB_DIR}; head -c 157286400 /dev/zero | tr '\\\\0' ' ' > $d/result.json; "
    "kill -TERM $PPID; sleep 5",
    "deep-result": f"{JOB_DIR}; python3 -c \"import sys; open(sys.argv[1], 'w')"
    ".write('['*100000 + ']'*100000)\" $d/result.json; kill -TERM $PPID; sleep 5",
    "console-panic": "echo 'Kernel panic - not syncing: forged' > /dev/console",
}


def cli(*args: str, timeout: float = 1800) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """Run bpfcompat; (process, seconds, peak RSS in MB of that child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bpfcompat", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "CI": "1"})  # fmt: skip
    seconds = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return proc, seconds, max(peak, before) // 1024


def stage(root: Path, attack: str | None) -> Path:
    root.mkdir(parents=True)
    for name in NEIGHBOURS:
        shutil.copy(EXAMPLES / name / f"{name}.bpf.o", root)
    if attack:
        shutil.copy(EXAMPLES / "simple-pass" / "simple-pass.bpf.o", root / "attacker.bpf.o")
        test = {"name": attack, "command": f"sh -c {json.dumps(ATTACKS[attack])}",
                "timeout": "60s"}  # fmt: skip
        (root / "attacker.manifest.yaml").write_text(
            json.dumps({"functional_tests": [test], "retries": 0})
        )
    return root


def verdicts(export_path: Path) -> dict[str, str]:
    export = json.loads(export_path.read_text())
    return {c["artifact"]: f"{c['status']} {c['code'] or ''}".strip() for c in export["cells"]}


def run_case(tmp: Path, kernel: str, attack: str) -> None:
    inputs = stage(tmp / attack / "in", attack)
    out = tmp / attack
    proc, seconds, rss = cli("matrix", "run", str(inputs), "--kernel", kernel, "--db",
                             str(out / "db"), "--out-dir", str(out), "--json",
                             str(out / "run.json"), "--no-cache")  # fmt: skip
    got = verdicts(out / "run.json") if (out / "run.json").is_file() else {"run": proc.stderr}
    neighbours = ", ".join(f"{n}: {got.get(n)}" for n in NEIGHBOURS)
    print(f"{attack:14} {seconds:6.1f} s  peak RSS {rss:4d} MB  attacker: {got.get('attacker')}"
          f"  | {neighbours}")  # fmt: skip


def kill_9(tmp: Path, kernel: str) -> None:
    inputs = stage(tmp / "kill" / "in", None)
    (inputs / "manifest.yaml").write_text(
        "shared: true\nfunctional_tests:\n  - {name: slow, command: sleep 40, timeout: 60s}\n"
    )
    out = tmp / "kill"
    proc = subprocess.Popen([sys.executable, "-m", "bpfcompat", "matrix", "run", str(inputs),
                             "--kernel", kernel, "--db", str(out / "db"), "--out-dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    marker = str(out)
    while not _qemu(marker) and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(3)
    started = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    while _qemu(marker) and time.monotonic() - started < 60:
        time.sleep(0.05)
    gone = time.monotonic() - started
    listed, seconds, _ = cli("runs", "list", "--db", str(out / "db"))
    state = listed.stdout.split()[2] if listed.stdout.split() else listed.stderr.strip()
    print(f"{'kill -9':14} QEMU gone {gone:.2f} s after SIGKILL (left: {len(_qemu(marker))}); "
          f"next open: run {state} ({seconds:.1f} s)")  # fmt: skip


def _qemu(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if "qemu-system" in ln and marker in ln]


def reclassify_without_artifacts(tmp: Path, kernel: str) -> None:
    inputs = stage(tmp / "reclass" / "in", None)
    out = tmp / "reclass"
    cli("matrix", "run", str(inputs), "--kernel", kernel, "--db", str(out / "db"), "--out-dir",
        str(out))  # fmt: skip
    shutil.rmtree(inputs)
    with sqlite3.connect(out / "db") as conn:  # today's classifier, older judgement
        conn.execute("update cell set evidence = 'stale', classifier_version = '0'")
    proc, seconds, rss = cli("reclassify", "--db", str(out / "db"))
    print(
        f"{'reclassify':14} {seconds:6.1f} s  peak RSS {rss:4d} MB  artifacts deleted; "
        f"{proc.stdout.splitlines()[0] if proc.stdout else proc.stderr.strip()}"
    )


def corrupt_store(tmp: Path, kernel: str) -> None:
    db = tmp / "reclass" / "db"
    data = bytearray(db.read_bytes())
    data[2 * 4096 : 2 * 4096 + 64] = b"\xff" * 64
    bad = tmp / "corrupt.db"
    bad.write_bytes(bytes(data))
    proc, seconds, _rss = cli("runs", "list", "--db", str(bad))
    print(f"{'corrupt store':14} {seconds:6.1f} s  exit {proc.returncode}: {proc.stderr.strip()}")


def corrupt_initramfs(tmp: Path, kernel: str) -> None:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bpfcompat"
    initrds = sorted(cache.glob("kernels/*/*/initrd-*.cpio")) + sorted(
        cache.glob("kernels/*/initrd-*.cpio")
    )
    if not initrds:
        print(f"{'initramfs':14} no cached initramfs to corrupt")
        return
    for path in initrds:  # same size, wrong bytes
        data = bytearray(path.read_bytes())
        data[4096:8192] = b"\0" * 4096
        path.write_bytes(bytes(data))
    inputs = stage(tmp / "initrd" / "in", None)
    out = tmp / "initrd"
    _proc, seconds, rss = cli("matrix", "run", str(inputs), "--kernel", kernel, "--db",
                             str(out / "db"), "--out-dir", str(out), "--json",
                             str(out / "run.json"), "--no-cache")  # fmt: skip
    print(
        f"{'initramfs':14} {seconds:6.1f} s  peak RSS {rss:4d} MB  same-size corruption: "
        f"{verdicts(out / 'run.json')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="debian-12-6.1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bpfc-trust-") as name:
        tmp = Path(name)
        for attack in ATTACKS:
            run_case(tmp, args.kernel, attack)
        kill_9(tmp, args.kernel)
        reclassify_without_artifacts(tmp, args.kernel)
        corrupt_store(tmp, args.kernel)
        corrupt_initramfs(tmp, args.kernel)


if __name__ == "__main__":
    main()
