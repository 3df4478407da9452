"""kbot's store: one SQLite file (WAL) in the state directory.

It holds what must survive a restart: every message seen (raw, so nothing is ever lost to a
parser bug), per-list cursors, series, jobs, per-commit results and reports with their delivery
state. The schema is versioned; migrations are append-only SQL scripts, applied in order inside a
transaction, so an old store opens under new code.

Owners: intake writes messages/cursors/series/jobs, the pipeline writes results, report writes
reports. Each owner adds its own typed methods here; no other module writes SQL.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.errors import InfraError

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema
    """
    CREATE TABLE messages (
        msgid TEXT PRIMARY KEY,
        list TEXT NOT NULL,
        subject TEXT NOT NULL DEFAULT '',
        from_addr TEXT NOT NULL DEFAULT '',
        date TEXT NOT NULL DEFAULT '',
        seen_at REAL NOT NULL,
        raw BLOB,
        status TEXT NOT NULL DEFAULT 'ok',      -- ok | skipped
        error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX messages_list ON messages(list, seen_at);
    CREATE TABLE cursors (
        list TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE series (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,               -- stable identity of one revision of a series
        list TEXT NOT NULL,
        title TEXT NOT NULL,
        version INTEGER NOT NULL,
        complete INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',  -- pending | ready | superseded | filtered
        first_seen REAL NOT NULL,
        updated_at REAL NOT NULL,
        data TEXT NOT NULL                      -- JSON of the assembled series
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        series_id INTEGER REFERENCES series(id),
        kind TEXT NOT NULL,                     -- test-series | bisect
        status TEXT NOT NULL DEFAULT 'queued',  -- queued | running | done | error
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE UNIQUE INDEX jobs_one_per_series ON jobs(series_id, kind);
    CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        step TEXT NOT NULL,                     -- apply | build | vmtest | verdict | bisect
        commit_sha TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE reports (
        msgid TEXT PRIMARY KEY,
        job_id INTEGER REFERENCES jobs(id),
        kind TEXT NOT NULL,
        dedup_key TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL DEFAULT 'queued',  -- queued | sending | sent | held | failed
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        raw BLOB NOT NULL
    );
    """,
    # 2 (report): what "send only when changed" and the delivery state machine need
    """
    ALTER TABLE reports ADD COLUMN lineage TEXT NOT NULL DEFAULT '';
    ALTER TABLE reports ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE reports ADD COLUMN fingerprint TEXT NOT NULL DEFAULT '';
    ALTER TABLE reports ADD COLUMN subject TEXT NOT NULL DEFAULT '';
    ALTER TABLE reports ADD COLUMN recipients TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE reports ADD COLUMN stage TEXT NOT NULL DEFAULT '';
    ALTER TABLE reports ADD COLUMN next_attempt_at REAL NOT NULL DEFAULT 0;
    ALTER TABLE reports ADD COLUMN sent_at REAL;
    CREATE INDEX reports_lineage ON reports(lineage, version);
    CREATE INDEX reports_status ON reports(status, next_attempt_at)
    """,
)


@dataclass(frozen=True)
class StoredMessage:
    msgid: str
    list: str
    subject: str
    from_addr: str
    date: str
    seen_at: float
    raw: bytes | None
    status: str
    error: str


@dataclass(frozen=True)
class SeriesRow:
    id: int
    key: str
    list: str
    title: str
    version: int
    complete: bool
    state: str
    first_seen: float
    updated_at: float
    data: dict[str, Any]


@dataclass(frozen=True)
class JobRow:
    id: int
    series_id: int | None
    kind: str
    status: str
    created_at: float
    updated_at: float
    detail: dict[str, Any]


@dataclass(frozen=True)
class ReportRow:
    msgid: str
    job_id: int | None
    kind: str
    dedup_key: str
    status: str  # queued | sending | sent | held | failed
    created_at: float
    updated_at: float
    attempts: int
    last_error: str
    raw: bytes
    lineage: str
    version: int
    fingerprint: str
    subject: str
    recipients: tuple[str, ...]  # envelope recipients (all of To and Cc)
    stage: str  # while sending: claimed | smtp-data (the server may have it)
    next_attempt_at: float
    sent_at: float | None


class Store:
    """A connection to the store. Use as a context manager or call close()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise InfraError(f"cannot open store {path}: {exc}") from exc
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=30000")
        self._migrate()

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> Store:
        return cls(state_dir / "kbot.sqlite3")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers never deadlock on upgrade)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise InfraError(
                f"store {self.path} has schema {current}, newer than this kbot "
                f"({len(MIGRATIONS)}): upgrade kbot"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            with self.tx() as db:
                for stmt in MIGRATIONS[version - 1].split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.execute(f"PRAGMA user_version={version}")

    # -- messages -------------------------------------------------------------------------

    def add_message(
        self,
        msgid: str,
        list_name: str,
        *,
        subject: str = "",
        from_addr: str = "",
        date: str = "",
        raw: bytes | None = None,
        status: str = "ok",
        error: str = "",
    ) -> bool:
        """Record a message once. Returns False if it was already stored (nothing changes)."""
        with self.tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO messages"
                " (msgid, list, subject, from_addr, date, seen_at, raw, status, error)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (msgid, list_name, subject, from_addr, date, time.time(), raw, status, error),
            )
            return cur.rowcount == 1

    def has_message(self, msgid: str) -> bool:
        row = self.db.execute("SELECT 1 FROM messages WHERE msgid = ?", (msgid,)).fetchone()
        return row is not None

    def get_message(self, msgid: str) -> StoredMessage | None:
        row = self.db.execute("SELECT * FROM messages WHERE msgid = ?", (msgid,)).fetchone()
        return StoredMessage(**dict(row)) if row else None

    def messages(self, list_name: str, status: str = "ok") -> list[StoredMessage]:
        rows = self.db.execute(
            "SELECT * FROM messages WHERE list = ? AND status = ? ORDER BY seen_at, msgid",
            (list_name, status),
        ).fetchall()
        return [StoredMessage(**dict(r)) for r in rows]

    # -- cursors --------------------------------------------------------------------------

    def get_cursor(self, list_name: str) -> str | None:
        row = self.db.execute("SELECT value FROM cursors WHERE list = ?", (list_name,)).fetchone()
        return str(row[0]) if row else None

    def set_cursor(self, list_name: str, value: str) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO cursors (list, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(list) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (list_name, value, time.time()),
            )

    # -- series and jobs ------------------------------------------------------------------

    def upsert_series(
        self,
        key: str,
        list_name: str,
        *,
        title: str,
        version: int,
        complete: bool,
        data: dict[str, Any],
    ) -> int:
        """Insert or refresh one series revision (state untouched); returns its id."""
        now = time.time()
        blob = json.dumps(data, sort_keys=True)
        with self.tx() as db:
            db.execute(
                "INSERT INTO series (key, list, title, version, complete, first_seen,"
                " updated_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET title = excluded.title,"
                " complete = excluded.complete, data = excluded.data,"
                " updated_at = CASE WHEN series.data = excluded.data THEN series.updated_at"
                " ELSE excluded.updated_at END",
                (key, list_name, title, version, int(complete), now, now, blob),
            )
            row = db.execute("SELECT id FROM series WHERE key = ?", (key,)).fetchone()
            return int(row[0])

    def set_series_state(self, series_id: int, state: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE series SET state = ? WHERE id = ?", (state, series_id))

    def get_series(self, series_id: int) -> SeriesRow | None:
        row = self.db.execute("SELECT * FROM series WHERE id = ?", (series_id,)).fetchone()
        return _series_row(row) if row else None

    def series_by_key(self, key: str) -> SeriesRow | None:
        row = self.db.execute("SELECT * FROM series WHERE key = ?", (key,)).fetchone()
        return _series_row(row) if row else None

    def all_series(self, list_name: str | None = None) -> list[SeriesRow]:
        if list_name is None:
            rows = self.db.execute("SELECT * FROM series ORDER BY id").fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM series WHERE list = ? ORDER BY id", (list_name,)
            ).fetchall()
        return [_series_row(r) for r in rows]

    def add_job(
        self, series_id: int | None, kind: str, detail: dict[str, Any] | None = None
    ) -> int:
        """Create a job once per (series, kind); returns the existing id on a repeat."""
        now = time.time()
        with self.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO jobs (series_id, kind, created_at, updated_at, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                (series_id, kind, now, now, json.dumps(detail or {}, sort_keys=True)),
            )
            row = db.execute(
                "SELECT id FROM jobs WHERE series_id IS ? AND kind = ? ORDER BY id DESC",
                (series_id, kind),
            ).fetchone()
            return int(row[0])

    def mark_series_ready(
        self, series_id: int, kind: str, detail: dict[str, Any] | None = None
    ) -> tuple[int, bool]:
        """In one transaction: state 'ready' and a job of `kind` (once). (job id, created?)."""
        now = time.time()
        with self.tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO jobs (series_id, kind, created_at, updated_at, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                (series_id, kind, now, now, json.dumps(detail or {}, sort_keys=True)),
            )
            created = cur.rowcount == 1
            db.execute(
                "UPDATE series SET state = 'ready', updated_at = ? WHERE id = ?", (now, series_id)
            )
            row = db.execute(
                "SELECT id FROM jobs WHERE series_id = ? AND kind = ?", (series_id, kind)
            ).fetchone()
            return int(row[0]), created

    def set_job_status(self, job_id: int, status: str) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE jobs SET status = ?, updated_at = ? WHERE id = ?",
                (status, time.time(), job_id),
            )

    def jobs(self, status: str | None = None) -> list[JobRow]:
        if status is None:
            rows = self.db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM jobs WHERE status = ? ORDER BY id", (status,)
            ).fetchall()
        return [_job_row(r) for r in rows]

    def add_result(
        self, job_id: int, step: str, status: str, *, commit_sha: str = "", data: dict[str, Any]
    ) -> int:
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO results (job_id, step, commit_sha, status, created_at, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, step, commit_sha, status, time.time(), json.dumps(data, sort_keys=True)),
            )
            return int(cur.lastrowid or 0)

    # -- reports (owner: bot.report) ------------------------------------------------------

    def add_report(
        self,
        msgid: str,
        *,
        job_id: int | None,
        kind: str,
        dedup_key: str,
        raw: bytes,
        lineage: str = "",
        version: int = 0,
        fingerprint: str = "",
        subject: str = "",
        recipients: tuple[str, ...] = (),
        status: str = "queued",
        last_error: str = "",
    ) -> tuple[ReportRow, bool]:
        """Store a report once per dedup_key: (the row, True) if new, (the existing, False)."""
        now = time.time()
        with self.tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO reports (msgid, job_id, kind, dedup_key, status,"
                " created_at, updated_at, last_error, raw, lineage, version, fingerprint,"
                " subject, recipients) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (msgid, job_id, kind, dedup_key, status, now, now, last_error, raw, lineage,
                 version, fingerprint, subject, json.dumps(list(recipients))),
            )
            row = db.execute("SELECT * FROM reports WHERE dedup_key = ?", (dedup_key,)).fetchone()
            return _report_row(row), cur.rowcount == 1

    def get_report(self, msgid: str) -> ReportRow | None:
        row = self.db.execute("SELECT * FROM reports WHERE msgid = ?", (msgid,)).fetchone()
        return _report_row(row) if row else None

    def reports(self, status: str | None = None) -> list[ReportRow]:
        if status is None:
            rows = self.db.execute("SELECT * FROM reports ORDER BY created_at, msgid").fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM reports WHERE status = ? ORDER BY created_at, msgid", (status,)
            ).fetchall()
        return [_report_row(r) for r in rows]

    def reports_for_lineage(self, lineage: str) -> list[ReportRow]:
        """Every report about any revision of one series, newest revision first."""
        rows = self.db.execute(
            "SELECT * FROM reports WHERE lineage = ? ORDER BY version DESC, created_at DESC",
            (lineage,),
        ).fetchall()
        return [_report_row(r) for r in rows]

    def claim_report(self, msgid: str, *, from_status: str, now: float) -> bool:
        """queued -> sending (attempts + 1) if still `from_status` and due: one sender wins."""
        with self.tx() as db:
            cur = db.execute(
                "UPDATE reports SET status = 'sending', stage = 'claimed',"
                " attempts = attempts + 1, updated_at = ? WHERE msgid = ? AND status = ?"
                " AND next_attempt_at <= ?",
                (now, msgid, from_status, now),
            )
            return cur.rowcount == 1

    def set_report_stage(self, msgid: str, stage: str) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE reports SET stage = ?, updated_at = ? WHERE msgid = ?",
                (stage, time.time(), msgid),
            )

    def set_report_status(
        self,
        msgid: str,
        status: str,
        *,
        last_error: str = "",
        next_attempt_at: float = 0.0,
        sent: bool = False,
    ) -> None:
        now = time.time()
        with self.tx() as db:
            db.execute(
                "UPDATE reports SET status = ?, stage = '', last_error = ?,"
                " next_attempt_at = ?, updated_at = ?,"
                " sent_at = CASE WHEN ? THEN ? ELSE sent_at END WHERE msgid = ?",
                (status, last_error, next_attempt_at, now, int(sent), now, msgid),
            )


def _report_row(row: sqlite3.Row) -> ReportRow:
    d = dict(row)
    d["recipients"] = tuple(json.loads(d["recipients"]))
    return ReportRow(**d)


def _series_row(row: sqlite3.Row) -> SeriesRow:
    d = dict(row)
    d["complete"] = bool(d["complete"])
    d["data"] = json.loads(d["data"])
    return SeriesRow(**d)


def _job_row(row: sqlite3.Row) -> JobRow:
    d = dict(row)
    d["detail"] = json.loads(d["detail"])
    return JobRow(**d)
