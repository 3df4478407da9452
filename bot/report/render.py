"""Contexts into plain-text bodies (jinja2, StrictUndefined), at most 72 columns.

Templates live in templates/<kind>.txt.j2. Prose is wrapped here after rendering, so a long
subject or path never breaks the column limit; quoted material (console output, compiler
errors, git's message, commands, the bisect log, the tags block) is marked with the `verbatim`
filter or `{% filter verbatim %}` and kept byte for byte, as kernel people expect to copy it.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from bot.config import TEMPLATE_DIR
from bot.errors import InputError
from bot.report.context import (
    BisectionReport,
    PatchInfo,
    ReportContext,
    ReportKind,
    SeriesInfo,
    TestStatus,
)

WIDTH = 72
MAX_LOG_LINE = 400  # a quoted line longer than this is cut (SMTP allows 998 octets per line)
MAX_LOG_LINES = 200
_V_START = "\x02"
_V_END = "\x03"


@dataclass(frozen=True)
class Identity:
    """Who the bot is and where its reports are archived (from config)."""

    name: str
    email: str
    archive_url: str  # ends with "/"; Closes: is archive_url + msgid + "/"

    @property
    def reported_by(self) -> str:
        return f"{self.name} <{self.email}>"


def _verbatim(text: Any, indent: str = "") -> str:
    lines = str(text).rstrip("\n").split("\n")
    if len(lines) > MAX_LOG_LINES:
        cut = len(lines) - MAX_LOG_LINES
        lines = lines[:MAX_LOG_LINES] + [f"[... {cut} more lines cut ...]"]
    out = []
    for line in lines:
        line = line.replace("\r", "").replace("\x00", "")
        if len(line) > MAX_LOG_LINE:
            line = line[:MAX_LOG_LINE] + " [...]"
        out.append(indent + line)
    return _V_START + "\n" + "\n".join(out) + "\n" + _V_END + "\n"


def _environment(template_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # plain text mail; nothing here is HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["verbatim"] = _verbatim
    env.filters["short"] = lambda sha: str(sha)[:12]
    return env


def marked_lines(text: str) -> list[tuple[bool, str]]:
    """(is_verbatim, line) for a rendered template, the markers themselves dropped."""
    out: list[tuple[bool, str]] = []
    verbatim = False
    for line in text.split("\n"):
        if line == _V_START:
            verbatim = True
        elif line == _V_END:
            verbatim = False
        else:
            out.append((verbatim, line))
    return out


def _wrap_prose(text: str) -> str:
    """Wrap prose lines to WIDTH; copy verbatim blocks as they are."""
    out: list[str] = []
    for verbatim, line in marked_lines(text):
        if verbatim or len(line) <= WIDTH:
            out.append(line)
            continue
        stripped = line.lstrip(" ")
        indent = line[: len(line) - len(stripped)]
        # A hanging indent for list items ("- foo", "  1/4 ..."), else the same indent.
        hang = indent
        if stripped.startswith(("- ", "* ")):
            hang = indent + "  "
        elif stripped.startswith("FAIL "):
            hang = indent + "     "
        out.extend(
            textwrap.wrap(
                stripped,
                width=WIDTH,
                initial_indent=indent,
                subsequent_indent=hang,
                break_long_words=False,
                break_on_hyphens=False,
            )
            or [line]
        )
    return "\n".join(out)


def fetch_commands(series: SeriesInfo, upto: PatchInfo | None, base_sha: str) -> tuple[str, ...]:
    """How a reader gets the same tree: the base, then the series (up to a patch) with b4."""
    cherry = ""
    if upto is not None and upto.index < upto.total:
        cherry = f"-P 1-{upto.index} "
    msgid = upto.msgid if upto is not None else series.root_msgid
    return (
        f"git checkout -b kbot-repro {base_sha}",
        f"b4 am {cherry}-o kbot-repro/ '{msgid}'",
        "git am -3 kbot-repro/*.mbx",
    )


class Renderer:
    def __init__(self, identity: Identity, template_dir: Path = TEMPLATE_DIR) -> None:
        self.identity = identity
        self.env = _environment(template_dir)
        self.last_marked = ""

    def closes_url(self, report_msgid: str) -> str:
        base = self.identity.archive_url
        if not base.endswith("/"):
            base += "/"
        return f"{base}{report_msgid}/"

    def render(self, ctx: ReportContext, report_msgid: str) -> str:
        return self._render(f"{ctx.kind.value}.txt.j2", ctx, report_msgid, {})

    def render_unchanged(
        self, ctx: ReportContext, report_msgid: str, previous_msgid: str, previous_version: int
    ) -> str:
        """The brief note for a new revision that fails the same way as the last one."""
        extra = {"previous_url": self.closes_url(previous_msgid),
                 "previous_version": previous_version}
        return self._render("unchanged.txt.j2", ctx, report_msgid, extra)

    def _render(
        self, name: str, ctx: ReportContext, report_msgid: str, extra: dict[str, Any]
    ) -> str:
        target = ctx.target
        series = ctx.series
        if isinstance(ctx, BisectionReport):
            base_sha = ctx.good.sha
        else:
            base_sha = ctx.base.sha
        fetch = ctx.reproduce.fetch
        if not fetch and series is not None:
            fetch = fetch_commands(series, target, base_sha)
        elif not fetch and isinstance(ctx, BisectionReport):
            at = ctx.culprit or ctx.bad
            fetch = (f"git checkout -b kbot-repro {at.sha}",)
        variables: dict[str, Any] = {
            "r": ctx,
            "series": series,
            "target": target,
            "bot": self.identity,
            "closes_url": self.closes_url(report_msgid),
            "fetch": fetch,
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
        self.last_marked = text  # what the column check in the tests reads
        body = _wrap_prose(text)
        # One blank line at most between paragraphs, one newline at the end.
        while "\n\n\n" in body:
            body = body.replace("\n\n\n", "\n\n")
        return body.strip("\n") + "\n"
