"""The one-way flow, checked on the source: config -> plan -> vm -> validator -> store ->
classify -> report. The VM layer never reaches up into planning, classification or
reports, and the guest's validator imports nothing of ours (test_validator_cli checks it
on its own, stdlib side)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "bpfcompat"


def imports_of(package: str) -> dict[str, set[str]]:
    """Each module of `package` -> the bpfcompat subpackages it imports (absolute imports;
    relative ones stay inside their package by construction)."""
    found: dict[str, set[str]] = {}
    for path in sorted((SRC / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            names |= {m.split(".")[1] for m in modules if m.startswith("bpfcompat.")}
        found[str(path.relative_to(SRC))] = names
    return found


def test_the_vm_layer_never_imports_planning_classification_or_reports() -> None:
    bad = {
        m: n & {"matrix", "report", "analysis", "cli", "doctor"}
        for m, n in imports_of("vm").items()
    }
    assert not any(bad.values()), {m: n for m, n in bad.items() if n}


def test_the_validator_imports_nothing_of_ours() -> None:
    bad = {m: n - {"validator"} for m, n in imports_of("validator").items()}
    assert not any(bad.values()), {m: n for m, n in bad.items() if n}


def test_reports_never_boot_or_fetch() -> None:
    bad = {m: n & {"vm", "cli"} for m, n in imports_of("report").items()}
    assert not any(bad.values()), {m: n for m, n in bad.items() if n}


def test_static_analysis_reads_objects_without_the_run_machinery() -> None:
    """analysis/ is below matrix/: the run and the commands hand it loaded manifests and
    kernel sets (matrix/statics.py, cli_inspect.py), so nothing there imports back up."""
    upward = {"matrix", "report", "cli", "cli_inspect", "doctor"}
    bad = {m: n & upward for m, n in imports_of("analysis").items()}
    assert not any(bad.values()), {m: n for m, n in bad.items() if n}
