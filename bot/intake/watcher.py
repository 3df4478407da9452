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
   Every new raw message is stored once (a bad one with status 'skipped' and the error; the
   poll goes on). Then the cursor moves: what was found is in the store.
2. Fetch the whole thread (t.mbox.gz) of each stored patch or cover letter still at intake
   stage 'fetch', store its messages, and only then move that mail to 'assemble'.
3. Assemble, from the store, the series of all mail at 'assemble', with the rest of each
   thread (and the sender's other thread starters of that day, for patches not threaded under
   their cover) as context; apply the list's filters; mark older revisions superseded; settle
   each series that holds new mail in one transaction that also moves its mail to 'done': a
   new 'test-series' job once it is ready (complete, or incomplete after `settle_s`), the fuller
   view for a job not started yet, a requeue for a finished job whose patches changed.

Failpoints (bot/failpoints.py) for the fault suite: watch:stored (a new message stored),
watch:thread (a thread stored), watch:saved (a series' view saved), watch:settled (a series
settled).

A series keeps one store row (and so one job) while it fills in: rows are found by the mail
they hold, not only by Series.key, which moves from patch 1 to the cover when a late cover
arrives (archive order is not send order).

Nothing is lost and nothing is done twice, whatever stops a poll (an archive error, SIGKILL):
mail leaves 'assemble' only in the transaction that settles its series, every step before is
idempotent (keyed inserts, refetching a thread), and the next poll finishes from the store
what the last one left. An archive that is down raises InfraError (after settling the series
whose threads were stored before it); a thread the archive fails to serve is noted in the
report and tried again next poll, and after `MAX_FETCH_TRIES` polls assembled from what is
stored.
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

from bot import failpoints
from bot.config import Config, ListSection
from bot.errors import InfraError, InputError
from bot.intake.client import ArchiveBusy, ArchiveClient, ArchiveHTTPError, ThreadOverLimit
from bot.intake.mail import parse_message
from bot.intake.mbox import ParseProblem, iter_raw
from bot.intake.model import Message, Series
from bot.intake.patch import has_diff
from bot.intake.series import UNTHREADED_WINDOW, assemble_all, thread_root
from bot.intake.subject import normalized_title, parse_subject
from bot.state import (
    INTAKE_ASSEMBLE,
    INTAKE_DONE,
    INTAKE_FETCH,
    JobChange,
    JobRow,
    SeriesRow,
    Store,
    StoredMessage,
)

log = logging.getLogger(__name__)

JOB_KIND = "test-series"
SWEEP_QUERY = "z:1.."  # every message (size >= 1 byte); x=m returns them by delivery order
_MSGID_RAW = re.compile(rb"^message-id:[ \t]*(?:\r?\n[ \t]+)?<?([^\s<>]+)>?", re.I | re.M)
# A thread the archive fails to serve (5xx, past the deadline) is noted and tried again next
# poll; after this many polls it is assembled from what the store holds: one bad thread must
# not stop the list. This many such failures in a row, though, mean the archive is in trouble:
# the poll stops with the InfraError (as it does at once when the archive does not answer).
MAX_FETCH_TRIES = 5
MAX_FETCH_FAILURES_IN_A_ROW = 3
# The most stored messages one poll loads as context for assembly, and how many rounds it
# follows References to find a thread's other mail (a chain cut short, a reply to a reply).
MAX_CONTEXT_MESSAGES = 20_000
CONTEXT_ROUNDS = 4


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
    # Finished jobs queued again because their series' patches changed (a missing patch
    # arrived after an incomplete series was tested).
    requeued: tuple[RecordedSeries, ...] = ()

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
    def requeued(self) -> tuple[RecordedSeries, ...]:
        return tuple(r for lst in self.lists for r in lst.requeued)

    @property
    def new_messages(self) -> int:
        return sum(lst.new_total for lst in self.lists)

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        return tuple(s for lst in self.lists for s in lst.skipped)


