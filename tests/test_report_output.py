"""What reaches a terminal and the disk: the terminal matrix and failing-cell lines (full
codes, evidence, escaped control characters), and report files written atomically with
one-line errors and no temporary file left behind (a directory, a missing parent, a
read-only file system, a full disk)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bpfcompat.errors import ReportError
from bpfcompat.matrix.store import Store
from bpfcompat.report import write_file
from bpfcompat.report.terminal import (
    CELL_CHARS,
    failure_lines,
    matrix_lines,
    printable,
    terminal_lines,
)
from bpfcompat.report.view import RunView
from conftest import BPFCOMPAT, ROOT, require_tool, run_cli
from report_fixtures import REQUIRED_KERNELS, add_recorded_run, set_cell

# Anything a terminal would act on: C0/C1 controls, format characters (bidi overrides,
# zero-width), line and paragraph separators, lone surrogates.
RAW_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
# (No lone surrogate here: SQLite cannot store one; printable's own test has them.)
HOSTILE = "evil\x1b[31mred\x1b]0;title\x07\u202eeman\nline2"
HOSTILE_ESCAPED = "evil\\x1b[31mred\\x1b]0;title\\x07\\u202eeman\\nline2"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "bpfcompat.db")


# --- printable --------------------------------------------------------------------------------


def test_printable_escapes_what_drives_a_terminal() -> None:
    assert printable(HOSTILE) == HOSTILE_ESCAPED
    assert printable("name\udcff.bpf.o") == "name\\udcff.bpf.o"  # undecodable file name
    assert printable("tab\there\r") == "tab\\there\\r"
    assert printable("\x85\u2028\u200b\U000e0001") == "\\x85\\u2028\\u200b\\U000e0001"
    plain = "ümlaut → CORE_RELOCATION_FAILURE: R1 invalid mem access 'scalar' [x]"
    assert printable(plain) == plain
    assert printable(printable(HOSTILE)) == printable(HOSTILE)  # safe to escape twice


# --- the terminal matrix ----------------------------------------------------------------------


def test_every_failing_cell_has_a_whole_line(store: Store) -> None:
    view = RunView.from_store(store, add_recorded_run(store), with_results=False)
    lines = failure_lines(view)
    failing = view.failing()
    assert failing and lines[0] == f"{len(failing)} failing cells (required kernels first):"
    assert len(lines) == 1 + len(failing)
    for cell, line in zip(failing, lines[1:], strict=True):
        v = cell.verdict
        req = "required" if view.required(cell.kernel) else "optional"
        assert line.startswith(f"{v.status.upper():5}  {cell.artifact} on {cell.kernel} ({req}): ")
        tail = f": {v.code}: {printable(v.evidence)}"
        tail += f" — {v.needs}" if v.needs else ""
        tail += f" — at {printable(v.pinpoint.where)}" if v.pinpoint else ""
        assert line.endswith(tail), line
        assert v.evidence and len(v.evidence) > 20  # real evidence, shown whole
    # required kernels first
    reqs = [view.required(c.kernel) for c in failing]
    assert reqs == sorted(reqs, reverse=True) and not reqs[-1]


def test_grid_shows_every_code(store: Store) -> None:
    view = RunView.from_store(store, add_recorded_run(store), with_results=False)
    grid = matrix_lines(view)
    header, rows = grid[0], grid[1:-1]
    assert header.split()[1:] == [k.id + ("" if k.required else "*") for k in view.kernels]
    assert grid[-1].startswith("* optional kernel")
    cells = view.cell_map()
    starts = [header.index(k.id) for k in view.kernels]
    for name, row in zip(view.artifact_names(), rows, strict=True):
        assert row.startswith(name + " ")
        for start, kernel in zip(starts, view.kernels, strict=True):
            label = cells[(name, kernel.id)].verdict.label
            assert row[start:].startswith(label), (row, label)  # aligned and whole


def test_terminal_escapes_and_abbreviates_but_never_hides(store: Store) -> None:
    run_id = add_recorded_run(store, REQUIRED_KERNELS, rename={"verifier-oob": HOSTILE})
    long_code = "VERY_LONG_CODE_" + "X" * 40
    set_cell(store, run_id, HOSTILE, "debian-12-6.1", code=long_code, evidence=HOSTILE)
    view = RunView.from_store(store, run_id, with_results=False)
    lines = terminal_lines(view)
    for line in lines:
        assert not RAW_CONTROL.search(line), repr(line)
    row = next(ln for ln in lines if ln.startswith("evil\\x1b"))
    assert row.startswith(HOSTILE_ESCAPED[:40])
    shown = f"fail {long_code}"[: CELL_CHARS - 1] + "…"
    assert shown in row  # abbreviated in the grid ...
    (line,) = [ln for ln in lines if long_code in ln]  # ... and whole on its own line
    assert line == (
        f"FAIL   {HOSTILE_ESCAPED} on debian-12-6.1 (required): {long_code}: {HOSTILE_ESCAPED}"
        " — at `return *next != 0;` (insn 8)"  # where the verifier stopped, from its log
    )


def test_cli_escapes_names_and_evidence(store: Store, tmp_path: Path) -> None:
    """`compare` prints evidence from a run; an error names a hostile path: both escaped."""
    base = add_recorded_run(store, REQUIRED_KERNELS)
    head = add_recorded_run(store, REQUIRED_KERNELS)
    set_cell(
        store, head, "ringbuf", "debian-12-6.1", status="fail", code="UNKNOWN", evidence=HOSTILE
    )
    proc = run_cli("compare", "--base", str(base), "--head", str(head), "--db", str(store.path))
    assert proc.returncode == 2, proc.stderr
    assert not RAW_CONTROL.search(proc.stdout.replace("\n", "")), repr(proc.stdout)
    # compare flattens whitespace itself; the rest arrives escaped
    assert f"pass -> fail UNKNOWN: {HOSTILE_ESCAPED.replace(chr(92) + 'n', ' ')}" in proc.stdout
    hostile_dir = tmp_path / "out\x1b[2J\u202e"
    hostile_dir.mkdir()
    proc = run_cli("report", "--db", str(store.path), "--html", str(hostile_dir))
    assert proc.returncode == 1
    escaped = str(tmp_path) + "/out\\x1b[2J\\u202e"
    assert proc.stderr == f"bpfcompat: error: {escaped}: cannot write the report: Is a directory\n"


# --- report files -----------------------------------------------------------------------------


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


def test_write_file_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "r.md"
    assert write_file(target, "one\n") == target
    write_file(target, "two \udcff\n")  # an undecodable file name's surrogate
    assert target.read_text() == "two \\udcff\n"
    assert _leftovers(target.parent) == []


def test_write_file_onto_a_directory(tmp_path: Path) -> None:
    (tmp_path / "r.html").mkdir()
    with pytest.raises(ReportError) as info:
        write_file(tmp_path / "r.html", "x")
    assert str(info.value) == f"{tmp_path}/r.html: cannot write the report: Is a directory"
    assert _leftovers(tmp_path) == []


def test_write_file_onto_the_root_or_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for target in (Path("/"), Path(".")):
        with pytest.raises(ReportError) as info:
            write_file(target, "x")
        assert str(info.value) == f"{target}: cannot write the report: Is a directory"
    assert list(tmp_path.iterdir()) == []


def test_write_file_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a directory")
    with pytest.raises(ReportError) as info:
        write_file(tmp_path / "plain" / "r.html", "x")
    assert str(info.value) == f"{tmp_path}/plain/r.html: cannot write the report: Not a directory"
    assert _leftovers(tmp_path) == []


# A shell run in new user and mount namespaces (unprivileged): a small tmpfs at $1 holding
# an earlier report, made read-only or left small; then the CLI; then what the tmpfs holds.
_IN_TMPFS = r"""
dir=$1; mode=$2; shift 2
mount -t tmpfs -o size=16k tmpfs "$dir" || exit 97
printf 'earlier report\n' > "$dir/r.html"
if [ "$mode" = ro ]; then mount -o remount,ro "$dir" || exit 98; fi
"$@"; rc=$?
echo "@@files $(ls -A "$dir" | tr '\n' ' ')"
echo "@@content $(cat "$dir/r.html")"
exit $rc
"""


@pytest.mark.parametrize(
    ("mode", "why"), [("ro", "Read-only file system"), ("full", "No space left on device")]
)
def test_report_on_read_only_or_full_disk(
    store: Store, tmp_path: Path, mode: str, why: str
) -> None:
    unshare = require_tool("unshare")
    run_id = add_recorded_run(store, REQUIRED_KERNELS)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    report = ["report", "--db", str(store.path), "--run", str(run_id), "--html", f"{mnt}/r.html"]
    proc = subprocess.run(
        [unshare, "-rm", "sh", "-c", _IN_TMPFS, "sh", str(mnt), mode, *BPFCOMPAT, *report],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "CI": "1"},
        check=False,
    )
    if proc.returncode in (97, 98):
        pytest.fail(f"cannot mount a tmpfs in a user namespace: {proc.stderr}", pytrace=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == f"bpfcompat: error: {mnt}/r.html: cannot write the report: {why}\n"
    assert "@@files r.html \n" in proc.stdout  # no temporary file left
    assert "@@content earlier report" in proc.stdout  # the earlier report is intact
