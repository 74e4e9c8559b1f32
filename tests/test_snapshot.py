"""Snapshots without booting: the key, the handoff line both sides agree on, the cache
entries, and the session's fallback to a boot (fake guests, real zstd and sha256)."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import pytest

from bpfcompat.errors import SnapshotError, VMError
from bpfcompat.matrix.guest import GuestSession
from bpfcompat.matrix.options import RunOptions
from bpfcompat.matrix.plan import Plan, discover_artifacts
from bpfcompat.matrix.runner import run_plan
from bpfcompat.matrix.store import Store
from bpfcompat.vm import guest_agent
from bpfcompat.vm.handoff import Handoff, HostKey
from bpfcompat.vm.qemu import BootSpec, QemuVM
from bpfcompat.vm.snapshot import (
    HostFacts,
    SnapshotCache,
    SnapshotKey,
    snapshot_key,
    snapshots_enabled,
)
from bpfcompat.vm.spec import KernelSpec
from bpfcompat.vm.ssh import RunKey
from conftest import EXAMPLES, run_cli
from fake_guest import FAKE_HOST, FakeWorld

FACTS = HostFacts("QEMU emulator version 7.2.22 /usr/bin/qemu 1 2", "bios=aa", "")


def _spec(tmp_path: Path, **changes: object) -> BootSpec:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.cpio"
    if not kernel.exists():
        kernel.write_bytes(b"kernel image")
        initrd.write_bytes(b"initrd archive")
    spec = BootSpec(
        vmlinuz=kernel,
        initrd=initrd,
        cmdline="console=ttyS0 quiet",
        memory_mb=512,
        cpus=1,
        console_log=tmp_path / "console.log",
        accel="tcg",
        handoff=Handoff(RunKey()),
    )
    return dataclasses.replace(spec, **changes)


def _other(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    return f"{value}-changed"


def test_every_key_field_changes_the_digest(tmp_path: Path) -> None:
    key = snapshot_key(_spec(tmp_path), FACTS)
    digests = {key.digest}
    for field in dataclasses.fields(SnapshotKey):
        changed = dataclasses.replace(key, **{field.name: _other(getattr(key, field.name))})
        digests.add(changed.digest)
    assert len(digests) == len(dataclasses.fields(SnapshotKey)) + 1


def test_what_shapes_the_guest_changes_the_key(tmp_path: Path) -> None:
    base = snapshot_key(_spec(tmp_path), FACTS)
    variants = {
        "cmdline": snapshot_key(_spec(tmp_path, cmdline="console=ttyS0 lockdown=integrity"), FACTS),
        "memory": snapshot_key(_spec(tmp_path, memory_mb=1024), FACTS),
        "cpus": snapshot_key(_spec(tmp_path, cpus=2), FACTS),
        "accel": snapshot_key(_spec(tmp_path, accel="kvm"), FACTS),
        "arch": snapshot_key(_spec(tmp_path, arch="aarch64"), FACTS),
        "network": snapshot_key(_spec(tmp_path, with_network=False), FACTS),
        "qemu": snapshot_key(_spec(tmp_path), dataclasses.replace(FACTS, qemu="QEMU 8.0")),
        "firmware": snapshot_key(_spec(tmp_path), dataclasses.replace(FACTS, firmware="bios=bb")),
        "host cpu": snapshot_key(_spec(tmp_path), dataclasses.replace(FACTS, host_cpu="x")),
    }
    (tmp_path / "vmlinuz").write_bytes(b"another kernel")
    variants["kernel bytes"] = snapshot_key(_spec(tmp_path), FACTS)
    (tmp_path / "initrd.cpio").write_bytes(b"another initrd")
    variants["initrd bytes"] = snapshot_key(_spec(tmp_path), FACTS)
    digests = [base.digest] + [k.digest for k in variants.values()]
    assert len(set(digests)) == len(digests), variants


def test_per_run_values_leave_the_key_alone(tmp_path: Path) -> None:
    """Console path, forwarded port, handoff, paths of identical files: not the guest."""
    base = snapshot_key(_spec(tmp_path), FACTS)
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    (elsewhere / "vmlinuz").write_bytes(b"kernel image")
    (elsewhere / "initrd.cpio").write_bytes(b"initrd archive")
    same = [
        _spec(tmp_path, console_log=tmp_path / "other.log", handoff=Handoff(RunKey())),
        _spec(tmp_path, save_to=tmp_path / "state.zst"),
        _spec(tmp_path, vmlinuz=elsewhere / "vmlinuz", initrd=elsewhere / "initrd.cpio"),
    ]
    assert {snapshot_key(s, FACTS).digest for s in same} == {base.digest}


def test_shape_blanks_ports_descriptors_and_paths(tmp_path: Path) -> None:
    vm = QemuVM(_spec(tmp_path))
    vm.ssh_port, vm._qmp_fd = 40123, 7
    shape = " ".join(vm.shape())
    assert "40123" not in shape and "fd=7" not in shape and str(tmp_path) not in shape
    assert "-machine pc" in shape and "restrict=on" in shape and "-m 512" in shape
    assert "hostfwd=tcp:127.0.0.1:40123-:22" in " ".join(vm.command())


def test_handoff_line_is_what_the_agent_accepts() -> None:
    handoff = Handoff(RunKey())
    line = handoff.line(now=1_700_000_000.25)
    match = guest_agent.HANDOFF.fullmatch(line)
    assert match is not None
    assert match.group("nonce").decode() == handoff.nonce
    assert float(match.group("now")) == 1_700_000_000.25
    assert match.group("client").decode() == handoff.client.public_b64
    host = bytes.fromhex(match.group("host").decode())
    assert host == handoff.host.dropbear and len(host) == 4 + 11 + 4 + 64
    assert host[4:15] == b"ssh-ed25519"
    # The public half the host pins is the tail of dropbear's key blob.
    assert handoff.host.public_line.startswith("ssh-ed25519 AAAA")
    again = Handoff(RunKey())
    assert again.nonce != handoff.nonce and again.host.dropbear != handoff.host.dropbear
    assert handoff.line(now=1.0).split()[4] != handoff.line(now=1.0).split()[4]  # entropy
    assert "PRIVATE" not in repr(handoff) and handoff.host.dropbear.hex() not in repr(handoff)


def test_agent_skips_what_is_not_a_handoff() -> None:
    handoff = Handoff(RunKey())
    read_end, write_end = os.pipe()
    os.write(write_end, b"noise\n" + b"x" * 5000 + b"\n" + handoff.line())
    said: list[str] = []
    original = guest_agent.say
    guest_agent.say = lambda fd, text: said.append(text)  # type: ignore[assignment]
    try:
        match = guest_agent.read_handoff(read_end)
    finally:
        guest_agent.say = original  # type: ignore[assignment]
        os.close(read_end)
        os.close(write_end)
    assert match.group("nonce").decode() == handoff.nonce
    assert len(said) == 2 and all("ignored" in line for line in said)


def test_host_keys_are_fresh() -> None:
    assert len({HostKey().public_line for _ in range(3)}) == 3


def test_env_turns_snapshots_off(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, enabled in (("0", False), ("off", False), ("no", False), ("1", True), ("", True)):
        monkeypatch.setenv("BPFCOMPAT_SNAPSHOT", value)
        assert snapshots_enabled() is enabled
    assert RunOptions().snapshots is True
    monkeypatch.setenv("BPFCOMPAT_SNAPSHOT", "0")
    assert RunOptions().snapshots is False


def test_lookup_refuses_a_damaged_entry(tmp_path: Path) -> None:
    cache = SnapshotCache(tmp_path / "snaps", lambda arch, accel: FAKE_HOST)
    key = cache.key(_spec(tmp_path))
    assert cache.lookup(key) is None
    pending = cache.begin(key)
    pending.state.write_bytes(b"state")
    entry = cache.commit(pending, {"kernel": "k"})
    assert entry is not None and not pending.tmp.exists()
    saved = cache.lookup(key)
    assert saved is not None and saved.size == 5
    (entry / "state.zst").write_bytes(b"stat")  # truncated
    with pytest.raises(SnapshotError, match="truncated"):
        cache.lookup(key)
    (entry / "state.zst").write_bytes(b"state")
    meta = json.loads((entry / "entry.json").read_text())
    meta["key"]["memory_mb"] = 1
    (entry / "entry.json").write_text(json.dumps(meta))
    with pytest.raises(SnapshotError, match="another key"):
        cache.lookup(key)
    cache.discard(key)
    assert cache.lookup(key) is None


# --- the session, with fake guests ---------------------------------------------------------


def _run(world: FakeWorld, tmp_path: Path, name: str, copies: int = 1, **opts: object):  # type: ignore[no-untyped-def]
    kernel = KernelSpec(id="k1", suite="bookworm", package="linux-image-fake")
    examples = [EXAMPLES / "simple-pass" / "simple-pass.bpf.o", EXAMPLES / "ringbuf"]
    artifacts = discover_artifacts(examples[:copies])
    for artifact in artifacts:
        world.names[artifact.sha256] = artifact.name
    plan = Plan([kernel], artifacts, "trixie")
    settings: dict = {"snapshots": True, **opts}
    options = RunOptions(
        workdir=tmp_path / "w",
        backend=world.backend(tmp_path / "fake"),
        concurrency=1,
        use_cache=False,
        **settings,
    )
    store = Store(tmp_path / f"{name}.db")
    _, summary = run_plan(plan, store, options)
    return store, summary


def _entries(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]


def test_first_guest_saves_then_guests_restore(built_examples: Path, tmp_path: Path) -> None:
    world = FakeWorld(snapshot_root=tmp_path / "snaps")
    _, first = _run(world, tmp_path, "first")
    assert first.kernels[0].ready_via == "boot+snapshot" and first.kernels[0].restores == 0
    assert world.specs[0].save_to is not None and world.specs[0].handoff is not None
    assert "bpfcompat.key=" not in world.specs[0].cmdline
    assert len(_entries(tmp_path / "snaps")) == 1
    _, second = _run(world, tmp_path, "second")
    kernel = second.kernels[0]
    assert kernel.ready_via == "restore" and kernel.restores == 1 and kernel.notes == []
    assert world.specs[1].restore_from is not None
    assert [c.status for c in second.cells] == [c.status for c in first.cells] == ["pass"]


def test_no_snapshot_boots_with_the_key_on_the_command_line(
    built_examples: Path, tmp_path: Path
) -> None:
    world = FakeWorld(snapshot_root=tmp_path / "snaps")
    _, summary = _run(world, tmp_path, "off", snapshots=False)
    assert summary.kernels[0].ready_via == "boot"
    assert world.specs[0].handoff is None and "bpfcompat.key=" in world.specs[0].cmdline
    assert not (tmp_path / "snaps").exists()


def _corrupt(root: Path) -> Path:
    state = _entries(root)[0] / "state.zst"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 can tell
    state.write_bytes(bytes(data))
    return state


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "not ready"])
def test_a_bad_snapshot_falls_back_to_a_boot(
    built_examples: Path, tmp_path: Path, damage: str
) -> None:
    world = FakeWorld(snapshot_root=tmp_path / "snaps")
    _run(world, tmp_path, "first")
    if damage == "corrupt":
        _corrupt(tmp_path / "snaps")
    elif damage == "truncated":
        state = _entries(tmp_path / "snaps")[0] / "state.zst"
        state.write_bytes(state.read_bytes()[:-10])
    else:
        world.hang_restores = 1
    _, summary = _run(world, tmp_path, "second")
    kernel = summary.kernels[0]
    assert kernel.ready_via == "boot" and kernel.restores == 0 and kernel.status == "ok"
    assert len(kernel.notes) == 1, kernel.notes
    assert kernel.notes[0].startswith("snapshot restore failed: ")
    assert kernel.notes[0].endswith("; booted")
    why = {"corrupt": "sha256", "truncated": "truncated", "not ready": "not ready"}[damage]
    assert why in kernel.notes[0]
    assert world.specs[-1].handoff is None  # the fallback is a plain boot
    assert _entries(tmp_path / "snaps") == []  # the bad snapshot is gone
    assert [c.status for c in summary.cells] == ["pass"]
    # The next run saves a good one again.
    _, third = _run(world, tmp_path, "third")
    assert third.kernels[0].ready_via == "boot+snapshot"


def test_restore_changes_no_cache_key(built_examples: Path, tmp_path: Path) -> None:
    """A result is keyed by what was validated, never by how the guest got ready."""
    world = FakeWorld(snapshot_root=tmp_path / "snaps")
    booted, _ = _run(world, tmp_path, "booted", snapshots=False)
    _run(world, tmp_path, "saved")
    restored, summary = _run(world, tmp_path, "restored")
    assert summary.kernels[0].ready_via == "restore"

    def keys(store: Store) -> set[str]:
        return {store.result(c.result_id).cache_key for c in store.cells(1)}  # type: ignore[union-attr]

    assert keys(booted) == keys(restored)


def test_reboots_restore_too(built_examples: Path, tmp_path: Path) -> None:
    world = FakeWorld(snapshot_root=tmp_path / "snaps")
    _, summary = _run(world, tmp_path, "percell", copies=2, boot_per_artifact=True)
    assert summary.kernels[0].ready_via == "boot+snapshot"
    assert summary.kernels[0].boots == 2 and summary.kernels[0].restores == 1
    world2 = FakeWorld(snapshot_root=tmp_path / "snaps")
    _, again = _run(world2, tmp_path, "again", copies=2, boot_per_artifact=True)
    assert again.kernels[0].ready_via == "restore" and again.kernels[0].restores == 2
    assert len(world2.specs) == 2 and all(s.restore_from is not None for s in world2.specs)


def test_interrupt_during_restore_keeps_the_snapshot(built_examples: Path, tmp_path: Path) -> None:
    """A restore cut short by Ctrl-C says nothing about the snapshot: it stays."""
    world = FakeWorld(snapshot_root=tmp_path / "snaps")
    _run(world, tmp_path, "first")
    kernel = KernelSpec(id="k1", suite="bookworm", package="linux-image-fake")
    backend = world.backend(tmp_path / "fake")
    stop = threading.Event()
    session = GuestSession(
        kernel,
        backend.fetch_kernel(kernel),
        backend.build_image("trixie"),
        tmp_path / "w",
        stop,
        set(),
        vm_factory=backend.vm_factory,
        connect=backend.connect,
        snapshots=backend.snapshots(),
    )
    world.hang_restores, world.on_restore = 1, stop.set
    with pytest.raises(VMError, match="interrupted"):
        session.boot()
    assert len(world.specs) == 2 and world.specs[1].restore_from is not None
    assert session.notes == [] and len(_entries(tmp_path / "snaps")) == 1


def test_cache_commands_list_and_clean_snapshots(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    cache = SnapshotCache(tmp_path / "bpfcompat" / "snapshots", lambda arch, accel: FAKE_HOST)
    key = cache.key(_spec(tmp_path))
    pending = cache.begin(key)
    pending.state.write_bytes(b"x" * 4096)
    cache.commit(pending, {"kernel": "debian-12-6.1"})
    listed = run_cli("cache", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert [s["kernel"] for s in data["snapshots"]] == ["debian-12-6.1"]
    assert data["snapshots"][0]["key"]["memory_mb"] == 512
    text = run_cli("cache", "list", env=env)
    assert "debian-12-6.1" in text.stdout and "snapshots" in text.stdout
    refused = run_cli("cache", "clean", env=env)
    assert refused.returncode == 1 and "--snapshots" in refused.stderr
    cleaned = run_cli("cache", "clean", "--snapshots", env=env)
    assert cleaned.returncode == 0 and "removed 1 snapshot" in cleaned.stdout
    assert cache.entries() == []


class _Stop(Exception):
    """Raised by the stand-in run_plan once it has seen the options."""


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [(False, None, True), (True, None, False), (False, "0", False), (True, "1", False)],
)
@pytest.mark.parametrize("command", ["matrix", "validate"])
def test_no_snapshot_flag_and_env_reach_the_runner(
    built_examples: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    flag: bool,
    env: str | None,
    expected: bool,
) -> None:
    """--no-snapshot and BPFCOMPAT_SNAPSHOT=0 each turn snapshots off; either wins."""
    from typer.testing import CliRunner

    from bpfcompat import cli
    from bpfcompat.matrix import runner

    seen: list[RunOptions] = []

    def fake_run_plan(plan: Plan, store: Store, options: RunOptions) -> None:
        seen.append(options)
        raise _Stop

    monkeypatch.setattr(runner, "run_plan", fake_run_plan)
    if env is None:
        monkeypatch.delenv("BPFCOMPAT_SNAPSHOT", raising=False)
    else:
        monkeypatch.setenv("BPFCOMPAT_SNAPSHOT", env)
    artifact = str(EXAMPLES / "simple-pass" / "simple-pass.bpf.o")
    db = str(tmp_path / "db")
    if command == "matrix":
        args = ["matrix", "run", artifact, "--kernel", "debian-12-6.1", "--db", db]
        args += ["--out-dir", str(tmp_path / "out")]
    else:
        args = ["validate", artifact, "--kernel", "debian-12-6.1", "--db", db]
    result = CliRunner().invoke(cli.app, [*args, *(["--no-snapshot"] if flag else [])])
    assert isinstance(result.exception, _Stop), (result.output, result.exception)
    assert [o.snapshots for o in seen] == [expected]
