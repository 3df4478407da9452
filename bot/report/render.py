"""Contexts into plain-text bodies (jinja2, StrictUndefined), in the columns kernel mail uses.

Templates live in templates/<kind>.txt.j2. Three kinds of text, marked in the templates:

- prose: wrapped here after rendering to 72 columns, so a long subject never breaks it;
- code (`code` filter / `{% filter code %}`): commands, tables, the tags block, key/value
  blocks: kept as they are and made to fit 80 columns where they are made (commands are
  continued with a backslash, see bot.report.repro);
- quoted material (`log`: console output, compiler and git messages, the bisect log, cut at
  MAX_LOG_LINES lines of MAX_LOG_LINE characters; `quote`: a file's full text, a kconfig
  fragment): byte for byte, as kernel people expect to copy it, whatever its width.

`column_problems` is the rule the tests hold every report to: prose <= 72, code <= 80, quoted
material free; a line may run past its limit only by one URL, which cannot be broken.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from bot.config import TEMPLATE_DIR
from bot.errors import InputError
from bot.report import repro
from bot.report.context import (
    Audience,
    BisectionReport,
    ReportContext,
    ReportKind,
    SeriesReport,
    TestStatus,
)

WIDTH = 72  # prose
CODE_WIDTH = 80  # commands, tables, headers of quoted blocks
MAX_LOG_LINE = 400  # a quoted log line longer than this is cut (SMTP allows 998 octets)
MAX_LOG_LINES = 200
MAX_QUOTE_LINES = 2000  # a file quoted whole (a config fragment); longer: refused
_START = {"log": "\x02", "code": "\x04", "quote": "\x05"}
_KIND_OF = {v: k for k, v in _START.items()}
_END = "\x03"
_URL = re.compile(r"https?://\S+")
PROSE, CODE, LOG, QUOTE = "", "code", "log", "quote"


@dataclass(frozen=True)
class Identity:
    """Who the bot is, who runs it and where reports are archived when their list is not
    known (from config)."""

    name: str
    email: str
    archive_url: str  # fallback for Closes: (a report's own list's archive comes first)
    owner: str = ""  # "Name <address>" of whoever runs this kbot

    @property
    def reported_by(self) -> str:
        return f"{self.name} <{self.email}>"


def _block(kind: str, text: Any, indent: str) -> str:
    lines = str(text).rstrip("\n").split("\n")
    if kind == LOG and len(lines) > MAX_LOG_LINES:
        cut = len(lines) - MAX_LOG_LINES
        lines = lines[:MAX_LOG_LINES] + [f"[... {cut} more lines cut ...]"]
    if kind == QUOTE and len(lines) > MAX_QUOTE_LINES:
        raise InputError(f"a quoted file of {len(lines)} lines is over {MAX_QUOTE_LINES}")
    out = []
    for line in lines:
        line = line.replace("\r", "").replace("\x00", "")
        if kind == LOG and len(line) > MAX_LOG_LINE:
            line = line[:MAX_LOG_LINE] + " [...]"
        out.append(indent + line if line else line)
    return _START[kind] + "\n" + "\n".join(out) + "\n" + _END + "\n"


def _kv(pairs: Sequence[tuple[str, str]], indent: str = "") -> str:
    """`key:   value` lines (a code block), long values wrapped under themselves."""
    width = max((len(k) for k, _ in pairs), default=0) + 2
    out: list[str] = []
    for key, value in pairs:
        head = indent + f"{key}:".ljust(width)
        out.extend(textwrap.wrap(str(value), width=CODE_WIDTH, initial_indent=head,
                                 subsequent_indent=" " * len(head), break_long_words=False,
                                 break_on_hyphens=False) or [head.rstrip()])
    return _block(CODE, "\n".join(out), "")


def _environment(template_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # plain text mail; nothing here is HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["log"] = lambda text, indent="": _block(LOG, text, indent)
    env.filters["code"] = lambda text, indent="": _block(CODE, text, indent)
    env.filters["quote"] = lambda text, indent="": _block(QUOTE, text, indent)
    env.filters["kv"] = _kv
    env.filters["short"] = lambda sha: str(sha)[:12]
    return env


def line_kinds(text: str) -> list[tuple[str, str]]:
    """(kind, line) for a rendered template, the markers themselves dropped."""
    out: list[tuple[str, str]] = []
    kind = PROSE
    for line in text.split("\n"):
        if line in _KIND_OF:
            kind = _KIND_OF[line]
        elif line == _END:
            kind = PROSE
        else:
            out.append((kind, line))
    return out


def _wrap_prose(marked: str) -> list[tuple[str, str]]:
    """Wrap prose lines to WIDTH; copy the other kinds as they are."""
    out: list[tuple[str, str]] = []
    for kind, line in line_kinds(marked):
        if kind != PROSE or len(line) <= WIDTH:
            out.append((kind, line))
            continue
        stripped = line.lstrip(" ")
        indent = line[: len(line) - len(stripped)]
        # A hanging indent for list items ("- foo"), else the same indent.
        hang = indent + "  " if stripped.startswith(("- ", "* ")) else indent
        out.extend((PROSE, w) for w in textwrap.wrap(
            stripped, width=WIDTH, initial_indent=indent, subsequent_indent=hang,
            break_long_words=False, break_on_hyphens=False) or [line])
    return out


def column_problems(lines: Sequence[tuple[str, str]]) -> list[str]:
    """Lines over their limit: prose 72, code 80, quoted material none. A line may run
    past its limit only by one URL (a URL cannot be broken)."""
    problems = []
    for kind, line in lines:
        if kind in (LOG, QUOTE):
            continue
        limit = WIDTH if kind == PROSE else CODE_WIDTH
        if len(line) <= limit:
            continue
        urls = _URL.findall(line)
        if len(urls) == 1 and len(line) - len(urls[0]) <= limit:
            continue
        problems.append(f"{kind or 'prose'} line of {len(line)} columns (max {limit}): "
                        f"{line!r}")
    return problems


def list_archive(ctx: ReportContext, fallback: str) -> str:
    """The archive of the list this report goes to (Closes:/Link:), ending with "/"."""
    url = ""
    if ctx.series is not None:
        url = ctx.series.archive_url
    if not url and isinstance(ctx, BisectionReport):
        url = ctx.archive_url
    url = url or fallback
    return url if url.endswith("/") else url + "/"


class Renderer:
    def __init__(self, identity: Identity, template_dir: Path = TEMPLATE_DIR) -> None:
        self.identity = identity
        self.env = _environment(template_dir)
        self.last_lines: list[tuple[str, str]] = []  # (kind, line) of the last body

    def archive_for(self, ctx: ReportContext) -> str:
        return list_archive(ctx, self.identity.archive_url)

    def closes_url(self, ctx: ReportContext, report_msgid: str) -> str:
        return f"{self.archive_for(ctx)}{report_msgid}/"

    def render(self, ctx: ReportContext, report_msgid: str) -> str:
        return self._render(f"{ctx.kind.value}.txt.j2", ctx, report_msgid, {})

    def render_unchanged(
        self, ctx: ReportContext, report_msgid: str, previous_msgid: str, previous_version: int
    ) -> str:
        """The brief note for a new revision that fails the same way as the last one."""
        extra = {"previous_url": self.closes_url(ctx, previous_msgid),
                 "previous_version": previous_version}
        return self._render("unchanged.txt.j2", ctx, report_msgid, extra)

    def _render(
        self, name: str, ctx: ReportContext, report_msgid: str, extra: dict[str, Any]
    ) -> str:
        series = ctx.series
        reply_list = ""
        if series is not None:
            reply_list = series.list_address
        elif isinstance(ctx, BisectionReport):
            reply_list = ctx.list_address
        if isinstance(ctx, SeriesReport) and ctx.audience is Audience.AUTHOR:
            reply_list = ""  # mailed to the author alone
        variables: dict[str, Any] = {
            "r": ctx,
            "series": series,
            "target": ctx.target,
            "bot": self.identity,
            "archive": self.archive_for(ctx),
            "closes_url": self.closes_url(ctx, report_msgid),
            "reply_list": reply_list,
            "repro_text": repro.mail_text(ctx.reproduce),
            "repro_files": repro.files(ctx.reproduce),
            "Status": TestStatus,
            "Kind": ReportKind,
            **extra,
        }
        try:
            text = self.env.get_template(name).render(variables)
        except jinja2.UndefinedError as exc:
            raise InputError(f"template {name}: {exc.message}") from exc
        except jinja2.TemplateNotFound as exc:
            raise InputError(f"no template {exc.name} under {self.env.loader}") from exc
        lines = _wrap_prose(text)
        # One blank line at most between paragraphs, none at the ends.
        kept: list[tuple[str, str]] = []
        for kind, line in lines:
            if not line.strip() and (not kept or not kept[-1][1].strip()):
                continue
            # (not "-- ": the signature separator keeps its space)
            kept.append((kind, line.rstrip() if kind == PROSE and line != "-- " else line))
        while kept and not kept[-1][1].strip():
            kept.pop()
        self.last_lines = kept  # what the column check in the tests reads
        return "\n".join(line for _, line in kept) + "\n"
