"""Rendered bodies into threaded mails: who gets it, the subject, the threading headers.

Everything put into a header comes from mail kbot read off the internet (subjects, names,
addresses, Message-IDs), so each value is checked here before it reaches a header: CR, LF and
NUL are refused with an InputError naming the header and the value (header injection), and
addresses must be one plain addr-spec. Long headers are folded by the email package on output.
"""

from __future__ import annotations

import email.policy
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from bot import __version__
from bot.errors import InputError
from bot.report.context import Addr, Audience, BisectionReport, ReportContext, SeriesReport

POLICY = email.policy.default.clone(max_line_length=78, linesep="\n")
_BAD = ("\r", "\n", "\x00")
_ADDR_SPEC = re.compile(r"[^@\s<>()\[\],;:\"\\]+@[^@\s<>()\[\],;:\"\\]+")
_MSGID = re.compile(r"[^<>\s\"\\]+@[^<>\s\"\\]+")
MAX_HEADER_VALUE = 2000


def check_header(header: str, value: str) -> str:
    """`value` if it is safe to put into `header`; else InputError naming both."""
    bad = [c for c in _BAD if c in value]
    if bad:
        names = ", ".join({"\r": "CR", "\n": "LF", "\x00": "NUL"}[c] for c in bad)
        raise InputError(
            f"refusing to put {value[:120]!r} into the {header} header: it contains {names}"
            " (header injection?)"
        )
    if len(value) > MAX_HEADER_VALUE:
        raise InputError(f"refusing {header} header of {len(value)} characters (max "
                         f"{MAX_HEADER_VALUE})")
    return value


def check_addr(header: str, addr: Addr) -> Addr:
    check_header(header, addr.name)
    check_header(header, addr.email)
    if not addr.email.isascii():
        raise InputError(f"refusing {addr.email!r} in the {header} header: kbot mails only "
                         "ASCII addresses (no SMTPUTF8)")
    if not _ADDR_SPEC.fullmatch(addr.email):
        raise InputError(f"refusing {addr.email!r} in the {header} header: not a plain address")
    return addr


def check_msgid(header: str, msgid: str) -> str:
    check_header(header, msgid)
    bare = msgid.strip().removeprefix("<").removesuffix(">")
    if not _MSGID.fullmatch(bare):
        raise InputError(f"refusing {msgid!r} in the {header} header: not a Message-ID")
    return bare


def new_msgid(bot_email: str) -> str:
    """A fresh Message-ID (without brackets) in the bot's own domain. Short, like 0-day's,
    so that a Closes: link to it fits a line: 20261127230000.1a2b3c4d5e6f-kbot@domain."""
    domain = bot_email.rpartition("@")[2] or "localhost"
    return f"{time.strftime('%Y%m%d%H%M%S', time.gmtime())}.{secrets.token_hex(6)}-kbot@{domain}"


