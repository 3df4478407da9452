"""Shared bits of the report tests: configs, saved results, the seed series."""

from __future__ import annotations

import json
import mailbox
import re
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import TypeVar

from bot.config import Config, load_config
from bot.intake.model import Cover, Patch, Person, Series, Trailer
from bot.report.context import ReportContext, context_from_json

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GOLDEN = HERE / "golden"
FIXED_MSGID = "kbot-20261127230000-0123456789abcdef@kbot.example"


def write_config(
    tmp: Path,
    report: str = "",
    bot_email: str = "kbot@kbot.example",
    archive_url: str = "https://lore.kernel.org/kvm/",
) -> Config:
    """A config file whose state dir is under tmp, with extra [report] lines."""
    tmp.mkdir(parents=True, exist_ok=True)
    state = tmp / "state"
    text = (
        "schema = 1\n"
        f'[bot]\nname = "kbot"\nemail = "{bot_email}"\nstate_dir = "{state}"\n'
        f'[report]\narchive_url = "{archive_url}"\n' + report
    )
    path = tmp / "kbot.toml"
    path.write_text(text)
    return load_config(path)


def load_result(name: str) -> ReportContext:
    return context_from_json(json.loads((RESULTS / f"{name}.json").read_text()), name)


C = TypeVar("C")


def load_as(name: str, cls: type[C]) -> C:
    ctx = load_result(name)
    assert isinstance(ctx, cls), f"{name} is a {type(ctx).__name__}, not {cls.__name__}"
    return ctx


def result_names() -> list[str]:
    return sorted(p.stem for p in RESULTS.glob("*.json"))


_TRAILER = re.compile(r"^([A-Za-z-]+-by|Cc): (.+)$", re.MULTILINE)
_MARK = re.compile(r"^\[(?P<pfx>[^\]]*?)(?P<n>\d+)/(?P<m>\d+)\]\s*(?P<title>.*)$")


def _person(value: str) -> Person:
    name, email = parseaddr(value)
    return Person(name, email)


def seed_series(path: Path) -> Series:
    """The shared seed thread as intake's Series, read with the standard library only.

    (intake's own parser is tested by intake; this keeps the report tests independent of it.)
    """
    cover: Cover | None = None
    patches: list[Patch] = []
    for msg in mailbox.mbox(str(path)):
        subject = " ".join(str(msg["Subject"]).split())
        if subject.lower().startswith("re:"):
            continue  # a reply, not part of the series
        m = _MARK.match(subject)
        assert m is not None, subject
        msgid = str(msg["Message-Id"]).strip().strip("<>")
        author = _person(str(msg["From"]))
        payload = msg.get_payload(decode=True)
        assert isinstance(payload, bytes)
        body = payload.decode("utf-8", "replace")
        n, total = int(m["n"]), int(m["m"])
        if n == 0:
            cover = Cover(msgid, subject, m["title"], author, None, body)
            continue
        cc = tuple(
            Person(name, email)
            for name, email in getaddresses([str(msg["To"] or ""), str(msg["Cc"] or "")])
        )
        commit_message, _, diff = body.partition("\n---\n")
        trailers = tuple(Trailer(t[0], t[1]) for t in _TRAILER.findall(commit_message))
        patches.append(Patch(
            index=n, total=total, message_id=msgid, subject=subject, title=m["title"],
            author=author, date=None, commit_message=commit_message, diff=diff, files=(),
            patch_id="", trailers=trailers, prefixes=("PATCH",), cc=cc,
        ))
    patches.sort(key=lambda p: p.index)
    assert cover is not None
    return Series(
        version=1, title=cover.title, prefixes=("PATCH",), total=patches[0].total,
        cover=cover, patches=tuple(patches), missing=(),
    )
