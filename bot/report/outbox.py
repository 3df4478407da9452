"""The outbox: every report kbot makes, as a mail a person can read, in the state directory.

It is the embedded default delivery (nothing leaves the machine), the place staging keeps the
mails the allowlist holds back, and the record `kbot outbox` lists. Writing is idempotent by
Message-ID, so a retry after a crash never leaves two copies: a maildir file is named after a
hash of the Message-ID (written in tmp/, renamed into new/), an mbox is searched before an
append (under an flock).
"""

from __future__ import annotations

import email
import email.policy
import fcntl
import hashlib
import os
import re
import time
from pathlib import Path
from typing import Protocol

from bot.errors import InfraError

_MSGID_HEADER = re.compile(rb"^Message-ID:[ \t]*<([^>\r\n]+)>", re.IGNORECASE | re.MULTILINE)


def msgid_of(raw: bytes) -> str:
    head = raw.split(b"\n\n", 1)[0]
    m = _MSGID_HEADER.search(head)
    if m is None:
        raise InfraError("outbox: a stored report has no Message-ID header")
    return m.group(1).decode("ascii", "replace")


class Outbox(Protocol):
    path: Path

    def put(self, raw: bytes) -> Path: ...
    def has(self, msgid: str) -> bool: ...
    def get(self, msgid: str) -> bytes | None: ...
    def msgids(self) -> list[str]: ...


class MaildirOutbox:
    def __init__(self, path: Path) -> None:
        self.path = path
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _name(msgid: str) -> str:
        return "kbot." + hashlib.sha256(msgid.encode()).hexdigest()[:32]

    def _find(self, msgid: str) -> Path | None:
        name = self._name(msgid)
        for sub in ("new", "cur"):
            for p in (self.path / sub).glob(name + "*"):
                return p
        return None

    def put(self, raw: bytes) -> Path:
        msgid = msgid_of(raw)
        found = self._find(msgid)
        if found is not None:
            return found
        name = self._name(msgid)
        tmp = self.path / "tmp" / f"{name}.{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        final = self.path / "new" / name
        os.replace(tmp, final)
        return final

    def has(self, msgid: str) -> bool:
        return self._find(msgid) is not None

    def get(self, msgid: str) -> bytes | None:
        p = self._find(msgid)
        return p.read_bytes() if p else None

    def msgids(self) -> list[str]:
        out = []
        for sub in ("new", "cur"):
            for p in sorted((self.path / sub).glob("kbot.*")):
                out.append(msgid_of(p.read_bytes()))
        return out


_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


class MboxOutbox:
    """mboxrd: a body line starting with ">*From " gets one more ">"."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)

    def _messages(self) -> list[bytes]:
        data = self.path.read_bytes()
        if not data:
            return []
        parts = re.split(rb"^From [^\n]*\n", data, flags=re.MULTILINE)
        out = []
        for part in parts:
            if not part.strip():
                continue
            body = part[:-1] if part.endswith(b"\n\n") else part
            out.append(re.sub(rb"^>(>*From )", rb"\1", body, flags=re.MULTILINE))
        return out

    def put(self, raw: bytes) -> Path:
        msgid = msgid_of(raw)
        with open(self.path, "r+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            if msgid in self.msgids():
                return self.path
            fh.seek(0, os.SEEK_END)
            stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime())
            body = _FROM_LINE.sub(rb">\1", raw)
            if not body.endswith(b"\n"):
                body += b"\n"
            fh.write(b"From kbot@localhost " + stamp.encode() + b"\n" + body + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        return self.path

    def has(self, msgid: str) -> bool:
        return msgid in self.msgids()

    def get(self, msgid: str) -> bytes | None:
        for m in self._messages():
            if msgid_of(m) == msgid:
                return m
        return None

    def msgids(self) -> list[str]:
        return [msgid_of(m) for m in self._messages()]


def open_outbox(state_dir: Path, fmt: str) -> Outbox:
    if fmt == "mbox":
        return MboxOutbox(state_dir / "outbox.mbox")
    return MaildirOutbox(state_dir / "outbox")


def parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg
