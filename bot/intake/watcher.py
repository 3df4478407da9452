"""The list watcher: new mail on a public-inbox archive -> series recorded once as jobs.

One poll of one list (`watch_list`):

1. Find mail not in the store, three ways, because each alone misses some:
   - `new.atom` (immediate, but only the 25 newest by received time);
   - `rt:` searches from the cursor (minus an overlap), paged, for bursts of more than 25;
     public-inbox's search lags new mail by up to ~30 s, hence the overlap;
   - a delivery-order sweep (`x=m` search results come newest *delivered* first), read until
     `sweep_stop_known` stored messages in a row: public-inbox sets a message's received time
     from its first Received: header, else from Date:, so a message with an old Date: and no
     Received: sorts as old in both the feed and `rt:` and only this sweep sees it.
2. Store every new raw message once (a bad one with status 'skipped' and the error; the poll
   goes on), then fetch the whole thread (t.mbox.gz) of each new patch or cover letter.
3. Assemble series from those threads plus the messages of series still waiting; apply the
   list's filters; mark older revisions superseded; record each ready series exactly once as a
   'test-series' job. An incomplete series waits up to `settle_s` for its missing patches, then
   is recorded anyway, marked incomplete.
4. Advance the cursor only after all that. A poll that fails (archive down) raises InfraError
   with the cursor unmoved and the threads still to fetch saved, so nothing is lost and a
   restart repeats only idempotent work: messages, series and jobs are keyed and stored once.
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Any

from bot.config import Config, ListSection
from bot.errors import InfraError, InputError
from bot.intake.client import ArchiveClient
from bot.intake.mail import parse_message
from bot.intake.mbox import ParseProblem, iter_raw
from bot.intake.model import Message, Series
from bot.intake.patch import has_diff
from bot.intake.series import assemble
from bot.intake.subject import normalized_title, parse_subject
from bot.state import SeriesRow, Store

log = logging.getLogger(__name__)

JOB_KIND = "test-series"
SWEEP_QUERY = "z:1.."  # every message (size >= 1 byte); x=m returns them by delivery order
_MSGID_RAW = re.compile(rb"^message-id:[ \t]*(?:\r?\n[ \t]+)?<?([^\s<>]+)>?", re.I | re.M)


class Source(enum.Enum):
    FEED = "feed"
    SEARCH = "search"
    SWEEP = "sweep"
    THREAD = "thread"


@dataclass(frozen=True)
class Skipped:
    msgid: str
    error: str


@dataclass(frozen=True)
class RecordedSeries:
    series_id: int
    job_id: int
    key: str
    title: str
    version: int
    patches: int
    total: int
    complete: bool
    missing: tuple[int, ...]


@dataclass(frozen=True)
class FilteredSeries:
    key: str
    title: str
    reason: str


@dataclass(frozen=True)
class WaitingSeries:
    key: str
    title: str
    missing: tuple[int, ...]
    waited_s: float


@dataclass(frozen=True)
class Superseded:
    older: str
    newer: str
    reason: str


@dataclass(frozen=True)
class ListReport:
    """What one poll of one list did."""

    list_name: str
    new_messages: dict[Source, int]
    skipped: tuple[Skipped, ...]
    threads_fetched: int
    errors: tuple[str, ...]  # over-limit threads / sweep: the poll went on without them
    recorded: tuple[RecordedSeries, ...]
    filtered: tuple[FilteredSeries, ...]
    waiting: tuple[WaitingSeries, ...]
    superseded: tuple[Superseded, ...]

    @property
    def new_total(self) -> int:
        return sum(self.new_messages.values())


@dataclass(frozen=True)
class WatchReport:
    lists: tuple[ListReport, ...]

    @property
    def recorded(self) -> tuple[RecordedSeries, ...]:
        return tuple(r for lst in self.lists for r in lst.recorded)

    @property
    def new_messages(self) -> int:
        return sum(lst.new_total for lst in self.lists)

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        return tuple(s for lst in self.lists for s in lst.skipped)


@dataclass
class Cursor:
    """Per-list watcher state, stored as JSON in the cursors table."""

    rt: float | None = None  # start time of the last completed poll (epoch seconds)
    pending_threads: list[str] = field(default_factory=list)  # Message-IDs still to fetch

    @classmethod
    def load(cls, store: Store, list_name: str) -> Cursor:
        value = store.get_cursor(list_name)
        if not value:
            return cls()
        try:
            data = json.loads(value)
            rt = data.get("rt")
            threads = data.get("pending_threads", [])
            return cls(
                rt=float(rt) if rt is not None else None,
                pending_threads=[str(t) for t in threads],
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise InfraError(f"store cursor for list {list_name!r} is corrupt: {exc}") from exc

    def save(self, store: Store, list_name: str) -> None:
        store.set_cursor(
            list_name, json.dumps({"rt": self.rt, "pending_threads": self.pending_threads})
        )


def raw_msgid(raw: bytes) -> str:
    """The Message-ID to store a raw message under; a content hash when it has none, so the
    same broken message is still stored only once."""
    head = raw[: 256 * 1024]
    end = re.search(rb"\r?\n\r?\n", head)
    found = _MSGID_RAW.search(head[: end.start()] if end else head)
    if found is not None:
        return found.group(1).decode("ascii", errors="replace")
    return "no-message-id-sha256-" + hashlib.sha256(raw).hexdigest()[:32]


# -- filters ------------------------------------------------------------------------------


def _has_prefix(prefixes: Sequence[str], wanted: str) -> bool:
    words = [p.lower() for p in prefixes]
    want = wanted.lower().split()
    n = len(want)
    return n > 0 and any(words[i : i + n] == want for i in range(len(words) - n + 1))


def filter_reason(lst: ListSection, series: Series) -> str | None:
    """Why the list's config excludes this series, or None when kbot should test it."""
    for prefix in lst.skip_prefixes:
        if _has_prefix(series.prefixes, prefix):
            return f"subject prefix {prefix!r} is skipped"
    if lst.subject_patterns and not any(
        re.search(p, series.title) for p in lst.subject_patterns
    ):
        return "subject matches none of subject_patterns"
    if lst.files:
        files = series.files()
        if not any(fnmatch.fnmatchcase(f, g) for f in files for g in lst.files):
            shown = ", ".join(files[:5]) or "no files"
            return f"touches no watched files ({shown})"
    return None


