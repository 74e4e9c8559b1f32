"""Kernels from every source, without booting: the cache entry each source ends in, and one
line naming the kernel and the problem for each kind of bad input, with nothing left in
the cache. The inputs are real: packages repacked from a Debian kernel (kernel_packages)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from bpfcompat.errors import BuildError, FetchError, ImageError, VMError
from bpfcompat.matrix.config import load_kernel_matrix
from bpfcompat.vm import arch as arch_mod
from bpfcompat.vm.cpio import CpioFormatError, CpioWriter, extract_newc
from bpfcompat.vm.image import build_image
from bpfcompat.vm.kbuild import _check_config, _StepRunner
from bpfcompat.vm.kernels import cached_kernel, fetch_kernel, kernel_entry_dir
from bpfcompat.vm.qemu import BootSpec, QemuVM
from bpfcompat.vm.sources import image_release
from bpfcompat.vm.spec import BuildSpec, KernelSpec
from conftest import ROOT, run_cli
from kernel_packages import base_kernel, kernel_tree, make_deb, make_rpm


def spec_of(source: Any, **extra: Any) -> KernelSpec:
    return KernelSpec.model_validate({"id": "user-kernel", "source": source, **extra})


def unpacked(cpio: Path) -> dict[str, bytes]:
    out = cpio.parent / f"{cpio.name}.x"
    with cpio.open("rb") as fh:
        extract_newc(fh, out)
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("packages")
    tree = kernel_tree(base_kernel(), work)
    no_kernel = work / "empty" / "tree" / "usr/share/doc/nothing"
    no_kernel.mkdir(parents=True)
    (no_kernel / "README").write_text("no kernel in here\n")
    return {
        "tree": tree,
        "deb": make_deb(tree, work / "kernel.deb"),
        "rpm": make_rpm(tree, work),
        "rpm_without_kernel": make_rpm(work / "empty" / "tree", work, "kernel-bpfcompat-empty"),
    }


def assert_nothing_cached(spec: KernelSpec, root: Path) -> None:
    assert cached_kernel(spec, root) is None
    entry = kernel_entry_dir(spec, root)
    assert not entry.exists(), entry
    leftovers = [p.name for p in entry.parent.glob(".tmp-*")] if entry.parent.is_dir() else []
    assert leftovers == []
    assert not list(root.glob("bpfcompat-fetch-*"))


# --- every source ends in the same entry, config included ----------------------------------


def test_entry_carries_the_kernel_config_where_libbpf_reads_it() -> None:
    """libbpf resolves `extern ... __kconfig` from /boot/config-$(uname -r)."""
    kernel = base_kernel()
    files = unpacked(kernel.modules_cpio)
    assert files[f"boot/config-{kernel.release}"] == kernel.config.read_bytes()
    assert b"CONFIG_BPF_SYSCALL=y" in kernel.config.read_bytes()
    assert "bpfcompat/modules/virtio_net.ko" in files


@pytest.mark.parametrize("kind", ["deb", "rpm", "files"])
def test_user_kernel_sources_make_the_same_entry(
    kind: str, packages: dict[str, Path], tmp_path: Path
) -> None:
    base = base_kernel()
    tree = packages["tree"]
    rel = base.release
    source: dict[str, Any] = {
        "deb": {"deb": str(packages["deb"])},
        "rpm": {"rpm": str(packages["rpm"])},
        "files": {
            "vmlinuz": str(tree / f"boot/vmlinuz-{rel}"),
            "modules": str(tree / f"lib/modules/{rel}"),
            "config": str(tree / f"boot/config-{rel}"),
        },
    }[kind]
    built = fetch_kernel(spec_of(source), tmp_path)
    assert built.release == rel and built.source == kind
    assert built.vmlinuz.read_bytes() == base.vmlinuz.read_bytes()
    assert built.config.read_bytes() == base.config.read_bytes()
    assert unpacked(built.modules_cpio) == unpacked(base.modules_cpio)
    again = fetch_kernel(spec_of(source), tmp_path)  # cached: the same entry, no new work
    assert again.entry == built.entry


def test_a_checksum_given_is_verified(packages: dict[str, Path], tmp_path: Path) -> None:
    good = hashlib.sha256(packages["rpm"].read_bytes()).hexdigest()
    assert fetch_kernel(spec_of({"rpm": str(packages["rpm"]), "sha256": good}), tmp_path)


def test_release_from_a_kernel_image_alone(packages: dict[str, Path], tmp_path: Path) -> None:
    base = base_kernel()
    assert image_release(base.vmlinuz) == base.release  # the bzImage setup header
    image = tmp_path / "Image"  # an arm64 Image carries "Linux version X (" in its bytes
    image.write_bytes(b"\0" * 0x38 + b"ARM\x64" + b"\0" * 64 + b"Linux version 6.1.0-50-arm64 (x")
    assert image_release(image) == "6.1.0-50-arm64"
    built = fetch_kernel(spec_of({"vmlinuz": str(base.vmlinuz)}), tmp_path)
    assert built.release == base.release and unpacked(built.modules_cpio) == {
        "bpfcompat/modules/order": b""
    }


# --- bad input: one line naming the problem, no half entry ---------------------------------


def bad_inputs(packages: dict[str, Path], tmp_path: Path) -> dict[str, tuple[Any, str]]:
    text = tmp_path / "not-a-package.deb"
    text.write_text("hello\n")
    return {
        "rpm without a kernel": (
            {"rpm": str(packages["rpm_without_kernel"])},
            "no kernel image (boot/vmlinuz-*, lib/modules/*/vmlinuz) in the package",
        ),
        "checksum mismatch": (
            {"deb": str(packages["deb"]), "sha256": "0" * 64},
            f"{packages['deb']}: sha256 mismatch (expected {'0' * 64}, got ",
        ),
        "unfetchable URL": (
            {"deb": "http://127.0.0.1:9/kernel.deb"},
            "http://127.0.0.1:9/kernel.deb: cannot fetch (",
        ),
        "missing file": ({"rpm": str(tmp_path / "nope.rpm")}, "nope.rpm: no such file"),
        "not a package": ({"deb": str(text)}, "not-a-package.deb: dpkg-deb -x failed: "),
        "not an rpm": ({"rpm": str(text)}, "not-a-package.deb: not an RPM package"),
        "missing modules dir": (
            {"vmlinuz": str(base_kernel().vmlinuz), "modules": str(tmp_path / "nomods")},
            "nomods: no such directory",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "rpm without a kernel",
        "checksum mismatch",
        "unfetchable URL",
        "missing file",
        "not a package",
        "not an rpm",
        "missing modules dir",
    ],
)
def test_bad_user_kernel_is_one_line_and_caches_nothing(
    case: str, packages: dict[str, Path], tmp_path: Path
) -> None:
    source, message = bad_inputs(packages, tmp_path)[case]
    spec = spec_of(source)
    root = tmp_path / "cache"
    with pytest.raises(FetchError) as info:
        fetch_kernel(spec, root)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert_nothing_cached(spec, root)


def test_an_image_of_another_arch_is_refused(tmp_path: Path) -> None:
    spec = spec_of({"vmlinuz": str(base_kernel().vmlinuz)}, arch="aarch64")
    with pytest.raises(
        FetchError, match="is an x86_64 kernel image, but the entry says arch aarch64"
    ):
        fetch_kernel(spec, tmp_path)
    assert_nothing_cached(spec, tmp_path)


def test_kernels_fetch_names_each_failing_kernel_and_goes_on(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    kernels = tmp_path / "kernels.yaml"
    kernels.write_text(
        "kernels:\n"
        f"  - id: bad-sum\n    source: {{deb: {packages['deb']}, sha256: '{'1' * 64}'}}\n"
        f"  - id: good\n    source: {{rpm: {packages['rpm']}}}\n"
        "  - id: no-kernel\n    source: {rpm: " + str(packages["rpm_without_kernel"]) + "}\n"
    )
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    proc = run_cli("kernels", "fetch", "--kernels", str(kernels), env=env)
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert errors == [
        f"bpfcompat: error: kernel bad-sum: {packages['deb']}: sha256 mismatch "
        f"(expected {'1' * 64}, got {hashlib.sha256(packages['deb'].read_bytes()).hexdigest()})",
        "bpfcompat: error: kernel no-kernel: no kernel image (boot/vmlinuz-*, "
        "lib/modules/*/vmlinuz) in the package",
    ], proc.stderr
    assert proc.stdout.startswith("good: 6.1.0-50-cloud-amd64 (6.1.176-1 (sha256 ")
    listed = json.loads(
        run_cli("kernels", "list", "--json", "--kernels", str(kernels), env=env).stdout
    )
    assert [(k["id"], k["cached"], k["source"]) for k in listed] == [
        ("bad-sum", False, "deb"),
        ("good", True, "rpm"),
        ("no-kernel", False, "rpm"),
    ]


def test_kernels_list_json_describes_the_default_matrix() -> None:
    proc = run_cli("kernels", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["id"]: row for row in json.loads(proc.stdout)}
    keys = {"id", "arch", "release", "btf", "source", "required", "cached"}
    assert all(keys <= set(row) for row in rows.values())
    assert rows["debian-12-6.1-arm64"]["arch"] == "aarch64"
    assert rows["debian-12-6.1-arm64"]["required"] is False
    assert rows["debian-12-6.1-nobtf"]["source"] == "build"
    for row in rows.values():
        if row["cached"]:
            assert row["release"] and row["btf"] is (row["id"] != "debian-12-6.1-nobtf"), row
        else:
            assert row["release"] is None and row["btf"] is None


# --- untrusted RPM payloads -----------------------------------------------------------------


def newc(members: list[tuple[str, int, bytes]]) -> io.BytesIO:
    buf = io.BytesIO()
    writer = CpioWriter(buf)
    for name, mode, data in members:
        writer._header(name, mode, len(data))  # raw names: the writer would normalise them
        buf.write(data)
        writer._pad()
    writer.close()
    buf.seek(0)
    return buf


def test_cpio_reader_keeps_every_member_inside_the_tree(tmp_path: Path) -> None:
    dest = tmp_path / "tree"
    reg, lnk = stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777
    archive = newc(
        [
            ("./boot/vmlinuz-1", reg, b"kernel"),
            ("/abs/path", reg, b"made relative"),
            ("boot/host-passwd", lnk, b"/etc/passwd"),  # absolute: not created
            ("up", lnk, b"../../.."),  # climbs out: not created
            ("here", lnk, b"."),
            ("escape", lnk, b"here/.."),  # lexically inside, really the parent: not created
            ("boot/ok", lnk, b"vmlinuz-1"),
        ]
    )
    assert extract_newc(archive, dest) == 2
    assert (dest / "boot/vmlinuz-1").read_bytes() == b"kernel"
    assert (dest / "abs/path").read_bytes() == b"made relative"
    assert (dest / "boot/ok").read_bytes() == b"kernel"
    for name in ("boot/host-passwd", "up", "escape"):
        assert not (dest / name).is_symlink(), name
    with pytest.raises(CpioFormatError, match="climbs out"):
        extract_newc(newc([("a/../../evil", reg, b"x")]), tmp_path / "t2")
    with pytest.raises(CpioFormatError, match="not a newc"):
        extract_newc(io.BytesIO(b"garbage" * 40), tmp_path / "t3")
    assert not (tmp_path / "evil").exists()


# --- kernel builds: the config check, the stall detector, the time limit -------------------


def test_a_config_line_kconfig_dropped_fails_the_configure_step(tmp_path: Path) -> None:
    config = tmp_path / ".config"
    config.write_text("CONFIG_BPF_SYSCALL=y\n# CONFIG_KPROBES is not set\nCONFIG_HZ=250\n")
    _check_config(config, ["CONFIG_BPF_SYSCALL=y", "CONFIG_MODULES=n", "CONFIG_HZ=250"])
    with pytest.raises(BuildError) as info:
        _check_config(config, ["CONFIG_KPROBES=y"])
    assert str(info.value) == (
        "build step configure: CONFIG_KPROBES=y did not take effect (CONFIG_KPROBES is not "
        "set after olddefconfig: an unmet dependency or a choice that overrides it)"
    )


def step_runner(tmp_path: Path, **limits: float) -> _StepRunner:
    runner = _StepRunner(tmp_path / "build.log", BuildSpec(**limits), threading.Event(), print)
    runner.log = (tmp_path / "build.log").open("w")
    return runner


def test_build_steps_fail_with_one_line_naming_the_step(tmp_path: Path) -> None:
    runner = step_runner(tmp_path)
    (tmp_path / "fail.sh").write_text("echo CC a.o; echo 'a.c:1:2: error: boom' >&2; exit 2\n")
    with pytest.raises(BuildError) as info:
        runner.step("compile", ["sh", "fail.sh"], tmp_path)
    assert str(info.value) == (
        "build step compile failed (sh fail.sh, exit 2): a.c:1:2: error: boom "
        f"(log: {tmp_path / 'build.log'})"
    )
    stalled = step_runner(tmp_path, stall_s=1)
    with pytest.raises(BuildError, match=r"build step compile: no output for 1 s \(stalled"):
        stalled.step("compile", ["sh", "-c", "echo start; sleep 30"], tmp_path)
    slow = step_runner(tmp_path, timeout_s=1)
    with pytest.raises(BuildError, match="took longer than 1 s"):
        slow.step("compile", ["sh", "-c", "while :; do echo tick; sleep 0.2; done"], tmp_path)
    stopped = step_runner(tmp_path)
    stopped.stop.set()
    with pytest.raises(BuildError, match="build step compile: interrupted"):
        stopped.step("compile", ["sleep", "30"], tmp_path)


# --- arm64 prerequisites ---------------------------------------------------------------------


def test_a_missing_qemu_system_aarch64_is_one_line(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    vm = QemuVM(
        BootSpec(tmp_path / "k", tmp_path / "i", "", 256, 1, tmp_path / "c.log", arch="aarch64")
    )
    with pytest.raises(VMError) as info:
        vm.start()
    assert str(info.value) == (
        "qemu-system-aarch64 not found: run scripts/setup.sh (qemu-system-arm)"
    )


def test_foreign_image_needs_binfmt(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(arch_mod, "BINFMT_DIR", tmp_path)
    with pytest.raises(ImageError) as info:
        build_image("trixie", tmp_path / "cache", arch="aarch64")
    assert str(info.value) == (
        f"guest image trixie/arm64: running arm64 programs needs qemu-user-static registered "
        f"with binfmt_misc ({tmp_path}/qemu-aarch64 is missing): run scripts/setup.sh"
    )
    (tmp_path / "qemu-aarch64").write_text("disabled\ninterpreter /x\nflags: F\n")
    with pytest.raises(ImageError, match="is disabled: run `update-binfmts --enable qemu-aarch64`"):
        build_image("trixie", tmp_path / "cache", arch="aarch64")
    assert not (tmp_path / "cache" / "images").exists() or not os.listdir(
        tmp_path / "cache" / "images"
    )


def test_default_matrix_has_the_new_kernels() -> None:
    matrix = load_kernel_matrix(ROOT / "kernels.yaml")
    by_id = {k.id: k for k in matrix.kernels}
    for kid in ("debian-11-5.10-arm64", "debian-12-6.1-arm64", "debian-13-6.12-arm64"):
        assert by_id[kid].arch == "aarch64" and not by_id[kid].required
        assert "arm64" in (by_id[kid].package or "")
    nobtf = by_id["debian-12-6.1-nobtf"]
    assert nobtf.source_kind == "build" and not nobtf.required and nobtf.build is not None
    assert "CONFIG_DEBUG_INFO_BTF=n" in nobtf.build.config
