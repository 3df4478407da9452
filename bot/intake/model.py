"""Typed values of intake: people, messages, subject markers, patches and series.

This module is the contract between intake (which fills these in) and everything downstream
(watcher, tree/apply, reports). Parsing lives in sibling modules; these are plain values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Person:
    name: str
    email: str

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email


@dataclass(frozen=True)
class Trailer:
    """One `Name: value` trailer; `source` is the Message-ID it came from (a reply) or ''."""

    name: str  # canonical case, e.g. "Reviewed-by"
    value: str
    source: str = ""


@dataclass(frozen=True)
class SubjectInfo:
    """What a subject's bracketed markers say, e.g. "[RFC PATCH v2 3/7] KVM: x86: foo"."""

    prefixes: tuple[str, ...]  # the words inside the brackets other than vN and n/m
    version: int  # 1 when no vN
    index: int | None  # n of n/m, None when absent
    total: int | None  # m of n/m
    is_reply: bool  # Re:/Fwd: etc. in front
    title: str  # the subject without markers and reply prefixes
    version_given: bool = False  # a vN marker was there (else version 1 is a guess)

    @property
    def is_patch_marker(self) -> bool:
        return any(p.upper() == "PATCH" or p.upper().endswith("PATCH") for p in self.prefixes)


@dataclass(frozen=True)
class Message:
    """One decoded mail."""

    msgid: str  # without angle brackets
    subject: str  # decoded and unfolded
    sender: Person
    date: datetime | None
    in_reply_to: str | None
    references: tuple[str, ...]
    to: tuple[Person, ...]
    cc: tuple[Person, ...]
    body: str  # the text/plain part, decoded
    raw_size: int
    headers: tuple[tuple[str, str], ...] = ()  # decoded (name, value) pairs, in order


@dataclass(frozen=True)
class Patch:
    index: int
    total: int
    message_id: str
    subject: str
    title: str
    author: Person  # From: of the mail, or the in-body From:
    date: datetime | None
    commit_message: str
    diff: str
    files: tuple[str, ...]
    patch_id: str  # as `git patch-id --stable`
    trailers: tuple[Trailer, ...]
    prefixes: tuple[str, ...] = ()
    cc: tuple[Person, ...] = ()


@dataclass(frozen=True)
class Cover:
    message_id: str
    subject: str
    title: str
    author: Person
    date: datetime | None
    body: str
    trailers: tuple[Trailer, ...] = ()


@dataclass(frozen=True)
class Series:
    version: int
    title: str  # the cover's title, else the first patch's
    prefixes: tuple[str, ...]
    total: int
    cover: Cover | None
    patches: tuple[Patch, ...]  # ordered by index; the ones present
    missing: tuple[int, ...]  # indexes 1..total not found
    base_commit: str | None = None
    prerequisite_patch_ids: tuple[str, ...] = ()
    change_id: str | None = None
    thread_root: str = ""  # Message-ID of the thread's first message
    notes: tuple[str, ...] = field(default=())  # assembly notes: duplicates dropped, etc.

    @property
    def complete(self) -> bool:
        return not self.missing and len(self.patches) == self.total

    @property
    def author(self) -> Person:
        if self.cover is not None:
            return self.cover.author
        return self.patches[0].author

    @property
    def key(self) -> str:
        """Stable identity of this revision: change-id (else cover/first patch id) + version."""
        if self.change_id:
            anchor = self.change_id
        elif self.cover is not None:
            anchor = self.cover.message_id
        else:
            anchor = self.patches[0].message_id if self.patches else self.title
        return f"{anchor}#v{self.version}"

    def files(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for p in self.patches:
            for f in p.files:
                seen.setdefault(f, None)
        return tuple(seen)

    def to_json(self) -> dict[str, Any]:
        """The `kbot series show --json` object."""
        return {
            "version": self.version,
            "title": self.title,
            "prefixes": list(self.prefixes),
            "total": self.total,
            "complete": self.complete,
            "missing": list(self.missing),
            "base_commit": self.base_commit,
            "prerequisite_patch_ids": list(self.prerequisite_patch_ids),
            "change_id": self.change_id,
            "thread_root": self.thread_root,
            "cover": (
                {"message_id": self.cover.message_id, "subject": self.cover.subject,
                 "author": str(self.cover.author)}
                if self.cover
                else None
            ),
            "patches": [
                {
                    "index": p.index,
                    "total": p.total,
                    "message_id": p.message_id,
                    "subject": p.subject,
                    "author": str(p.author),
                    "date": p.date.isoformat() if p.date else None,
                    "patch_id": p.patch_id,
                    "files": list(p.files),
                    "trailers": [
                        {"name": t.name, "value": t.value, "source": t.source}
                        for t in p.trailers
                    ],
                }
                for p in self.patches
            ],
            "notes": list(self.notes),
        }
