"""Kernels beyond Debian's x86 packages, booted for real: a user's .rpm kernel (repacked
from a Debian kernel), the kernel built here without BTF run with its detached BTF, and
a run in which broken kernel entries cost only themselves."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from bpfcompat.vm.cache import cache_root
from conftest import EXAMPLES, require_tool, run_cli
from expectations import expected
from kernel_packages import base_kernel, kernel_tree, make_deb, make_rpm

pytestmark = pytest.mark.vm


def run_matrix(tmp_path: Path, kernels: Path, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    out = tmp_path / "run.json"
    proc = run_cli(
        "matrix", "run", *args, "--kernels", str(kernels), "--db", str(tmp_path / "db"),
        "--out-dir", str(tmp_path / "out"), "--json", str(out), env=env,
    )  # fmt: skip
    assert out.is_file(), proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_a_local_rpm_kernel_boots_with_its_config(tmp_path: Path) -> None:
    require_tool("qemu-system-x86_64")
    rpm = make_rpm(kernel_tree(base_kernel(), tmp_path / "pkg"), tmp_path / "pkg")
    digest = hashlib.sha256(rpm.read_bytes()).hexdigest()
    kernels = tmp_path / "kernels.yaml"
    kernels.write_text(
        f"kernels:\n  - id: my-rpm-kernel\n    source: {{rpm: {rpm}, sha256: '{digest}'}}\n"
    )
    # kconfig-externs loads only if libbpf finds the booted kernel's config in the guest.
    # A private cache (this test's package would add an entry to the shared one on every
    # run) that shares the built guest images.
    cache = tmp_path / "xdg" / "bpfcompat"
    cache.mkdir(parents=True)
    (cache / "images").symlink_to(cache_root() / "images")
    proc, export = run_matrix(
        tmp_path,
        kernels,
        str(EXAMPLES / "simple-pass"),
        str(EXAMPLES / "kconfig-externs"),
        env={"XDG_CACHE_HOME": str(tmp_path / "xdg")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (kernel,) = export["kernels"]
    assert kernel["status"] == "ok" and kernel["boots"] == 1
    assert kernel["release"] == base_kernel().release and kernel["btf"] is True
    assert kernel["package"] == "rpm " + str(rpm)
    cells = {c["artifact"]: (c["status"], c["code"], c["evidence"]) for c in export["cells"]}
    assert cells == {
        "simple-pass": ("pass", None, None),
        "kconfig-externs": ("pass", None, None),
    }


def without(tool: str, tmp_path: Path) -> str:
    """A PATH with every program of the current one except `tool` (symlinked)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            link = bin_dir / name
            if name != tool and not link.exists() and not link.is_symlink():
                link.symlink_to(os.path.join(directory, name))
    return str(bin_dir)


