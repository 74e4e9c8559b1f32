"""Untrusted inputs and stored state at the edges: every case is one line naming the input,
a non-zero exit, and nothing stored half. No VM is booted."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from bpfcompat.errors import ArtifactError, ConfigError, StoreError
from bpfcompat.matrix import plan as plan_module
from bpfcompat.matrix.config import load_kernel_matrix, load_manifest
from bpfcompat.matrix.plan import discover_artifacts, load_artifact
from bpfcompat.matrix.store import SCHEMA_VERSION, Cell, Run, Store
from bpfcompat.vm.image import GuestImage
from bpfcompat.vm.kernels import KernelBuild
from conftest import ROOT, run_cli

SIMPLE = ROOT / "examples" / "simple-pass"


def one_line_error(proc: object, *needles: str) -> None:
    stderr = proc.stderr  # type: ignore[attr-defined]
    assert proc.returncode == 1, stderr  # type: ignore[attr-defined]
    errors = [ln for ln in stderr.splitlines() if ln.startswith("bpfcompat: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


# --- files that are not what they claim -------------------------------------------------------


def test_a_device_or_fifo_as_kernels_file_is_refused_without_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "kernels.yaml"
    os.mkfifo(fifo)
    for path, kind in ((Path("/dev/zero"), "character device"), (fifo, "FIFO")):
        with pytest.raises(ConfigError, match=kind):
            load_kernel_matrix(path)
        proc = run_cli("matrix", "run", str(SIMPLE), "--kernels", str(path), "--db",
                       str(tmp_path / "db"), timeout=60)  # fmt: skip
        one_line_error(proc, str(path), kind)
    assert not (tmp_path / "db").exists()


def test_an_oversized_config_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "kernels.yaml"
    with big.open("wb") as fh:
        fh.truncate(64 << 20)  # sparse: reading it would cost 64 MiB
    with pytest.raises(ConfigError, match="over the 1048576 byte limit"):
        load_kernel_matrix(big)


def test_a_device_named_like_an_object_is_an_invalid_cell(tmp_path: Path) -> None:
    link = tmp_path / "zero.bpf.o"
    link.symlink_to("/dev/zero")
    (artifact,) = discover_artifacts([link])
    assert artifact.data == b"" and "character device" in (artifact.invalid_reason or "")
    os.mkfifo(tmp_path / "pipe.bpf.o")
    found = {a.name: a.invalid_reason for a in discover_artifacts([tmp_path])}
    assert "FIFO" in (found["pipe"] or "")


def test_the_artifacts_of_one_run_are_capped_in_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built_examples: Path
) -> None:
    monkeypatch.setattr(plan_module, "MAX_TOTAL_ARTIFACT_BYTES", 20_000)
    for i in range(20):
        shutil.copy(built_examples / "ringbuf" / "ringbuf.bpf.o", tmp_path / f"r{i}.bpf.o")
    with pytest.raises(ArtifactError, match="total over 20000 bytes"):
        discover_artifacts([tmp_path])


def test_a_manifest_that_is_a_directory_or_a_broken_link_is_an_error(
    tmp_path: Path, built_examples: Path
) -> None:
    obj = tmp_path / "x.bpf.o"
    shutil.copy(built_examples / "simple-pass" / "simple-pass.bpf.o", obj)
    (tmp_path / "manifest.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"manifest\.yaml: a directory"):
        load_artifact(obj)
    (tmp_path / "manifest.yaml").rmdir()
    (tmp_path / "x.manifest.yaml").symlink_to(tmp_path / "gone.yaml")
    with pytest.raises(ConfigError, match="broken symlink"):
        load_artifact(obj)


def test_an_objects_own_manifest_wins_over_its_directorys(
    tmp_path: Path, built_examples: Path
) -> None:
    for name in ("a", "b"):
        shutil.copy(
            built_examples / "simple-pass" / "simple-pass.bpf.o", tmp_path / f"{name}.bpf.o"
        )
    (tmp_path / "manifest.yaml").write_text("metadata: {who: dir}\n")
    (tmp_path / "a.manifest.yaml").write_text("metadata: {who: a}\n")
    got = {a.name: a.manifest.metadata["who"] for a in discover_artifacts([tmp_path])}
    assert got == {"a": "a", "b": "dir"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("maps: [{name: 'a=b', max_entries: 1}]", "may not contain '='"),
        ("maps: [{name: 'a,b', max_entries: 1}]", "may not contain ','"),
        ("program_variants: [{group: g, programs: [{name: 'p:q'}]}]", "may not contain ':'"),
        ('functional_tests: [{name: t, command: "echo \\0x"}]', "NUL"),
        ("functional_tests: [{name: t, command: 'true', timeout: 601s}]", "between 0 and 600"),
        ("retries: 9", "less than or equal to 5"),
    ],
)
def test_manifest_values_the_guest_could_not_take_are_refused_on_the_host(
    tmp_path: Path, text: str, needle: str
) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as caught:
        load_manifest(path)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


# --- the store --------------------------------------------------------------------------------


def test_a_store_from_a_newer_bpfcompat_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    Store(db).add(Run())
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer bpfcompat"):
        Store(db)
    proc = run_cli("runs", "list", "--db", str(db))
    one_line_error(proc, str(db), "newer bpfcompat")


def test_an_older_store_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with sqlite3.connect(db) as conn:  # a first-release store: no labels, no versions
        conn.execute("CREATE TABLE run (id INTEGER PRIMARY KEY, started_at VARCHAR, "
                     "finished_at VARCHAR, status VARCHAR, exit_code INTEGER, accel VARCHAR, "
                     "kernels_file VARCHAR, tool_version VARCHAR, error VARCHAR)")  # fmt: skip
        conn.execute("INSERT INTO run (started_at, status, accel, kernels_file, tool_version) "
                     "VALUES ('2026-01-01', 'completed', 'tcg', '', '0.1.0')")  # fmt: skip
    store = Store(db)
    (run,) = store.runs()
    assert run.status == "completed" and run.labels == {}
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_corrupt_store_is_refused_with_one_line(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    store = Store(db)
    for _ in range(200):
        store.add(Run(error="x" * 2000))
    store.engine.dispose()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    page = 4096
    data[3 * page : 3 * page + 200] = b"\xff" * 200  # same size, garbage inside a page
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError) as caught:
        Store(db)
    assert str(db) in str(caught.value) and "\n" not in str(caught.value)
    proc = run_cli("runs", "list", "--db", str(db))
    one_line_error(proc, str(db))


def test_damaged_json_in_a_stored_cell_reads_as_empty(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.db")
    run = store.add(Run())
    cell = Cell(run_id=run.id or 0, artifact="a", artifact_path="a", artifact_sha256="0",
                kernel_id="k", status="pass", notes_json="{not", details_json="[1]")  # fmt: skip
    assert cell.notes == [] and cell.details == {}


def test_a_directory_in_place_of_the_store_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("runs", "list", "--db", str(tmp_path))
    one_line_error(proc, str(tmp_path))


# --- host validation, labels, arguments --------------------------------------------------------


def test_host_validation_will_not_run_manifest_commands_without_consent(
    built_examples: Path,
) -> None:
    proc = run_cli(
        "validate", str(built_examples / "functional-execve" / "functional-execve.bpf.o")
    )
    one_line_error(proc, "--allow-host-commands", "as root on this host")


def test_matrix_run_needs_artifacts_and_well_formed_labels(tmp_path: Path) -> None:
    one_line_error(run_cli("matrix", "run", "--db", str(tmp_path / "db")), "artifacts")
    proc = run_cli(
        "matrix", "run", str(SIMPLE), "--label", "no-equals", "--db", str(tmp_path / "db")
    )
    one_line_error(proc, "--label")
    proc = run_cli("matrix", "run", str(SIMPLE), "--attach-mode", "sometimes")
    one_line_error(proc, "--attach-mode")
    assert not (tmp_path / "db").exists()


# --- the cache --------------------------------------------------------------------------------


def test_a_same_size_corruption_of_the_initramfs_is_rebuilt(tmp_path: Path) -> None:
    kernel_entry, image_entry = tmp_path / "k", tmp_path / "i"
    kernel_entry.mkdir()
    image_entry.mkdir()
    (kernel_entry / "modules.cpio").write_bytes(b"m" * 1000)
    (image_entry / "rootfs.cpio").write_bytes(b"r" * 5000)
    kernel = KernelBuild("pkg", "1", "6.1.0", kernel_entry)
    image = GuestImage("trixie", "digest", image_entry)
    initrd = image.initrd_for(kernel)
    good = initrd.read_bytes()
    assert good == b"r" * 5000 + b"m" * 1000
    initrd.write_bytes(b"X" * len(good))  # same size, wrong bytes
    assert image.initrd_for(kernel).read_bytes() == good


# --- globals a manifest sets ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("globals_yaml", "needle"),
    [
        ("{markr: 1}", "globals.markr: rodata-globals.bpf.o: no global variable 'markr'"),
        ("{marker: 4294967296}", "out of range for const volatile int"),
        ("{enabled: 1}", "takes true or false"),
        ("{tag: this-string-is-far-too-long-for-sixteen}", "at most 15 bytes"),
        ("{marker: [1, 2]}", "takes an integer"),
    ],
)
def test_a_global_the_object_cannot_take_is_refused_naming_it(
    tmp_path: Path, built_examples: Path, globals_yaml: str, needle: str
) -> None:
    obj = tmp_path / "rodata-globals.bpf.o"
    shutil.copy(built_examples / "rodata-globals" / "rodata-globals.bpf.o", obj)
    (tmp_path / "rodata-globals.manifest.yaml").write_text(f"globals: {globals_yaml}\n")
    with pytest.raises(ConfigError) as caught:
        load_artifact(obj)
    message = str(caught.value)
    assert needle in message and "rodata-globals.manifest.yaml" in message, message
    if "markr" in globals_yaml:
        assert "did you mean 'marker'" in message


def test_a_misspelt_program_or_map_in_a_manifest_is_an_error_with_a_close_match(
    tmp_path: Path, built_examples: Path
) -> None:
    obj = tmp_path / "runtime-sized-maps.bpf.o"
    shutil.copy(built_examples / "runtime-sized-maps" / "runtime-sized-maps.bpf.o", obj)
    own = tmp_path / "runtime-sized-maps.manifest.yaml"
    own.write_text("maps: [{name: auxiliary_map, max_entries: cpus}]\n")
    with pytest.raises(ConfigError, match=r"maps\[0\]\.name: .* no map 'auxiliary_map' "
                       r"\(did you mean 'auxiliary_maps'\?\)"):  # fmt: skip
        load_artifact(obj)
    own.write_text("programs: [{name: runtime_sized_exec, attach: {required: true}}]\n")
    with pytest.raises(ConfigError, match="did you mean 'runtime_sized_execve'"):
        load_artifact(obj)
    own.unlink()
    (tmp_path / "manifest.yaml").write_text("shared: true\nmaps: [{name: other, max_entries: 1}]\n")
    assert load_artifact(obj).manifest.shared  # a shared directory manifest may name others
