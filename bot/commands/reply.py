"""kbot's short answers to mail commands: `#kbot help`, and a command it cannot act on.

A reply is a mail like a report: stored once (its dedup key names the command mail and the
commands it answers) and delivered by bot.report.deliver's Reporter, exactly once, through
the outbox or SMTP. It goes To: the sender, Cc: the list the command came from, threaded
under the command mail, and says it is automatic (`Auto-Submitted: auto-replied`, RFC 3834)
so that other robots do not answer it. Bodies are templates/command-*.txt.j2 (jinja2,
StrictUndefined), prose wrapped to 72 columns.
"""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import jinja2

from bot import __version__
from bot.config import TEMPLATE_DIR, Config
from bot.errors import InputError
from bot.intake.model import Message
from bot.report.context import Addr
from bot.report.deliver import Mode, Prepared
from bot.report.message import (
    POLICY,
    Recipients,
    as_bytes,
    check_header,
    check_msgid,
    header_address,
    new_msgid,
)

KIND = "command-reply"
WIDTH = 72
MAX_REFERENCES = 20  # of the command mail's References: kept (the first and the nearest)
MAX_SUBJECT = 200  # of the command mail's subject, in the reply's


@dataclass(frozen=True)
class Problem:
    """A command line as written and what is wrong with it."""

    line: str
    problem: str


def dedup_key(command_msgid: str, seqs: Sequence[int]) -> str:
    """One reply per command mail and set of commands answered, whatever restarts."""
    parts = [KIND, command_msgid, ",".join(str(s) for s in sorted(seqs))]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _environment(template_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # plain text mail
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _wrap(text: str) -> str:
    """Prose to WIDTH columns; indented lines (commands, the problems) and the signature
    separator stay as they are; one blank line at most between paragraphs."""
    out: list[str] = []
    for line in text.split("\n"):
        if line == "-- ":
            out.append(line)
            continue
        line = line.rstrip()
        if not line and (not out or not out[-1]):
            continue
        if len(line) <= WIDTH or line.startswith((" ", "\t")):
            out.append(line)
            continue
        out.extend(textwrap.wrap(line, width=WIDTH, break_long_words=False,
                                 break_on_hyphens=False))
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"


def render(template: str, variables: dict[str, object],
           template_dir: Path = TEMPLATE_DIR) -> str:
    try:
        text = _environment(template_dir).get_template(template).render(variables)
    except jinja2.UndefinedError as exc:
        raise InputError(f"template {template}: {exc.message}") from exc
    except jinja2.TemplateNotFound as exc:
        raise InputError(f"no template {exc.name} under {template_dir}") from exc
    return _wrap(text)


def _references(msg: Message) -> tuple[str, ...]:
    refs = list(dict.fromkeys((*msg.references, msg.msgid)))
    if len(refs) > MAX_REFERENCES:
        refs = refs[:1] + refs[-(MAX_REFERENCES - 1):]
    return tuple(refs)


def build_reply(config: Config, msg: Message, list_name: str, *, problems: Sequence[Problem],
                help_asked: bool, seqs: Sequence[int], trees: Sequence[str],
                tests: Sequence[str], msgid: str | None = None,
                date: datetime | None = None) -> Prepared:
    """The reply to one command mail: what is wrong with its commands (if anything is),
    else the help text."""
    bot = config.bot
    msgid = msgid or new_msgid(bot.email)
    sender = Addr(msg.sender.name, msg.sender.email)
    signature = "-- \n" + bot.name + (f", run by {bot.owner}" if bot.owner else "")
    variables: dict[str, object] = {
        "name": msg.sender.name or msg.sender.email, "problems": list(problems),
        "trees": list(trees), "tests": list(tests), "signature": signature,
    }
    body = render("command-problem.txt.j2" if problems else "command-help.txt.j2", variables)
    address = next((lst.address for lst in config.lists if lst.name == list_name), "")
    cc = (Addr("", address),) if address and address.lower() != bot.email.lower() else ()
    rcpt = Recipients(to=(sender,), cc=cc)
    subject = " ".join(msg.subject.split())[:MAX_SUBJECT] or "your kbot command"
    if not subject.lower().startswith("re:"):
        subject = f"Re: {subject}"
    out = EmailMessage(policy=POLICY)
    out["From"] = header_address("From", Addr(bot.name, bot.email))
    out["To"] = [header_address("To", a) for a in rcpt.to]
    if rcpt.cc:
        out["Cc"] = [header_address("Cc", a) for a in rcpt.cc]
    out["Subject"] = check_header("Subject", subject)
    out["Date"] = format_datetime(date or datetime.now(UTC))
    out["Message-ID"] = f"<{check_msgid('Message-ID', msgid)}>"
    out["In-Reply-To"] = f"<{check_msgid('In-Reply-To', msg.msgid)}>"
    out["References"] = " ".join(f"<{check_msgid('References', r)}>"
                                 for r in _references(msg))
    out["User-Agent"] = f"kbot/{__version__}"
    out["X-Kbot-Report"] = KIND
    out["Auto-Submitted"] = "auto-replied"  # RFC 3834: robots must not answer it
    ascii_only = body.isascii()
    out.set_content(body, charset="us-ascii" if ascii_only else "utf-8",
                    cte="7bit" if ascii_only else "8bit")
    return Prepared(
        msgid=msgid, kind=KIND, mode=Mode.FULL, dedup_key=dedup_key(msg.msgid, seqs),
        lineage="", version=0, fingerprint="", subject=subject, rcpt=rcpt,
        raw=as_bytes(out))