@dataclass(frozen=True)
class Recipients:
    to: tuple[Addr, ...]
    cc: tuple[Addr, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return tuple(a.email for a in (*self.to, *self.cc))


def _dedup(people: Iterable[Addr], drop: set[str]) -> tuple[Addr, ...]:
    seen = set(drop)
    out: list[Addr] = []
    for p in people:
        key = p.email.strip().lower()
        if not key or key in seen:
            continue
        seen.add(key)
        out.append(p)
    return tuple(out)


def recipients(ctx: ReportContext, bot_email: str) -> Recipients:
    """To: the author of the patch replied to; Cc: the list, the mails' To/Cc people and the
    people named in trailers, each once, never the bot itself."""
    series = ctx.series
    target = ctx.target
    if target is not None:
        to = [target.author]
    elif series is not None:
        to = [series.author]
    elif isinstance(ctx, BisectionReport) and ctx.culprit and ctx.culprit.author:
        to = [ctx.culprit.author]
    else:
        to = []
    drop = {bot_email.lower()}
    if isinstance(ctx, SeriesReport) and ctx.audience is Audience.AUTHOR:
        # [report] series_summary = "author": a clean series' summary is for its author only.
        return Recipients(to=_dedup(to, drop), cc=())
    cc: list[Addr] = []
    if isinstance(ctx, BisectionReport):
        if ctx.list_address:
            cc.append(Addr("", ctx.list_address))
        if ctx.committer is not None:
            cc.append(ctx.committer)
        cc += ctx.maintainers
        cc += ctx.mail_to
        cc += [c.author for c in ctx.candidates if c.author is not None]
    if series is not None:
        if series.list_address:
            cc.append(Addr("", series.list_address))
        cc += series.cc
        cc += series.trailer_people
    to_t = _dedup(to, drop)
    cc_t = _dedup(cc, drop | {a.email.lower() for a in to_t})
    if not to_t and cc_t:
        to_t, cc_t = cc_t[:1], cc_t[1:]
    return Recipients(to=to_t, cc=cc_t)


def subject(ctx: ReportContext) -> str:
    target = ctx.target
    series = ctx.series
    if target is not None:
        base = target.subject
    elif series is not None:
        base = series.root_subject
    elif isinstance(ctx, BisectionReport):
        # 0-day's runtime-regression subject: [tree:branch] [subsystem] <sha>: <test>.fail
        where = f"[{ctx.tree}:{ctx.branch}]" if ctx.branch else f"[{ctx.tree}]"
        if ctx.culprit is None:
            n = len(ctx.candidates)
            return check_header("Subject", f"{where} {ctx.test}.fail: bisection inconclusive"
                                f" ({n} candidate{'s' if n != 1 else ''})")
        sub = f" [{ctx.subsystem}]" if ctx.subsystem else ""
        return check_header("Subject", f"{where}{sub} {ctx.culprit.sha[:12]}: {ctx.test}.fail")
    else:
        raise InputError("a report needs a series or a bisection to have a subject")
    base = " ".join(check_header("Subject", base).split())
    return base if base.lower().startswith("re:") else f"Re: {base}"


def thread(ctx: ReportContext) -> tuple[str, tuple[str, ...]]:
    """(In-Reply-To, References): under the exact patch, or the cover for series-wide reports."""
    series = ctx.series
    if isinstance(ctx, BisectionReport) and ctx.in_reply_to:
        # Under the culprit's patch mail, found in the archive (or named on the command line).
        refs = tuple(dict.fromkeys((*ctx.references, ctx.in_reply_to)))
        return ctx.in_reply_to, refs
    if series is None:
        return "", ()
    target = ctx.target
    root = series.root_msgid
    parent = target.msgid if target is not None else root
    refs = tuple(dict.fromkeys(m for m in (root, parent) if m))
    return parent, refs


def header_address(header: str, a: Addr) -> Address:
    """One checked address for a From/To/Cc header (InputError names a refused one)."""
    check_addr(header, a)
    user, _, domain = a.email.partition("@")
    try:
        return Address(display_name=a.name, username=user, domain=domain)
    except (ValueError, IndexError) as exc:
        raise InputError(f"refusing {a} in the {header} header: {exc}") from exc


def build_message(
    ctx: ReportContext,
    body: str,
    *,
    msgid: str,
    sender: Addr,
    rcpt: Recipients,
    date: datetime | None = None,
    thread_to: tuple[str, tuple[str, ...]] | None = None,
) -> EmailMessage:
    """`thread_to`: (In-Reply-To, References) instead of the context's own threading (a
    report that answers a mail command goes under that mail)."""
    subj = check_header("Subject", subject(ctx))
    in_reply_to, refs = thread_to if thread_to is not None else thread(ctx)
    msg = EmailMessage(policy=POLICY)
    msg["From"] = header_address("From", sender)
    if not rcpt.to:
        raise InputError("a report needs at least one recipient")
    msg["To"] = [header_address("To", a) for a in rcpt.to]
    if rcpt.cc:
        msg["Cc"] = [header_address("Cc", a) for a in rcpt.cc]
    msg["Subject"] = subj
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    msg["Message-ID"] = f"<{check_msgid('Message-ID', msgid)}>"
    if in_reply_to:
        msg["In-Reply-To"] = f"<{check_msgid('In-Reply-To', in_reply_to)}>"
        msg["References"] = " ".join(f"<{check_msgid('References', r)}>" for r in refs)
    msg["User-Agent"] = f"kbot/{__version__}"
    msg["X-Kbot-Report"] = ctx.kind.value
    ascii_only = body.isascii()
    msg.set_content(body, charset="us-ascii" if ascii_only else "utf-8",
                    cte="7bit" if ascii_only else "8bit")
    return msg


def fold(line: str, width: int = 78) -> str:
    """Fold one header line at spaces, first word always on the first line.

    (The email package may move a whole value onto a continuation line, which some readers
    then show with a leading space.) A single token longer than `width` stays whole.
    """
    if len(line) <= width:
        return line
    out: list[str] = []
    cur = ""
    for word in line.split(" "):
        name_only = not out and cur.endswith(":") and " " not in cur
        if cur and not name_only and len(cur) + 1 + len(word) > width:
            out.append(cur)
            cur = " " + word
        else:
            cur = f"{cur} {word}" if cur else word
    out.append(cur)
    return "\n".join(out)


def as_bytes(msg: EmailMessage) -> bytes:
    """The stored form: LF line ends (maildir/mbox); SMTP sends it with CRLF."""
    flat = msg.as_bytes(policy=POLICY.clone(max_line_length=0))
    head, sep, body = flat.partition(b"\n\n")
    lines = [fold(h) for h in head.decode("ascii").split("\n")]
    return "\n".join(lines).encode("ascii") + sep + body
