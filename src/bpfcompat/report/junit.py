"""JUnit XML: one testcase per cell, for CI test-report widgets.

Layout: one <testsuite> per kernel (properties: release, required, btf), one <testcase>
per cell with classname = artifact and name = kernel id, time = the cell's seconds.

- fail on a required kernel: <failure type=CODE message="CODE: evidence">, details in
  the body;
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

MESSAGE_CHARS = 500
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _clean(value: Any) -> str:
    return _XML_INVALID.sub("\ufffd", str("" if value is None else value))


def _message(cell: dict[str, Any]) -> str:
    code = cell.get("code") or cell["status"]
    evidence = " ".join(str(cell.get("evidence") or "").split())
    text = f"{code}: {evidence}" if evidence else str(code)
    return _clean(text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…")


def _body(cell: dict[str, Any], kernel: dict[str, Any]) -> str:
    lines = [
        f"status: {cell['status']}",
        f"code: {cell.get('code') or '-'}",
        f"confidence: {cell.get('confidence') or '-'}",
        f"stage: {cell.get('stage') or '-'}",
        f"program: {cell.get('program') or '-'}",
        f"kernel: {kernel['id']} {kernel.get('release') or ''}".rstrip(),
        f"evidence: {cell.get('evidence') or '-'}",
        f"remediation: {cell.get('remediation') or '-'}",
    ]
    lines += [f"note: {n}" for n in cell.get("notes") or []]
    return _clean("\n".join(lines))


def render_junit(export: dict[str, Any]) -> str:
    """The run as JUnit XML (see the module docstring for the optional-kernel policy)."""
    run = export["run"]
    cells = {(c["artifact"], c["kernel"]): c for c in export["cells"]}
    names = list(
        dict.fromkeys(
            [a["name"] for a in export["artifacts"]] + [c["artifact"] for c in export["cells"]]
        )
    )
    root = ET.Element("testsuites", name=_clean(f"bpfcompat run {run['id']}"))
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total_time = 0.0
    for kernel in export["kernels"]:
        suite = ET.SubElement(
            root,
            "testsuite",
            name=_clean(kernel["id"]),
            timestamp=_clean(run.get("started_at") or ""),
        )
        props = ET.SubElement(suite, "properties")
        for key in ("release", "required", "btf", "boot_seconds", "status"):
            value = kernel.get(key)
            value = str(value).lower() if isinstance(value, bool) else value
            ET.SubElement(props, "property", name=key, value=_clean("" if value is None else value))
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        suite_time = 0.0
        for name in names:
            cell = cells.get((name, kernel["id"]))
            seconds = float(cell.get("seconds") or 0.0) if cell else 0.0
            case = ET.SubElement(
                suite,
                "testcase",
                classname=_clean(name),
                name=_clean(kernel["id"]),
                time=f"{seconds:.3f}",
            )
            counts["tests"] += 1
            suite_time += seconds
            if cell is None:
                ET.SubElement(case, "skipped", message="not run (the run did not reach this cell)")
                counts["skipped"] += 1
            elif cell["status"] in ("fail", "error") and not kernel["required"]:
                verdict = f"{cell['status']} {_message(cell)}"
                skipped = ET.SubElement(
                    case, "skipped", message=_clean(f"optional kernel: {verdict}")
                )
                skipped.text = _body(cell, kernel)
                counts["skipped"] += 1
            elif cell["status"] in ("fail", "error"):
                tag = "failure" if cell["status"] == "fail" else "error"
                element = ET.SubElement(
                    case,
                    tag,
                    message=_message(cell),
                    type=_clean(cell.get("code") or cell["status"]),
                )
                element.text = _body(cell, kernel)
                counts["failures" if tag == "failure" else "errors"] += 1
            elif cell.get("notes"):
                out = ET.SubElement(case, "system-out")
                out.text = _clean("\n".join(str(n) for n in cell["notes"]))
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