# -- revisions ----------------------------------------------------------------------------


def _author_email(data: dict[str, Any]) -> str:
    cover = data.get("cover")
    text = ""
    if isinstance(cover, dict):
        text = str(cover.get("author", ""))
    elif data.get("patches"):
        text = str(data["patches"][0].get("author", ""))
    return parseaddr(text)[1].lower()


def row_supersedes(newer: SeriesRow, older: SeriesRow) -> str | None:
    """bot.intake.series.supersedes, on stored rows (the older one may be from an old poll)."""
    if newer.list != older.list or newer.version <= older.version:
        return None
    new_cid, old_cid = newer.data.get("change_id"), older.data.get("change_id")
    if new_cid and old_cid:
        return "change-id" if new_cid == old_cid else None
    if normalized_title(newer.title) == normalized_title(older.title) and _author_email(
        newer.data
    ) == _author_email(older.data):
        return "title and author"
    return None


def _series_msgids(data: dict[str, Any]) -> list[str]:
    ids: list[str] = []
    cover = data.get("cover")
    if isinstance(cover, dict) and cover.get("message_id"):
        ids.append(str(cover["message_id"]))
    ids.extend(str(p["message_id"]) for p in data.get("patches", []) if p.get("message_id"))
    return ids


# -- one poll -----------------------------------------------------------------------------


