"""Each program's own load result (status, errno, verifier log, statistics, kfuncs) at
about the cost of one load per refused program, not one per program.

The whole-object load runs first with every program's statistics log armed (vstats).
When it passes, every program it loaded passed, and only programs it left out (variants
not chosen) are loaded again, together. When it fails, libbpf has loaded the programs in
order and stopped at the one the kernel refused: those before it passed; the refused one
is probed alone (a fresh open with only it autoloaded, the same loader fixups, its full
level-1 log: what a per-program probe always was), and the programs after it are loaded
together (up to MAX_SHARED_PROGRAMS at a time) in a fresh object, which settles them
the same way. After two refusals in a row the next program is probed alone directly: in
a run of refusals a shared load would stop at its first program for nothing.

A failure that no program's load explains (a map the kernel cannot create, a kfunc it
lacks) is checked with one program probed alone: when that fails the same way, with
the same errno, libbpf's same words and no program of its own refused, the failure does
not depend on which programs load and each of them gets that probe's result. Otherwise
the named or first program's probe is kept and the rest are loaded together again. A
prog-array whose slots point at programs left out fails after every program of the
load loaded: those are reported skipped, as a probe alone would be.

The probes stop, deterministically, after MAX_PROBE_LOADS loads or once the verifier
has processed MAX_PROBE_INSNS instructions in them; programs left are "not probed".
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import re
import time

from .fixups import FixupSteps
from .limits import (
    MAX_PROBE_INSNS,
    MAX_PROBE_LOADS,
    MAX_SHARED_PROGRAMS,
    PROBE_LOG_TAIL,
    VERIFIER_BUF_BYTES,
    VERIFIER_FILE_CHARS,
)
from .log import (
    _SLOT_INIT_TEXT,
    extract_verifier_log,
    load_errno,
    tidy_verifier_log,
    warnings_of,
    window_text,
)
from .tables import errno_name
from .util import decode, describe_exception, safe_filename, tail_text
from .vstats import (
    Attempt,
    LoadEvidence,
    parse_verifier_stats,
    refused_program,
    warn_text,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import under emulation; annotations are strings anyway
    from typing import Any

_NAMED_PROG_RE = re.compile(r"prog '([^']+)': ")

SLOT_SKIP_REASON = (
    "the object statically initialises prog-array (tail-call) slots, so its programs "
    "cannot be loaded one at a time"
)


def warnings_log(window: list[tuple[int, str]]) -> str:
    """A probe's load_log when the kernel wrote no verifier log: libbpf's warnings."""
    log = "\n".join(warnings_of(window)) + "\n"
    return tail_text(log.strip("\n") + "\n", PROBE_LOG_TAIL)


class ProgramProbeSteps(FixupSteps, LoadEvidence):
    """Per-program load results after the whole-object load."""

    def step_program_probes(self) -> None:
        self.log.quiet = True
        try:
            self._program_probes()
        finally:
            self.log.quiet = False
        self.result["discovery"]["probe_loads"] = self.probe_loads

    def _program_probes(self) -> None:
        entries = self.result["discovery"]["programs"]
        todo: list[int] = []
        for index, entry in enumerate(entries):
            if self.config.programs.get(entry["name"], {}).get("autoload") is False:
                entry["load_skip_reason"] = "not loaded: autoload off in the manifest"
            else:
                todo.append(index)
        pending = todo
        whole = self.whole_load
        if whole is not None:
            wanted = set(todo)
            tried = [i for i in whole.indexes if i in wanted]
            unknown = set(self._settle(whole, tried)) | (wanted - set(tried))
            pending = sorted(unknown)
        while pending:
            reason = self._over_budget()
            if reason:
                self.warn("probes", f"{len(pending)} program(s) {reason}")
                for index in pending:
                    entries[index]["load_skip_reason"] = reason
                return
            first = pending[0]
            if self._in_refusals(first):
                self._probe_alone(first)
                pending = pending[1:]
                continue
            chunk = pending[:MAX_SHARED_PROGRAMS]
            pending = self._settle(self._load_together(chunk), chunk) + pending[len(chunk) :]

    def _in_refusals(self, index: int) -> bool:
        """Whether the two programs before ``index`` were refused: refusals come in runs
        (a helper or kernel type every program uses), where a shared load would stop at
        its first program and cost a second load for nothing, so each is probed alone."""
        entries = self.result["discovery"]["programs"]
        before = (index - 2, index - 1)
        return index >= 2 and all(entries[i]["load_status"] == "fail" for i in before)

    def _over_budget(self) -> str | None:
        """Why no more probe loads are started, if so. Both bounds count what the kernel
        did, not time, so the same object on the same kernel always stops at the same
        program: each program is verified once either way, and a few objects (tracee:
        2.4M instructions over 169 programs) cost minutes under emulation to verify."""
        if self.probe_loads >= MAX_PROBE_LOADS:
            return f"not probed: the probes stopped after {MAX_PROBE_LOADS} object loads"
        if self.probe_insns >= MAX_PROBE_INSNS:
            return (
                f"not probed: the probes stopped after the verifier processed "
                f"{MAX_PROBE_INSNS} instructions"
            )
        return None

    def _settle(self, attempt: Attempt, pending: list[int]) -> list[int]:
        """Record what ``attempt`` (a load of ``pending``) proves; return what it does not."""
        entries = self.result["discovery"]["programs"]
        if not pending:
            return []
        wanted = set(pending)
        for index in attempt.loaded:
            if index in wanted:
                self._passed(entries[index], attempt, index)
        if attempt.rc == 0:
            return []
        code = load_errno(attempt.rc, attempt.text)
        if attempt.failed is None and code == errno.EBADF and _SLOT_INIT_TEXT in attempt.text:
            for index in pending:  # every program loaded; only the slot updates failed
                entries[index].update(load_status="skipped", load_skip_reason=SLOT_SKIP_REASON)
                entries[index]["verifier_stats"] = attempt.stats.get(index)
            return []
        if (
            attempt.indexes == pending
            and len(pending) == 1
            and attempt.failed in (None, pending[0])
            and pending[0] in attempt.silent
        ):
            # One program loaded, and the kernel logged nothing for it (libbpf or the
            # kernel refused it before the verifier ran, or the object failed first):
            # this load was that program's probe alone, log level aside.
            self.log.mark(f"program {entries[pending[0]]['name']!r} settled by its own load")
            self._refused(pending[0], entries[pending[0]], code, "", attempt.window)
            return []
        if attempt.failed in wanted:
            self._probe_alone(attempt.failed, refused=True)
            return pending[pending.index(attempt.failed) + 1 :]
        names = {entries[i]["name"]: i for i in reversed(pending)}
        warned = warn_text(attempt.window)
        named = [names[n] for n in _NAMED_PROG_RE.findall(warned) if n in names]
        first = named[0] if named else pending[0]
        window = self._probe_alone(first)
        rest = [i for i in pending if i != first]
        if not named and self._same_failure(attempt, window, entries[first]):
            for index in rest:
                entries[index].update(
                    load_status="fail",
                    load_skip_reason=None,
                    load_errno=entries[first]["load_errno"],
                    load_errno_name=entries[first]["load_errno_name"],
                    load_log=entries[first]["load_log"],
                    load_log_path=entries[first]["load_log_path"],
                )
            return []
        return rest

    @staticmethod
    def _same_failure(
        attempt: Attempt, window: list[tuple[int, str]], entry: dict[str, Any]
    ) -> bool:
        """Whether one program alone failed exactly as the shared load did, with no
        program of its own refused: then the failure is the object's, not a program's."""
        return (
            entry["load_status"] == "fail"
            and entry["load_errno"] == load_errno(attempt.rc, attempt.text)
            and entry["load_log"] == warnings_log(attempt.window)
            and refused_program(warn_text(window)) is None
        )

    def _passed(self, entry: dict[str, Any], attempt: Attempt, index: int) -> None:
        entry.update(load_status="pass", load_skip_reason=None)
        entry["verifier_stats"] = attempt.stats.get(index)
        if entry["kfuncs"] is None:
            entry["kfuncs"] = attempt.kfuncs.get(index)

    def _load_together(self, indexes: list[int]) -> Attempt:
        """A fresh open with exactly ``indexes`` autoloaded, the loader's fixups and each
        program's statistics log armed, loaded once."""
        lib = self.lib
        assert lib is not None
        self.probe_loads += 1
        self.log.mark(f"shared load probe of {len(indexes)} program(s)")
        obj, err = lib.open_file(self.config.artifact, self.config.btf_custom_path)
        if obj is None:
            return Attempt(indexes, err, [])
        try:
            progs = lib.programs(obj)
            wanted = set(indexes)
            for position, prog in enumerate(progs):
                lib.set_autoload(prog, position in wanted)
            self._apply_fixups(obj, record=False)
            armed = self.stats_supported() and self._arm_stats(progs, indexes)
            self.log.open_window()
            rc = lib.load_object(obj)
            window = self.log.close_window()
            attempt = self._record_attempt(progs, indexes, rc, window, armed)
            self._spend(attempt.stats.values())
            return attempt
        finally:
            lib.close(obj)

    def _verifier_buf(self) -> Any:
        """The one 16 MiB verifier log buffer, cleared. Anonymous mmap: zero pages on
        demand, so it costs only the pages the verifier writes; create_string_buffer
        would zero-fill all 4096 pages in every validator process (slow under emulation)."""
        if self._vbuf is None:
            self._vbuf_map = mmap.mmap(-1, VERIFIER_BUF_BYTES)
            self._vbuf = (ctypes.c_char * VERIFIER_BUF_BYTES).from_buffer(self._vbuf_map)
        self._vbuf[0] = b"\0"
        return self._vbuf

    # -- one program alone
    def _probe_alone(self, index: int, refused: bool = False) -> list[tuple[int, str]]:
        """Probe program ``index`` alone (``refused``: a load just refused it); returns
        libbpf's messages of the probe."""
        entry = self.result["discovery"]["programs"][index]
        self.log.mark(f"isolated load probe of program {entry['name']!r}")
        begin = time.monotonic()
        window: list[tuple[int, str]] = []
        try:
            window, _ = self._probe_program(index, entry, refused)
        except Exception as exc:
            self.error("probes", f"{entry['name']}: {describe_exception(exc)}")
            entry["load_skip_reason"] = "probe crashed (see errors)"
        entry["load_seconds"] = round(time.monotonic() - begin, 4)
        return window

    def _probe_program(
        self, index: int, entry: dict[str, Any], refused: bool = False
    ) -> tuple[list[tuple[int, str]], str]:
        """Fresh open, only this program autoloaded, the same fixups, log on failure;
        returns libbpf's messages and the verifier log.

        The program's log level stays 0, so a passing program is verified without a log
        (fast, and immune to ENOSPC from a too-small buffer); on failure libbpf retries at
        log level 1 into our bounded buffer. A program a load has just refused is loaded
        at level 1 at once: the same log, one verification instead of two. If even 16 MiB
        is too small, the probe is redone with libbpf's own growing buffer and the log is
        read from its print stream.
        """
        rc, window, vlog, kfuncs = self._probe_once(index, use_buf=True, level=int(refused))
        if rc == -errno.ENOSPC and vlog:  # the log outgrew our buffer, masking the errno
            rc, window, vlog, kfuncs = self._probe_once(index, use_buf=False)
        text = window_text(window)
        if vlog is None:  # no bpf_program__set_log_buf in this libbpf
            vlog = extract_verifier_log(text)
        if rc == 0:
            entry["kfuncs"] = kfuncs
            entry["load_status"] = "pass"
            entry["load_skip_reason"] = None
            return window, vlog
        code = load_errno(rc, text)
        if code == errno.EBADF and _SLOT_INIT_TEXT in text:
            entry["load_status"] = "skipped"
            entry["load_skip_reason"] = SLOT_SKIP_REASON
            return window, vlog
        self._refused(index, entry, code, vlog, window)
        entry["verifier_stats"] = parse_verifier_stats(vlog) if vlog else None
        self._spend([entry["verifier_stats"]])
        return window, vlog

    def _spend(self, stats: Any) -> None:
        """Count the instructions the verifier processed in a probe load."""
        for item in stats:
            if item and item["insns_processed"]:
                self.probe_insns += item["insns_processed"]

    def _refused(
        self, index: int, entry: dict[str, Any], code: int, vlog: str,
        window: list[tuple[int, str]],
    ) -> None:  # fmt: skip
        """A refusal: errno, the bounded log (the verifier's, else libbpf's warnings) and,
        with --log-dir, the whole of both in a file."""
        entry["load_status"] = "fail"
        entry["load_skip_reason"] = None
        entry["load_errno"] = code
        entry["load_errno_name"] = errno_name(code)
        log = vlog or "\n".join(warnings_of(window)) + "\n"
        entry["load_log"] = tail_text(log.strip("\n") + "\n", PROBE_LOG_TAIL)
        whole = self.whole_load
        load = self.result["load"]
        if whole is not None and whole.failed == index and vlog and not load["verifier_log"]:
            # The whole-object load logged statistics only; this load has the program's
            # full log, which is what that load would have printed.
            load["verifier_log"] = tail_text(tidy_verifier_log(vlog), PROBE_LOG_TAIL)
        if self.config.log_dir:
            directory = os.path.join(self.config.log_dir, "verifier")
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, f"{index:03d}-{safe_filename(entry['name'])}.log")
            body = tail_text(vlog, VERIFIER_FILE_CHARS) if vlog else ""
            text = window_text(window)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text if not body else body + "\n-- libbpf --\n" + text)
            entry["load_log_path"] = path

    def _probe_once(
        self, index: int, use_buf: bool, level: int = 0
    ) -> tuple[int, list[tuple[int, str]], str | None, list[int] | None]:
        """(rc, libbpf messages, verifier log, kfunc ids after a load that passed); the
        program at log ``level`` into our buffer (``use_buf``), else libbpf's defaults."""
        lib = self.lib
        assert lib is not None
        self.probe_loads += 1
        obj, err = lib.open_file(self.config.artifact, self.config.btf_custom_path)
        if obj is None:
            return err, [], None, None
        vlog: str | None = None
        kfuncs: list[int] | None = None
        try:
            progs = lib.programs(obj)
            for position, prog in enumerate(progs):
                lib.set_autoload(prog, position == index)
            self._apply_fixups(obj, record=False)
            has_buf = False
            if use_buf and index < len(progs):
                buf = self._verifier_buf()
                has_buf = lib.set_log_buf(progs[index], buf, VERIFIER_BUF_BYTES)
                if has_buf and level:
                    lib.set_log_level(progs[index], level)
            self.log.open_window()
            rc = lib.load_object(obj)
            window = self.log.close_window()
            if has_buf:
                vlog = decode(ctypes.string_at(self._vbuf))
            if rc == 0 and index < len(progs):
                kfuncs = self._kfunc_ids(progs[index])
        finally:
            lib.close(obj)
        return rc, window, vlog, kfuncs
