"""Snapshots on real kernels: two guests restored from one snapshot are two guests (their
own SSH keys, host keys, clock and random numbers), they pass the examples as a booted
guest does, a damaged snapshot costs a boot and a note, and a crash after a restore is
still seen on the console."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bpfcompat.errors import GuestCrash, TransportError
from bpfcompat.matrix.config import load_kernel_matrix
from bpfcompat.matrix.guest import GuestSession
from bpfcompat.vm.cache import cache_root
from bpfcompat.vm.image import build_image
from bpfcompat.vm.kernels import fetch_kernel
from bpfcompat.vm.snapshot import SnapshotCache
from bpfcompat.vm.ssh import ParamikoTransport
from conftest import ROOT, require_tool, run_cli

MATRIX = load_kernel_matrix(ROOT / "kernels.yaml")
PROBE = (
    "date +%s; head -c 32 /dev/urandom | xxd -p -c 64; "
    "python3 -c 'import os; print(os.urandom(16).hex())'; "
    "cat /root/.ssh/authorized_keys; xxd -p -c 200 /run/bpfcompat-host-key"
)


def _session(kernel_id: str, workdir: Path, cache: SnapshotCache | None) -> GuestSession:
    spec = MATRIX.select([kernel_id])[0]
    kernel = fetch_kernel(spec)
    image = build_image(MATRIX.guest_suite, arch=kernel.arch)
    return GuestSession(spec, kernel, image, workdir, threading.Event(), set(), snapshots=cache)


def _probe(session: GuestSession) -> dict[str, Any]:
    assert session.transport is not None
    result = session.transport.run(PROBE, 60)
    assert result.exit_code == 0, result.stderr
    clock, urandom, pyrandom, authorized, host_key = result.stdout.strip().splitlines()
    transport = session.transport
    assert isinstance(transport, ParamikoTransport)
    server = transport._client.get_transport()
    assert server is not None
    return {
        "skew": abs(int(clock) - time.time()),
        "random": (urandom, pyrandom),
        "client": authorized.split()[1],
        "host_file": host_key,
        "host_pinned": server.get_remote_server_key().get_base64(),
    }


@pytest.mark.vm
@pytest.mark.parametrize("kernel_id", ["debian-12-6.1", "debian-12-6.1-arm64"])
def test_two_restores_are_two_guests(tmp_path: Path, kernel_id: str) -> None:
    require_tool("qemu-system-x86_64" if "arm64" not in kernel_id else "qemu-system-aarch64")
    require_tool("zstd")
    cache = SnapshotCache(tmp_path / "snapshots")
    guests = []
    for _ in range(3):
        session = _session(kernel_id, tmp_path / "w", cache)
        try:
            session.boot()
            guests.append((session.ready_via, session.notes, _probe(session)))
        finally:
            session.shutdown()
    (first, _, saved), (via1, notes1, one), (via2, notes2, two) = guests
    assert first == ["boot+snapshot"] and via1 == via2 == ["restore"], guests
    assert notes1 == notes2 == []
    for guest in (saved, one, two):
        assert guest["skew"] < 5, guest  # the restored clock is the host's, not the save's
        # The host key the host pinned is the one the guest was handed.
        assert guest["host_pinned"] in _public_of(guest["host_file"])
    assert len({g["client"] for g in (saved, one, two)}) == 3
    assert len({g["host_pinned"] for g in (saved, one, two)}) == 3
    assert len({g["random"][0] for g in (saved, one, two)}) == 3
    assert len({g["random"][1] for g in (saved, one, two)}) == 3
    # The snapshot was written before the first guest got its keys: none of them is in it.
    (entry,) = [e for e in cache.root.iterdir() if e.is_dir() and not e.name.startswith(".")]
    state = subprocess.run(
        ["zstd", "-dc", str(entry / "state.zst")], capture_output=True, check=True
    ).stdout
    for guest in (saved, one, two):
        assert guest["client"].encode() not in state
        assert bytes.fromhex(guest["host_file"])[19:51] not in state  # the private seed


def _public_of(dropbear_hex: str) -> str:
    """The base64 public key line of a dropbear ed25519 key file."""
    import base64
    import struct

    blob = bytes.fromhex(dropbear_hex)
    public = blob[-32:]

    def string(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    return base64.b64encode(string(b"ssh-ed25519") + string(public)).decode()


@pytest.mark.vm
def test_a_crash_after_a_restore_is_seen_on_the_console(tmp_path: Path) -> None:
    require_tool("qemu-system-x86_64")
    cache = SnapshotCache(tmp_path / "snapshots")
    first = _session("debian-12-6.1", tmp_path / "w", cache)
    try:
        first.boot()
    finally:
        first.shutdown()
    session = _session("debian-12-6.1", tmp_path / "w", cache)
    try:
        session.boot()
        assert session.ready_via == ["restore"]
        assert session.transport is not None and session.vm is not None
        with contextlib.suppress(TransportError):  # the connection dies with the guest
            session.transport.run("echo c > /proc/sysrq-trigger", 10)
        deadline = time.monotonic() + 60
        with pytest.raises(GuestCrash, match=r"sysrq|Kernel panic") as crash:
            while time.monotonic() < deadline:
                session.vm.check()
                time.sleep(0.1)
        assert "Kernel panic" in crash.value.console_tail or "sysrq" in crash.value.console_tail
    finally:
        session.shutdown()


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """XDG_CACHE_HOME sharing this machine's kernels and images, with snapshots of its own."""
    xdg = tmp_path_factory.mktemp("xdg")
    (xdg / "bpfcompat").mkdir()
    for part in ("kernels", "images"):
        (xdg / "bpfcompat" / part).symlink_to(cache_root() / part)
    return xdg


