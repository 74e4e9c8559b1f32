"""A guest-side attacker on a real kernel: functional tests (root in the guest) that forge
protocol lines, forge other jobs' results, write a kernel panic to the console, flood
the protocol channel and leave a background process behind. None of it may change any
other cell's verdict, blame the kernel, or be replayed from the cache.

The figures (verdicts, boots, seconds, peak RSS) are printed for docs/robustness.md.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import require_tool, run_cli
from expectations import expected

pytestmark = pytest.mark.vm
KERNEL = "debian-12-6.1"

# Each attack is a functional test run as root in the guest while the job runs.
DRIVER = (
    "for p in /proc/[0-9]*; do grep -q validator.driver $p/cmdline 2>/dev/null "
    "&& echo ${p#/proc/}; done"
)
ATTACKS: dict[str, str] = {
    # "done" lines for jobs that do not exist, and for every job the driver knows,
    # written straight into the driver's stdout (the channel the host reads).
    "attack-lines": (
        f'for d in $({DRIVER}); do for i in 0 1 2 99999; do echo "done $i 0 0.1 exit" '
        "> /proc/$d/fd/1; done; for t in $(grep -oh '[0-9a-f]\\{32\\}' /tmp/bpfc/jobs-*.json); "
        'do echo "done $t 0 0.1 exit" > /proc/$d/fd/1; done; done'
    ),
    # A passing result in every job directory of the boot, now and two seconds later.
    "attack-results": (
        "for d in /tmp/bpfc/a/*; do cp $0 $d/result.json 2>/dev/null; done; "
        "setsid sh -c 'sleep 2; for d in /tmp/bpfc/a/*; do cp /tmp/pass.json $d/result.json; "
        "done' </dev/null >/dev/null 2>&1 &"
    ),
    # The words of a kernel panic, written to the console by a user-space process.
    "attack-console": (
        "echo 'Kernel panic - not syncing: forged by a functional test' > /dev/console; "
        "echo '[   9.999] RIP: 0033:0x7f0000000000' > /dev/console"
    ),
    # 100 MB without a newline down the protocol channel.
    "attack-flood": f"for d in $({DRIVER}); do head -c 100000000 /dev/zero > /proc/$d/fd/1; done",
}
NEIGHBOURS = ("simple-pass", "verifier-oob", "helper-not-allowed", "ringbuf")


def _stage(root: Path, examples: Path) -> None:
    root.mkdir()
    for name in NEIGHBOURS:
        shutil.copy(examples / name / f"{name}.bpf.o", root / f"{name}.bpf.o")
    passing = json.dumps({"schema_version": "validator.v0.4", "status": "pass"})
    for name, script in ATTACKS.items():
        shutil.copy(examples / "simple-pass" / "simple-pass.bpf.o", root / f"{name}.bpf.o")
        command = f"sh -c {json.dumps(script)}"
        if name == "attack-results":
            setup = f"echo {passing!r} > /tmp/pass.json; "
            command = f"sh -c {json.dumps(setup + script)} /tmp/pass.json"
        (root / f"{name}.manifest.yaml").write_text(
            json.dumps(
                {
                    "functional_tests": [{"name": name, "command": command, "timeout": "20s"}],
                    "retries": 0,
                }
            )
        )


@pytest.fixture(scope="module")
def attacked(built_examples: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require_tool("qemu-system-x86_64")
    tmp = tmp_path_factory.mktemp("attacker")
    _stage(tmp / "in", built_examples)
    started = time.monotonic()
    runs = []
    for name in ("first", "second"):  # the second run must not replay anything forged
        proc = run_cli("matrix", "run", str(tmp / "in"), "--kernel", KERNEL, "--db",
                       str(tmp / "store.db"), "--out-dir", str(tmp / "out"), "--json",
                       str(tmp / f"{name}.json"), timeout=900)  # fmt: skip
        assert (tmp / f"{name}.json").is_file(), proc.stderr[-3000:]
        runs.append((proc, json.loads((tmp / f"{name}.json").read_text())))
    figures = {
        "seconds_both_runs": round(time.monotonic() - started, 1),
        "verdicts": {
            c["artifact"]: f"{c['status']} {c['code'] or ''}".strip() for c in runs[0][1]["cells"]
        },
        "boots": runs[0][1]["kernels"][0]["boots"],
        "peak_rss_mb": runs[0][1]["kernels"][0]["peak_rss_mb"],
    }
    print(json.dumps(figures, indent=2))
    return {"runs": runs, "tmp": tmp, "figures": figures}


def _cells(export: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["artifact"]: c for c in export["cells"]}


def _verdict(cell: dict[str, Any]) -> tuple[str, str | None]:
    return cell["status"], cell["code"]


def _expected(name: str) -> tuple[str, str | None]:
    want = expected(name, KERNEL)
    return want["status"], want["code"]


def test_no_neighbour_changes_its_verdict(attacked: dict[str, Any]) -> None:
    for _, export in attacked["runs"]:
        cells = _cells(export)
        for name in NEIGHBOURS:
            assert _verdict(cells[name]) == _expected(name), (name, cells[name])


def test_nobody_is_blamed_for_a_forged_panic(attacked: dict[str, Any]) -> None:
    for _, export in attacked["runs"]:
        assert all(c["code"] != "KERNEL_CRASH" for c in export["cells"])
        assert all("RIP: 0033" not in (c["evidence"] or "") for c in export["cells"])
        assert export["kernels"][0]["status"] == "ok"


def test_each_attacker_ran_alone_and_its_forgeries_were_ignored(attacked: dict[str, Any]) -> None:
    _, export = attacked["runs"][0]
    cells = _cells(export)
    # One boot for the trusted artifacts, one fresh guest per attacker, one more for the
    # retry of the attacker that ended its own job with a forged line.
    assert export["kernels"][0]["boots"] == 1 + len(ATTACKS) + 1
    # Forging "done" for its own token only ends its own job early (no result yet): its
    # cell is an error, retried once, and nobody else's.
    assert _verdict(cells["attack-lines"]) == ("error", "INFRA_ERROR")
    assert cells["attack-console"]["status"] == "pass"
    with sqlite3.connect(attacked["tmp"] / "store.db") as conn:
        (notes,) = conn.execute("select notes_json from runkernel order by id limit 1").fetchone()
    # Four forged job numbers per driver at least (the note quotes the first few of them).
    ignored = re.search(r"ignored (\d+) guest protocol line", notes)
    assert ignored and int(ignored.group(1)) >= 4, notes
    assert "done 0 0 0.1 exit" in notes, notes
    # The flood is the attacker's own problem: its cell, nobody else's.
    assert cells["attack-flood"]["status"] == "error"
    assert "line over" in (cells["attack-flood"]["evidence"] or ""), cells["attack-flood"]


def test_nothing_forged_or_failed_is_replayed_from_the_cache(attacked: dict[str, Any]) -> None:
    (_, first), (_, second) = attacked["runs"]
    before, again = _cells(first), _cells(second)
    for name in NEIGHBOURS:
        assert again[name]["cached"], name
        assert _verdict(again[name]) == _expected(name)
    for name in ("attack-flood", "attack-lines"):
        assert not again[name]["cached"], f"{name}: an error is never final"
    for name in ("attack-lines", "attack-console"):  # their own verdicts, stable
        assert _verdict(again[name]) == _verdict(before[name])
