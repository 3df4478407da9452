"""Property tests: mail, mbox and series parsing never crash on hostile input.

Whatever bytes arrive from a list, intake either returns values or raises the project's own
InputError (which callers record as a skip). Random bytes, and generators that look like mail:
header lines with encoded words and odd charsets, folded and CRLF lines, MIME parts with broken
transfer encodings, mbox `From ` lines, gzip streams, and threads of patch mails whose subjects,
dates and references are all over the place.
"""

from __future__ import annotations

import base64
import gzip
import zlib
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.errors import InputError
from bot.intake.mail import parse_message
from bot.intake.mbox import ParseProblem, RawMail, iter_mail, iter_raw
from bot.intake.model import Message, Person, Series
from bot.intake.patch import footers, parse_patch_body, parse_trailers, patch_id
from bot.intake.series import assemble_all
from bot.intake.subject import parse_subject

FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_CHARSETS = ["utf-8", "us-ascii", "iso-8859-1", "windows-1252", "utf-7", "utf-16", "x-unknown",
             "", "utf8\0", "koi8-r", "shift_jis", "iso-2022-jp", "gb2312", "cp1252'", "idna"]
_CTES = ["7bit", "8bit", "base64", "quoted-printable", "binary", "x-uuencode", "bogus", ""]
_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_JUNK = st.sampled_from(["", " ", "\t", "\r", "\r\n", "\n ", "=?", "?=", "<", ">", '"', ",",
                         ";", ":", "\\", "@", "(", ")", "\0", "\x1b[31m", "\u200b", "\udcff"])


@st.composite
def encoded_word(draw: st.DrawFn) -> str:
    charset = draw(st.sampled_from(_CHARSETS))
    enc = draw(st.sampled_from(["B", "Q", "b", "q", "X"]))
    payload = draw(st.binary(max_size=30))
    if enc.upper() == "B" and draw(st.booleans()):
        text = base64.b64encode(payload).decode()
    else:
        text = "".join(chr(b) if 33 <= b < 127 and b != 63 else f"={b:02X}" for b in payload)
    return f"=?{charset}?{enc}?{text}?="


_VALUE_PIECE = st.one_of(_TEXT, encoded_word(), _JUNK,
                         st.sampled_from(["<a@b>", "a@b", "Name <x@y.z>", "\"Q\" <q@r>",
                                          "Mon, 1 Jan 2024 00:00:00 +0000",
                                          "Mon, 1 Jan 99999999999999999999 00:00:00 +0000",
                                          "Tue, 31 Feb 2024 25:61:61 +9999", "0 0 0 0",
                                          "text/plain; charset=", "multipart/mixed; boundary=",
                                          "[PATCH v2 3/7] KVM: x86: fix", "Re: [PATCH 0/3] x"]))
_HEADER_NAMES = st.sampled_from([
    "Subject", "From", "To", "Cc", "Message-ID", "Message-Id", "In-Reply-To", "References",
    "Date", "Content-Type", "Content-Transfer-Encoding", "MIME-Version", "Content-Disposition",
    "X-Junk", "subject", "FROM", "", " Subject", "Subject ", "Sub:ject", "From ",
])


_NUMBER = st.one_of(st.integers(-99, 99999).map(str), st.integers(0, 10**30).map(str),
                   st.sampled_from(["", "-0", "9" * 5000, "\u0663", "1e9", "0x10"]))


@st.composite
def date_value(draw: st.DrawFn) -> str:
    """RFC 2822 dates with any numbers in any field (email.utils trusts them)."""
    n = draw(st.lists(_NUMBER, min_size=6, max_size=6))
    tz = draw(st.sampled_from(["+0000", "-2359", "+9999", "GMT", "EST", "", "+" + "9" * 25]))
    mon = draw(st.sampled_from(["Jan", "Feb", "xyz", ""]))
    return f"Mon, {n[0]} {mon} {n[1]} {n[2]}:{n[3]}:{n[4]} {tz}"


