"""Raw messages out of mbox/mboxrd files, maildirs, single .eml files and gzipped thread mboxes.

Streaming: a file is read line by line and at most one message (bounded by `max_bytes`) is held
at a time, so memory does not grow with the size of the mailbox. Broken pieces (an over-size
message, a truncated file, junk before the first `From ` line) become `ParseProblem` values that
name where they were, not an exception that ends the whole stream.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bot.errors import InputError
from bot.intake.mail import DEFAULT_MAX_BYTES, _raw_msgid

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_MAX_INFLATED = 256 * 1024 * 1024
# For a caller that keeps every message (a thread or a series file, parsed into memory): a
# small .gz of millions of tiny mails would cost gigabytes once parsed. Streaming callers
# (the intake benchmark over a whole list archive) pass None: they hold one message at a time.
DEFAULT_MAX_MESSAGES = 20_000
_MBOXRD_UNQUOTE = re.compile(rb"(?m)^>(>*From )")
_SEP = re.compile(rb"\n\r?\nFrom ")
_READ_CHUNK = 1 << 18
_SNIFF = 4096
# An mbox separator with its asctime date: tells an mbox with junk in front from a single mail.
_FROM_LINE = re.compile(rb"(?m)^From \S+ +\w{3} \w{3} +\d{1,2} \d{2}:\d{2}:\d{2} \d{4}$")


@dataclass(frozen=True)
class RawMail:
    """One message's bytes and where it came from (file and message number / byte offset)."""

    data: bytes
    origin: str


@dataclass(frozen=True)
class ParseProblem:
    """A piece of the input that is not a usable message, and why. Recorded, never fatal."""

    origin: str
    reason: str
    msgid: str = ""

    def __str__(self) -> str:
        who = f" <{self.msgid}>" if self.msgid else ""
        return f"{self.origin}{who}: {self.reason}"


Source = str | os.PathLike[str] | bytes


class _LimitedReader(io.RawIOBase):
    """Wraps a decompressing stream; raises InputError once more than `limit` bytes came out."""

    def __init__(self, inner: gzip.GzipFile, limit: int, name: str) -> None:
        self._inner = inner
        self._limit = limit
        self._count = 0
        self._name = name

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buf))
        self._count += len(data)
        if self._count > self._limit:
            raise InputError(f"{self._name}: inflates past the {self._limit}-byte limit")
        buf[: len(data)] = data
        return len(data)


def _open(source: Source, max_inflated: int) -> tuple[BinaryIO, str]:
    if isinstance(source, bytes):
        name = "<bytes>"
        stream: BinaryIO = io.BytesIO(source)
    else:
        name = os.fspath(source)
        stream = open(source, "rb")
    head = stream.read(2)
    stream.seek(0)
    if head == GZIP_MAGIC:
        gz = gzip.GzipFile(fileobj=stream, mode="rb")
        limited = _LimitedReader(gz, max_inflated, name)
        return io.BufferedReader(limited, _READ_CHUNK), name
    return stream, name


def _unquote(data: bytes) -> bytes:
    return _MBOXRD_UNQUOTE.sub(rb"\1", data) if b">From " in data else data


def _iter_mbox(
    stream: BinaryIO, name: str, max_bytes: int
) -> Iterator[RawMail | ParseProblem]:
    """Split on `From ` lines that follow a blank line; undo mboxrd quoting (one `>` less).

    Reads big blocks and cuts them with a regex (a per-line Python loop is the slow part of
    intake); a message over `max_bytes` is skipped up to the next separator, keeping its head
    to name it.
    """
    buf = b""
    base = 0  # file offset of buf[0]
    number = 0
    skipping: bytes | None = None  # head of an over-size message being skipped
    skip_start = 0
    started = False
    scan_from = 1

    def where(offset: int) -> str:
        return f"{name}: message {number} (byte {offset})"

    def emit(block: bytes, offset: int) -> RawMail | ParseProblem:
        # block: "From ...\n" + message + "\n" (the separator's blank line is not in it)
        nl = block.find(b"\n")
        data = _unquote(block[nl + 1:] if nl >= 0 else b"")
        if len(data) > max_bytes:
            return ParseProblem(where(offset), f"over the {max_bytes}-byte message limit",
                                _raw_msgid(data[:65536]))
        return RawMail(data, where(offset))

    try:
        while True:
            chunk = stream.read(_READ_CHUNK)
            if chunk:
                buf += chunk
            if not started:
                if buf.startswith(b"From "):
                    started = True
                    number = 1
                else:
                    m = _SEP.search(buf)
                    if m is None:
                        if not chunk:
                            if buf.strip():
                                yield ParseProblem(
                                    f"{name}: byte 0",
                                    f"no From line: {len(buf)} bytes are not an mbox")
                            return
                        if len(buf) > max_bytes:
                            yield ParseProblem(f"{name}: byte 0", "no From line in the first "
                                               f"{max_bytes} bytes: not an mbox")
                            return
                        continue
                    junk = buf[: m.start() + 1]
                    if junk.strip():
                        yield ParseProblem(f"{name}: byte 0",
                                           f"{len(junk)} bytes before the first From line")
                    cut = m.end() - len(b"From ")
                    base += cut
                    buf = buf[cut:]
                    started = True
                    number = 1
            pos = 0
            while True:
                m = _SEP.search(buf, max(pos + 1, scan_from))
                if m is None:
                    break
                end = m.start() + 1  # keep the message's own last newline
                if skipping is not None:
                    yield ParseProblem(where(skip_start),
                                       f"over the {max_bytes}-byte message limit",
                                       _raw_msgid(skipping))
                    skipping = None
                else:
                    yield emit(buf[pos:end], base + pos)
                number += 1
                pos = m.end() - len(b"From ")
            if pos:
                base += pos
                buf = buf[pos:]
            # Next time, search only the new data (and a few bytes of overlap for a separator
            # split across reads): a big message is not rescanned on every read.
            scan_from = max(1, len(buf) - 8)
            if not chunk:
                break
            if len(buf) > max_bytes + 65536:
                # Over the limit and no separator yet: keep the head to name it, drop the rest
                # but a tail long enough to hold a separator split across reads.
                if skipping is None:
                    skipping, skip_start = buf[:65536], base
                base += len(buf) - 16
                buf = buf[-16:]
                scan_from = 1
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, InputError) as exc:
        yield ParseProblem(where(base), f"compressed stream is broken or truncated: {exc}",
                           _raw_msgid(skipping or buf[:65536]))
        return
    if not started:
        return
    if skipping is not None:
        yield ParseProblem(where(skip_start), f"over the {max_bytes}-byte message limit",
                           _raw_msgid(skipping))
        return
    if not buf.strip():
        return
    if not buf.endswith(b"\n"):
        yield ParseProblem(where(base), "mbox is truncated: the last message ends mid-line",
                           _raw_msgid(buf[:65536]))
        return
    if buf.endswith(b"\n\n"):
        buf = buf[:-1]
    yield emit(buf, base)