@dataclass
class Cursor:
    """Per-list watcher state, stored as JSON in the cursors table."""

    rt: float | None = None  # start time of the last poll whose discovery completed
    # Message-IDs whose threads were still to fetch, as kbot before store migration 3 kept
    # them; Cursor.load hands them to the store (intake stage 'fetch') and forgets them.
    pending_threads: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, store: Store, list_name: str) -> Cursor:
        value = store.get_cursor(list_name)
        if not value:
            return cls()
        try:
            data = json.loads(value)
            rt = data.get("rt")
            threads = data.get("pending_threads", [])
            cursor = cls(
                rt=float(rt) if rt is not None else None,
                pending_threads=[str(t) for t in threads],
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise InfraError(f"store cursor for list {list_name!r} is corrupt: {exc}") from exc
        if cursor.pending_threads:
            store.set_intake(cursor.pending_threads, INTAKE_FETCH, only_from=(INTAKE_DONE,))
            cursor.pending_threads = []
            cursor.save(store, list_name)
        return cursor

    def save(self, store: Store, list_name: str) -> None:
        store.set_cursor(list_name, json.dumps({"rt": self.rt}))


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
    """Stores raw messages once, each at the intake stage it starts from."""

    def __init__(self, store: Store, list_name: str, max_bytes: int) -> None:
        self.store = store
        self.list_name = list_name
        self.max_bytes = max_bytes
        self.counts: dict[Source, int] = {s: 0 for s in Source}
        self.skipped: list[Skipped] = []
        self.errors: list[str] = []  # input errors that did not stop the poll

    def skip(self, msgid: str, error: str, source: Source, raw: bytes | None = None) -> None:
        if self.store.add_message(
            msgid, self.list_name, raw=raw, status="skipped", error=error
        ):
            self.counts[source] += 1
            self.skipped.append(Skipped(msgid, error))
            log.warning("%s: skipped %s: %s", self.list_name, msgid, error)

    def add(self, raw: bytes, source: Source, *, thread_stored: bool = False) -> Message | None:
        """Store raw if new; return its parsed Message (new or not), None if it is bad.

        New patch or cover mail starts at 'fetch', or at 'assemble' when it came in a thread
        mbox (`thread_stored`: its thread is being stored with it); other mail is 'done'.
        """
        msgid = raw_msgid(raw)
        try:
            msg = parse_message(raw, self.max_bytes)
        except InputError as exc:
            # Over the limit: keep the record and the error, not the bytes.
            self.skip(msgid, str(exc), source, raw if len(raw) <= self.max_bytes else None)
            return None
        stage = INTAKE_DONE
        if _is_patch_mail(msg):
            stage = INTAKE_ASSEMBLE if thread_stored else INTAKE_FETCH
        if self.store.add_message(
            msg.msgid, self.list_name, subject=msg.subject, from_addr=str(msg.sender),
            date=msg.date.isoformat() if msg.date else "", raw=raw, intake=stage,
            thread=thread_root(msg),
        ):
            self.counts[source] += 1
            failpoints.hit("watch:stored")
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


def _fetch_threads(lst: ListSection, client: ArchiveClient, store: Store,
                   intake: _Intake) -> int:
    """Fetch the thread of each message at 'fetch' (one fetch per thread), store its mail,
    then move the message and its thread's new patch mail on to 'assemble'. Returns how many
    threads were fetched. A thread that fails stays at 'fetch' for the next poll (see
    MAX_FETCH_TRIES); an archive that fails MAX_FETCH_FAILURES_IN_A_ROW times ends the poll
    with its InfraError."""
    fetched = 0
    in_a_row = 0
    covered: set[str] = set()  # Message-IDs and thread roots of the threads stored this poll
    failed: set[str] = set()  # thread roots whose fetch failed this poll: next poll again
    for todo in store.messages_in_intake(lst.name, INTAKE_FETCH):
        if todo.msgid in covered or (todo.thread and todo.thread in covered):
            store.set_intake([todo.msgid], INTAKE_ASSEMBLE, only_from=(INTAKE_FETCH,))
            continue
        if (todo.thread or todo.msgid) in failed:
            continue
        cut: InputError | None = None
        try:
            raws = client.thread_messages(todo.msgid, lst.name)
        except ThreadOverLimit as exc:
            raws, cut = exc.read, exc  # keep what came before the limit
        except (ArchiveBusy, ArchiveHTTPError) as exc:
            # The archive is up but will not serve this thread. A 404 will not get better
            # (not, or no longer, on the archive); 5xx or too slow: again next poll, until
            # MAX_FETCH_TRIES polls have failed on it. (No answer at all: InfraError, the
            # archive is down, the poll ends.)
            gone = isinstance(exc, ArchiveHTTPError) and exc.status == 404
            if not gone and _retry_later(store, todo, exc, intake):
                in_a_row += 1
                if in_a_row >= MAX_FETCH_FAILURES_IN_A_ROW:
                    raise
                failed.add(todo.thread or todo.msgid)
                continue
            if gone:
                intake.errors.append(f"thread of <{todo.msgid}>: {exc}")
            covered.update((todo.msgid, todo.thread or todo.msgid))  # given up: all of it
            store.set_intake([todo.msgid], INTAKE_ASSEMBLE, only_from=(INTAKE_FETCH,))
            continue
        fetched += 1
        in_a_row = 0
        members = [todo.msgid]
        for raw in raws:
            got = intake.add(raw, Source.THREAD, thread_stored=True)
            if got is not None:
                members.append(got.msgid)
                covered.update((got.msgid, thread_root(got)))
        if cut is not None:
            intake.errors.append(str(cut))
            log.warning("%s: thread of <%s>: %s", lst.name, todo.msgid, cut)
        covered.add(todo.msgid)
        if todo.thread:
            covered.add(todo.thread)
        # Only now, with the whole thread stored: a crash before this refetches it.
        store.set_intake(members, INTAKE_ASSEMBLE, only_from=(INTAKE_FETCH,))
        failpoints.hit("watch:thread")
    return fetched


def _retry_later(store: Store, todo: StoredMessage, exc: InfraError, intake: _Intake) -> bool:
    """Count a failed thread fetch; True while it is worth trying again next poll."""
    tries = store.note_fetch_failure(todo.msgid)
    if tries < MAX_FETCH_TRIES:
        intake.errors.append(f"thread of <{todo.msgid}>: {exc} (try {tries} of "
                             f"{MAX_FETCH_TRIES}; again next poll)")
        log.warning("%s", intake.errors[-1])
        return True
    intake.errors.append(
        f"thread of <{todo.msgid}>: gave up after {tries} failed polls, assembled from the "
        f"store: {exc}")
    log.warning("%s", intake.errors[-1])
    return False


# -- assembly and settling ----------------------------------------------------------------


@dataclass(frozen=True)
class _Fresh:
    """A series holding mail not settled yet, and the row that now holds its view."""

    series: Series
    own: frozenset[str]
    series_id: int
    filter_reason: str | None


@dataclass
class _Outcome:
    recorded: list[RecordedSeries] = field(default_factory=list)
    requeued: list[RecordedSeries] = field(default_factory=list)
    filtered: list[FilteredSeries] = field(default_factory=list)
    waiting: list[WaitingSeries] = field(default_factory=list)
    superseded: list[Superseded] = field(default_factory=list)


class _Context:
    """The stored messages one poll assembles from, parsed once."""

    def __init__(self, store: Store, lst: ListSection, max_bytes: int) -> None:
        self.store = store
        self.lst = lst
        self.max_bytes = max_bytes
        self.parsed: dict[str, Message] = {}
        self.unparsable: set[str] = set()

    def take(self, stored: StoredMessage) -> Message | None:
        if stored.msgid in self.parsed:
            return self.parsed[stored.msgid]
        if stored.msgid in self.unparsable or stored.raw is None:
            return None
        try:
            msg = parse_message(stored.raw, self.max_bytes)
        except InputError as exc:  # parsed once already; a newer parser may refuse it
            log.warning("%s: stored message <%s> no longer parses: %s", self.lst.name,
                        stored.msgid, exc)
            self.unparsable.add(stored.msgid)
            return None
        self.parsed[stored.msgid] = msg
        return msg

    def add_threads(self, batch: Sequence[StoredMessage]) -> None:
        """The rest of each batch message's thread, and for patch mail that starts a thread
        of its own, the same sender's other thread starters stored within a day of it."""
        window = UNTHREADED_WINDOW.total_seconds()
        ids: set[str] = set()
        for stored in batch:
            msg = self.take(stored)
            if msg is None:
                continue
            ids.update(_thread_ids(msg))
            if thread_root(msg) == msg.msgid:
                for other in self.store.thread_roots_from(
                    self.lst.name, stored.from_addr, stored.seen_at - window,
                    stored.seen_at + window, limit=200,
                ):
                    found = self.take(other)
                    if found is not None:
                        ids.update(_thread_ids(found))
        asked: set[str] = set()
        for _ in range(CONTEXT_ROUNDS):
            todo = ids - asked
            room = MAX_CONTEXT_MESSAGES - len(self.parsed)
            if not todo or room <= 0:
                break
            asked |= todo
            for stored in self.store.thread_messages(self.lst.name, todo, limit=room):
                msg = self.take(stored)
                if msg is not None:
                    ids.update(_thread_ids(msg))
        if len(self.parsed) >= MAX_CONTEXT_MESSAGES:
            log.warning("%s: assembly context stopped at %d messages", self.lst.name,
                        MAX_CONTEXT_MESSAGES)


def _thread_ids(msg: Message) -> set[str]:
    ids = {msg.msgid, thread_root(msg), *msg.references}
    if msg.in_reply_to:
        ids.add(msg.in_reply_to)
    return ids


def _fingerprint(series: Series) -> list[str]:
    """What a test of the series depends on: each patch's place and content."""
    return [f"{p.index}:{p.patch_id}" for p in series.patches]


def _job_detail(series: Series, list_name: str, requeued: int = 0) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "key": series.key, "list": list_name, "complete": series.complete,
        "missing": list(series.missing), "patches": _fingerprint(series),
    }
    if requeued:
        detail["requeued"] = requeued
    return detail