class _Intake:
    """Stores raw messages once and keeps the parsed ones of this poll."""

    def __init__(self, store: Store, list_name: str, max_bytes: int) -> None:
        self.store = store
        self.list_name = list_name
        self.max_bytes = max_bytes
        self.counts: dict[Source, int] = {s: 0 for s in Source}
        self.skipped: list[Skipped] = []
        self.new_ok: list[Message] = []
        self.parsed: dict[str, Message] = {}
        self.errors: list[str] = []  # input errors that did not stop the poll

    def skip(self, msgid: str, error: str, source: Source, raw: bytes | None = None) -> None:
        if self.store.add_message(
            msgid, self.list_name, raw=raw, status="skipped", error=error
        ):
            self.counts[source] += 1
            self.skipped.append(Skipped(msgid, error))
            log.warning("%s: skipped %s: %s", self.list_name, msgid, error)

    def add(self, raw: bytes, source: Source) -> Message | None:
        """Store raw if new; return its parsed Message (new or not), None if it is bad."""
        msgid = raw_msgid(raw)
        try:
            msg = parse_message(raw, self.max_bytes)
        except InputError as exc:
            # Over the limit: keep the record and the error, not the bytes.
            self.skip(msgid, str(exc), source, raw if len(raw) <= self.max_bytes else None)
            return None
        if self.store.add_message(
            msg.msgid, self.list_name, subject=msg.subject, from_addr=str(msg.sender),
            date=msg.date.isoformat() if msg.date else "", raw=raw,
        ):
            self.counts[source] += 1
            self.new_ok.append(msg)
        self.parsed[msg.msgid] = msg
        return msg

    def problem(self, problem: ParseProblem, source: Source) -> None:
        key = problem.msgid or "no-message-id-" + hashlib.sha256(
            str(problem).encode()
        ).hexdigest()[:32]
        self.skip(key, str(problem), source)


def _is_patch_mail(msg: Message) -> bool:
    info = parse_subject(msg.subject)
    if info.is_reply:
        return False
    return info.is_patch_marker or has_diff(msg.body)


def _discover(
    cfg: Config, lst: ListSection, store: Store, client: ArchiveClient, cursor: Cursor,
    poll_start: float, intake: _Intake,
) -> None:
    name = lst.name
    arch = cfg.archive
    wanted: dict[str, Source] = {}
    for entry in client.new_atom(name):
        if not store.has_message(entry.msgid):
            wanted.setdefault(entry.msgid, Source.FEED)
    since = (cursor.rt - arch.rt_overlap_s) if cursor.rt is not None else (
        poll_start - arch.first_lookback_s
    )
    page = max(1, min(arch.search_page, 200))
    for n in range(max(1, lst.max_pages)):
        entries = client.search_atom(name, f"rt:{int(since)}..", offset=n * page, limit=page)
        for entry in entries:
            if not store.has_message(entry.msgid):
                wanted.setdefault(entry.msgid, Source.SEARCH)
        if len(entries) < page:
            break
    else:
        log.warning("%s: rt: search still had results after %d pages", name, lst.max_pages)
    for msgid, source in wanted.items():
        try:
            raw = client.raw(msgid, name)
        except InputError as exc:
            intake.skip(msgid, str(exc), source)
            continue
        for item in iter_raw(raw, max_bytes=arch.max_message_bytes,
                             on_problem=functools.partial(intake.problem, source=source)):
            intake.add(item, source)
    # The sweep finds what sorts as old; on a first poll everything is new, so there is no
    # edge of known mail to read up to: the feed and the lookback search set the baseline.
    if cursor.rt is None or arch.sweep_max <= 0 or arch.sweep_stop_known <= 0:
        return
    known_run = 0
    stream = client.iter_search_mbox(name, SWEEP_QUERY)
    try:
        for count, raw in enumerate(stream, start=1):
            if store.has_message(raw_msgid(raw)):
                known_run += 1
                if known_run >= arch.sweep_stop_known:
                    break
            else:
                known_run = 0
                intake.add(raw, Source.SWEEP)
            if count >= arch.sweep_max:
                log.warning("%s: sweep stopped at sweep_max=%d messages", name, arch.sweep_max)
                break
    except InputError as exc:
        # Over a size limit: what came before it is stored; the feed and rt: still work.
        intake.errors.append(f"sweep: {exc}")
        log.warning("%s: sweep stopped: %s", name, exc)
    finally:
        stream.close()


