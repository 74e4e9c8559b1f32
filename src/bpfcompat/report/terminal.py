"""The run in a terminal or a CI log: the matrix grid, then every failing or erroring cell
on one line with its full code and evidence, what the kernel lacks (needs) and where the
verifier stopped in the source (pinpoint).

Names, codes and evidence come from file names, manifests and guests: `printable`
escapes whatever could drive a terminal (control and format characters, line
separators, lone surrogates from undecodable file names) before anything is printed.
"""

from __future__ import annotations

import unicodedata

from bpfcompat.report.view import CellInfo, RunView

CELL_CHARS = 40  # a longer grid cell is abbreviated; the cell's own line below never is
NAME_CHARS = 48  # likewise the artifact column
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


class _Escapes(dict[int, str]):
    """str.translate table computed per code point on first sight."""

    def __missing__(self, cp: int) -> str:
        ch = chr(cp)
        if unicodedata.category(ch) not in _UNSAFE_CATEGORIES:
            value = ch
        elif ch in _SHORT:
            value = _SHORT[ch]
        elif cp < 0x100:
            value = f"\\x{cp:02x}"
        elif cp < 0x10000:
            value = f"\\u{cp:04x}"
        else:
            value = f"\\U{cp:08x}"
        self[cp] = value
        return value


_ESCAPES = _Escapes()


def printable(value: object) -> str:
    """`value` as text safe to print on one terminal line: control and format characters
    become visible escapes (`\\x1b`, `\\n`, `\\u202e`). Idempotent, so a line may be
    escaped again when printed."""
    text = str(value)
    return text if text.isprintable() else text.translate(_ESCAPES)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _label(cell: CellInfo | None) -> str:
    if cell is None:
        return "-"
    mark = {True: " (expected)", False: " (UNEXPECTED)"}.get(cell.expected, "")
    return _cut(printable(cell.verdict.label + mark), CELL_CHARS)


def matrix_lines(view: RunView) -> list[str]:
    """Artifacts down, kernels across; a cell shows its status and code (a code longer
    than the column is abbreviated, and given in full on the cell's line below)."""
    cells = view.cell_map()
    names = view.artifact_names()
    optional = any(not k.required for k in view.kernels)
    heads = [printable(k.id) + ("" if k.required else "*") for k in view.kernels]
    rows = [
        [_cut(printable(n), NAME_CHARS)] + [_label(cells.get((n, k.id))) for k in view.kernels]
        for n in names
    ]
    table = [["artifact", *heads], *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in table]
    if optional:
        lines.append("* optional kernel: its cells never change the exit code")
    return lines


def failure_line(view: RunView, cell: CellInfo) -> str:
    """One failing cell, whole: status, where, full code, evidence, then what it needs
    or where the verifier stopped."""
    v = cell.verdict
    req = "required" if view.required(cell.kernel) else "optional"
    text = f"{v.status.upper():5}  {cell.artifact} on {cell.kernel} ({req}): {v.code or '-'}"
    text += f": {v.evidence}" if v.evidence else " (no evidence line)"
    if cell.expected is not None:
        text += (
            f" [{'expected' if cell.expected else 'UNEXPECTED, expected ' + str(cell.expectation)}]"
        )
    if v.needs:
        text += f" — {v.needs}"
    if v.pinpoint and v.pinpoint.where:
        text += f" — at {v.pinpoint.where}"
    return printable(text)


def failure_lines(view: RunView) -> list[str]:
    failing = view.failing()
    surprises = [c for c in view.cells if c.unexpected and not c.failing]
    lines = [
        printable(f"UNEXPECTED PASS  {c.artifact} on {c.kernel}: expected {c.expectation}")
        for c in surprises
    ]
    if not failing:
        return lines
    header = f"{len(failing)} failing cell{'s' if len(failing) != 1 else ''}"
    return [
        f"{header} (required kernels first):",
        *(failure_line(view, c) for c in failing),
        *lines,
    ]


def terminal_lines(view: RunView) -> list[str]:
    """The grid and, below it, every failing cell."""
    failures = failure_lines(view)
    return matrix_lines(view) + (["", *failures] if failures else [])
