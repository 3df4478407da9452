"""Where a job's series comes from: the raw mail kbot stored, or a file / fetched thread."""

from __future__ import annotations

import logging
from pathlib import Path

from bot.errors import InfraError, InputError, UserError
from bot.intake.cli import load_messages
from bot.intake.mail import parse_message
from bot.intake.mbox import ParseProblem
from bot.intake.model import Series
from bot.intake.series import assemble, find_series, newest_first
from bot.state import Store

log = logging.getLogger(__name__)


# The most stored messages one series is re-assembled from (its threads, reviews included).
MAX_SERIES_MESSAGES = 20_000


def series_from_store(store: Store, series_id: int) -> tuple[Series, str]:
    """Re-assemble a recorded series from the raw mail kbot stored (diffs are not kept in the
    series row; the raw messages are the source of truth). Only the threads the series' own
    mail is in are read (patches, cover, replies with trailers), not the whole list."""
    row = store.get_series(series_id)
    if row is None:
        raise UserError(f"no series with id {series_id} in the store")
    # By key, else by the mail the row holds: a late cover may have moved the key since.
    held = [str(p.get("message_id")) for p in row.data.get("patches", [])]
    if isinstance(row.data.get("cover"), dict):
        held.append(str(row.data["cover"].get("message_id")))
    roots = set(held)
    for msgid in held:
        stored = store.get_message(msgid)
        if stored is not None and stored.thread:
            roots.add(stored.thread)
    messages = []
    for stored in store.thread_messages(row.list, roots, limit=MAX_SERIES_MESSAGES):
        if stored.raw is None:
            continue
        try:
            messages.append(parse_message(stored.raw))
        except InputError as exc:  # stored raw mail that no longer parses: skip it, keep it
            log.debug("stored <%s> no longer parses: %s", stored.msgid, exc)
    found = find_series(assemble(messages), row.key, held)
    if found is not None:
        return found, row.list
    raise InfraError(f"series {row.key} no longer assembles from its stored threads")


def series_from_source(source: str | Path | bytes, *, max_bytes: int) -> Series:
    """The newest series revision in a file / fetched thread."""
    problems: list[ParseProblem] = []
    messages = load_messages(source, max_bytes=max_bytes, problems=problems)
    for problem in problems:
        log.warning("skipped %s", problem)
    found = newest_first(assemble(messages))
    if not found:
        raise UserError(f"{source if not isinstance(source, bytes) else 'thread'}: "
                        "no patch series found")
    return found[0]