@st.composite
def header_block(draw: st.DrawFn) -> bytes:
    lines: list[str] = []
    if draw(st.booleans()):
        lines.append(f"Message-ID: <{draw(st.text(min_size=1, max_size=12))}@x>")
    if draw(st.booleans()):
        lines.append(f"Date: {draw(date_value())}")
    if draw(st.booleans()):
        refs = draw(st.lists(st.sampled_from(["<a@x>", "b@x", "<c@x", "<>", "< @x>", "<\x01@x>"]),
                             max_size=4))
        lines.append(f"{draw(st.sampled_from(['References', 'In-Reply-To']))}: {' '.join(refs)}")
    for _ in range(draw(st.integers(0, 8))):
        name = draw(_HEADER_NAMES)
        value = "".join(draw(st.lists(_VALUE_PIECE, max_size=4)))
        if draw(st.integers(0, 4)) == 0:
            value += "\n\t" + draw(_TEXT)  # folded
        lines.append(f"{name}: {value}")
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    return eol.join(lines).encode("utf-8", errors="surrogateescape") + eol.encode()


@st.composite
def body_part(draw: st.DrawFn, depth: int = 0) -> bytes:
    """A body: plain text (maybe a diff) or a multipart with odd parts."""
    text = draw(st.sampled_from([
        "",
        "Hello\n",
        "msg\n---\ndiff --git a/x.c b/x.c\n--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n-a\n+b\n",
        "diff --git a/x.c b/x.c\n--- a/x.c\n+++ b/x.c\n@@ -1,99999999999 +1 @@\n-a\n",
        "--- a/x\n+++ b/x\n@@ -" + "9" * 5000 + " +1 @@\n",
        "> quoted\n> diff --git a/x b/x\n",
    ])) + draw(_TEXT)
    data = text.encode("utf-8", errors="surrogateescape")
    if depth < 2 and draw(st.integers(0, 3)) == 0:
        boundary = draw(st.sampled_from(["b", "==x==", "", "a b", "\"q\""]))
        parts = [draw(body_part(depth + 1)) for _ in range(draw(st.integers(0, 3)))]
        out = b""
        for part in parts:
            ctype = draw(st.sampled_from(["text/plain", "text/x-patch", "text/x-diff",
                                          "application/octet-stream", "multipart/mixed",
                                          "message/rfc822", "text/html", "bogus"]))
            head = (f"Content-Type: {ctype}; charset={draw(st.sampled_from(_CHARSETS))}\n"
                    f"Content-Transfer-Encoding: {draw(st.sampled_from(_CTES))}\n"
                    f"Content-Disposition: attachment; filename=\"x.patch\"\n\n")
            out += f"--{boundary}\n".encode() + head.encode("utf-8", "surrogateescape") + part
        if draw(st.booleans()):
            out += f"--{boundary}--\n".encode()
        return (f"Content-Type: multipart/mixed; boundary=\"{boundary}\"\n\n".encode() + out)
    cte = draw(st.sampled_from(_CTES))
    if cte == "base64" and draw(st.booleans()):
        data = base64.b64encode(data) + draw(st.sampled_from([b"", b"=", b"!!", b"\n===="]))
    return (f"Content-Type: text/plain; charset={draw(st.sampled_from(_CHARSETS))}\n"
            f"Content-Transfer-Encoding: {cte}\n\n").encode() + data


@st.composite
def mail_bytes(draw: st.DrawFn) -> bytes:
    body = draw(body_part())
    # body_part starts with its own MIME headers: they join the message's header block.
    return draw(header_block()) + body + draw(st.binary(max_size=40))


def _parse_or_input_error(raw: bytes) -> Message | None:
    try:
        msg = parse_message(raw)
    except InputError:
        return None
    assert msg.msgid and not any(c in msg.msgid for c in "<>\r\n")
    assert "\n" not in msg.subject and "\r" not in msg.subject
    return msg


