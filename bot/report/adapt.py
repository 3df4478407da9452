"""Intake's Series (bot.intake.model) into the report's SeriesInfo.

Kept apart from the context types so those stay plain values with no dependency on intake.
"""

from __future__ import annotations

from email.utils import parseaddr

from bot.intake.model import Person, Series
from bot.report.context import Addr, PatchInfo, SeriesInfo

# Trailers that name a person who should hear about a problem with the patch.
PEOPLE_TRAILERS = (
    "Signed-off-by", "Reviewed-by", "Acked-by", "Tested-by", "Reported-by", "Suggested-by",
    "Co-developed-by", "Cc",
)


def addr(p: Person) -> Addr:
    return Addr(p.name, p.email)


def series_info(series: Series, *, list_address: str = "") -> SeriesInfo:
    """The report's view of a series: Message-IDs, subjects, authors and who to Cc."""
    cc: list[Addr] = []
    people: list[Addr] = []
    for p in series.patches:
        cc += [addr(c) for c in p.cc]
        for t in p.trailers:
            if t.name not in PEOPLE_TRAILERS:
                continue
            name, email = parseaddr(t.value)
            if "@" in email:
                people.append(Addr(name, email))
    if series.cover is not None:
        for t in series.cover.trailers:
            name, email = parseaddr(t.value)
            if t.name in PEOPLE_TRAILERS and "@" in email:
                people.append(Addr(name, email))
    return SeriesInfo(
        title=series.title,
        version=series.version,
        author=addr(series.author),
        patches=tuple(
            PatchInfo(p.index, p.total, p.message_id, p.subject, addr(p.author))
            for p in series.patches
        ),
        list_address=list_address,
        cover_msgid=series.cover.message_id if series.cover else "",
        cover_subject=series.cover.subject if series.cover else "",
        cc=tuple(dict.fromkeys(cc)),
        trailer_people=tuple(dict.fromkeys(people)),
        change_id=series.change_id or "",
    )