def _read_bounded(path: Path, max_bytes: int) -> RawMail | ParseProblem:
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        return ParseProblem(str(path), f"over the {max_bytes}-byte message limit", _raw_msgid(data))
    return RawMail(data, str(path))


def iter_mail(
    source: Source,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_inflated: int = DEFAULT_MAX_INFLATED,
    max_messages: int | None = None,
) -> Iterator[RawMail | ParseProblem]:
    """Every message of `source` (path or bytes) as RawMail, or a ParseProblem for a bad piece.

    A path may be an mbox/mboxrd file, a gzipped mbox, a maildir (cur/ and new/, in name order)
    or a single message file; bytes may be any of the file forms. With `max_messages`, a source
    holding more pieces than that yields the first ones, then raises InputError naming the
    limit.
    """
    if max_messages is None:
        yield from _iter_mail(source, max_bytes=max_bytes, max_inflated=max_inflated)
        return
    name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    items = _iter_mail(source, max_bytes=max_bytes, max_inflated=max_inflated)
    try:
        for count, item in enumerate(items, start=1):
            if count > max_messages:
                raise InputError(f"{name}: more than {max_messages} messages (the limit for "
                                 f"one thread or series file); read the first {max_messages}")
            yield item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _iter_mail(
    source: Source, *, max_bytes: int, max_inflated: int
) -> Iterator[RawMail | ParseProblem]:
    if not isinstance(source, bytes) and Path(source).is_dir():
        root = Path(source)
        subdirs = [root / "cur", root / "new"]
        if not any(d.is_dir() for d in subdirs):
            raise InputError(f"{root}: a directory but not a maildir (no cur/ or new/)")
        for d in subdirs:
            if d.is_dir():
                for entry in sorted(d.iterdir()):
                    if entry.is_file():
                        yield _read_bounded(entry, max_bytes)
        return
    if not isinstance(source, bytes) and not Path(source).exists():
        raise InputError(f"{os.fspath(source)}: no such file")
    stream, name = _open(source, max_inflated)
    try:
        try:
            first = stream.peek(_SNIFF)[:_SNIFF] if hasattr(stream, "peek") else b""
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError, InputError) as exc:
            yield ParseProblem(name, f"compressed stream is broken: {exc}")
            return
        if not first and not hasattr(stream, "peek"):
            # No peek (BytesIO): read and rewind. A peekable stream that shows nothing is
            # empty, and may not seek (a gzip stream that inflates to nothing).
            first = stream.read(_SNIFF)
            stream.seek(0)
        if first.startswith(b"From ") or _FROM_LINE.search(first):
            yield from _iter_mbox(stream, name, max_bytes)
            return
        # A single message (.eml, /raw): bounded read.
        try:
            data = stream.read(max_bytes + 1)
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError, InputError) as exc:
            yield ParseProblem(name, f"compressed stream is broken or truncated: {exc}")
            return
        if not data.strip():
            yield ParseProblem(name, "empty input")
        elif len(data) > max_bytes:
            yield ParseProblem(name, f"over the {max_bytes}-byte message limit", _raw_msgid(data))
        else:
            yield RawMail(data, name)
    finally:
        stream.close()


def _log_problem(problem: ParseProblem) -> None:
    log.warning("skipped %s", problem)


def iter_raw(
    source: Source,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_inflated: int = DEFAULT_MAX_INFLATED,
    on_problem: Callable[[ParseProblem], None] | None = None,
    max_messages: int | None = None,
) -> Iterator[bytes]:
    """The raw bytes of each good message; each bad piece goes to `on_problem` (default: log).
    Over `max_messages` pieces: InputError, after the first ones (see iter_mail)."""
    report = on_problem or _log_problem
    for item in iter_mail(source, max_bytes=max_bytes, max_inflated=max_inflated,
                          max_messages=max_messages):
        if isinstance(item, ParseProblem):
            report(item)
        else:
            yield item.data
