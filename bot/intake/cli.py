"""`kbot series show SOURCE [--json]`: the series in a file or a thread on the archive.

Several series in one source (a thread with v1 and v2, an mbox of many threads) are all shown,
the newest revision first; with --json a single series prints one object and several print a
JSON list in that same order.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bot.errors import InputError, UserError
from bot.intake.mail import parse_message
from bot.intake.mbox import DEFAULT_MAX_INFLATED, DEFAULT_MAX_MESSAGES, ParseProblem, iter_raw
from bot.intake.model import Message, Series
from bot.intake.series import assemble_all, newest_first


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    series = sub.add_parser("series", help="patch series: parse and show")
    ssub = series.add_subparsers(dest="series_command", metavar="SUBCOMMAND")
    ssub.required = True
    show = ssub.add_parser(
        "show",
        help="show the series in an mbox/maildir/.eml/t.mbox.gz file or a Message-ID's thread",
    )
    show.add_argument("source", help="a file path, or a Message-ID or lore URL fetched from "
                      "the archive")
    show.add_argument("--json", action="store_true", help="print JSON (one object, or a list)")
    show.add_argument("--list", default=None,
                      help="archive list to fetch a Message-ID from (default: all, then config)")
    show.set_defaults(func=cmd_show)


def _looks_like_msgid(source: str) -> bool:
    """A Message-ID, bare or in <>, or a lore URL of one (bot.intake.lore_url)."""
    from bot.intake.lore_url import looks_like_message_ref

    return not Path(source.strip()).exists() and looks_like_message_ref(source)


def _fetch_ref(source: str, ctx: Any, list_name: str | None) -> bytes:
    """The thread of a Message-ID or lore URL; a URL's list is used unless --list is given."""
    from bot.intake.lore_url import parse_message_ref

    ref = parse_message_ref(source)
    if ref is None:
        raise UserError(f"{source}: not a Message-ID or an archive URL of one")
    return _fetch_thread(ref.msgid, ctx, list_name or ref.list_name)


def _fetch_thread(msgid: str, ctx: Any, list_name: str | None) -> bytes:
    """The thread's t.mbox: from --list, else lore's /all/, else each configured list."""
    from bot.intake.client import ArchiveClient, ArchiveHTTPError

    names: list[str | None] = [list_name] if list_name else [
        None, *(lst.name for lst in ctx.config.lists)]
    with ArchiveClient(ctx.config.archive) as client:
        for name in names:
            try:
                return client.thread_mbox(msgid, name)
            except ArchiveHTTPError as exc:
                if exc.status != 404:
                    raise
    tried = ", ".join(n or "all" for n in names)
    raise UserError(f"<{msgid}>: not found in the archive {ctx.config.archive.base_url} "
                    f"(lists tried: {tried})")


def load_messages(source: str | Path | bytes, *, max_bytes: int,
                  problems: list[ParseProblem],
                  max_inflated: int = DEFAULT_MAX_INFLATED) -> list[Message]:
    """Every message of the source that parses; the rest go to `problems`."""
    out: list[Message] = []
    for raw in iter_raw(source, max_bytes=max_bytes, max_inflated=max_inflated,
                        on_problem=problems.append, max_messages=DEFAULT_MAX_MESSAGES):
        try:
            out.append(parse_message(raw, max_bytes=max_bytes))
        except InputError as exc:
            where = "<fetched thread>" if isinstance(source, bytes) else str(source)
            problems.append(ParseProblem(where, str(exc)))
    return out


def _table(series: Series) -> str:
    state = "complete" if series.complete else f"INCOMPLETE, missing {list(series.missing)}"
    lines = [
        f"v{series.version} {series.title}",
        f"  author: {series.author}   patches: {len(series.patches)}/{series.total} ({state})",
    ]
    if series.prefixes:
        lines.append(f"  prefixes: {' '.join(series.prefixes)}")
    lines.append(f"  cover: <{series.cover.message_id}>" if series.cover else "  cover: none")
    if series.base_commit:
        lines.append(f"  base-commit: {series.base_commit}")
    if series.change_id:
        lines.append(f"  change-id: {series.change_id}")
    width = max((len(f"{p.index}/{p.total}") for p in series.patches), default=3)
    lines.append(f"  {'#':>{width}}  {'patch-id':12}  {'files':>5}  {'trl':>3}  subject")
    for p in series.patches:
        lines.append(
            f"  {f'{p.index}/{p.total}':>{width}}  {p.patch_id[:12]:12}  {len(p.files):>5}  "
            f"{len(p.trailers):>3}  {p.subject}"
        )
    for note in series.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace, ctx: Any) -> int:
    source: str = args.source
    max_bytes = ctx.config.archive.max_message_bytes
    problems: list[ParseProblem] = []
    data: str | bytes
    if Path(source).exists():
        data = source
    elif _looks_like_msgid(source):
        data = _fetch_ref(source, ctx, args.list)
    else:
        raise UserError(f"{source}: no such file, and not a Message-ID or lore URL")
    messages = load_messages(data, max_bytes=max_bytes, problems=problems,
                             max_inflated=ctx.config.archive.max_inflated_bytes)
    assembly = assemble_all(messages)
    for problem in problems:
        print(f"kbot: skipped {problem}", file=sys.stderr)
    series = newest_first(assembly.series)
    if not series:
        raise InputError(f"{source}: no patch series found ({len(messages)} messages read)")
    if args.json:
        doc: Any = series[0].to_json() if len(series) == 1 else [s.to_json() for s in series]
        print(json.dumps(doc, indent=2))
    else:
        print("\n\n".join(_table(s) for s in series))
    return 0
