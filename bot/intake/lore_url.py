"""Message-IDs as people paste them: bare, in angle brackets, or as a lore URL (like b4).

    20210503150854.1144255-1-vkuznets@redhat.com
    <20210503150854.1144255-1-vkuznets@redhat.com>
    https://lore.kernel.org/kvm/20210503150854.1144255-1-vkuznets@redhat.com/
    https://lore.kernel.org/kvm/<msgid>/T/#u    .../t/   .../t.mbox.gz   .../raw
    https://lore.kernel.org/r/<msgid>   https://lore.kernel.org/all/<msgid>/
    https://patch.msgid.link/<msgid>

A URL gives the Message-ID and, when it names one, the list; the archive kbot then asks is
still the configured one ([archive] base_url), as for a bare Message-ID.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

# Path segments after the Message-ID that name a view of the same message or thread.
_VIEWS = frozenset({"", "t", "T", "raw", "t.mbox.gz", "t.atom", "T.mbox.gz"})
# Lists that are not lists: lore's cross-list lookups.
_ANY_LIST = frozenset({"r", "all"})
_MSGID = re.compile(r"^[^<>\s\"\\/]+@[^<>\s\"\\]+$")
# In a URL a "/" of the Message-ID is escaped (%2F), so there it may hold one.
_URL_MSGID = re.compile(r"^[^<>\s\"\\]+@[^<>\s\"\\]+$")


@dataclass(frozen=True)
class MessageRef:
    msgid: str  # without angle brackets
    list_name: str | None = None  # the list the URL names; None: any (or not a URL)


def parse_message_ref(text: str) -> MessageRef | None:
    """The Message-ID (and list) in `text`, or None when it is neither a Message-ID nor an
    archive URL of one."""
    value = text.strip()
    if value.startswith(("http://", "https://")):
        return _from_url(value)
    bare = value.removeprefix("<").removesuffix(">").strip()
    if bare.startswith("id:"):  # notmuch / mutt style
        bare = bare[3:]
    return MessageRef(bare) if _MSGID.match(bare) else None


def _from_url(url: str) -> MessageRef | None:
    parts = urllib.parse.urlsplit(url)
    # Keep the escaped form to split on "/": a Message-ID may hold an escaped "/" (%2F).
    segments = parts.path.split("/")[1:]
    while segments and segments[-1] in _VIEWS:
        segments.pop()
    if not segments:
        return None
    msgid = urllib.parse.unquote(segments[-1]).removeprefix("<").removesuffix(">")
    if not _URL_MSGID.match(msgid):
        return None
    before = segments[:-1]
    if parts.hostname == "patch.msgid.link" or not before:
        return MessageRef(msgid)
    if len(before) != 1:
        return None  # /<list>/<msgid>/ is the only shape with a list in it
    name = urllib.parse.unquote(before[0])
    return MessageRef(msgid, None if name in _ANY_LIST else name)


def looks_like_message_ref(text: str) -> bool:
    return parse_message_ref(text) is not None
