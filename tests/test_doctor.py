"""bpfcompat doctor: every missing piece named with its fix, exit 1 only when something a
run needs is missing. Probes are replaced one at a time for the missing cases; the last
tests run the real command on this host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bpfcompat.doctor import CAP_SYS_CHROOT, Check, Doctor, Host, MiB, run_doctor
from bpfcompat.errors import FetchError
from bpfcompat.matrix.config import KernelMatrix, load_kernel_matrix
from bpfcompat.vm.qemu import detect_accel
from bpfcompat.vm.spec import KernelSpec
from conftest import ROOT, run_cli

MATRIX = KernelMatrix(
    guest_suite="trixie",
    kernels=[
        KernelSpec(id="k-old", suite="bullseye", package="linux-image-old"),
        KernelSpec(id="k-new", suite="trixie", package="linux-image-new"),
    ],
)
CPUINFO_VMX = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n"
CPUINFO_PLAIN = "processor\t: 0\nflags\t\t: fpu vme de pse sse2\n"


class FakeHost(Host):
    """A host with everything: each test takes away one piece."""

    def __init__(self, **overrides: object) -> None:
        self.tools = {
            "qemu-system-x86_64",
            "qemu-system-aarch64",
            "apt-get",
            "apt-cache",
            "dpkg-deb",
            "zstd",
            "lz4",
            "mmdebstrap",
            "newuidmap",
        }
        self.files: dict[str, str] = {
            "/proc/cpuinfo": CPUINFO_VMX,
            "/etc/debian_version": "12.8\n",
            "/proc/self/status": "Name:\tpython3\nCapEff:\t0000000000000000\n",
        }
        self.paths = {"/dev/kvm", "/usr/share/keyrings/debian-archive-keyring.gpg"}
        self.unreadable: set[str] = set()
        self.uid = 0
        self.environ: dict[str, str] = {}
        self.kernels = {"k-old": "5.10.0-32-cloud-amd64", "k-new": "6.12.117-cloud-amd64"}
        self.image = True
        self.free = 50_000 * MiB
        self.mirror_uri: str | None = "file:/srv/debian"
        for key, value in overrides.items():
            setattr(self, key, value)

    def which(self, name: str) -> str | None:
        return f"/usr/bin/{name}" if name in self.tools else None

    def version(self, binary: str) -> str:
        return "QEMU emulator version 7.2.0"

    def euid(self) -> int:
        return self.uid

    def read_text(self, path: str) -> str | None:
        return self.files.get(path)

    def exists(self, path: str) -> bool:
        return path in self.paths

    def access(self, path: str, mode: int) -> bool:
        return path not in self.unreadable

    def env(self, name: str) -> str:
        return self.environ.get(name, "")

    def cache_root(self) -> Path:
        return Path("/home/u/.cache/bpfcompat")

    def free_bytes(self, path: Path) -> tuple[Path, int]:
        return path, self.free

    def kernel_release(self, spec: KernelSpec) -> str | None:
        return self.kernels.get(spec.id)

    def image_built(self, suite: str, arch: str = "x86_64") -> bool:
        return self.image

    def image_dir(self, suite: str, arch: str = "x86_64") -> Path:
        return Path(f"/home/u/.cache/bpfcompat/images/{suite}-0123")

    def foreign_problem(self, arch: str) -> str | None:
        return None

    def mirror(self) -> str:
        if self.mirror_uri is None:
            raise FetchError("no Debian mirror found in the host's apt sources")
        return self.mirror_uri


def doctor(host: FakeHost, kernels_given: bool = False) -> tuple[int, str]:
    lines: list[str] = []
    path = Path("/etc/bpfcompat/kernels.yaml")
    code = run_doctor(MATRIX, path, MATRIX.kernels, kernels_given, lines.append, host)
    return code, "\n".join(lines)


def checks(host: FakeHost) -> dict[str, Check]:
    return {c.name: c for c in Doctor(MATRIX, MATRIX.kernels, "", host).checks()}


def test_everything_present_exits_0() -> None:
    code, out = doctor(FakeHost())
    assert code == 0, out
    assert "missing" not in out
    assert out.splitlines()[-1] == "everything a run needs is here"
    by = checks(FakeHost())
    assert by["kvm"].state == "ok"
    assert "vmx" in by["kvm"].detail


def test_missing_decompressors_are_needed_by_every_run() -> None:
    host = FakeHost(tools=FakeHost().tools - {"lz4"}, uid=1000)
    code, out = doctor(host)
    assert code == 1
    assert checks(host)["lz4"].fix == "sudo apt-get install -y lz4"
    assert "1 missing: lz4" in out


def test_missing_qemu_fails_with_the_apt_command() -> None:
    tools = {"apt-get", "apt-cache", "dpkg-deb", "zstd", "lz4"}
    code, out = doctor(FakeHost(tools=tools, uid=1000))
    assert code == 1
    assert "  missing   qemu-system-x86_64" in out
    assert "fix: sudo apt-get install -y qemu-system-x86" in out
    # aarch64 QEMU is optional while no kernel of the matrix is arm64
    assert "  optional  qemu-system-aarch64" in out
    assert "fix: sudo apt-get install -y qemu-system-arm" in out
    assert "install the missing packages at once: sudo apt-get install -y qemu-system-x86" in out


def test_aarch64_qemu_is_optional() -> None:
    host = FakeHost(tools=FakeHost().tools - {"qemu-system-aarch64"})
    code, out = doctor(host)
    assert code == 0, out
    assert checks(host)["qemu-system-aarch64"].state == "optional"


def test_root_needs_no_sudo_in_fixes() -> None:
    code, out = doctor(FakeHost(tools={"apt-get"}, uid=0))
    assert code == 1
    assert "fix: apt-get install -y qemu-system-x86" in out
    assert "sudo" not in out


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"paths": {"/usr/share/keyrings/debian-archive-keyring.gpg"}}, "does not exist"),
        ({"unreadable": {"/dev/kvm"}}, "not readable and writable"),
        ({"files": {"/proc/cpuinfo": CPUINFO_PLAIN}}, "neither vmx nor svm"),
    ],
)
def test_kvm_not_usable_says_why_and_is_not_a_failure(
    change: dict[str, object], reason: str
) -> None:
    host = FakeHost(**change)
    kvm = checks(host)["kvm"]
    assert kvm.state == "info"
    assert reason in kvm.detail
    assert "TCG is used instead" in kvm.detail
    assert doctor(host)[0] == 0


def test_kvm_forced_by_environment() -> None:
    kvm = checks(FakeHost(environ={"BPFCOMPAT_ACCEL": "tcg"}))["kvm"]
    assert kvm.detail == "BPFCOMPAT_ACCEL=tcg: guests run under tcg"


def test_missing_kernel_is_fixed_by_fetch_and_makes_fetch_tools_needed() -> None:
    host = FakeHost(kernels={"k-old": "5.10"}, tools=FakeHost().tools - {"dpkg-deb"}, uid=1000)
    code, out = doctor(host)
    assert code == 1
    by = checks(host)
    assert by["kernel k-new"].state == "missing"
    assert by["kernel k-new"].fix == "bpfcompat kernels fetch k-new"
    assert by["dpkg-deb"].state == "missing"
    assert by["dpkg-deb"].fix == "sudo apt-get install -y dpkg"
    assert "2 missing: kernel k-new, dpkg-deb" in out


def test_fix_commands_name_a_custom_kernels_file() -> None:
    code, out = doctor(FakeHost(kernels={}), kernels_given=True)
    assert code == 1
    assert "fix: bpfcompat kernels fetch k-old --kernels /etc/bpfcompat/kernels.yaml" in out


def test_tools_for_what_is_cached_are_not_needed() -> None:
    """A warm cache runs without apt, dpkg-deb, mmdebstrap, the keyring, root or a mirror."""
    host = FakeHost(
        tools={"qemu-system-x86_64", "zstd", "lz4"},
        paths={"/dev/kvm"},
        uid=1000,
        mirror_uri=None,
        files={"/proc/cpuinfo": CPUINFO_VMX},
    )
    code, out = doctor(host)
    assert code == 0, out
    by = checks(host)
    for name in ("apt-get", "dpkg-deb", "mmdebstrap", "debian-archive-keyring", "root"):
        assert by[name].state == "info", name
        assert "not needed while the cache is complete" in by[name].detail
    assert by["debian mirror"].state == "info"
    assert "run bpfcompat in its Docker image" in by["apt-get"].fix


def test_image_not_built_as_non_root_needs_root_and_says_how() -> None:
    host = FakeHost(image=False, uid=1000, tools=FakeHost().tools - {"mmdebstrap"})
    code, out = doctor(host)
    assert code == 1
    by = checks(host)
    assert by["guest image trixie"].state == "missing"
    assert by["guest image trixie"].fix.startswith('sudo env "PATH=$PATH"')
    assert by["guest image trixie"].fix.endswith("bpfcompat image build")
    assert by["mmdebstrap"].state == "missing"
    assert by["root"].state == "missing"
    assert "needs root" in by["root"].detail
    assert 'sudo chown -R "$(id -u):$(id -g)" "/home/u/.cache/bpfcompat"' in by["root"].fix
    assert "sudo apt-get install -y mmdebstrap" in out


def test_cap_sys_chroot_without_root_is_enough_with_newuidmap() -> None:
    status = f"CapEff:\t{1 << CAP_SYS_CHROOT:016x}\n"
    host = FakeHost(image=False, uid=1000, files={**FakeHost().files, "/proc/self/status": status})
    assert checks(host)["root"].state == "ok"
    host.tools = host.tools - {"newuidmap"}
    assert checks(host)["root"].state == "missing"
    assert checks(host)["root"].fix == "sudo apt-get install -y uidmap"


def test_no_mirror_is_missing_only_when_something_must_be_fetched() -> None:
    host = FakeHost(mirror_uri=None, image=False)
    by = checks(host)
    assert by["debian mirror"].state == "missing"
    assert by["debian mirror"].fix.startswith("export BPFCOMPAT_DEBIAN_MIRROR=")
    host.environ = {"BPFCOMPAT_DEBIAN_MIRROR": "file:/srv/debian"}
    host.mirror_uri = "file:/srv/debian"
    assert checks(host)["debian mirror"].detail.endswith("(from BPFCOMPAT_DEBIAN_MIRROR)")


def test_non_debian_host_points_at_the_docker_image() -> None:
    files = {k: v for k, v in FakeHost().files.items() if k != "/etc/debian_version"}
    host = FakeHost(kernels={}, tools={"qemu-system-x86_64", "mmdebstrap"}, files=files)
    code, out = doctor(host)
    assert code == 1
    by = checks(host)
    assert by["apt-get"].fix.startswith("not a Debian-based host")
    assert by["lz4"].fix == (
        "not a Debian-based host: install lz4 (Debian's names) with its package manager, "
        "or run bpfcompat in its Docker image (docs/ci.md)"
    )
    assert "install the missing packages at once" not in out


def test_low_or_unwritable_disk() -> None:
    host = FakeHost(free=100 * MiB)
    by = checks(host)
    assert by["disk"].state == "missing"
    assert "XDG_CACHE_HOME" in by["disk"].fix
    host = FakeHost(free=300 * MiB, kernels={}, image=False)
    assert "about 1,536 MiB needed" in checks(host)["disk"].detail
    host = FakeHost(unreadable={"/home/u/.cache/bpfcompat"})
    assert checks(host)["disk"].state == "missing"
    assert "not writable" in checks(host)["disk"].detail


# --- for real, on this host ------------------------------------------------------------------


def test_doctor_on_this_host() -> None:
    """The CLI on this machine: the cache is warm (scripts/setup.sh), QEMU is installed, so
    everything is here; the KVM line agrees with the accelerator runs really use."""
    proc = run_cli("doctor", env={"BPFCOMPAT_ACCEL": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "everything a run needs is here"
    matrix = load_kernel_matrix(ROOT / "kernels.yaml")
    for spec in matrix.kernels:
        assert any(f"ok        kernel {spec.id} " in line for line in lines), spec.id
    kvm = next(line for line in lines if line.split()[1:2] == ["kvm"])
    usable = kvm.split()[0] == "ok"
    assert usable == (_accel_unforced() == "kvm"), kvm
    flags = Path("/proc/cpuinfo").read_text()
    if not ({"vmx", "svm"} & set(flags.split())):
        assert "neither vmx nor svm" in kvm or "/dev/kvm" in kvm, kvm


def _accel_unforced() -> str:
    saved = os.environ.pop("BPFCOMPAT_ACCEL", None)
    try:
        return detect_accel()
    finally:
        if saved is not None:
            os.environ["BPFCOMPAT_ACCEL"] = saved


def test_doctor_names_a_missing_kernel_of_a_custom_matrix(tmp_path: Path) -> None:
    """A kernel that is not in the cache makes the real command exit 1 with its fix."""
    kernels = tmp_path / "kernels.yaml"
    kernels.write_text(
        "guest_suite: trixie\nkernels:\n"
        "  - {id: never-fetched, suite: bookworm, package: linux-image-does-not-exist}\n"
    )
    proc = run_cli("doctor", "--kernels", str(kernels))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"fix: bpfcompat kernels fetch never-fetched --kernels {kernels}" in proc.stdout
    assert "1 missing: kernel never-fetched" in proc.stdout


def test_doctor_bad_kernel_id_is_one_line() -> None:
    proc = run_cli("doctor", "--kernel", "nope")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("bpfcompat: error: unknown kernel id 'nope'")
    assert len(proc.stderr.strip().splitlines()) == 1