def _same_test(tested: dict[str, Any], series: Series) -> bool:
    """Did the job (its detail) test these patches? A job recorded before kbot kept patch
    fingerprints is judged by completeness alone."""
    if "patches" in tested:
        return bool(tested["patches"] == _fingerprint(series))
    return bool(tested.get("complete") == series.complete
                and tested.get("missing") == list(series.missing))


def _recorded(sid: int, job_id: int, s: Series) -> RecordedSeries:
    return RecordedSeries(sid, job_id, s.key, s.title, s.version, len(s.patches), s.total,
                          s.complete, s.missing)


def _find_row(store: Store, lst: ListSection, s: Series, own: frozenset[str],
              claimed: set[int], out: _Outcome) -> int | None:
    """The row that holds this series: by key, else by the mail it holds (its key moved);
    other rows holding its mail that never got a job are merged into it."""
    by_key = store.series_by_key(s.key)
    chosen: int | None = None
    if by_key is not None and by_key.id not in claimed and by_key.list == lst.name:
        chosen = by_key.id
    holders = [r for r in (store.get_series(i) for i in store.series_holding(own))
               if r is not None and r.list == lst.name and r.version == s.version
               and r.id not in claimed]
    if chosen is None and holders:
        with_job = [r for r in holders if store.job_for_series(r.id, JOB_KIND) is not None]
        chosen = (with_job or holders)[0].id
    for r in holders:
        if r.id != chosen and r.state == "pending" and store.job_for_series(r.id, JOB_KIND) is None:
            store.set_series_state(r.id, "superseded")
            out.superseded.append(Superseded(r.key, s.key, "merged"))
    return chosen


