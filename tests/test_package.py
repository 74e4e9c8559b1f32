"""The installable package: scripts/install.sh (what the Dockerfile and the GitHub Action's
install step run) builds a wheel from this checkout and installs it, with its dependencies
from the package index, into a fresh venv; the installed `bpfcompat` then works from a
directory outside the checkout, on the kernel and image cache shared with every other run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bpfcompat import __version__
from bpfcompat.matrix.config import load_kernel_matrix
from conftest import ROOT, require_tool
from expectations import expected

ACTION_INSTALL = ROOT / "scripts" / "action" / "install.sh"
KERNEL = "debian-12-6.1"
OBJECTS = ("simple-pass", "verifier-oob")


def _env(tmp: Path) -> dict[str, str]:
    """This environment minus anything that would let the checkout's sources leak in."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    env["TMPDIR"] = str(tmp)
    env["CI"] = "1"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The GitHub Action's install step, with the environment a runner gives it: it runs
    scripts/install.sh (as the Dockerfile does) into RUNNER_TEMP."""
    base = tmp_path_factory.mktemp("install")
    scratch = base / "tmp"
    runner_temp = base / "runner-temp"
    for path in (scratch, runner_temp, base / "workspace"):
        path.mkdir()
    env = _env(scratch) | {
        "RUNNER_TEMP": str(runner_temp),
        "RUNNER_OS": "Linux",
        "GITHUB_PATH": str(base / "github_path"),
        "GITHUB_OUTPUT": str(base / "github_output"),
        "GITHUB_WORKSPACE": str(base / "workspace"),
        "INPUT_KERNELS_FILE": "",
    }
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(ACTION_INSTALL)],
        capture_output=True,
        text=True,
        env=env,
        cwd=base / "workspace",
        check=False,
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"install step took {took:.1f} s")
    assert f"bpfcompat {__version__}" in proc.stdout.splitlines()
    bin_dir = runner_temp / "bpfcompat" / "bin"
    assert (base / "github_path").read_text() == f"{bin_dir}\n"
    outputs = (base / "github_output").read_text()
    assert f"bpfcompat={bin_dir / 'bpfcompat'}\n" in outputs
    assert "cache-key=bpfcompat-v1-Linux-" in outputs
    return {
        "base": base,
        "scratch": scratch,
        "bin": bin_dir / "bpfcompat",
        "prefix": bin_dir.parent,
    }


def _run(installed: dict[str, Any], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(installed["bin"]), *args],
        capture_output=True,
        text=True,
        env=_env(installed["scratch"]),
        cwd=cwd,
        check=False,
    )


def test_install_leaves_no_wheel_or_build_behind(installed: dict[str, Any]) -> None:
    assert list(installed["scratch"].iterdir()) == []  # its temporary build directory is gone
    assert not any(p for p in ROOT.glob("**/*.whl") if ".venv" not in p.parts)
    assert installed["bin"].is_symlink()


def test_the_venv_holds_the_wheel_not_the_checkout(installed: dict[str, Any]) -> None:
    venv = installed["prefix"] / "venv"
    probe = (
        "import json, bpfcompat\n"
        "from importlib import resources\n"
        "from bpfcompat.matrix.config import default_kernels_file\n"
        "pkg = resources.files('bpfcompat')\n"
        "print(json.dumps({'file': bpfcompat.__file__, 'kernels': str(default_kernels_file()),\n"
        "  'data': [str(pkg.joinpath(p)) for p in ('report/templates/report.html.j2',\n"
        "   'vm/init.sh', 'validator/__main__.py', 'validator/driver.py',\n"
        "   'analysis/data/features.yaml', 'py.typed')]}))\n"
    )
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        capture_output=True,
        text=True,
        env=_env(installed["scratch"]),
        cwd=installed["base"],
        check=True,
    )
    found = json.loads(proc.stdout)
    site = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    assert Path(found["file"]).resolve().is_relative_to(venv.resolve()), found["file"]
    assert not Path(found["file"]).resolve().is_relative_to(ROOT), found["file"]
    kernels = Path(found["kernels"])
    assert kernels.is_relative_to(venv), kernels
    assert kernels.is_file() and not kernels.is_symlink()
    assert kernels.read_bytes() == (ROOT / "kernels.yaml").read_bytes()
    for path in map(Path, found["data"]):
        assert path.is_file(), path
    validator = sorted(p.name for p in (ROOT / "src/bpfcompat/validator").glob("*.py"))
    assert validator == sorted(p.name for p in (kernels.parent / "validator").glob("*.py"))
    # no .pth or editable finder pointing back at this checkout
    for pth in site.rglob("*.pth") if site.is_dir() else []:
        assert str(ROOT) not in pth.read_text(), pth


def test_installed_cli_outside_the_checkout(installed: dict[str, Any], tmp_path: Path) -> None:
    proc = _run(installed, "--version", cwd=tmp_path)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"bpfcompat {__version__}")
    proc = _run(installed, "kernels", "list", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ids = [line.split()[0] for line in proc.stdout.splitlines()]
    assert ids == [k.id for k in load_kernel_matrix(ROOT / "kernels.yaml").kernels]
    proc = _run(installed, "doctor", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "/site-packages/bpfcompat/kernels.yaml" in proc.stdout.splitlines()[0]


@pytest.mark.vm
def test_installed_matrix_run(
    installed: dict[str, Any], built_examples: Path, tmp_path: Path
) -> None:
    """One real matrix run (a kernel booted under QEMU) by the installed package, on copies
    of two example objects, in a directory that is not the checkout."""
    require_tool("qemu-system-x86_64")
    work = tmp_path / "project"
    (work / "bpf").mkdir(parents=True)
    for name in OBJECTS:
        shutil.copy(built_examples / name / f"{name}.bpf.o", work / "bpf")
    out = work / "out"
    proc = _run(
        installed,
        "matrix",
        "run",
        "bpf",
        "--kernel",
        KERNEL,
        "--out-dir",
        "out",
        "--json",
        "out/run.json",
        "--markdown",
        "out/summary.md",
        "--junit",
        "out/junit.xml",
        cwd=work,
    )
    want = {name: expected(name, KERNEL) for name in OBJECTS}
    exit_code = 2 if any(w["status"] == "fail" for w in want.values()) else 0
    assert proc.returncode == exit_code, proc.stdout + proc.stderr[-3000:]
    export = json.loads((out / "run.json").read_text())
    assert export["run"]["tool_version"] == __version__
    cells = {c["artifact"]: c for c in export["cells"]}
    assert set(cells) == set(OBJECTS)
    for name, cell in cells.items():
        assert (cell["kernel"], cell["status"], cell["code"]) == (
            KERNEL,
            want[name]["status"],
            want[name]["code"],
        ), cell
    assert (out / "report.html").stat().st_size > 0
    assert (out / "junit.xml").is_file()
    summary = (out / "summary.md").read_text()
    for name in OBJECTS:
        assert re.search(rf"\| {name} \|", summary), summary
    assert (work / ".bpfcompat" / "bpfcompat.db").is_file()  # the default store, in the cwd
