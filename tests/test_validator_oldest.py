"""The validator on the oldest guest userspace it supports: Debian 11's Python 3.9 and
libbpf 0.3, in a chroot built from Debian's own packages, validating real objects on the
host kernel (root, real BPF). What the package says it supports is what it runs on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bpfcompat.vm.apt import KEYRING, discover_mirror
from bpfcompat.vm.cache import atomic_dir, cache_root, entry_lock
from conftest import ROOT, require_tool

SUITE = "bullseye"
PACKAGES = ("libc6", "python3.9-minimal", "libpython3.9-stdlib", "libbpf0", "libelf1", "zlib1g")
PACKAGE_DIR = ROOT / "src" / "bpfcompat"


@pytest.fixture(scope="module")
def oldest_root() -> Path:
    """Debian 11's python3.9 and libbpf 0.3, extracted once (cached like guest images)."""
    require_tool("mmdebstrap")
    if os.geteuid() != 0:
        pytest.fail("test_validator_oldest needs root (chroot and real BPF)", pytrace=False)
    entry = cache_root() / "test-roots" / f"{SUITE}-validator-1"
    with entry_lock(entry):
        if not (entry / "usr/bin/python3.9").is_file():
            with atomic_dir(entry) as tmp:
                sources = tmp.parent / f".{SUITE}.sources.list"
                signed = f"[signed-by={KEYRING}] " if KEYRING.is_file() else ""
                sources.write_text(f"deb {signed}{discover_mirror()} {SUITE} main\n")
                subprocess.run(
                    ["mmdebstrap", "--variant=extract", "--mode=root", "--format=directory",
                     "--quiet", f"--include={','.join(PACKAGES)}", SUITE, str(tmp / "root"),
                     str(sources)],
                    check=True, timeout=900,
                )  # fmt: skip
                sources.unlink()
                for name in os.listdir(tmp / "root"):
                    shutil.move(tmp / "root" / name, tmp / name)
                (tmp / "root").rmdir()
                for link, target in (("lib", "usr/lib"), ("lib64", "usr/lib64")):
                    if not (tmp / link).exists():
                        (tmp / link).symlink_to(target)
    return entry


def validate_in(
    root: Path, artifact: Path, tmp: Path
) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run the validator package with the root's python3.9 and libbpf, as a guest would."""
    work = root / "tmp" / f"bpfc-{os.getpid()}-{tmp.name}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "pkg").mkdir(parents=True)
    shutil.copytree(PACKAGE_DIR / "validator", work / "pkg" / "bpfcompat" / "validator")
    (work / "pkg" / "bpfcompat" / "__init__.py").write_text("")
    shutil.copy(artifact, work / "artifact.bpf.o")
    inside = f"/tmp/{work.name}"
    script = (
        f"mount --rbind /proc {root}/proc && mount --rbind /sys {root}/sys && "
        f"mount --rbind /dev {root}/dev && "
        f"PYTHONPATH={inside}/pkg chroot {root} /usr/bin/python3.9 -m bpfcompat.validator "
        f"--artifact {inside}/artifact.bpf.o --out {inside}/result.json --attach-mode disabled"
    )
    for sub in ("proc", "sys", "dev"):
        (root / sub).mkdir(exist_ok=True)
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    result_file = work / "result.json"
    assert result_file.is_file(), (proc.returncode, proc.stderr[-2000:])
    result = json.loads(result_file.read_text())
    shutil.rmtree(work, ignore_errors=True)
    return proc, result


def test_python_3_9_and_libbpf_0_3_validate_a_passing_object(
    oldest_root: Path, built_examples: Path, tmp_path: Path
) -> None:
    proc, result = validate_in(
        oldest_root, built_examples / "simple-pass" / "simple-pass.bpf.o", tmp_path
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert result["host"]["python_version"].startswith("3.9."), result["host"]
    assert result["host"]["libbpf_version"].startswith("0.3"), result["host"]
    assert result["status"] == "pass" and result["errors"] == [], result["errors"]
    assert result["load"]["status"] == "pass"


def test_python_3_9_and_libbpf_0_3_report_a_verifier_rejection(
    oldest_root: Path, built_examples: Path, tmp_path: Path
) -> None:
    proc, result = validate_in(
        oldest_root, built_examples / "verifier-oob" / "verifier-oob.bpf.o", tmp_path
    )
    assert proc.returncode == 2 and result["errors"] == [], result["errors"]
    assert (result["load"]["status"], result["load"]["errno_name"]) == ("fail", "EACCES")
    (prog,) = result["discovery"]["programs"]
    assert "invalid access to map value" in prog["load_log"]
