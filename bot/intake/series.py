"""Messages (one thread or many) -> the patch series revisions they hold.

The rules follow `b4 am` (the reference): a `Re:` subject is a reply, never a patch; `0/N` is a
cover; a mail with an unquoted diff is a patch; a follow-up without `Re:` and without a diff is a
reply too. Patches join the series of the cover (or patch 1/N) they are threaded under; a patch
whose parent is not there (the cover did not reach the archive yet) joins the series of the same
thread (References root), version, total and author; only a patch that starts a thread of its
own falls back to a series of the same version, total and author sent within a day (patches not
threaded under their cover), after every threaded patch has its place. Two series by one author
that reply to different missing messages stay two series. Duplicates and resends are dropped
with a note (b4 would keep a same-content resend as an extra patch); a v2 sent as replies to
some v1 patches (partial reroll) is completed from v1 as b4 does. Trailers come from the patch
and from replies; a reply to the cover applies to every patch. Review trailers only from
replies (Signed-off-by / Co-developed-by count only inside the patch).
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from bot.errors import InputError
from bot.intake.model import Cover, Message, Patch, Series, SubjectInfo, Trailer
from bot.intake.patch import (
    REPLY_TRAILERS,
    ParsedPatch,
    footers,
    has_diff,
    parse_patch_body,
    parse_trailers,
)
from bot.intake.subject import normalized_title, parse_subject

log = logging.getLogger(__name__)

# Unthreaded patches join a series of the same version/total/author sent this close in time.
UNTHREADED_WINDOW = timedelta(days=1)
MAX_ANCESTRY = 200


class Kind(enum.Enum):
    COVER = "cover"
    PATCH = "patch"
    BROKEN_PATCH = "broken-patch"  # has patch markers but no usable diff
    REPLY = "reply"
    OTHER = "other"  # a mail that is neither: announcements, HTML junk, ...


@dataclass
class _Item:
    msg: Message
    info: SubjectInfo
    kind: Kind
    parsed: ParsedPatch | None = None
    error: str = ""
    version_override: int | None = None

    @property
    def index(self) -> int:
        return self.info.index if self.info.index is not None else 1

    @property
    def total(self) -> int:
        return self.info.total if self.info.total is not None else 1

    @property
    def version(self) -> int:
        return self.version_override or self.info.version

    @property
    def email(self) -> str:
        return self.msg.sender.email.lower()


@dataclass
class _Group:
    version: int
    total: int
    email: str
    date: datetime | None
    root: str  # the thread root (References[0]) of the mail that started the group
    cover: _Item | None = None
    slots: dict[int, list[_Item]] = field(default_factory=dict)
    carried: dict[int, _Item] = field(default_factory=dict)  # partial reroll backfill
    notes: list[str] = field(default_factory=list)

    def add(self, item: _Item) -> None:
        self.slots.setdefault(item.index, []).append(item)


@dataclass(frozen=True)
class Assembly:
    """Everything assemble found: the series, and what it set aside (messages, with why)."""

    series: tuple[Series, ...]
    ignored: tuple[str, ...] = ()
    # Per series, in the same order: the Message-IDs of the cover and patch mail it was made
    # of (not the patches a partial reroll carries over from an earlier revision, nor dropped
    # duplicates). The watcher keys a series' identity on this mail, not on Series.key.
    owned: tuple[frozenset[str], ...] = ()


def _classify(msg: Message) -> _Item:
    info = parse_subject(msg.subject)
    if info.is_reply:
        return _Item(msg, info, Kind.REPLY)
    if info.index == 0 and info.total is not None:
        return _Item(msg, info, Kind.COVER)
    if has_diff(msg.body):
        try:
            parsed = parse_patch_body(msg.body, f"message <{msg.msgid}>")
        except InputError as exc:
            return _Item(msg, info, Kind.BROKEN_PATCH, error=str(exc))
        return _Item(msg, info, Kind.PATCH, parsed=parsed)
    if info.is_patch_marker and info.index is not None:
        return _Item(msg, info, Kind.BROKEN_PATCH,
                     error=f"message <{msg.msgid}>: patch {info.index}/{info.total} has no diff")
    if msg.in_reply_to or msg.references:
        # A follow-up without `Re:` (b4 treats these as replies too).
        return _Item(msg, info, Kind.REPLY)
    return _Item(msg, info, Kind.OTHER)


def _ancestors(item: _Item, items: dict[str, _Item]) -> Iterator[str]:
    """Message-IDs above `item`, nearest first: In-Reply-To, References, then further up."""
    seen: set[str] = {item.msg.msgid}
    queue: list[Message] = [item.msg]
    steps = 0
    while queue and steps < MAX_ANCESTRY:
        msg = queue.pop(0)
        ids = ([msg.in_reply_to] if msg.in_reply_to else []) + list(reversed(msg.references))
        for a in ids:
            steps += 1
            if a in seen:
                continue
            seen.add(a)
            yield a
            parent = items.get(a)
            if parent is not None:
                queue.append(parent.msg)


def thread_root(msg: Message) -> str:
    """The Message-ID a thread starts with: References[0], else In-Reply-To, else its own."""
    if msg.references:
        return msg.references[0]
    return msg.in_reply_to or msg.msgid


_thread_root = thread_root


def _close_in_time(a: datetime | None, b: datetime | None) -> bool:
    if a is None or b is None:
        return True
    try:
        return abs(a - b) <= UNTHREADED_WINDOW
    except TypeError:  # naive vs aware dates
        return True


def _sort_key(item: _Item) -> tuple[float, str]:
    d = item.msg.date
    try:
        ts = d.timestamp() if d is not None else 0.0
    except (OverflowError, ValueError, OSError):
        ts = 0.0
    return ts, item.msg.msgid


def assemble(messages: Iterable[Message]) -> list[Series]:
    """All series revisions in `messages`, patches in order (see the module docstring)."""
    return list(assemble_all(messages).series)


def assemble_all(messages: Iterable[Message]) -> Assembly:
    items: dict[str, _Item] = {}
    ignored: list[str] = []
    for msg in messages:
        if msg.msgid in items:
            ignored.append(f"<{msg.msgid}>: same Message-ID seen twice; kept the first")
            continue
        items[msg.msgid] = _classify(msg)
    _infer_versions(items)
    ordered = sorted(items.values(), key=_sort_key)
    groups: list[_Group] = []
    group_of: dict[str, _Group] = {}

    for it in ordered:
        if it.kind is Kind.COVER:
            g = _Group(it.version, it.total, it.email, it.msg.date, _thread_root(it.msg),
                       cover=it)
            groups.append(g)
            group_of[it.msg.msgid] = g

    patches = [it for it in ordered if it.kind in (Kind.PATCH, Kind.BROKEN_PATCH)]
    patches.sort(key=lambda it: (it.index, *_sort_key(it)))
    anchor = {it.msg.msgid: _anchor(it, items) for it in patches}
    leads = {a for a in anchor.values() if a is not None}
    loose: list[_Item] = []  # patches that start a thread of their own and lead none
    visiting: set[str] = set()

    def join(it: _Item, g: _Group) -> _Group:
        g.add(it)
        group_of[it.msg.msgid] = g
        if it.kind is Kind.BROKEN_PATCH:
            g.notes.append(f"skipped: {it.error}")
        return g

    def place(it: _Item) -> _Group | None:
        msgid = it.msg.msgid
        if msgid in group_of:
            return group_of[msgid]
        if msgid in visiting:  # a References loop
            return None
        visiting.add(msgid)
        try:
            up = anchor.get(msgid)
            parent = items.get(up) if up is not None else None
            if parent is not None and parent.kind is Kind.COVER:
                return join(it, group_of[parent.msg.msgid])
            if parent is not None:
                g = place(parent)
                if g is not None:
                    return join(it, g)
            root = _thread_root(it.msg)
            if root != msgid:
                # Threaded, but not under a cover or patch that is here: the series of the
                # same thread, else a new one (never another thread's, by author alone).
                g = _same_thread_group(it, root, groups)
                if g is None:
                    g = _Group(it.version, it.total, it.email, it.msg.date, root)
                    groups.append(g)
                return join(it, g)
            if msgid in leads:  # patch 1/N of a series without a cover
                g = _Group(it.version, it.total, it.email, it.msg.date, root)
                groups.append(g)
                return join(it, g)
            loose.append(it)
            return None
        finally:
            visiting.discard(msgid)

    for it in patches:
        place(it)
    for it in loose:
        if it.msg.msgid in group_of:
            continue
        near = _unthreaded_group(it, groups)
        if near is None:
            near = _Group(it.version, it.total, it.email, it.msg.date, _thread_root(it.msg))
            groups.append(near)
        elif near.cover is not None:
            near.notes.append(
                f"patch {it.index}/{it.total} <{it.msg.msgid}> is not threaded under the cover"
            )
        join(it, near)

    kept: dict[str, _Item] = {}  # msgid of any patch mail -> the one kept at its place
    for g in groups:
        _dedupe(g, kept)
    _partial_rerolls(groups, items, group_of)

    reply_trailers = _reply_trailers(ordered, items, group_of, kept)
    for it in ordered:
        if it.kind is Kind.OTHER:
            ignored.append(
                f"<{it.msg.msgid}>: not a patch, cover or reply ({it.msg.subject[:60]!r})"
            )

    built = [(_build(g, reply_trailers), _owned(g)) for g in groups
             if g.slots or g.carried or g.cover]
    built = _drop_resends(built)
    built.sort(key=lambda b: (b[0].patches[0].date.timestamp()
                              if b[0].patches and b[0].patches[0].date else 0.0, b[0].version))
    return Assembly(tuple(s for s, _ in built), tuple(ignored), tuple(o for _, o in built))


def _owned(g: _Group) -> frozenset[str]:
    ids = {slot[0].msg.msgid for slot in g.slots.values() if slot}
    if g.cover is not None:
        ids.add(g.cover.msg.msgid)
    return frozenset(ids)


def find_series(candidates: Iterable[Series], key: str, msgids: Iterable[str]) -> Series | None:
    """The series with this key, else the one holding the most of `msgids` (a series whose
    late cover or 1/N changed its key since it was recorded)."""
    items = list(candidates)
    for s in items:
        if s.key == key:
            return s
    wanted = set(msgids)
    best: Series | None = None
    best_n = 0
    for s in items:
        held = {p.message_id for p in s.patches}
        if s.cover is not None:
            held.add(s.cover.message_id)
        n = len(held & wanted)
        if n > best_n:
            best, best_n = s, n
    return best


def _infer_versions(items: dict[str, _Item]) -> None:
    """A patch without vN sent under a `[PATCH v3 0/N]` cover (or v3 1/N) is v3 (as b4 does)."""
    for it in items.values():
        if it.kind not in (Kind.PATCH, Kind.BROKEN_PATCH) or it.info.version_given:
            continue
        parent = items.get(it.msg.in_reply_to or "")
        if parent is None or not parent.info.version_given:
            continue
        if parent.kind is Kind.COVER or (parent.kind is Kind.PATCH and parent.index == 1):
            it.version_override = parent.version


def _anchor(it: _Item, items: dict[str, _Item]) -> str | None:
    """The nearest cover (same version) or patch (same version and total) above `it`."""
    for a in _ancestors(it, items):
        parent = items.get(a)
        if parent is None:
            continue
        if parent.kind is Kind.COVER and parent.version == it.version:
            return a
        if (
            parent.kind in (Kind.PATCH, Kind.BROKEN_PATCH)
            and parent.version == it.version
            and parent.total == it.total
        ):
            return a
    return None


def _fits(it: _Item, g: _Group) -> bool:
    """Same version, total and author, and its place is free (or holds the same change)."""
    if (g.version, g.total, g.email) != (it.version, it.total, it.email):
        return False
    present = g.slots.get(it.index, [])
    return not present or any(
        p.parsed and it.parsed and p.parsed.patch_id == it.parsed.patch_id for p in present
    )


def _same_thread_group(it: _Item, root: str, groups: list[_Group]) -> _Group | None:
    for g in groups:
        if g.root == root and _fits(it, g):
            return g
    return None


def _unthreaded_group(it: _Item, groups: list[_Group]) -> _Group | None:
    best: _Group | None = None
    best_gap: float | None = None
    for g in groups:
        if not _fits(it, g):
            continue  # another version/author, or that place has different content
        if not _close_in_time(g.date, it.msg.date):
            continue
        gap = 0.0
        if g.date is not None and it.msg.date is not None:
            try:
                gap = abs((g.date - it.msg.date).total_seconds())
            except TypeError:
                gap = 0.0
        if best_gap is None or gap < best_gap:
            best, best_gap = g, gap
    return best


def _dedupe(g: _Group, kept: dict[str, _Item]) -> None:
    for index, slot in list(g.slots.items()):
        good = [p for p in slot if p.kind is Kind.PATCH]
        if not good:
            del g.slots[index]
            continue
        if len(good) == 1:
            g.slots[index] = good
        else:
            ids = {p.parsed.patch_id for p in good if p.parsed}
            if len(ids) == 1:
                keep = good[0]
                for p in good[1:]:
                    g.notes.append(
                        f"duplicate of patch {index}/{g.total} dropped: <{p.msg.msgid}> "
                        f"(same patch-id as <{keep.msg.msgid}>)"
                    )
            else:
                keep = good[-1]
                for p in good[:-1]:
                    g.notes.append(
                        f"patch {index}/{g.total} sent twice with different content: kept the "
                        f"later <{keep.msg.msgid}>, dropped <{p.msg.msgid}>"
                    )
            g.slots[index] = [keep]
        for p in slot:
            kept[p.msg.msgid] = g.slots[index][0]


def _partial_rerolls(
    groups: list[_Group], items: dict[str, _Item], group_of: dict[str, _Group]
) -> None:
    """A vN whose patches each reply to the same n/m of an earlier revision: fill in from it."""
    for g in groups:
        missing = [i for i in range(1, g.total + 1) if i not in g.slots]
        if g.version <= 1 or not missing or not g.slots:
            continue
        source: _Group | None = None
        for slot in g.slots.values():
            p = slot[0]
            prev = items.get(p.msg.in_reply_to or "")
            found: _Group | None = None
            steps = 0
            while prev is not None and steps < MAX_ANCESTRY:
                steps += 1
                if (
                    prev.kind is Kind.PATCH and prev.index == p.index and prev.total == p.total
                    and prev.version < g.version
                ):
                    found = group_of.get(prev.msg.msgid)
                    break
                prev = items.get(prev.msg.in_reply_to or "")
            if found is None or (source is not None and found is not source):
                source = None
                break
            source = found
        if source is None:
            continue
        carried = [i for i in missing if i in source.slots]
        for i in carried:
            g.carried[i] = source.slots[i][0]
        if carried:
            g.notes.append(
                f"partial reroll: patches {', '.join(map(str, carried))} carried over from "
                f"v{source.version}"
            )


def _reply_trailers(
    ordered: list[_Item], items: dict[str, _Item], group_of: dict[str, _Group],
    kept: dict[str, _Item],
) -> dict[str, list[Trailer]]:
    """Message-ID of a kept patch or cover -> trailers given in replies to it."""
    out: dict[str, list[Trailer]] = {}
    for r in ordered:
        if r.kind is not Kind.REPLY:
            continue
        trailers = parse_trailers(r.msg.body, source=r.msg.msgid, allowed=REPLY_TRAILERS)
        if not trailers:
            continue
        for a in _ancestors(r, items):
            target = items.get(a)
            if target is None:
                continue
            if target.kind is Kind.COVER:
                out.setdefault(a, []).extend(trailers)
                break
            if target.kind is Kind.PATCH:
                keep = kept.get(a, target)
                out.setdefault(keep.msg.msgid, []).extend(trailers)
                break
    return out


def _merge_trailers(*groups: Iterable[Trailer]) -> tuple[Trailer, ...]:
    seen: dict[tuple[str, str], Trailer] = {}
    for group in groups:
        for t in group:
            seen.setdefault((t.name, t.value), t)
    return tuple(seen.values())


def _make_patch(it: _Item, extra: Iterable[Trailer]) -> Patch:
    parsed = it.parsed
    assert parsed is not None
    title = it.info.title
    if parsed.in_body_subject:
        title = parse_subject(parsed.in_body_subject).title or title
    return Patch(
        index=it.index,
        total=it.total,
        message_id=it.msg.msgid,
        subject=it.msg.subject,
        title=title,
        author=parsed.in_body_author or it.msg.sender,
        date=it.msg.date,
        commit_message=parsed.commit_message,
        diff=parsed.diff,
        files=parsed.files,
        patch_id=parsed.patch_id,
        trailers=_merge_trailers(parsed.trailers, extra),
        prefixes=it.info.prefixes,
        cc=it.msg.cc,
    )


def _build(g: _Group, reply_trailers: dict[str, list[Trailer]]) -> Series:
    cover_trailers = reply_trailers.get(g.cover.msg.msgid, []) if g.cover else []
    places = sorted(set(g.slots) | set(g.carried))
    patches: list[Patch] = []
    for i in places:
        it = g.slots[i][0] if i in g.slots else g.carried[i]
        patches.append(_make_patch(it, [*reply_trailers.get(it.msg.msgid, []), *cover_trailers]))
    present = {p.index for p in patches}
    total = max([g.total, *present]) if present else g.total
    missing = tuple(i for i in range(1, total + 1) if i not in present)
    first = None
    if places:
        first = g.slots[places[0]][0] if places[0] in g.slots else g.carried[places[0]]
    lead = g.cover or first
    cover = None
    if g.cover is not None:
        c = g.cover
        cover = Cover(c.msg.msgid, c.msg.subject, c.info.title, c.msg.sender, c.msg.date,
                      c.msg.body, _merge_trailers(cover_trailers))
    f_cover = footers(g.cover.msg.body) if g.cover else None
    f_first = footers(first.msg.body) if first else None
    base = (f_cover and f_cover.base_commit) or (f_first and f_first.base_commit) or None
    prereq = (f_cover and f_cover.prerequisite_patch_ids) or (
        f_first.prerequisite_patch_ids if f_first else ())
    change = (f_cover and f_cover.change_id) or (f_first and f_first.change_id) or None
    notes = list(g.notes)
    if missing:
        notes.append(f"incomplete: missing {', '.join(map(str, missing))} of {total}")
    return Series(
        version=g.version,
        title=(g.cover.info.title if g.cover else (patches[0].title if patches else "")),
        prefixes=lead.info.prefixes if lead else (),
        total=total,
        cover=cover,
        patches=tuple(patches),
        missing=missing,
        base_commit=base,
        prerequisite_patch_ids=tuple(prereq),
        change_id=change,
        thread_root=_thread_root(lead.msg) if lead else "",
        notes=tuple(notes),
    )


def _drop_resends(
    series: list[tuple[Series, frozenset[str]]]
) -> list[tuple[Series, frozenset[str]]]:
    """Two complete revisions with the same version, author and patch-ids: keep the later."""
    out: list[tuple[Series, frozenset[str]]] = []
    by_content: dict[tuple[object, ...], int] = {}
    for s, own in series:
        if not s.patches:
            out.append((s, own))
            continue
        key = (s.version, s.author.email.lower(), tuple(p.patch_id for p in s.patches),
               tuple(p.index for p in s.patches))
        if key in by_content:
            at = by_content[key]
            old = out[at]
            first, second = sorted((old, (s, own)), key=lambda x: _series_date(x[0]))
            note = f"resend: same patches as {first[0].key}, which was dropped"
            out[at] = (replace(second[0], notes=(*second[0].notes, note)), second[1])
        else:
            by_content[key] = len(out)
            out.append((s, own))
    return out


def _series_date(s: Series, newest: bool = False) -> float:
    """When the series was sent: its first mail (or, newest=True, its last one)."""
    dates = [p.date for p in s.patches if p.date is not None]
    if s.cover is not None and s.cover.date is not None:
        dates.append(s.cover.date)
    try:
        stamps = [d.timestamp() for d in dates]
    except (OverflowError, ValueError, OSError):
        return 0.0
    if not stamps:
        return 0.0
    return max(stamps) if newest else min(stamps)


# --- revisions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Supersession:
    """`newer` (a Series.key) replaces `older`."""

    newer: str
    older: str
    reason: str  # "change-id" or "title and author"


def supersedes(newer: Series, older: Series) -> str | None:
    """Why `newer` replaces `older` ("change-id" / "title and author"), or None if it does not."""
    if newer.version <= older.version:
        return None
    if newer.change_id and older.change_id:
        return "change-id" if newer.change_id == older.change_id else None
    if (
        normalized_title(newer.title) == normalized_title(older.title)
        and newer.author.email.lower() == older.author.email.lower()
    ):
        return "title and author"
    return None


def supersessions(series: Iterable[Series]) -> list[Supersession]:
    items = list(series)
    out: list[Supersession] = []
    for new in items:
        for old in items:
            if new is old:
                continue
            why = supersedes(new, old)
            if why:
                out.append(Supersession(new.key, old.key, why))
    return out


def latest(series: Iterable[Series]) -> list[Series]:
    """The series no other one in the list supersedes, newest revision first."""
    items = list(series)
    old = {s.older for s in supersessions(items)}
    alive = [s for s in items if s.key not in old]
    return newest_first(alive)


def newest_first(series: Iterable[Series]) -> list[Series]:
    """Latest mail first (a partial reroll's own patch is newer than what it carries over)."""
    return sorted(series, key=lambda s: (-_series_date(s, newest=True), -s.version))


# --- streaming -----------------------------------------------------------------------------


def iter_series(messages: Iterable[Message], *, flush_after: int = 4000) -> Iterator[Series]:
    """Assemble a long, roughly date-ordered stream (a list archive) in bounded memory.

    Messages are held per thread; threads with no new message in the last `flush_after`
    messages are assembled together and released. Patches not threaded under their cover sit
    next to it in such a stream and are flushed with it.
    """
    pending: OrderedDict[str, list[Message]] = OrderedDict()
    check_every = max(1, min(256, flush_after // 4))
    last_seen: dict[str, int] = {}
    count = 0
    root_of: dict[str, str] = {}  # pending msgid -> its bucket
    for msg in messages:
        count += 1
        # Join the bucket of any pending message this one points at (References may be cut
        # short or start at a message the archive never had).
        root = next((root_of[r] for r in (msg.in_reply_to, *reversed(msg.references))
                     if r and r in root_of), None) or _thread_root(msg)
        root_of[msg.msgid] = root
        pending.setdefault(root, []).append(msg)
        pending.move_to_end(root)
        last_seen[root] = count
        if count % check_every == 0:
            stale: list[Message] = []
            while pending:
                first_root = next(iter(pending))
                if count - last_seen[first_root] < flush_after:
                    break
                released = pending.pop(first_root)
                for m in released:
                    root_of.pop(m.msgid, None)
                stale.extend(released)
                del last_seen[first_root]
            if stale:
                yield from assemble(stale)
    rest = [m for msgs in pending.values() for m in msgs]
    if rest:
        yield from assemble(rest)