def _supersede(store: Store, lst: ListSection, fresh: list[_Fresh], out: _Outcome) -> None:
    # Revisions before readiness, so an old one that is still waiting is never recorded, and
    # a v1 that shows up after its v2 (archive order is not send order) is not recorded either.
    if not fresh:
        return
    rows = store.all_series(lst.name)
    fresh_ids = {f.series_id for f in fresh}
    fresh_rows = [r for r in rows if r.id in fresh_ids]
    done: set[int] = set()
    for new in rows:
        # Pairs of rows settled in earlier polls were compared then.
        for old in rows if new.id in fresh_ids else fresh_rows:
            if old.id == new.id or old.id in done or old.state in ("superseded", "filtered"):
                continue
            why = row_supersedes(new, old)
            if why:
                store.set_series_state(old.id, "superseded")
                out.superseded.append(Superseded(old.key, new.key, why))
                done.add(old.id)


def _settle_one(store: Store, lst: ListSection, f: _Fresh, now: float,
                out: _Outcome) -> bool:
    """Settle one series in one transaction; False if its mail must wait for a later poll."""
    s, sid = f.series, f.series_id
    row = store.get_series(sid)
    if row is None:
        return False
    if row.state == "superseded" or (row.state == "filtered" and f.filter_reason):
        store.settle_series(sid, assembled=f.own)
        return True
    if row.state == "filtered":
        # Filtered on an earlier, thinner view (a cover that landed before its patches has no
        # files): its mail changed and the filters now take it, so it is judged afresh.
        store.set_series_state(sid, "pending")
        log.info("%s: %s is no longer filtered: its patches arrived", lst.name, s.title)
    job = store.job_for_series(sid, JOB_KIND)
    if job is None:
        if f.filter_reason:
            store.settle_series(sid, assembled=f.own, state="filtered")
            out.filtered.append(FilteredSeries(s.key, s.title, f.filter_reason))
            log.info("%s: filtered %s: %s", lst.name, s.title, f.filter_reason)
            return True
        waited = max(0.0, now - row.first_seen)  # `now` may predate a row made this poll
        if not s.complete and waited < lst.settle_s:
            out.waiting.append(WaitingSeries(s.key, s.title, s.missing, waited))
            return False
        done = store.settle_series(sid, assembled=f.own, change=JobChange.CREATE,
                                   kind=JOB_KIND, detail=_job_detail(s, lst.name))
        if done.created and done.job_id is not None:
            out.recorded.append(_recorded(sid, done.job_id, s))
            log.info("%s: recorded v%d %r (%d/%d patches%s) as job %d", lst.name, s.version,
                     s.title, len(s.patches), s.total,
                     "" if s.complete else f", missing {list(s.missing)}", done.job_id)
        return True
    return _settle_job(store, lst, f, job, out)