def _run(tmp: Path, xdg: Path, *args: str) -> tuple[dict[str, Any], str]:
    out = tmp / "out"
    proc = run_cli(
        "matrix", "run", *args, "--kernel", "debian-12-6.1", "--db", str(tmp / "db"),
        "--out-dir", str(out), "--json", str(tmp / "run.json"), "--no-cache",
        env={"XDG_CACHE_HOME": str(xdg)}, timeout=1800,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode in (0, 1, 2), proc.stderr[-3000:]
    return json.loads((tmp / "run.json").read_text()), (out / "report.html").read_text()


def _verdicts(export: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {c["artifact"]: (c["status"], c["code"]) for c in export["cells"]}


@pytest.mark.vm
def test_restored_guests_pass_the_examples_as_booted_ones(
    built_examples: Path, tmp_path: Path, private_cache: Path
) -> None:
    """Every example on a booted guest (--no-snapshot), then on guests restored from the
    snapshot a first run saved: the same verdicts, and the kernel says how it got ready."""
    require_tool("qemu-system-x86_64")
    booted, _ = _run(tmp_path / "booted", private_cache, str(built_examples), "--no-snapshot")
    assert booted["kernels"][0]["ready_via"] == "boot" and booted["kernels"][0]["restores"] == 0
    saving, _ = _run(tmp_path / "saving", private_cache, str(built_examples / "simple-pass"))
    assert saving["kernels"][0]["ready_via"] == "boot+snapshot"
    restored, html = _run(tmp_path / "restored", private_cache, str(built_examples))
    kernel = restored["kernels"][0]
    assert kernel["ready_via"] == "restore", kernel
    assert kernel["restores"] == kernel["boots"] > 1, kernel  # fresh guests restore too
    assert kernel["notes"] == [], kernel["notes"]
    assert 0 < kernel["boot_seconds"] < booted["kernels"][0]["boot_seconds"]
    assert _verdicts(restored) == _verdicts(booted)
    assert all(c["expected"] is not False for c in restored["cells"]), [
        (c["artifact"], c["status"], c["code"]) for c in restored["cells"] if c["expected"] is False
    ]
    assert f"restored {kernel['boot_seconds']:.1f} s" in html
    db = sqlite3.connect(tmp_path / "restored" / "db")
    assert db.execute("select ready_via, restores from runkernel").fetchone() == (
        "restore",
        kernel["boots"],
    )

    # The feature probe ran once, before the save: every restored guest finds it cached,
    # while a booted guest's first job pays for it.
    def cached(run: Path) -> list[bool]:
        rows = sqlite3.connect(run / "db").execute("select raw_json from validatorresult")
        return [json.loads(raw)["capabilities"]["bpftool_probe_cached"] for (raw,) in rows]

    assert all(cached(tmp_path / "restored")), cached(tmp_path / "restored")
    assert not all(cached(tmp_path / "booted"))


@pytest.mark.vm
def test_a_damaged_snapshot_costs_a_boot_and_a_note(built_examples: Path, tmp_path: Path) -> None:
    """A snapshot whose bytes changed (same size) is refused before the guest is used: the
    guest boots, the kernel says why, the snapshot is gone and the next run saves a new one."""
    require_tool("qemu-system-x86_64")
    xdg = tmp_path / "xdg"
    (xdg / "bpfcompat").mkdir(parents=True)
    for part in ("kernels", "images"):
        (xdg / "bpfcompat" / part).symlink_to(cache_root() / part)
    example = str(built_examples / "simple-pass")
    first, _ = _run(tmp_path / "first", xdg, example)
    assert first["kernels"][0]["ready_via"] == "boot+snapshot"
    root = xdg / "bpfcompat" / "snapshots"
    (entry,) = [e for e in root.iterdir() if e.is_dir() and not e.name.startswith(".")]
    state = entry / "state.zst"
    data = bytearray(state.read_bytes())
    for offset in range(len(data) // 3, len(data) // 3 + 64):
        data[offset] ^= 0x5A
    state.write_bytes(bytes(data))
    second, _ = _run(tmp_path / "second", xdg, example)
    kernel = second["kernels"][0]
    assert kernel["ready_via"] == "boot" and kernel["status"] == "ok", kernel
    (note,) = kernel["notes"]
    assert note.startswith("snapshot restore failed: ") and note.endswith("; booted"), note
    assert _verdicts(second) == {"simple-pass": ("pass", None)}
    assert not entry.exists()
    third, _ = _run(tmp_path / "third", xdg, example)
    assert third["kernels"][0]["ready_via"] == "boot+snapshot"