def test_broken_kernel_entries_cost_only_themselves(tmp_path: Path) -> None:
    """Each broken entry is one line naming the kernel and the problem; the good kernel
    in the same run is validated as usual."""
    require_tool("qemu-system-x86_64")
    pkg = tmp_path / "pkg"
    tree = kernel_tree(base_kernel(), pkg)
    deb = make_deb(tree, pkg / "kernel.deb")
    empty = pkg / "empty" / "tree" / "usr/share/doc/x"
    empty.mkdir(parents=True)
    (empty / "README").write_text("nothing\n")
    rpm_without_kernel = make_rpm(pkg / "empty" / "tree", pkg, "kernel-bpfcompat-empty")
    kernels = tmp_path / "kernels.yaml"
    kernels.write_text(
        f"""kernels:
  - id: good
    suite: bookworm
    package: linux-image-6.1.0-50-cloud-amd64-unsigned
  - id: no-qemu-for-arm64
    arch: aarch64
    suite: bookworm
    package: linux-image-6.1.0-50-cloud-arm64-unsigned
  - id: bad-checksum
    source: {{deb: {deb}, sha256: '{"0" * 64}'}}
  - id: rpm-without-kernel
    source: {{rpm: {rpm_without_kernel}}}
  - id: unfetchable
    source: {{deb: 'http://127.0.0.1:9/linux-image.deb'}}
"""
    )
    proc, export = run_matrix(
        tmp_path,
        kernels,
        str(EXAMPLES / "simple-pass"),
        env={"PATH": without("qemu-system-aarch64", tmp_path)},
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    status = {k["id"]: (k["status"], k["error"]) for k in export["kernels"]}
    assert status["good"] == ("ok", None)
    assert status["no-qemu-for-arm64"] == (
        "error",
        "boot failed: qemu-system-aarch64 not found: run scripts/setup.sh (qemu-system-arm)",
    )
    assert status["bad-checksum"][1].startswith(f"{deb}: sha256 mismatch (expected {'0' * 64}")
    assert status["rpm-without-kernel"][1] == (
        "no kernel image (boot/vmlinuz-*, lib/modules/*/vmlinuz) in the package"
    )
    assert status["unfetchable"][1].startswith("http://127.0.0.1:9/linux-image.deb: cannot fetch (")
    for kid, (_, error) in status.items():
        if kid != "good":
            assert f"bpfcompat: kernel {kid}: {error}" in proc.stderr.splitlines()
    cells = {c["kernel"]: (c["status"], c["code"]) for c in export["cells"]}
    assert cells["good"] == ("pass", None)
    assert all(cells[k] == ("error", "INFRA_ERROR") for k in status if k != "good")


@pytest.fixture(scope="module")
def external_btf_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every example on the kernel built without BTF, given its own detached BTF."""
    require_tool("qemu-system-x86_64")
    tmp = tmp_path_factory.mktemp("extbtf")
    proc = run_cli(
        "matrix", "run", str(EXAMPLES), "--kernel", "debian-12-6.1-nobtf",
        "--btf", "debian-12-6.1-nobtf=build", "--db", str(tmp / "db"),
        "--out-dir", str(tmp / "out"), "--json", str(tmp / "run.json"),
    )  # fmt: skip
    assert (tmp / "run.json").is_file(), proc.stderr[-3000:]
    return {"proc": proc, "export": json.loads((tmp / "run.json").read_text()), "tmp": tmp}


def test_external_btf_makes_co_re_objects_pass(external_btf_run: dict[str, Any]) -> None:
    cells = {c["artifact"]: c for c in external_btf_run["export"]["cells"]}
    (kernel,) = external_btf_run["export"]["kernels"]
    assert kernel["btf"] is False and kernel["status"] == "ok"
    # CO-RE relocates against the file: the read of task->tgid passes, the read of a type
    # no BTF has fails as on every kernel with BTF (not MISSING_BTF any more).
    assert cells["lockdown-probe-read"]["status"] == "pass"
    assert cells["core-relocation-fail"]["code"] == "CORE_RELOCATION_FAILURE"
    for name in ("lockdown-probe-read", "core-relocation-fail", "simple-pass"):
        assert any("external BTF" in n for n in cells[name]["notes"]), cells[name]["notes"]
    # Programs that need BTF inside the kernel stay failing, and the fix says why.
    for name in ("fentry-attach", "kfunc-new", "cgrp-storage-map", "fentry-missing-target"):
        cell = cells[name]
        assert (cell["status"], cell["code"]) == ("fail", "MISSING_BTF"), (name, cell)
        assert "--btf KERNEL_ID=PATH" in cell["remediation"]
        assert "fentry/fexit, tp_btf, LSM and kfunc programs" in cell["remediation"]
    # Everything else gets what the kernel gets without the file: only CO-RE changes.
    for name, cell in cells.items():
        if name not in {"lockdown-probe-read", "core-relocation-fail"}:
            want = expected(name, "debian-12-6.1-nobtf")
            assert (cell["status"], cell["code"]) == (want["status"], want["code"]), name
    html = (external_btf_run["tmp"] / "out" / "report.html").read_text()
    assert "external BTF" in html


def test_external_btf_is_recorded_in_the_result(external_btf_run: dict[str, Any]) -> None:
    import sqlite3

    conn = sqlite3.connect(external_btf_run["tmp"] / "db")
    raw = conn.execute(
        "select v.raw_json from cell c join validatorresult v on v.id = c.result_id "
        "where c.artifact = 'lockdown-probe-read'"
    ).fetchone()[0]
    btf = json.loads(raw)["btf"]
    assert btf["kernel_btf_available"] is False
    assert btf["core_btf_source"] == "custom"
    assert btf["custom_btf_path"] and btf["custom_btf_size"] > 100_000


def test_a_failing_kernel_build_is_one_line_and_caches_nothing(tmp_path: Path) -> None:
    """kconfig drops CONFIG_KPROBES=y when modules are off (6.1): caught at configure."""
    kernels = tmp_path / "kernels.yaml"
    kernels.write_text(
        """kernels:
  - id: broken-build
    suite: bookworm
    package: linux-source-6.1
    source: build
    build: {base: tinyconfig, config: [CONFIG_MODULES=n, CONFIG_KPROBES=y]}
"""
    )
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = run_cli("kernels", "build", "--kernels", str(kernels), env=env)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("bpfcompat: error:")]
    assert errors == [
        "bpfcompat: error: kernel broken-build: build step configure: CONFIG_KPROBES=y did "
        "not take effect (CONFIG_KPROBES is not set after olddefconfig: an unmet dependency "
        "or a choice that overrides it)"
    ], proc.stderr
    kernels_dir = tmp_path / "cache" / "bpfcompat" / "kernels"
    arch_dir = kernels_dir / "v3" / "amd64"
    entries = [p.name for p in arch_dir.iterdir()] if arch_dir.is_dir() else []
    assert [name for name in entries if not name.endswith(".lock")] == []  # locks stay
    assert not list((tmp_path / "cache" / "bpfcompat").glob("bpfcompat-fetch-*"))
    log = kernels_dir / "build-logs" / "broken-build.log"
    assert "olddefconfig" in log.read_text()
    listed = json.loads(
        run_cli("kernels", "list", "--json", "--kernels", str(kernels), env=env).stdout
    )
    assert listed[0]["cached"] is False