def _fetch_threads(
    lst: ListSection, client: ArchiveClient, cursor: Cursor, store: Store, intake: _Intake,
    max_bytes: int,
) -> int:
    """Fetch each pending thread once; returns how many were fetched."""
    fetched = 0
    errors = intake.errors
    done_roots: set[str] = set()
    while cursor.pending_threads:
        msgid = cursor.pending_threads[0]
        msg = intake.parsed.get(msgid)
        root = (msg.references[0] if msg and msg.references else msgid)
        if root not in done_roots and msgid not in done_roots:
            try:
                mbox = client.thread_mbox(msgid, lst.name)
            except InputError as exc:
                # It will not get better: note it and go on with the rest.
                errors.append(str(exc))
                log.warning("%s: thread of <%s>: %s", lst.name, msgid, exc)
            else:
                fetched += 1
                for raw in iter_raw(mbox, max_bytes=max_bytes,
                                    on_problem=lambda p: intake.problem(p, Source.THREAD)):
                    got = intake.add(raw, Source.THREAD)
                    if got is not None:
                        done_roots.add(got.msgid)
                        if got.references:
                            done_roots.add(got.references[0])
            done_roots.add(root)
            done_roots.add(msgid)
        cursor.pending_threads.pop(0)
        cursor.save(store, lst.name)  # a crash from here on refetches only what is left
    return fetched


def _load_pending(store: Store, lst: ListSection, intake: _Intake, max_bytes: int) -> list[
    SeriesRow
]:
    rows = [r for r in store.all_series(lst.name) if r.state == "pending"]
    for row in rows:
        for msgid in _series_msgids(row.data):
            if msgid in intake.parsed:
                continue
            stored = store.get_message(msgid)
            if stored is None or stored.raw is None or stored.status != "ok":
                continue
            try:
                intake.parsed[msgid] = parse_message(stored.raw, max_bytes)
            except InputError as exc:  # parsed once already; a newer parser may refuse it
                log.warning("%s: stored message <%s> no longer parses: %s", lst.name, msgid, exc)
    return rows


def _settle(
    lst: ListSection, store: Store, series: list[Series], pending_rows: list[SeriesRow],
    now: float,
) -> tuple[list[RecordedSeries], list[FilteredSeries], list[WaitingSeries], list[Superseded]]:
    recorded: list[RecordedSeries] = []
    filtered: list[FilteredSeries] = []
    waiting: list[WaitingSeries] = []
    superseded: list[Superseded] = []
    fresh: list[tuple[Series, str | None, int]] = []
    for s in series:
        reason = filter_reason(lst, s)
        data = s.to_json()
        if reason:
            data["filter_reason"] = reason
        sid = store.upsert_series(
            s.key, lst.name, title=s.title, version=s.version, complete=s.complete, data=data
        )
        fresh.append((s, reason, sid))
    # Revisions before readiness, so an old one that is still waiting is never recorded, and
    # a v1 that shows up after its v2 (archive order is not send order) is not recorded either.
    rows = store.all_series(lst.name)
    fresh_keys = {s.key for s, _, _ in fresh}
    done: set[str] = set()
    for new in rows:
        for old in rows:
            if old.key == new.key or old.key in done or old.state in ("superseded", "filtered"):
                continue
            if new.key not in fresh_keys and old.key not in fresh_keys:
                continue  # settled in an earlier poll
            why = row_supersedes(new, old)
            if why:
                store.set_series_state(old.id, "superseded")
                superseded.append(Superseded(old.key, new.key, why))
                done.add(old.key)
    # A waiting row whose messages now belong to a series under another key (its first
    # patch arrived late, say) is merged into that one.
    assembled_ids: set[str] = set()
    for s in series:
        assembled_ids.update(_series_msgids(s.to_json()))
    for row in pending_rows:
        ids = _series_msgids(row.data)
        if row.key not in fresh_keys and ids and set(ids) <= assembled_ids:
            store.set_series_state(row.id, "superseded")
            superseded.append(Superseded(row.key, "(merged into a fuller series)", "merged"))
    for s, reason, sid in fresh:
        current = store.get_series(sid)
        if current is None or current.state != "pending":
            continue  # recorded, filtered or superseded before: never twice
        if reason:
            store.set_series_state(sid, "filtered")
            filtered.append(FilteredSeries(s.key, s.title, reason))
            log.info("%s: filtered %s: %s", lst.name, s.title, reason)
            continue
        waited = now - current.first_seen
        if not s.complete and waited < lst.settle_s:
            waiting.append(WaitingSeries(s.key, s.title, s.missing, waited))
            continue
        detail = {"key": s.key, "list": lst.name, "complete": s.complete,
                  "missing": list(s.missing)}
        job_id, created = store.mark_series_ready(sid, JOB_KIND, detail)
        if created:
            recorded.append(
                RecordedSeries(sid, job_id, s.key, s.title, s.version, len(s.patches), s.total,
                               s.complete, s.missing)
            )
            log.info("%s: recorded v%d %r (%d/%d patches%s) as job %d", lst.name, s.version,
                     s.title, len(s.patches), s.total,
                     "" if s.complete else f", missing {list(s.missing)}", job_id)
    return recorded, filtered, waiting, superseded


