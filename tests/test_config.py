"""Config errors: every bad kernels.yaml / manifest gets one line naming file, entry, key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpfcompat.errors import ConfigError
from bpfcompat.matrix.config import load_kernel_matrix, load_manifest
from conftest import ROOT, run_cli

GOOD_KERNEL = """
  - id: k1
    suite: trixie
    package: linux-image-6.12.117+deb13-cloud-amd64-unsigned
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(fn, path: Path) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        fn(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


def test_embedded_matrix_loads() -> None:
    matrix = load_kernel_matrix(ROOT / "kernels.yaml")
    ids = [k.id for k in matrix.kernels]
    assert ids[:4] == ["debian-11-5.10", "debian-12-6.1", "debian-13-6.12", "debian-sid-7.2"]
    assert all(k.required for k in matrix.kernels[:4])
    lockdown = matrix.select(["debian-13-6.12-lockdown"])[0]
    assert not lockdown.required and "lockdown=confidentiality" in lockdown.cmdline


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kernels:" + GOOD_KERNEL + "    colour: red\n", "kernels[0] (k1).colour: Extra inputs"),
        ("kernels:" + GOOD_KERNEL + "    memory_mb: -5\n", "kernels[0] (k1).memory_mb:"),
        ("kernels:" + GOOD_KERNEL + "    required: perhaps\n", "kernels[0] (k1).required:"),
        ("kernels:" + GOOD_KERNEL + GOOD_KERNEL, "duplicate kernel id 'k1'"),
        ("kernels: []\n", "kernels: List should have at least 1 item"),
        ("kernels:\n  - id: BAD ID\n    suite: x1\n    package: p1\n", "kernels[0] (BAD ID).id:"),
        ("kernels:" + GOOD_KERNEL + '    cmdline: "a\' b"\n', "cmdline: may not contain quotes"),
        ("kernels: [\n", "malformed YAML at line"),
        (
            "kernels:" + GOOD_KERNEL + "    memory_mb: 512\n    memory_mb: 1024\n",
            "line 6, column 5: duplicate key 'memory_mb'",
        ),
        ("guest_suite: trixie\nguest_suite: sid\nkernels:" + GOOD_KERNEL, "duplicate key"),
        ("- just a list\n", "expected a mapping at the top level"),
        (
            "kernels:" + GOOD_KERNEL + "    arch: riscv64\n",
            "kernels[0] (k1).arch: Input should be 'x86_64' or 'aarch64'",
        ),
        (
            "kernels:\n  - id: k1\n    source: {zip: k.zip}\n",
            "kernels[0] (k1).source: expected apt, build, {deb: ...}, {rpm: ...} or {vmlinuz: ...}",
        ),
        (
            "kernels:\n  - id: k1\n    source: {deb: k.deb, sha256: abc}\n",
            "kernels[0] (k1).source.deb.sha256: String should match pattern",
        ),
        (
            "kernels:\n  - id: k1\n    source: {rpm: 'ftp://host/k.rpm'}\n",
            "unsupported URL scheme in 'ftp://host/k.rpm'",
        ),
        (
            "kernels:" + GOOD_KERNEL + "    source: {deb: k.deb}\n",
            "kernels[0] (k1): `suite` is only for apt and build sources, not deb",
        ),
        ("kernels:\n  - id: k1\n    source: {deb: k.deb}\n    btf: build\n", "btf: build is only"),
        ("kernels:" + GOOD_KERNEL + "    source: build\n", "source build needs a `build:` section"),
        (
            "kernels:" + GOOD_KERNEL + "    source: build\n    build: {config: [CONFIG_X=maybe]}\n",
            "kernels[0] (k1).build.config[0]: String should match pattern",
        ),
        ("kernels:\n  - id: k1\n    source: {vmlinuz: 'https://x/vmlinuz'}\n", "not a URL"),
    ],
)
def test_kernel_matrix_errors(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(load_kernel_matrix, write(tmp_path, "kernels.yaml", text))
    assert expected in message


def test_missing_kernels_file(tmp_path: Path) -> None:
    assert "file not found" in error_of(load_kernel_matrix, tmp_path / "nope.yaml")


def test_unknown_kernel_id_selection() -> None:
    matrix = load_kernel_matrix(ROOT / "kernels.yaml")
    with pytest.raises(ConfigError, match="unknown kernel id 'debian-99'"):
        matrix.select(["debian-99"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("maps:\n  - name: m\n    max_entries: lots\n", "maps[0] (m).max_entries"),
        ("maps:\n  - name: m\n    max_entries: 1099511627776\n", "maps[0] (m).max_entries"),
        ("maps:\n  - name: m\n", "maps[0] (m): needs max_entries, inner_ringbuf_bytes, value_size"),
        ("maps:\n  - name: m\n    max_entries: 1\n    inner_ringbuf_bytes: 5000\n", "power of two"),
        (
            "program_variants:\n  - group: g\n    programs:\n      - name: p\n"
            "        requires_helper: bpf_no_such_helper\n",
            "unknown helper name",
        ),
        (
            "program_variants:\n  - group: g\n    programs:\n      - name: p\n"
            "        requires_helper: 99999\n",
            "requires_helper",
        ),
        (
            "functional_tests:\n  - name: t\n    command: x\n    timeout: -1s\n",
            "functional_tests[0] (t).timeout",
        ),
        (
            "functional_tests:\n  - name: t\n    command: x\n    expect_exitcode: 0\n",
            "functional_tests[0] (t).expect_exitcode: Extra inputs",
        ),
        ("probe_companions: []\n", "probe_companions: Extra inputs"),
        ("maps: []\nmaps: []\n", "line 2, column 1: duplicate key 'maps'"),
        (
            "programs:\n  - name: p\n    attach: {required: maybe}\n",
            "programs[0] (p).attach.required",
        ),
    ],
)
def test_manifest_errors(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(load_manifest, write(tmp_path, "manifest.yaml", text))
    assert expected in message


def test_yaml_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    """Only keys written twice are duplicates; overriding a `<<:` merged key is YAML's
    intended use and stays legal."""
    text = "maps:\n  - &m {name: a, max_entries: 4}\n  - <<: *m\n    name: b\n"
    manifest = load_manifest(write(tmp_path, "manifest.yaml", text))
    assert [(m.name, m.max_entries) for m in manifest.maps] == [("a", 4), ("b", 4)]


def test_manifest_generates_contract_flags() -> None:
    manifest = load_manifest(ROOT / "examples" / "runtime-sized-maps" / "manifest.yaml")
    args = manifest.validator_args()
    assert "--set-map-max-entries" in args and "auxiliary_maps=cpus" in args
    assert "--set-map-inner-ringbuf" in args and "ringbuf_maps=8388608" in args
    variants = load_manifest(ROOT / "examples" / "program-variants" / "manifest.yaml")
    assert variants.validator_args() == ["--prog-variants", "loop_x=loop_x:bpf_loop,loop_old_x"]
    functional = load_manifest(ROOT / "examples" / "functional-execve" / "manifest.yaml")
    plan = functional.functional_plan()
    assert plan is not None and plan["tests"][0]["expect_stdout_contains"]
    assert plan["tests"][0]["timeout_seconds"] > 0


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    text = tmp_path / "notes.bpf.o"
    text.write_text("hello")
    cases = [
        (
            ["matrix", "run", str(tmp_path / "missing.bpf.o"), "--db", str(tmp_path / "db")],
            "missing.bpf.o: no such file or directory",
        ),
        (
            ["matrix", "run", str(text), "--kernel", "debian-99", "--db", str(tmp_path / "db")],
            "unknown kernel id 'debian-99'",
        ),
        (
            ["kernels", "list", "--kernels", str(write(tmp_path, "k.yaml", "kernels: [\n"))],
            "malformed YAML",
        ),
        (
            ["report", "--db", str(tmp_path / "none.db"), "--html", str(tmp_path / "r.html")],
            "no such store",
        ),
    ]
    for args, expected in cases:
        proc = run_cli(*args)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_kernel_file_paths_are_relative_to_the_kernels_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "kernels.yaml",
        "kernels:\n  - id: mine\n    source: {vmlinuz: boot/vmlinuz, modules: mods}\n"
        "    btf: ../btf/vmlinux.btf\n  - id: url\n    source: {rpm: 'https://host/k.rpm'}\n",
    )
    mine, url = load_kernel_matrix(path).kernels
    assert mine.source.vmlinuz == str(tmp_path / "boot/vmlinuz")  # type: ignore[union-attr]
    assert mine.source.modules == str(tmp_path / "mods")  # type: ignore[union-attr]
    assert mine.btf == str(tmp_path / "../btf/vmlinux.btf")
    assert url.source.rpm == "https://host/k.rpm"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("debian-12-6.1", "--btf 'debian-12-6.1': expected KERNEL_ID=PATH"),
        ("debian-99=/x", "--btf 'debian-99=/x': kernel 'debian-99' is not in this run"),
        ("debian-12-6.1=/nonexistent.btf", "/nonexistent.btf is not a file"),
        ("debian-12-6.1=build", "only a `source: build` kernel has one"),
    ],
)
def test_btf_option_errors(option: str, expected: str) -> None:
    simple = str(ROOT / "examples" / "simple-pass")
    proc = run_cli("matrix", "run", simple, "--kernel", "debian-12-6.1", "--btf", option)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
