"""Subject markers: `Re: [RFC PATCH v2 3/7] KVM: x86: foo` -> SubjectInfo.

Prefixes are kept (RFC, RESEND, 5.10, kvm-unit-tests, net-next...) so config filters can skip
them; `vN` and `n/m` are taken out as the version and the index/total.
"""

from __future__ import annotations

import re

from bot.intake.model import SubjectInfo

# Reply and forward markers in the languages mail clients localize them to.
_REPLY = re.compile(r"^\s*(?:re|aw|sv|antw|odp|wg|fw|fwd)\s*(?:\[\d+\])?\s*:\s*", re.I)
_BRACKET = re.compile(r"^\s*\[([^\[\]]*)\]\s*")
_VERSION = re.compile(r"^v(\d{1,4})$", re.I)
_GLUED_VERSION = re.compile(r"^(PATCH|RFC|RESEND)v(\d{1,4})$", re.I)  # [PATCHv2]
_COUNTER = re.compile(r"^0*(\d{1,5})/0*(\d{1,5})$")
_FOLD = re.compile(r"\r?\n[ \t]*")
_SPACE = re.compile(r"\s+")


def clean(subject: str) -> str:
    """Unfold a (possibly folded) subject and squeeze its whitespace."""
    return _SPACE.sub(" ", _FOLD.sub(" ", subject)).strip()


def parse_subject(subject: str) -> SubjectInfo:
    text = clean(subject)
    is_reply = False
    prefixes: list[str] = []
    version: int | None = None
    index: int | None = None
    total: int | None = None
    while True:
        m = None if prefixes or index is not None else _REPLY.match(text)
        if m:
            is_reply = True
            text = text[m.end():]
            continue
        b = _BRACKET.match(text)
        if b:
            inner = b.group(1).replace(",", " ")
            for word in inner.split():
                if (v := _VERSION.match(word)) is not None:
                    version = int(v.group(1))
                elif (g := _GLUED_VERSION.match(word)) is not None:
                    prefixes.append(g.group(1))
                    version = int(g.group(2))
                elif (c := _COUNTER.match(word)) is not None:
                    index, total = int(c.group(1)), int(c.group(2))
                else:
                    prefixes.append(word)
            text = text[b.end():]
            continue
        break
    return SubjectInfo(
        prefixes=tuple(prefixes),
        version=version if version and version > 0 else 1,
        index=index,
        total=total,
        is_reply=is_reply,
        title=text.strip(),
        version_given=version is not None and version > 0,
    )


def normalized_title(title: str) -> str:
    """A title for comparing revisions: case and whitespace do not matter."""
    return _SPACE.sub(" ", title).strip().lower()