def watch_list(
    config: Config, lst: ListSection, store: Store, client: ArchiveClient,
    *, now: Callable[[], float] = time.time,
) -> ListReport:
    """One poll of one list (see the module docstring)."""
    poll_start = now()
    cursor = Cursor.load(store, lst.name)
    max_bytes = config.archive.max_message_bytes
    intake = _Intake(store, lst.name, max_bytes)
    _discover(config, lst, store, client, cursor, poll_start, intake)
    queued = set(cursor.pending_threads)
    for msg in intake.new_ok:
        if _is_patch_mail(msg) and msg.msgid not in queued:
            cursor.pending_threads.append(msg.msgid)
            queued.add(msg.msgid)
    cursor.save(store, lst.name)  # before fetching: a failure below must not forget them
    threads = _fetch_threads(lst, client, cursor, store, intake, max_bytes)
    pending_rows = _load_pending(store, lst, intake, max_bytes)
    series = assemble(intake.parsed.values()) if intake.parsed else []
    recorded, filtered, waiting, superseded = _settle(
        lst, store, series, pending_rows, now()
    )
    cursor.rt = poll_start
    cursor.save(store, lst.name)
    return ListReport(
        list_name=lst.name,
        new_messages=dict(intake.counts),
        skipped=tuple(intake.skipped),
        threads_fetched=threads,
        errors=tuple(intake.errors),
        recorded=tuple(recorded),
        filtered=tuple(filtered),
        waiting=tuple(waiting),
        superseded=tuple(superseded),
    )


def _lists(config: Config, names: Iterable[str] | None) -> list[ListSection]:
    if names is None:
        return list(config.lists)
    return [config.list_named(n) for n in names]


def watch_once(
    config: Config, store: Store, client: ArchiveClient, *, lists: Iterable[str] | None = None,
    now: Callable[[], float] = time.time,
) -> WatchReport:
    """Poll every configured list (or `lists`) once. InfraError if the archive fails."""
    return WatchReport(
        tuple(watch_list(config, lst, store, client, now=now) for lst in _lists(config, lists))
    )


def watch_forever(
    config: Config, store: Store, client: ArchiveClient, *, lists: Iterable[str] | None = None,
    stop: threading.Event | None = None,
    on_report: Callable[[WatchReport], None] | None = None,
    on_error: Callable[[InfraError], None] | None = None,
) -> None:
    """Poll until `stop` is set, every min(poll_s) of the lists. An archive that is down is
    reported and retried at the next poll; it does not end the loop."""
    selected = _lists(config, lists)
    if not selected:
        return
    interval = max(1.0, min(lst.poll_s for lst in selected))
    names = [lst.name for lst in selected]
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            report = watch_once(config, store, client, lists=names)
        except InfraError as exc:
            log.warning("poll failed, retrying in %.0fs: %s", interval, exc)
            if on_error is not None:
                on_error(exc)
        else:
            if on_report is not None:
                on_report(report)
        stop.wait(interval)