def _settle_job(store: Store, lst: ListSection, f: _Fresh, job: JobRow,
                out: _Outcome) -> bool:
    s, sid = f.series, f.series_id
    if job.status == "running":
        return False  # decided once it has finished, against what it tested
    if job.status == "queued":
        # Not started: it takes the newer, fuller view (the runner reads the series then).
        detail = _job_detail(s, lst.name, int(job.detail.get("requeued", 0)))
        if detail == job.detail:
            store.settle_series(sid, assembled=f.own)
            return True
        return store.settle_series(sid, assembled=f.own, change=JobChange.UPDATE,
                                   kind=JOB_KIND, detail=detail).applied
    if _same_test(job.detail, s):
        store.settle_series(sid, assembled=f.own)  # a late cover or reply: nothing to retest
        return True
    times = int(job.detail.get("requeued", 0)) + 1
    done = store.settle_series(sid, assembled=f.own, change=JobChange.REQUEUE, kind=JOB_KIND,
                               detail=_job_detail(s, lst.name, times))
    if done.applied:
        out.requeued.append(_recorded(sid, job.id, s))
        log.info("%s: requeued job %d: v%d %r now has %d/%d patches", lst.name, job.id,
                 s.version, s.title, len(s.patches), s.total)
    return done.applied


def _assemble_and_settle(lst: ListSection, store: Store, max_bytes: int,
                         now: float) -> _Outcome:
    out = _Outcome()
    batch = store.messages_in_intake(lst.name, INTAKE_ASSEMBLE)
    if not batch:
        return out
    ctx = _Context(store, lst, max_bytes)
    ctx.add_threads(batch)
    batch_ids = {m.msgid for m in batch}
    assembly = assemble_all(ctx.parsed.values())
    fresh: list[_Fresh] = []
    claimed: set[int] = set()
    for s, own in zip(assembly.series, assembly.owned, strict=True):
        if not own & batch_ids:
            continue  # nothing new in it: settled by an earlier poll
        sid = _find_row(store, lst, s, own, claimed, out)
        if sid is None and store.series_by_key(s.key) is not None:
            # Two series of this poll under one key, or the key is another list's.
            log.warning("%s: series key %s is taken; kept the first", lst.name, s.key)
            continue
        reason = filter_reason(lst, s)
        data = s.to_json()
        if reason:
            data["filter_reason"] = reason
        sid = store.save_series(sid, key=s.key, list_name=lst.name, title=s.title,
                                version=s.version, complete=s.complete, data=data, msgids=own)
        claimed.add(sid)
        fresh.append(_Fresh(s, own, sid, reason))
        failpoints.hit("watch:saved")
    _supersede(store, lst, fresh, out)
    waiting: set[str] = set()
    for f in fresh:
        if not _settle_one(store, lst, f, now, out):
            waiting |= f.own
        failpoints.hit("watch:settled")
    # The rest of the batch (duplicates dropped, broken patches, mail no series holds, series
    # settled before) has nothing left to decide.
    store.set_intake(batch_ids - waiting, INTAKE_DONE, only_from=(INTAKE_ASSEMBLE,))
    return out


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
    cursor.rt = poll_start
    cursor.save(store, lst.name)  # what discovery found is stored: rt: need not look back
    try:
        threads = _fetch_threads(lst, client, store, intake)
    except InfraError:
        # The threads stored before the archive failed need not wait for it.
        _assemble_and_settle(lst, store, max_bytes, now())
        raise
    out = _assemble_and_settle(lst, store, max_bytes, now())
    return ListReport(
        list_name=lst.name,
        new_messages=dict(intake.counts),
        skipped=tuple(intake.skipped),
        threads_fetched=threads,
        errors=tuple(intake.errors),
        recorded=tuple(out.recorded),
        filtered=tuple(out.filtered),
        waiting=tuple(out.waiting),
        superseded=tuple(out.superseded),
        requeued=tuple(out.requeued),
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
