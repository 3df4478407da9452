"""kbot's store: one SQLite file (WAL) in the state directory.

It holds what must survive a restart: every message seen (raw, so nothing is ever lost to a
parser bug), per-list cursors, series, jobs, per-commit results and reports with their delivery
state. The schema is versioned; migrations are append-only SQL scripts, applied in order inside a
transaction, so an old store opens under new code.

Owners: intake writes messages/cursors/series/jobs, the pipeline writes results, report writes
reports. Each owner adds its own typed methods here; no other module writes SQL.
"""

from __future__ import annotations

import enum
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
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
    # 3 (intake): crash-safe watching. A patch or cover letter is 'fetch' until its thread is
    # stored, then 'assemble' until the transaction that settles its series commits ('done'),
    # so a poll cut short at any point is finished by the next one from the store. `thread`
    # is the thread's root Message-ID (References[0], else In-Reply-To, else its own) so a
    # late cover finds the patches stored before it. series_messages: which series holds
    # which mail, so a series keeps one row (and one job) while its key changes as it fills
    # in. Messages stored before this migration count as settled, but for those of series
    # still waiting (pending), which the next poll assembles again.
    """
    ALTER TABLE messages ADD COLUMN intake TEXT NOT NULL DEFAULT 'done';
    ALTER TABLE messages ADD COLUMN thread TEXT NOT NULL DEFAULT '';
    ALTER TABLE messages ADD COLUMN fetch_tries INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX messages_intake ON messages(list, intake);
    CREATE INDEX messages_thread ON messages(thread);
    CREATE TABLE series_messages (
        msgid TEXT NOT NULL,
        series_id INTEGER NOT NULL REFERENCES series(id),
        PRIMARY KEY (msgid, series_id)
    );
    CREATE INDEX series_messages_series ON series_messages(series_id);
    INSERT OR IGNORE INTO series_messages (msgid, series_id)
        SELECT json_extract(data, '$.cover.message_id'), id FROM series
        WHERE json_extract(data, '$.cover.message_id') IS NOT NULL;
    INSERT OR IGNORE INTO series_messages (msgid, series_id)
        SELECT json_extract(p.value, '$.message_id'), s.id
        FROM series AS s, json_each(s.data, '$.patches') AS p
        WHERE json_extract(p.value, '$.message_id') IS NOT NULL;
    UPDATE messages SET intake = 'assemble' WHERE msgid IN (
        SELECT m.msgid FROM series_messages AS m JOIN series AS s ON s.id = m.series_id
        WHERE s.state = 'pending')
    """,
    # 4 (pipeline): jobs that survive crashes. A job is claimed by one runner (owner, lease
    # renewed by a heartbeat); an errored job waits next_attempt_at and is retried up to a
    # limit, then 'failed' with its reason. results.key names a resumable step of a job (a
    # boot of one commit in one round, say): stored once, so a restarted job reuses it.
    """
    ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN next_attempt_at REAL NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN last_error TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN heartbeat_at REAL NOT NULL DEFAULT 0;
    CREATE INDEX jobs_status ON jobs(status, next_attempt_at);
    ALTER TABLE results ADD COLUMN key TEXT NOT NULL DEFAULT '';
    CREATE UNIQUE INDEX results_step_once ON results(job_id, key) WHERE key != ''
    """,
    # 5 (service): what each part of a running `kbot serve` last did, and when.
    """
    CREATE TABLE heartbeats (
        component TEXT PRIMARY KEY,             -- intake | jobs | web | ...
        owner TEXT NOT NULL,                    -- host:pid
        started_at REAL NOT NULL,
        beat_at REAL NOT NULL,
        state TEXT NOT NULL,                    -- starting | idle | working | stopping | stopped
        detail TEXT NOT NULL DEFAULT ''
    )
    """,
    # 6 (commands): `#kbot` mail commands, each acted on once. A command row is written in the
    # transaction that queues its job (or marks its lineage invalid), keyed by the command
    # mail and its n-th command line: a crash did both or neither. command_scans: the mail
    # already read for commands (only recent mail is read, so old scans can be dropped).
    # invalid_lineages: series (all revisions) kbot no longer mails about.
    """
    CREATE TABLE commands (
        msgid TEXT NOT NULL,                    -- the mail the command came in
        seq INTEGER NOT NULL,                   -- its n-th command line, from 1
        list TEXT NOT NULL,
        sender TEXT NOT NULL,                   -- the From address
        verb TEXT NOT NULL,                     -- test, bisect, invalid, help, or as written
        line TEXT NOT NULL,                     -- the command line as written
        state TEXT NOT NULL,                    -- seen (waiting), acted, ignored, rejected
        reason TEXT NOT NULL DEFAULT '',
        series_id INTEGER,
        job_id INTEGER REFERENCES jobs(id),
        reply_msgid TEXT NOT NULL DEFAULT '',   -- the short reply kbot mailed, if any
        lineage TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (msgid, seq)
    );
    CREATE INDEX commands_state ON commands(state, created_at);
    CREATE TABLE command_scans (
        msgid TEXT PRIMARY KEY,
        scanned_at REAL NOT NULL
    );
    CREATE TABLE invalid_lineages (
        lineage TEXT PRIMARY KEY,
        msgid TEXT NOT NULL,                    -- the `#kbot invalid` mail
        sender TEXT NOT NULL,
        created_at REAL NOT NULL
    )
    """,
)