@FAST
@given(st.binary(max_size=3000))
def test_parse_message_on_arbitrary_bytes(raw: bytes) -> None:
    _parse_or_input_error(raw)


@FAST
@given(mail_bytes())
@example(b"Message-ID: <a@x>\nDate: Mon, 1 Jan 99999999999999999999 00:00:00 +0000\n\n")
@example(b"Message-ID: <a@x>\nDate: Mon, 1 Jan 2024 00:00:00 +99999999999999999999\n\n")
@example(b"Message-ID: <\xc2\x80,@x>\n\n")  # found: the msg-id parser cut it to `<\x80`
@example(b"Message-ID: < @x>\n\n")
def test_parse_message_on_mail_like_bytes(raw: bytes) -> None:
    _parse_or_input_error(raw)


_FROM_LINES = st.sampled_from([
    b"From 1234abcd Mon Sep 17 00:00:00 2001\n", b"From a@b Thu Jan  1 00:00:00 1970\n",
    b"From \n", b"From x\n", b">From x\n", b">>From x\n", b"From a@b Mon Jan 99 99:99:99 0\n",
    b"\n", b"\r\n", b"From - \r\n",
])


@st.composite
def mbox_bytes(draw: st.DrawFn) -> bytes:
    pieces: list[bytes] = []
    for _ in range(draw(st.integers(0, 5))):
        pieces.append(draw(_FROM_LINES))
        pieces.append(draw(st.one_of(mail_bytes(), st.binary(max_size=200))))
        pieces.append(draw(st.sampled_from([b"\n", b"", b"\n\n", b"\r\n"])))
    data = draw(st.binary(max_size=30)) + b"".join(pieces)
    shape = draw(st.sampled_from(["plain", "gzip", "gzip-cut", "gzip-flipped", "zlib"]))
    if shape == "plain":
        return data
    packed = gzip.compress(data) if shape != "zlib" else zlib.compress(data)
    if shape == "gzip-cut":
        return packed[: draw(st.integers(2, max(2, len(packed) - 1)))]
    if shape == "gzip-flipped":
        at = draw(st.integers(10, max(10, len(packed) - 1)))
        return packed[:at] + bytes([packed[at % len(packed)] ^ 0xFF]) + packed[at + 1:]
    return packed


def _drain_mbox(source: bytes) -> list[RawMail]:
    mails: list[RawMail] = []
    try:
        for item in iter_mail(source, max_bytes=4096, max_inflated=64 * 1024, max_messages=50):
            assert isinstance(item, RawMail | ParseProblem)
            if isinstance(item, RawMail):
                assert len(item.data) <= 4096
                mails.append(item)
    except InputError:
        pass
    problems: list[ParseProblem] = []
    raws = list(iter_raw(source, max_bytes=4096, max_inflated=64 * 1024,
                         on_problem=problems.append))
    assert raws[: len(mails)] == [m.data for m in mails]
    return mails


@FAST
@given(st.binary(max_size=3000))
def test_mbox_reader_on_arbitrary_bytes(source: bytes) -> None:
    _drain_mbox(source)


@FAST
@given(mbox_bytes())
@example(gzip.compress(b""))  # found: an empty gzip stream was rewound (not seekable)
def test_mbox_reader_on_mbox_like_bytes(source: bytes) -> None:
    for mail in _drain_mbox(source):
        _parse_or_input_error(mail.data)


# -- series assembly over odd threads ---------------------------------------------------------

