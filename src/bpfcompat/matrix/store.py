"""The SQLite store: runs, their kernels and cells, and the raw validator results.

Raw evidence (validator JSON, console tails) lives in `ValidatorResult`, apart from the
verdict in `Cell`, so a newer classifier can reclassify stored runs without booting.
WAL mode, short transactions and a busy timeout let two runs share one file.

The schema is versioned (SQLite's user_version): older stores are migrated on open, newer
ones refused; a store that fails SQLite's own check is refused with one line naming it;
every database error is translated here, once, into StoreError. A run records the
process that owns it, so a run whose process died is marked interrupted at the next open.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlmodel import Field, Session, SQLModel, create_engine, select

from bpfcompat.errors import StoreError
from bpfcompat.matrix.result import ResultModel, ResultProblem, parse_result

DEFAULT_DB = Path(".bpfcompat/bpfcompat.db")
# Bump when a change is not just added tables or columns (those migrate themselves).
SCHEMA_VERSION = 2
T = TypeVar("T")


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot): with the pid, it names
    one process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def process_identity() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "proc_start": process_start(pid), "hostname": socket.gethostname()}


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Run(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    started_at: str = Field(default_factory=utcnow)
    finished_at: str | None = None
    status: str = "running"  # running | completed | interrupted | failed
    exit_code: int | None = None
    accel: str = ""
    kernels_file: str = ""
    tool_version: str = ""
    error: str | None = None
    pid: int | None = None
    proc_start: str | None = None
    hostname: str | None = None
    labels_json: str | None = None  # {"key": "value"} given with --label
    attach_mode: str | None = None
    plan_digest: str | None = None  # shards of one plan share it (matrix/plan.Plan.digest)
    shard: str | None = None  # "I/N" when the run is one slice of a plan

    @property
    def labels(self) -> dict[str, str]:
        try:
            data = json.loads(self.labels_json or "{}")
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


class RunKernel(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    kernel_id: str
    release: str = ""
    package: str = ""
    package_version: str = ""
    suite: str = ""
    cmdline: str = ""
    required: bool = True
    btf: bool | None = None
    boot_seconds: float | None = None  # the first guest's seconds from QEMU start to SSH
    boots: int = 0  # guests started, booted or restored
    # How the first guest got ready: boot | boot+snapshot (booted, then saved) | restore.
    ready_via: str | None = None
    restores: int = 0  # guests restored from a snapshot rather than booted
    helpers: int = 0  # more guests that took part of this kernel's work (share.py)
    peak_rss_mb: float | None = None
    status: str = "pending"  # pending | ok | cached | error
    error: str | None = None
    notes_json: str | None = None  # what the kernel did that no artifact is blamed for
    arch: str = ""  # the guest's architecture (x86_64, aarch64)
    accel: str = ""  # how this kernel's guests ran: a foreign arch is emulated under KVM too

    @property
    def notes(self) -> list[str]:
        return _json_list(self.notes_json)


class ValidatorResult(SQLModel, table=True):
    """What the guest produced for one (artifact, kernel) — evidence, never a verdict."""

    id: int | None = Field(default=None, primary_key=True)
    cache_key: str = Field(index=True)
    artifact_sha256: str
    kernel_id: str
    validator_version: str = ""
    image_digest: str = ""
    exit_code: int | None = None
    signal: int | None = None
    raw_json: str | None = None
    infra_error: str | None = None
    crash: bool = False
    console_tail: str | None = None
    seconds: float = 0.0
    created_at: str = Field(default_factory=utcnow)
    final: bool | None = None  # may be reused by a later run (see record.is_final)

    def result(self) -> ResultModel | ResultProblem | None:
        """The typed result, or why the stored JSON is unusable; None when the guest
        wrote none."""
        return parse_result(self.raw_json) if self.raw_json else None


class Cell(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    artifact: str
    artifact_path: str
    artifact_sha256: str
    manifest_path: str | None = None
    manifest_hash: str = ""
    kernel_id: str
    status: str  # pass | fail | error
    code: str | None = None
    evidence: str | None = None
    confidence: str | None = None
    stage: str | None = None
    program: str | None = None
    remediation: str | None = None
    rule: str | None = None
    detail: str | None = None
    classifier_version: str = ""
    # The host's ELF pre-check of the artifact as this cell's run read it (None: it passed,
    # or a store from before this column), so reclassify never reads artifact files.
    artifact_problem: str | None = None
    notes_json: str = "[]"
    details_json: str = "{}"
    seconds: float = 0.0
    cached: bool = False
    flaky: bool | None = None  # a functional test passed only on a retry
    attached: str | None = None  # for a pass: all | some | none | off (Verdict.attached)
    # The host's static reading of the artifact (matrix/statics.summary): its upstream floor
    # and the loader-setup findings the verdict was judged with.
    analysis_json: str | None = None
    # The project's expectation for this cell (`fail CODE`, `pass`) and whether it held;
    # None: no expectation stated.
    expectation: str | None = None
    expected: bool | None = None
    result_id: int | None = Field(default=None, foreign_key="validatorresult.id")
    needs: str | None = None  # Verdict.needs
    pinpoint_json: str | None = None  # Verdict.pinpoint as JSON

    @property
    def notes(self) -> list[str]:
        return _json_list(self.notes_json)

    @property
    def pinpoint(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.pinpoint_json or "null")
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    @property
    def details(self) -> dict[str, Any]:
        try:
            data = json.loads(self.details_json or "{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}


def _json_list(text: str | None) -> list[str]:
    """A stored JSON list of strings; a damaged column reads as empty, not as a crash."""
    try:
        data = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(item) for item in data] if isinstance(data, list) else []


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{path}: cannot create the store's directory: {exc}") from None
        self.engine = create_engine(
            f"sqlite:///{path}", connect_args={"timeout": 30, "check_same_thread": False}
        )
        event.listen(self.engine, "connect", _pragmas)
        deadline = time.monotonic() + 60
        if path.exists() and not path.is_file():
            raise StoreError(f"{path}: not a usable bpfcompat store: not a regular file")
        while True:
            try:
                self._create_schema()
                with self.engine.connect() as conn:
                    answer = [row[0] for row in conn.exec_driver_sql("PRAGMA quick_check")]
                break
            except (DatabaseError, OperationalError, sqlite3.DatabaseError) as exc:
                # SQLite answers "locked" without waiting when waiting could deadlock
                # (e.g. a journal-mode switch racing a first write): back off and retry.
                if _is_busy(exc) and time.monotonic() < deadline:
                    time.sleep(random.uniform(0.02, 0.2))
                    continue
                raise StoreError(f"{path}: not a usable bpfcompat store: {_reason(exc)}") from None
        if answer != ["ok"]:
            first = " ".join(str(answer[0] if answer else "no answer").split())[:200]
            raise StoreError(
                f"{path}: the store is corrupt (SQLite integrity check: {first}); "
                "move it aside and run again"
            )
        self._close_abandoned_runs()

    def _create_schema(self) -> None:
        """Create tables, indexes and later-added columns in one IMMEDIATE transaction:
        processes opening the same new store at once queue on the write lock instead of
        racing check-then-create (SQLAlchemy's create_all is not atomic on SQLite)."""
        dialect = self.engine.dialect
        raw = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            _pragmas(raw, None)
            raw.execute("BEGIN IMMEDIATE")
            (version,) = raw.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raw.execute("ROLLBACK")
                raise StoreError(
                    f"{self.path}: written by a newer bpfcompat (store schema {version}; this "
                    f"version reads up to {SCHEMA_VERSION}): upgrade bpfcompat or use another --db"
                )
            for table in SQLModel.metadata.sorted_tables:
                raw.execute(str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)))
                for index in table.indexes:
                    raw.execute(
                        str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect))
                    )
                # Columns added in later versions appear in old stores as NULLs.
                have = {row[1] for row in raw.execute(f"PRAGMA table_info({table.name})")}
                for column in table.columns:
                    if column.name not in have:
                        kind = column.type.compile(dialect)
                        raw.execute(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")
            raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            raw.execute("COMMIT")
        finally:
            raw.close()

    def _close_abandoned_runs(self) -> None:
        """Mark `running` runs of this host whose process is gone as interrupted."""
        host = socket.gethostname()

        def _apply(session: Session) -> None:
            stmt = select(Run).where(Run.status == "running").where(Run.hostname == host)
            for run in session.exec(stmt):
                if run.pid is None or process_start(run.pid) == run.proc_start:
                    continue  # still running (or a pre-versioned run we cannot judge)
                run.status = "interrupted"
                run.error = f"the process that ran it (pid {run.pid}) ended without finishing it"
                run.finished_at = run.finished_at or utcnow()
                session.add(run)

        self.write(_apply)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose database errors surface as one StoreError naming the store."""
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                yield session
        except (DatabaseError, sqlite3.DatabaseError) as exc:
            if isinstance(exc, OperationalError) and _is_busy(exc):
                raise  # write() waits and retries these
            raise StoreError(f"{self.path}: {_reason(exc)}") from None

    def write(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in one short transaction, retrying while another writer holds the lock
        (each attempt already waits up to the 30 s busy timeout)."""
        delay = 0.05
        attempts = 5
        for attempt in range(attempts):
            try:
                with self.session() as session:
                    value = fn(session)
                    session.commit()
                    return value
            except OperationalError as exc:
                if not _is_busy(exc) or attempt == attempts - 1:
                    raise StoreError(f"{self.path}: {_reason(exc)}") from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    def add(self, obj: T) -> T:
        def _add(session: Session) -> T:
            session.add(obj)
            session.flush()
            session.refresh(obj)
            return obj

        return self.write(_add)

    def update_run(self, run_id: int, **fields: Any) -> None:
        def _update(session: Session) -> None:
            run = session.get(Run, run_id)
            if run is None:
                raise StoreError(f"{self.path}: run {run_id} vanished")
            for key, value in fields.items():
                setattr(run, key, value)
            session.add(run)

        self.write(_update)

    def cached_result(self, cache_key: str) -> ValidatorResult | None:
        """The newest final result for this key: errors, crashes and functional-test
        failures are never reused (see record.is_final)."""
        with self.session() as session:
            stmt = (
                select(ValidatorResult)
                .where(ValidatorResult.cache_key == cache_key)
                .where(ValidatorResult.final.is_(True))  # type: ignore[union-attr]
                .where(ValidatorResult.infra_error.is_(None))  # type: ignore[union-attr]
                .where(ValidatorResult.crash.is_(False))  # type: ignore[attr-defined]
                .order_by(ValidatorResult.id.desc())  # type: ignore[union-attr]
            )
            return session.exec(stmt).first()

    def mark_final(self, result_id: int | None) -> None:
        def _apply(session: Session) -> None:
            stored = session.get(ValidatorResult, result_id)
            if stored is not None:
                stored.final = True
                session.add(stored)

        self.write(_apply)

    def update_cell(self, cell_id: int | None, *, notes: list[str], **fields: Any) -> None:
        def _apply(session: Session) -> None:
            cell = session.get(Cell, cell_id)
            if cell is None:
                raise StoreError(f"{self.path}: cell {cell_id} vanished")
            for key, value in fields.items():
                setattr(cell, key, value)
            cell.notes_json = json.dumps(notes)
            session.add(cell)

        self.write(_apply)

    def prior_cell(self, result_id: int | None, classifier_version: str) -> Cell | None:
        """The newest cell judged from this result by this classifier version."""
        if result_id is None:
            return None
        with self.session() as session:
            stmt = (
                select(Cell)
                .where(Cell.result_id == result_id)
                .where(Cell.classifier_version == classifier_version)
                .order_by(Cell.id.desc())  # type: ignore[union-attr]
            )
            return session.exec(stmt).first()

    def run(self, run_id: int | None = None) -> Run:
        with self.session() as session:
            if run_id is None:
                run = session.exec(select(Run).order_by(Run.id.desc())).first()  # type: ignore[union-attr]
                if run is None:
                    raise StoreError(f"{self.path}: the store has no runs yet")
                return run
            run = session.get(Run, run_id)
            if run is None:
                raise StoreError(f"{self.path}: no run with id {run_id}")
            return run

    def runs(self) -> list[Run]:
        with self.session() as session:
            return list(session.exec(select(Run).order_by(Run.id.desc())))  # type: ignore[union-attr]

    def kernels(self, run_id: int) -> list[RunKernel]:
        with self.session() as session:
            stmt = select(RunKernel).where(RunKernel.run_id == run_id).order_by(RunKernel.id)  # type: ignore[arg-type]
            return list(session.exec(stmt))

    def cells(self, run_id: int) -> list[Cell]:
        with self.session() as session:
            stmt = select(Cell).where(Cell.run_id == run_id).order_by(Cell.id)  # type: ignore[arg-type]
            return list(session.exec(stmt))

    def result(self, result_id: int | None) -> ValidatorResult | None:
        if result_id is None:
            return None
        with self.session() as session:
            return session.get(ValidatorResult, result_id)

    def results(self, result_ids: Iterable[int]) -> dict[int, ValidatorResult]:
        """Many results by id in a few queries (a report reads every cell's result)."""
        wanted = sorted(set(result_ids))
        found: dict[int, ValidatorResult] = {}
        with self.session() as session:
            for start in range(0, len(wanted), 500):  # under SQLite's bound-variable limit
                chunk = wanted[start : start + 500]
                stmt = select(ValidatorResult).where(ValidatorResult.id.in_(chunk))  # type: ignore[union-attr]
                found.update((row.id, row) for row in session.exec(stmt) if row.id is not None)
        return found

    def integrity_ok(self) -> bool:
        with self.engine.connect() as conn:
            return conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"


def _pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _is_busy(exc: BaseException) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).splitlines()[0]