# messages.intake: where a message is on its way from the archive to a settled series.
INTAKE_FETCH = "fetch"  # a patch or cover letter whose thread is not stored yet
INTAKE_ASSEMBLE = "assemble"  # its thread is stored; its series is not settled yet
INTAKE_DONE = "done"  # settled (or not patch mail): later polls read it only as context


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
    intake: str = INTAKE_DONE
    thread: str = ""
    fetch_tries: int = 0


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
    status: str  # queued | running | done | error (waiting for a retry) | failed | cancelled
    created_at: float
    updated_at: float
    detail: dict[str, Any]
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str = ""
    owner: str = ""  # the runner holding it while running (host:pid)
    heartbeat_at: float = 0.0


@dataclass(frozen=True)
class Heartbeat:
    component: str
    owner: str
    started_at: float
    beat_at: float
    state: str
    detail: str


@dataclass(frozen=True)
class StepRow:
    """One stored, resumable step of a job (results with a key)."""

    job_id: int
    key: str
    step: str
    commit_sha: str
    status: str
    created_at: float
    data: Any


class JobChange(enum.Enum):
    """What settling a series does to its job (see Store.settle_series)."""

    NONE = "none"
    CREATE = "create"  # mark the series ready and make its job (once)
    UPDATE = "update"  # a job not started yet takes the new detail (the fuller series)
    REQUEUE = "requeue"  # a finished job (done/error) is queued again: its patches changed