_SUBJECTS = st.one_of(
    st.builds(lambda pre, v, i, n, t: f"{pre}[PATCH{v} {i}/{n}] {t}",
              st.sampled_from(["", "Re: ", "AW: ", "Fwd: ", "[RFC]", "Re: Re: "]),
              st.sampled_from(["", " v2", " v0", " v9999", "v3", " V2"]),
              st.integers(-1, 12), st.integers(-1, 12), st.sampled_from(["KVM: x", "", " "])),
    st.text(max_size=40),
    st.sampled_from(["[PATCH 00000/00000]", "[PATCH 99999/0]", "[]", "[[PATCH 1/2]]",
                     "[PATCH 1/2][PATCH 2/2] x", "Re:[PATCH] x", "[PATCHv2 1/1] y"]),
)
_DIFF = ("diff --git a/x.c b/x.c\nindex 1111111..2222222 100644\n--- a/x.c\n+++ b/x.c\n"
         "@@ -1 +1 @@\n-a\n+b\n")
_BODIES = st.sampled_from([
    "",
    "Looks good.\n\nReviewed-by: R <r@x>\n",
    "msg\n\nSigned-off-by: A <a@x>\n---\n" + _DIFF,
    "From: Other <o@x>\nSubject: real title\n\nbody\n---\n" + _DIFF + "-- \n2.40\n\n"
    "base-commit: " + "a" * 40 + "\n",
    "msg\n---\n" + _DIFF.replace("@@ -1 +1 @@", "@@ -1,3 +1,3 @@"),
    "msg\n---\ndiff --git a/x b/x\nGIT binary patch\nliteral 99999999999999999999999\n",
    "msg\n---\n" + _DIFF.replace("@@ -1 +1 @@", "@@ -1," + "9" * 5000 + " +1 @@"),
    "msg\n---\n--- a/x\n+++ b/x\n@@ -" + "7" * 4400 + " +1 @@\n-a\n+b\n",
    "> quoted\n> " + _DIFF,
])
_DATES = st.one_of(
    st.none(),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                 timezones=st.sampled_from([UTC, timezone(timedelta(hours=14)),
                                            timezone(-timedelta(hours=23, minutes=59))])),
)


@st.composite
def thread(draw: st.DrawFn) -> list[Message]:
    count = draw(st.integers(1, 12))
    ids = [f"m{i}@x" for i in range(count)] + ["gone@x"]
    out: list[Message] = []
    for i in range(count):
        parent = draw(st.sampled_from([None, *ids]))  # may be itself, a later mail, a cycle
        refs = tuple(draw(st.lists(st.sampled_from(ids), max_size=4)))
        out.append(Message(
            msgid=draw(st.sampled_from(ids[:count])) if draw(st.integers(0, 9)) == 0 else ids[i],
            subject=draw(_SUBJECTS), sender=Person("A", draw(st.sampled_from(["a@x", "B@X"]))),
            date=draw(_DATES), in_reply_to=parent, references=refs, to=(), cc=(),
            body=draw(_BODIES), raw_size=0,
        ))
    return out


def _check_series(series: Series) -> None:
    indexes = [p.index for p in series.patches]
    assert indexes == sorted(indexes)
    assert series.version >= 1 and not set(indexes) & set(series.missing)
    assert series.patches or series.cover is not None  # a cover alone waits for its patches


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(thread())
def test_assemble_on_odd_threads(messages: list[Message]) -> None:
    assembly = assemble_all(messages)
    for s in assembly.series:
        _check_series(s)


@FAST
@given(st.lists(mail_bytes(), max_size=6))
def test_assemble_over_parsed_mail(raws: list[bytes]) -> None:
    messages = [m for raw in raws if (m := _parse_or_input_error(raw)) is not None]
    for s in assemble_all(messages).series:
        _check_series(s)


@FAST
@given(st.text(max_size=400) | _BODIES)
@example("msg\n---\n--- a/x\n+++ b/x\n@@ -1," + "9" * 5000 + " +1 @@\n-a\n")  # found: int()
@example("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1," + "9" * 5000 + " +1 @@\n-a\n")
def test_patch_body_helpers_on_any_text(body: str) -> None:
    try:
        parse_patch_body(body, "message <x@y>")
    except InputError:
        pass
    footers(body)
    parse_trailers(body)
    patch_id(body)
    parse_subject(body)
