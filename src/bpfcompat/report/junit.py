"""JUnit XML: one testcase per cell, for CI test-report widgets.

Layout: one <testsuite> per kernel (properties: release, required, btf), one <testcase>
per cell with classname = artifact and name = kernel id, time = the cell's seconds.

- fail on a required kernel: <failure type=CODE message="CODE: evidence (needs >= X.Y
  for ...)">, the needs part only for a missing feature; details (the verifier's pinpoint,
  the remediation) in the body;
- error (infrastructure) on a required kernel: <error type=CODE ...>, likewise;
- fail or error on an OPTIONAL kernel: <skipped message="optional kernel: fail CODE:
  evidence">. Optional kernels never gate `matrix run` (its exit code ignores them), and
  CI consumers fail a build on any <failure>/<error>, so they are reported as skipped
  with the verdict in the reason: visible, never red. Their passes are plain passes;
- a cell the run never reached (interrupted run): <skipped message="not run">.

Text is stripped of characters XML 1.0 cannot carry, so any log line yields a valid file.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from bpfcompat.matrix.verdict import Verdict
from bpfcompat.report.view import CellInfo, KernelInfo, RunView

MESSAGE_CHARS = 500
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(value: Any) -> str:
    return _XML_INVALID.sub("\ufffd", str("" if value is None else value))


def _message(verdict: Verdict) -> str:
    code = verdict.code or verdict.status
    evidence = " ".join((verdict.evidence or "").split())
    text = f"{code}: {evidence}" if evidence else code
    if verdict.needs:
        text += f" ({verdict.needs})"
    return _clean(text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…")


def _body(cell: CellInfo, kernel: KernelInfo) -> str:
    v = cell.verdict
    lines = [
        f"status: {v.status}",
        f"code: {v.code or '-'}",
        f"confidence: {v.confidence or '-'}",
        f"stage: {v.stage or '-'}",
        f"program: {v.program or '-'}",
        f"kernel: {kernel.id} {kernel.release}".rstrip(),
        f"evidence: {v.evidence or '-'}",
    ]
    if v.needs:
        lines.append(f"needs: {v.needs}")
    if v.detail:
        lines.append(f"detail: {v.detail}")
    pin = v.pinpoint
    if pin:
        lines.append(f"where: {pin.program or '-'} {pin.where}".rstrip())
        if pin.instruction:
            lines.append(f"instruction: {pin.instruction}")
        if pin.state:
            lines.append(f"registers before it: {pin.state}")
    lines.append(f"remediation: {v.remediation or '-'}")
    lines += [f"note: {n}" for n in cell.notes]
    return _clean("\n".join(lines))


def _property(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return _clean("" if value is None else value)


def render_junit(view: RunView) -> str:
    """The run as JUnit XML (see the module docstring for the optional-kernel policy)."""
    run = view.run
    cells = view.cell_map()
    names = view.artifact_names()
    root = ET.Element("testsuites", name=_clean(f"bpfcompat run {run.id}"))
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total_time = 0.0
    for kernel in view.kernels:
        suite = ET.SubElement(
            root, "testsuite", name=_clean(kernel.id), timestamp=_clean(run.started_at)
        )
        props = ET.SubElement(suite, "properties")
        for key in ("release", "required", "btf", "boot_seconds", "ready_via", "status"):
            ET.SubElement(props, "property", name=key, value=_property(getattr(kernel, key)))
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        suite_time = 0.0
        for name in names:
            cell = cells.get((name, kernel.id))
            seconds = cell.seconds if cell else 0.0
            case = ET.SubElement(
                suite,
                "testcase",
                classname=_clean(name),
                name=_clean(kernel.id),
                time=f"{seconds:.3f}",
            )
            counts["tests"] += 1
            suite_time += seconds
            if cell is None:
                ET.SubElement(case, "skipped", message="not run (the run did not reach this cell)")
                counts["skipped"] += 1
                continue
            v = cell.verdict
            if cell.expected is not None:
                ET.SubElement(ET.SubElement(case, "properties"), "property",
                              name="expected", value=_clean(str(cell.expectation)))  # fmt: skip
            if cell.unexpected and not cell.failing and kernel.required:
                element = ET.SubElement(
                    case, "failure", message=_clean(f"expected {cell.expectation}, got pass"),
                    type="UNEXPECTED_PASS",
                )  # fmt: skip
                element.text = _body(cell, kernel)
                counts["failures"] += 1
            elif cell.failing and cell.expected and kernel.required:
                skipped = ET.SubElement(
                    case, "skipped", message=_clean(f"expected: {v.status} {_message(v)}")
                )
                skipped.text = _body(cell, kernel)
                counts["skipped"] += 1
            elif cell.failing and not kernel.required:
                verdict = f"{v.status} {_message(v)}"
                skipped = ET.SubElement(
                    case, "skipped", message=_clean(f"optional kernel: {verdict}")
                )
                skipped.text = _body(cell, kernel)
                counts["skipped"] += 1
            elif cell.failing:
                tag = "failure" if v.status == "fail" else "error"
                element = ET.SubElement(
                    case, tag, message=_message(v), type=_clean(v.code or v.status)
                )
                element.text = _body(cell, kernel)
                counts["failures" if tag == "failure" else "errors"] += 1
            elif cell.notes:
                out = ET.SubElement(case, "system-out")
                out.text = _clean("\n".join(cell.notes))
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("time", f"{suite_time:.3f}")
        total_time += suite_time
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{total_time:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