@dataclass(frozen=True)
class Settled:
    """What Store.settle_series did: the job (if any) and whether the change was applied."""

    job_id: int | None
    applied: bool  # False: the job's status moved under us; nothing was written
    created: bool = False


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
        """Open (or create) the store at `path`. Anything that keeps it from being a usable
        kbot store is an InfraError naming the file and what is wrong, never a traceback."""
        self.path = path
        for parent in (path.parent, *path.parent.parents):
            if parent.exists() or parent.is_symlink():
                if not parent.is_dir():
                    raise InfraError(f"store {path}: {parent} is not a directory")
                break
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InfraError(f"store {path}: cannot create its directory {path.parent}: "
                             f"{exc.strerror or exc}") from None
        if problem := _file_problem(path):
            raise InfraError(f"store {path} {problem}")
        # SQLite opens a read-only store and fails at the first write, deep in some command;
        # access() also says EROFS to root on a read-only mount. WAL needs the directory too.
        if path.exists() and not os.access(path, os.W_OK):
            raise InfraError(f"store {path} is read-only: kbot must be able to write its store")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise InfraError(f"store {path} cannot be opened: its directory {path.parent} is "
                             "read-only (kbot writes the store and its -wal/-shm files there)")
        try:
            self.db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise InfraError(f"store {path} {_sqlite_problem(exc, path)}") from exc
        try:
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA busy_timeout=30000")
            self._wal()
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except BaseException as exc:
            self.db.close()
            if isinstance(exc, sqlite3.Error):
                raise InfraError(f"store {path} {_sqlite_problem(exc, path)}") from exc
            raise

    def _wal(self) -> None:
        """Switch to WAL. Two connections doing so on a fresh file at once (the threads of
        `kbot serve`) can get SQLITE_BUSY without the busy handler being consulted: retry."""
        deadline = time.monotonic() + 30.0
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

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
        """One write transaction (BEGIN IMMEDIATE: writers never deadlock on upgrade).

        A store that cannot take the write (disk full, read-only, I/O error) is an
        infrastructure error naming the store; the transaction is rolled back, so what was
        stored before stays as it was."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self.db.in_transaction:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the connection may be unusable; SQLite rolls back on reopen
            raise InfraError(f"store {self.path}: cannot write: {exc}") from exc

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        # Under the write lock from the first read on: two processes (or two threads of
        # `kbot serve`) opening a new store at once must not both create its tables.
        with self.tx() as db:
            current = self.schema_version
            if current > len(MIGRATIONS):
                raise InfraError(
                    f"store {self.path} has schema {current}, newer than this kbot "
                    f"({len(MIGRATIONS)}): upgrade kbot"
                )
            if current == 0:
                # A new store is empty; an SQLite file with tables but no schema version is
                # some other program's database: never add kbot's tables to it.
                others = db.execute(
                    "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' LIMIT 3"
                ).fetchall()
                if others:
                    names = ", ".join(str(r[0]) for r in others)
                    raise InfraError(f"store {self.path} is not a kbot store (an SQLite "
                                     f"database with other tables: {names})")
            # All pending migrations in one transaction: a store is never half migrated.
            for version in range(current + 1, len(MIGRATIONS) + 1):
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
        intake: str = INTAKE_DONE,
        thread: str = "",
    ) -> bool:
        """Record a message once. Returns False if it was already stored (nothing changes,
        except that a message stored before threads were recorded learns its `thread`)."""
        with self.tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO messages (msgid, list, subject, from_addr, date,"
                " seen_at, raw, status, error, intake, thread)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (msgid, list_name, subject, from_addr, date, time.time(), raw, status, error,
                 intake, thread),
            )
            if cur.rowcount == 1:
                return True
            if thread:
                db.execute("UPDATE messages SET thread = ? WHERE msgid = ? AND thread = ''",
                           (thread, msgid))
            return False

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

    def messages_in_intake(self, list_name: str, intake: str) -> list[StoredMessage]:
        """Messages of a list at one intake stage, oldest first."""
        rows = self.db.execute(
            "SELECT * FROM messages WHERE list = ? AND intake = ? AND status = 'ok'"
            " ORDER BY seen_at, msgid",
            (list_name, intake),
        ).fetchall()
        return [StoredMessage(**dict(r)) for r in rows]

    def set_intake(self, msgids: Iterable[str], intake: str,
                   *, only_from: Sequence[str] = ()) -> int:
        """Move messages to an intake stage (only those now at one of `only_from`, if given),
        in one transaction; returns how many moved."""
        ids = list(dict.fromkeys(msgids))
        moved = 0
        with self.tx() as db:
            for part in _batches(ids):
                marks = ",".join("?" * len(part))
                sql = f"UPDATE messages SET intake = ? WHERE msgid IN ({marks})"
                args: list[Any] = [intake, *part]
                if only_from:
                    sql += f" AND intake IN ({','.join('?' * len(only_from))})"
                    args += list(only_from)
                moved += db.execute(sql, args).rowcount
        return moved

    def note_fetch_failure(self, msgid: str) -> int:
        """One more failed thread fetch for this message; returns how many so far."""
        with self.tx() as db:
            db.execute("UPDATE messages SET fetch_tries = fetch_tries + 1 WHERE msgid = ?",
                       (msgid,))
            row = db.execute("SELECT fetch_tries FROM messages WHERE msgid = ?",
                             (msgid,)).fetchone()
            return int(row[0]) if row else 0

    def thread_messages(self, list_name: str, ids: Iterable[str],
                        *, limit: int) -> list[StoredMessage]:
        """Stored good messages of a list whose Message-ID or thread root is one of `ids`
        (at most `limit` of them, oldest first)."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, StoredMessage] = {}
        for part in _batches(wanted):
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                f"SELECT * FROM messages WHERE list = ? AND status = 'ok' AND raw IS NOT NULL"
                f" AND (msgid IN ({marks}) OR thread IN ({marks}))"
                f" ORDER BY seen_at, msgid LIMIT ?",
                (list_name, *part, *part, limit + 1),
            ).fetchall()
            for r in rows:
                found.setdefault(r["msgid"], StoredMessage(**dict(r)))
                if len(found) > limit:
                    break
        return sorted(found.values(), key=lambda m: (m.seen_at, m.msgid))[:limit]

    def thread_roots_from(self, list_name: str, from_addr: str, since: float, until: float,
                          *, limit: int) -> list[StoredMessage]:
        """Stored messages of one sender, stored between since and until, that start a thread
        of their own (patches sent without threading under their cover)."""
        rows = self.db.execute(
            "SELECT * FROM messages WHERE list = ? AND from_addr = ? AND status = 'ok'"
            " AND raw IS NOT NULL AND seen_at BETWEEN ? AND ? AND (thread = msgid OR thread = '')"
            " ORDER BY seen_at, msgid LIMIT ?",
            (list_name, from_addr, since, until, limit),
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

    def save_series(
        self,
        series_id: int | None,
        *,
        key: str,
        list_name: str,
        title: str,
        version: int,
        complete: bool,
        data: dict[str, Any],
        msgids: Iterable[str],
    ) -> int:
        """Store the current view of one series revision (state untouched) and the mail it
        holds; returns its id. With `series_id`, that row takes the view and the new key (a
        series keeps its row and job while its key moves from patch 1 to a late cover), unless
        another row has that key already; without, the row with `key` (or a new one)."""
        now = time.time()
        blob = json.dumps(data, sort_keys=True)
        with self.tx() as db:
            if series_id is None:
                db.execute(
                    "INSERT INTO series (key, list, title, version, complete, first_seen,"
                    " updated_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(key) DO NOTHING",
                    (key, list_name, title, version, int(complete), now, now, blob),
                )
                row = db.execute("SELECT id FROM series WHERE key = ?", (key,)).fetchone()
                series_id = int(row[0])
            db.execute(
                "UPDATE series SET title = ?, complete = ?, data = ?,"
                " updated_at = CASE WHEN data = ? THEN updated_at ELSE ? END WHERE id = ?",
                (title, int(complete), blob, blob, now, series_id),
            )
            db.execute(
                "UPDATE series SET key = ? WHERE id = ? AND NOT EXISTS"
                " (SELECT 1 FROM series WHERE key = ? AND id != ?)",
                (key, series_id, key, series_id),
            )
            db.execute("DELETE FROM series_messages WHERE series_id = ?", (series_id,))
            db.executemany(
                "INSERT OR IGNORE INTO series_messages (msgid, series_id) VALUES (?, ?)",
                [(m, series_id) for m in dict.fromkeys(msgids)],
            )
            return series_id

    def series_holding(self, msgids: Iterable[str]) -> list[int]:
        """Ids of the series rows that hold any of these messages, oldest row first."""
        ids: set[int] = set()
        for part in _batches(list(dict.fromkeys(msgids))):
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                f"SELECT DISTINCT series_id FROM series_messages WHERE msgid IN ({marks})",
                tuple(part),
            ).fetchall()
            ids.update(int(r[0]) for r in rows)
        return sorted(ids)

    def job_for_series(self, series_id: int, kind: str) -> JobRow | None:
        row = self.db.execute(
            "SELECT * FROM jobs WHERE series_id = ? AND kind = ?", (series_id, kind)
        ).fetchone()
        return _job_row(row) if row else None

    def settle_series(
        self,
        series_id: int,
        *,
        assembled: Iterable[str],
        state: str | None = None,
        change: JobChange = JobChange.NONE,
        kind: str = "",
        detail: dict[str, Any] | None = None,
    ) -> Settled:
        """In one transaction: the series' state, its job's change, and its mail marked
        settled (intake 'done'). Nothing is written when an UPDATE or REQUEUE finds the job
        no longer in the status it needs (queued; done or error): applied=False, and the
        mail stays unsettled for the next poll to decide again."""
        now = time.time()
        blob = json.dumps(detail or {}, sort_keys=True)
        try:
            with self.tx() as db:
                created = False
                if change is JobChange.CREATE:
                    cur = db.execute(
                        "INSERT OR IGNORE INTO jobs (series_id, kind, created_at, updated_at,"
                        " detail) VALUES (?, ?, ?, ?, ?)",
                        (series_id, kind, now, now, blob),
                    )
                    created = cur.rowcount == 1
                    state = "ready"
                elif change is JobChange.UPDATE:
                    cur = db.execute(
                        "UPDATE jobs SET detail = ?, updated_at = ? WHERE series_id = ?"
                        " AND kind = ? AND status = 'queued'",
                        (blob, now, series_id, kind),
                    )
                    if cur.rowcount != 1:
                        raise _Raced
                elif change is JobChange.REQUEUE:
                    cur = db.execute(
                        "UPDATE jobs SET status = 'queued', detail = ?, updated_at = ?"
                        " WHERE series_id = ? AND kind = ? AND status IN ('done', 'error')",
                        (blob, now, series_id, kind),
                    )
                    if cur.rowcount != 1:
                        raise _Raced
                if state is not None:
                    db.execute("UPDATE series SET state = ?, updated_at = ? WHERE id = ?",
                               (state, now, series_id))
                for part in _batches(list(dict.fromkeys(assembled))):
                    marks = ",".join("?" * len(part))
                    db.execute(
                        f"UPDATE messages SET intake = ? WHERE msgid IN ({marks})",
                        (INTAKE_DONE, *part),
                    )
                job = db.execute(
                    "SELECT id FROM jobs WHERE series_id = ? AND kind = ?", (series_id, kind)
                ).fetchone() if kind else None
        except _Raced:
            return Settled(None, False)
        return Settled(int(job[0]) if job else None, True, created)

    def requeue_job(self, job_id: int, detail: dict[str, Any]) -> bool:
        """A finished job (done or error) back to queued with a new detail, e.g. because
        the series it tests changed; False if it is queued or running now."""
        with self.tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status = 'queued', detail = ?, updated_at = ?"
                " WHERE id = ? AND status IN ('done', 'error')",
                (json.dumps(detail, sort_keys=True), time.time(), job_id),
            )
            return cur.rowcount == 1

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

    # -- job runs (owner: bot.pipeline.runner) --------------------------------------------

    def get_job(self, job_id: int) -> JobRow | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job_row(row) if row else None

    def claim_job(self, job_id: int, owner: str, *, now: float) -> JobRow | None:
        """queued (and due) -> running, attempts + 1, owned by `owner`: one runner wins."""
        with self.tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status = 'running', owner = ?, attempts = attempts + 1,"
                " heartbeat_at = ?, updated_at = ? WHERE id = ? AND status = 'queued'"
                " AND next_attempt_at <= ?",
                (owner, now, now, job_id, now),
            )
            if cur.rowcount != 1:
                return None
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job_row(row)

    def due_jobs(self, now: float, kinds: tuple[str, ...]) -> list[JobRow]:
        """Queued jobs whose retry time has come, oldest first."""
        marks = ",".join("?" * len(kinds))
        rows = self.db.execute(
            f"SELECT * FROM jobs WHERE status = 'queued' AND next_attempt_at <= ?"
            f" AND kind IN ({marks}) ORDER BY next_attempt_at, id",
            (now, *kinds),
        ).fetchall()
        return [_job_row(r) for r in rows]

    def heartbeat_job(self, job_id: int, owner: str, now: float) -> bool:
        """Renew a running job's lease; False when it is no longer ours (cancelled)."""
        with self.tx() as db:
            cur = db.execute(
                "UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND owner = ?"
                " AND status = 'running'", (now, job_id, owner))
            return cur.rowcount == 1

    def finish_job(self, job_id: int, owner: str, status: str, *, last_error: str = "",
                   next_attempt_at: float = 0.0) -> bool:
        """running -> done | queued (retry later) | failed, if `owner` still holds it."""
        with self.tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status = ?, last_error = ?, next_attempt_at = ?, owner = '',"
                " updated_at = ? WHERE id = ? AND owner = ? AND status = 'running'",
                (status, last_error, next_attempt_at, time.time(), job_id, owner))
            return cur.rowcount == 1

    def release_job(self, job_id: int, owner: str, note: str) -> bool:
        """running -> queued without counting the attempt (the runner stopped on purpose)."""
        with self.tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status = 'queued', owner = '', last_error = ?,"
                " attempts = MAX(attempts - 1, 0), next_attempt_at = 0, updated_at = ?"
                " WHERE id = ? AND owner = ? AND status = 'running'",
                (note, time.time(), job_id, owner))
            return cur.rowcount == 1

    def release_orphans(self, note: str) -> list[int]:
        """Jobs left 'running' by a runner that died (the caller holds the runner lock, so no
        live runner owns any): back to queued, keeping their attempts and stored steps."""
        with self.tx() as db:
            ids = [int(r[0]) for r in db.execute(
                "SELECT id FROM jobs WHERE status = 'running' ORDER BY id").fetchall()]
            db.execute(
                "UPDATE jobs SET status = 'queued', owner = '', last_error = ?,"
                " next_attempt_at = 0, updated_at = ? WHERE status = 'running'",
                (note, time.time()))
        return ids

    def set_job_state(self, job_id: int, status: str, *, last_error: str = "",
                      reset_attempts: bool = False) -> bool:
        """An operator's change (retry, cancel): any status to `status`, owner cleared."""
        with self.tx() as db:
            cur = db.execute(
                "UPDATE jobs SET status = ?, last_error = ?, owner = '', next_attempt_at = 0,"
                " attempts = CASE WHEN ? THEN 0 ELSE attempts END, updated_at = ?"
                " WHERE id = ?",
                (status, last_error, int(reset_attempts), time.time(), job_id))
            return cur.rowcount == 1

    def put_step(self, job_id: int, key: str, step: str, status: str, *, commit_sha: str = "",
                 data: Any) -> bool:
        """Store a resumable step once; False when the job already has `key` (kept as is)."""
        with self.tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO results (job_id, step, commit_sha, status, created_at,"
                " data, key) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, step, commit_sha, status, time.time(),
                 json.dumps(data, sort_keys=True), key))
            return cur.rowcount == 1

    def steps(self, job_id: int, step: str | None = None) -> list[StepRow]:
        """A job's stored steps (results with a key), in the order they were stored."""
        sql = "SELECT * FROM results WHERE job_id = ? AND key != ''"
        args: list[Any] = [job_id]
        if step is not None:
            sql += " AND step = ?"
            args.append(step)
        rows = self.db.execute(sql + " ORDER BY id", args).fetchall()
        return [StepRow(int(r["job_id"]), str(r["key"]), str(r["step"]), str(r["commit_sha"]),
                        str(r["status"]), float(r["created_at"]), json.loads(r["data"]))
                for r in rows]

    def clear_steps(self, job_id: int) -> int:
        """Forget a job's stored steps (a retest from scratch: `kbot jobs retry --fresh`)."""
        with self.tx() as db:
            return db.execute("DELETE FROM results WHERE job_id = ? AND key != ''",
                              (job_id,)).rowcount

    # -- service heartbeats (owner: bot.service) ------------------------------------------

    def beat(self, component: str, owner: str, state: str, detail: str = "",
             *, started: bool = False) -> None:
        now = time.time()
        with self.tx() as db:
            db.execute(
                "INSERT INTO heartbeats (component, owner, started_at, beat_at, state, detail)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(component) DO UPDATE SET"
                " owner = excluded.owner, beat_at = excluded.beat_at, state = excluded.state,"
                " detail = excluded.detail, started_at = CASE WHEN ? THEN excluded.started_at"
                " ELSE heartbeats.started_at END",
                (component, owner, now, now, state, detail[:500], int(started)))

    def heartbeats(self) -> list[Heartbeat]:
        rows = self.db.execute("SELECT * FROM heartbeats ORDER BY component").fetchall()
        return [Heartbeat(**dict(r)) for r in rows]

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

    def reports_for_job(self, job_id: int) -> list[ReportRow]:
        rows = self.db.execute(
            "SELECT * FROM reports WHERE job_id = ? ORDER BY created_at, msgid", (job_id,)
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

    # -- mail commands (owner: bot.commands) ----------------------------------------------

    def command_candidates(self, list_name: str, since: float, *,
                           limit: int) -> list[StoredMessage]:
        """Good mail of a list stored since `since` and not read for commands yet, oldest
        first (at most `limit`)."""
        rows = self.db.execute(
            "SELECT * FROM messages AS m WHERE list = ? AND seen_at >= ? AND status = 'ok'"
            " AND raw IS NOT NULL AND NOT EXISTS"
            " (SELECT 1 FROM command_scans AS c WHERE c.msgid = m.msgid)"
            " ORDER BY seen_at, msgid LIMIT ?",
            (list_name, since, limit),
        ).fetchall()
        return [StoredMessage(**dict(r)) for r in rows]

    def mark_command_scanned(self, msgids: Iterable[str], now: float) -> None:
        """Mail read for commands that holds none (or that is not to be obeyed at all)."""
        with self.tx() as db:
            db.executemany("INSERT OR IGNORE INTO command_scans (msgid, scanned_at) VALUES (?, ?)",
                           [(m, now) for m in dict.fromkeys(msgids)])

    def prune_command_scans(self, before: float) -> int:
        """Forget scans of mail too old to be read for commands again."""
        with self.tx() as db:
            return db.execute("DELETE FROM command_scans WHERE scanned_at < ?",
                              (before,)).rowcount

    def record_commands(self, msgid: str, list_name: str, sender: str,
                        commands: Sequence[NewCommand], now: float) -> list[CommandRow]:
        """In one transaction: each command of one mail with what it does (a job queued, a
        job queued again, a lineage marked invalid), and the mail marked as read. A command
        already recorded in a final state is left as it is (acted on once); one that was
        waiting ('seen') is tried again. An effect whose job moved meanwhile (claimed by a
        runner, made by the watcher) is not applied: the command waits ('seen') for the next
        pass. Returns the mail's command rows."""
        with self.tx() as db:
            for c in commands:
                old = db.execute("SELECT state FROM commands WHERE msgid = ? AND seq = ?",
                                 (msgid, c.seq)).fetchone()
                if old is not None and old["state"] != CMD_SEEN:
                    continue
                state, reason, job_id = c.state, c.reason, c.job_id
                if state == CMD_ACTED and c.effect is not CommandEffect.NONE:
                    job_id = _command_effect(db, c, msgid, sender, now)
                    if job_id is None and c.effect is not CommandEffect.INVALIDATE:
                        state = CMD_SEEN
                        reason = "the job changed while this was recorded: tried again next poll"
                db.execute(
                    "INSERT INTO commands (msgid, seq, list, sender, verb, line, state, reason,"
                    " series_id, job_id, reply_msgid, lineage, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(msgid, seq) DO UPDATE SET state = excluded.state,"
                    " reason = excluded.reason, series_id = excluded.series_id,"
                    " job_id = excluded.job_id, reply_msgid = excluded.reply_msgid,"
                    " lineage = excluded.lineage, updated_at = excluded.updated_at",
                    (msgid, c.seq, list_name, sender, c.verb, c.line, state, reason,
                     c.series_id, job_id, c.reply_msgid, c.lineage, now, now))
            db.execute("INSERT OR IGNORE INTO command_scans (msgid, scanned_at) VALUES (?, ?)",
                       (msgid, now))
            rows = db.execute("SELECT * FROM commands WHERE msgid = ? ORDER BY seq",
                              (msgid,)).fetchall()
        return [CommandRow(**dict(r)) for r in rows]

    def command_rows(self, *, state: str | None = None, msgid: str | None = None,
                     limit: int = 1000) -> list[CommandRow]:
        """Commands oldest first, of one state or one mail if asked."""
        sql, args = "SELECT * FROM commands WHERE 1", []
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        if msgid is not None:
            sql += " AND msgid = ?"
            args.append(msgid)
        rows = self.db.execute(sql + " ORDER BY created_at, msgid, seq LIMIT ?",
                               (*args, limit)).fetchall()
        return [CommandRow(**dict(r)) for r in rows]

    def invalid_lineage(self, lineage: str) -> InvalidLineage | None:
        """Whether a series (all its revisions) was marked invalid by mail, and by whom."""
        if not lineage:
            return None
        row = self.db.execute("SELECT * FROM invalid_lineages WHERE lineage = ?",
                              (lineage,)).fetchone()
        return InvalidLineage(**dict(row)) if row else None

    # -- web (owner: bot.web) -------------------------------------------------------------
    # Read-only queries for `kbot web`: one SELECT per page part, no writes, bounded by LIMIT.

    def web_series_page(self, *, list_name: str | None = None, state: str | None = None,
                        outcome: str | None = None, limit: int = 50,
                        offset: int = 0) -> tuple[list[WebSeriesRow], int]:
        """Series newest first with their test job's outcome, one page of them, and how many
        match in all. `outcome` is one of WEB_OUTCOMES."""
        where: list[str] = []
        args: list[Any] = []
        if list_name:
            where.append("list = ?")
            args.append(list_name)
        if state:
            where.append("state = ?")
            args.append(state)
        if outcome:
            where.append("outcome = ?")
            args.append(outcome)
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        total = int(self.db.execute(
            f"SELECT COUNT(*) FROM ({_WEB_SERIES_SQL}){cond}", args).fetchone()[0])
        rows = self.db.execute(
            f"SELECT * FROM ({_WEB_SERIES_SQL}){cond} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset)).fetchall()
        return [WebSeriesRow(
            id=int(r["id"]), list=str(r["list"]), title=str(r["title"]),
            version=int(r["version"]), complete=bool(r["complete"]), state=str(r["state"]),
            first_seen=float(r["first_seen"]), updated_at=float(r["updated_at"]),
            patches=int(r["patches"] or 0), author=str(r["author"] or ""),
            job_id=int(r["job_id"]) if r["job_id"] is not None else None,
            job_status=str(r["job_status"] or ""), outcome=str(r["outcome"]),
            first_bad_patch=int(r["first_bad"]) if r["first_bad"] is not None else None,
            first_bad_title=str(r["first_bad_title"] or ""),
        ) for r in rows], total

    def web_facets(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The list names and series states present, for the series list's filters."""
        lists = tuple(str(r[0]) for r in self.db.execute(
            "SELECT DISTINCT list FROM series ORDER BY list"))
        states = tuple(str(r[0]) for r in self.db.execute(
            "SELECT DISTINCT state FROM series ORDER BY state"))
        return lists, states

    def web_step(self, job_id: int, key: str) -> StepRow | None:
        """One stored step of a job by its key."""
        r = self.db.execute("SELECT * FROM results WHERE job_id = ? AND key = ? AND key != ''",
                            (job_id, key)).fetchone()
        if r is None:
            return None
        return StepRow(int(r["job_id"]), str(r["key"]), str(r["step"]), str(r["commit_sha"]),
                       str(r["status"]), float(r["created_at"]), json.loads(r["data"]))

    def web_jobs(self, statuses: Sequence[str], *, kind: str | None = None,
                 limit: int = 100) -> list[JobRow]:
        """Jobs in any of `statuses` (every status when empty), most recently changed first."""
        sql = "SELECT * FROM jobs WHERE 1"
        args: list[Any] = []
        if statuses:
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            args += list(statuses)
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        rows = self.db.execute(sql + " ORDER BY updated_at DESC, id DESC LIMIT ?",
                               (*args, limit)).fetchall()
        return [_job_row(r) for r in rows]

    def web_job_counts(self) -> dict[str, int]:
        """How many jobs are in each status."""
        return {str(r[0]): int(r[1]) for r in self.db.execute(
            "SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")}

    def web_test_history(self, test: str, *, limit: int = 200) -> list[WebTestPoint]:
        """One test's verdict in each series job that ran it, oldest first (the last `limit`)."""
        # Jobs first (CROSS JOIN keeps that order): each job's verdict is one index lookup,
        # where finding verdict rows by key alone would scan every stored boot.
        rows = self.db.execute(
            "SELECT * FROM (SELECT r.job_id, r.created_at, j.series_id, t.value AS verdict"
            " FROM jobs AS j CROSS JOIN results AS r ON r.job_id = j.id AND r.key = 'verdict'"
            " AND r.key != '', json_each(r.data, '$.tests') AS t"
            " WHERE json_extract(t.value, '$.test') = ? ORDER BY j.id DESC LIMIT ?)"
            " ORDER BY created_at, job_id", (test, limit)).fetchall()
        return [WebTestPoint(int(r["job_id"]),
                             int(r["series_id"]) if r["series_id"] is not None else None,
                             float(r["created_at"]), json.loads(r["verdict"])) for r in rows]

    def web_test_names(self, *, limit: int = 500) -> list[tuple[str, int]]:
        """Every test named in a stored verdict, with how many jobs ran it."""
        return [(str(r[0]), int(r[1])) for r in self.db.execute(
            "SELECT json_extract(t.value, '$.test') AS name, COUNT(*) FROM jobs AS j"
            " CROSS JOIN results AS r ON r.job_id = j.id AND r.key = 'verdict' AND r.key != '',"
            " json_each(r.data, '$.tests') AS t GROUP BY name ORDER BY name LIMIT ?",
            (limit,))]


class _Raced(Exception):
    """A conditional job update found another status: roll the transaction back."""


def _batches(items: Sequence[str], size: int = 400) -> Iterator[Sequence[str]]:
    """SQLite caps the parameters of one statement: IN (...) lists go in slices."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


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


_SQLITE_MAGIC = b"SQLite format 3\0"


def _file_problem(path: Path) -> str | None:
    """What is wrong with an existing store file, read from its 100-byte header before SQLite
    opens it (SQLite only notices some damage when a query reaches it); None if nothing."""
    try:
        if not path.exists():
            return None
        if not path.is_file():
            return "is not a file"
        size = path.stat().st_size
        if size == 0:
            return None  # a store that was never written: created on open
        with path.open("rb") as fh:
            head = fh.read(100)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
        return "is not a kbot store (file is not a database)"
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1):
        return "is not a kbot store (file is not a database)"
    if size % page:
        return (f"is damaged: {size} bytes is not a whole number of {page}-byte pages "
                "(truncated?); restore it from a backup or move it aside")
    pages = int.from_bytes(head[28:32], "big")
    header_valid = head[24:28] == head[92:96]
    # With a -wal file, a checkpoint may be writing the file right now (the header first):
    # its size only counts when no one has the store open.
    wal = path.with_name(path.name + "-wal")
    if header_valid and pages and size < pages * page and not wal.exists():
        return (f"is damaged: its header counts {pages} pages, the file holds {size // page} "
                "(truncated?); restore it from a backup or move it aside")
    return None


def _sqlite_problem(exc: sqlite3.Error, path: Path) -> str:
    """SQLite's complaint about the store file, as what is wrong and what to do."""
    text = str(exc)
    if "file is not a database" in text:
        return f"is not a kbot store ({text})"
    if "malformed" in text or "corrupt" in text:
        return f"is damaged ({text}); restore it from a backup or move it aside"
    if "readonly" in text or "read-only" in text:
        return f"is read-only ({text}): kbot must be able to write its store and {path.parent}"
    if "unable to open" in text:
        return (f"cannot be opened ({text}): is {path.parent} a writable directory, and the "
                "store a file kbot may write?")
    if "locked" in text or "busy" in text:
        return f"is locked by another process ({text})"
    return f"cannot be used ({text})"


# -- web (owner: bot.web): the rows of the read-only web queries above ---------------------

WEB_OUTCOMES = ("regressed", "build-failed", "apply-failed", "passed", "untested", "queued",
                "running", "error", "failed", "cancelled", "no job")

# A series with its test job, that job's verdict and the first bad patch's title (from the
# stored apply step), and what all that adds up to (`outcome`, one of WEB_OUTCOMES).
_WEB_SERIES_SQL = """
    SELECT s.id, s.list, s.title, s.version, s.complete, s.state, s.first_seen, s.updated_at,
           json_array_length(s.data, '$.patches') AS patches,
           json_extract(s.data, '$.patches[0].author') AS author,
           j.id AS job_id, j.status AS job_status,
           json_extract(v.data, '$.first_bad_patch') AS first_bad,
           json_extract(a.data, '$.commits[' ||
               (json_extract(v.data, '$.first_bad_patch') - 1) || '].title') AS first_bad_title,
           CASE WHEN j.id IS NULL THEN 'no job'
                WHEN j.status != 'done' THEN j.status
                WHEN v.status = 'regressed' THEN 'regressed'
                WHEN a.status IN ('conflict', 'rejected') THEN 'apply-failed'
                WHEN EXISTS (SELECT 1 FROM results AS b WHERE b.job_id = j.id AND b.key != ''
                             AND b.key >= 'build:' AND b.key < 'build;' AND b.status = 'fail')
                THEN 'build-failed'
                WHEN v.status = 'ok' THEN 'passed'
                ELSE 'untested' END AS outcome
    FROM series AS s
    LEFT JOIN jobs AS j ON j.series_id = s.id AND j.kind = 'test-series'
    LEFT JOIN results AS v ON v.job_id = j.id AND v.key = 'verdict' AND v.key != ''
    LEFT JOIN results AS a ON a.job_id = j.id AND a.key = 'apply' AND a.key != ''
"""


@dataclass(frozen=True)
class WebSeriesRow:
    """One line of the web series list."""

    id: int
    list: str
    title: str
    version: int
    complete: bool
    state: str
    first_seen: float
    updated_at: float
    patches: int
    author: str
    job_id: int | None
    job_status: str
    outcome: str  # one of WEB_OUTCOMES
    first_bad_patch: int | None
    first_bad_title: str


@dataclass(frozen=True)
class WebTestPoint:
    """One test's stored verdict in one series job (the verdict step's entry for it)."""

    job_id: int
    series_id: int | None
    created_at: float
    verdict: dict[str, Any]


# -- mail commands (owner: bot.commands): what Store.record_commands writes ------------------

CMD_SEEN = "seen"  # authorized and understood, waiting (its job is running): tried each pass
CMD_ACTED = "acted"  # done: a job queued or queued again, a lineage marked invalid, help sent
CMD_IGNORED = "ignored"  # not obeyed and never answered (sender not allowed, DKIM, a bot...)
CMD_REJECTED = "rejected"  # from an allowed sender but wrong: a short reply says what


class CommandEffect(enum.Enum):
    """What recording a command does in the same transaction."""

    NONE = "none"
    NEW_JOB = "new-job"  # a new job: a bisection, or the first test of a series
    RETEST = "retest"  # a series job queued again, its stored steps forgotten (a fresh run)
    INVALIDATE = "invalidate"  # no more mail about a lineage: queued reports held


@dataclass(frozen=True)
class NewCommand:
    """One command of a mail as bot.commands decided it, for Store.record_commands."""

    seq: int
    verb: str
    line: str
    state: str  # CMD_*
    reason: str = ""
    effect: CommandEffect = CommandEffect.NONE
    series_id: int | None = None
    job_kind: str = ""  # NEW_JOB
    job_id: int | None = None  # RETEST: the job
    expect_status: str = ""  # RETEST: the job's status when decided (it must still be)
    detail: dict[str, Any] | None = None  # NEW_JOB, RETEST: the job's detail
    lineage: str = ""  # INVALIDATE, and the series' lineage for the record
    reply_msgid: str = ""


@dataclass(frozen=True)
class CommandRow:
    msgid: str
    seq: int
    list: str
    sender: str
    verb: str
    line: str
    state: str
    reason: str
    series_id: int | None
    job_id: int | None
    reply_msgid: str
    lineage: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class InvalidLineage:
    lineage: str
    msgid: str
    sender: str
    created_at: float

    @property
    def reason(self) -> str:
        return f"marked invalid by {self.sender} in <{self.msgid}>"


def _command_effect(db: sqlite3.Connection, c: NewCommand, msgid: str, sender: str,
                    now: float) -> int | None:
    """Apply one command's effect inside Store.record_commands' transaction: the job it
    queued (None: not applied, the job moved; INVALIDATE: always applied, None)."""
    blob = json.dumps(c.detail or {}, sort_keys=True)
    if c.effect is CommandEffect.NEW_JOB:
        cur = db.execute(
            "INSERT OR IGNORE INTO jobs (series_id, kind, created_at, updated_at, detail)"
            " VALUES (?, ?, ?, ?, ?)", (c.series_id, c.job_kind, now, now, blob))
        return int(cur.lastrowid) if cur.rowcount == 1 and cur.lastrowid else None
    if c.effect is CommandEffect.RETEST:
        cur = db.execute(
            "UPDATE jobs SET status = 'queued', detail = ?, attempts = 0, next_attempt_at = 0,"
            " owner = '', last_error = ?, updated_at = ? WHERE id = ? AND status = ?",
            (blob, f"test asked by {sender} in <{msgid}>", now, c.job_id, c.expect_status))
        if cur.rowcount != 1:
            return None
        # A fresh run: stored boots of the last run would only say the same again.
        db.execute("DELETE FROM results WHERE job_id = ? AND key != ''", (c.job_id,))
        return c.job_id
    if c.effect is CommandEffect.INVALIDATE:
        db.execute("INSERT OR IGNORE INTO invalid_lineages (lineage, msgid, sender, created_at)"
                   " VALUES (?, ?, ?, ?)", (c.lineage, msgid, sender, now))
        db.execute("UPDATE reports SET status = 'held', last_error = ?, updated_at = ?"
                   " WHERE lineage = ? AND status = 'queued'",
                   (f"marked invalid by {sender} in <{msgid}>", now, c.lineage))
    return None
