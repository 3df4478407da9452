"""parse_message: decoding (MIME, transfer encodings, charsets) and bad input."""

from __future__ import annotations

import base64

import pytest

from bot.errors import InputError
from bot.intake.mail import parse_message


def mail(headers: str, body: bytes = b"hello\n") -> bytes:
    return headers.strip("\n").encode() + b"\n\n" + body


BASIC = """
From: Ada Lovelace <ada@example.org>
To: kvm@vger.kernel.org, "Hopper, Grace" <grace@example.org>
Cc: =?utf-8?q?J=C3=B6rg?= <joerg@example.org>
Subject: =?utf-8?q?=5BPATCH=5D_KVM=3A_fix_d=C3=A9j=C3=A0_vu?=
Date: Fri, 01 Mar 2024 10:00:00 +0100
Message-Id: <basic@example.org>
In-Reply-To: <parent@example.org>
References: <root@example.org>
 <parent@example.org>
"""


def test_headers_decoded() -> None:
    m = parse_message(mail(BASIC))
    assert m.msgid == "basic@example.org"
    assert m.subject == "[PATCH] KVM: fix déjà vu"
    assert m.sender.email == "ada@example.org" and m.sender.name == "Ada Lovelace"
    assert [p.email for p in m.to] == ["kvm@vger.kernel.org", "grace@example.org"]
    assert m.to[1].name == "Hopper, Grace"
    assert m.cc[0].name == "Jörg"
    assert m.in_reply_to == "parent@example.org"
    assert m.references == ("root@example.org", "parent@example.org")
    assert m.date is not None and m.date.utcoffset() is not None
    assert m.date.hour == 10


@pytest.mark.parametrize(
    ("cte", "charset", "encoded"),
    [
        ("base64", "utf-8", base64.encodebytes("Grüße, +diff\n".encode())),
        ("quoted-printable", "utf-8", b"Gr=C3=BC=C3=9Fe, +diff\n"),
        ("8bit", "iso-8859-1", "Grüße, +diff\n".encode("latin-1")),
        ("8bit", "utf-8", "Grüße, +diff\n".encode()),
    ],
)
def test_body_transfer_encodings_and_charsets(cte: str, charset: str, encoded: bytes) -> None:
    raw = mail(BASIC + f"Content-Type: text/plain; charset={charset}\n"
               f"Content-Transfer-Encoding: {cte}\n", encoded)
    assert parse_message(raw).body == "Grüße, +diff\n"


def test_multipart_takes_text_and_patch_attachment_not_html() -> None:
    body = (b"--XX\nContent-Type: text/plain; charset=utf-8\n\nSee attached.\n"
            b"--XX\nContent-Type: text/html\n\n<p>html junk</p>\n"
            b"--XX\nContent-Type: text/x-patch; name=a.patch\nContent-Transfer-Encoding: base64\n\n"
            + base64.encodebytes(b"diff --git a/x b/x\n") + b"--XX--\n")
    m = parse_message(mail(BASIC + 'Content-Type: multipart/mixed; boundary="XX"\n', body))
    assert "See attached." in m.body
    assert "diff --git a/x b/x" in m.body
    assert "html junk" not in m.body


def test_crlf_message_is_normalized() -> None:
    raw = mail(BASIC, b"line one\nline two\n").replace(b"\n", b"\r\n")
    m = parse_message(raw)
    assert m.msgid == "basic@example.org"
    assert m.body == "line one\nline two\n"


# --- bad input: each error names the message and the problem -----------------------------


def test_no_message_id() -> None:
    raw = mail("From: a@b.c\nSubject: [PATCH] lost\n")
    with pytest.raises(InputError, match=r"without Message-ID.*\[PATCH\] lost.*no Message-ID"):
        parse_message(raw)


def test_over_size_names_message() -> None:
    raw = mail(BASIC, b"x" * (50 * 1024 * 1024))
    with pytest.raises(InputError, match=r"<basic@example.org>.*over the 16777216-byte limit"):
        parse_message(raw)


def test_nul_in_headers() -> None:
    raw = mail(BASIC.replace("Subject: ", "Subject: a\0b "))
    with pytest.raises(InputError, match=r"<basic@example.org>: NUL byte in headers"):
        parse_message(raw)


def test_bare_cr_in_headers() -> None:
    raw = mail(BASIC.replace("Subject: ", "Subject: evil\rBcc: x@y.z "))
    with pytest.raises(InputError, match=r"<basic@example.org>: bare CR in headers"):
        parse_message(raw)


def test_encoded_newline_in_header() -> None:
    raw = mail(BASIC.replace("Subject: =?utf-8?q?=5BPATCH=5D_KVM=3A_fix_d=C3=A9j=C3=A0_vu?=",
                             "Subject: =?utf-8?q?hi=0D=0ABcc=3A_victim=40example=2Eorg?="))
    with pytest.raises(InputError, match=r"<basic@example.org>: CR/LF/NUL in Subject header"):
        parse_message(raw)


def test_unknown_charset_not_utf8() -> None:
    raw = mail(BASIC + "Content-Type: text/plain; charset=x-klingon\n", b"\xff\xfe\xfd\n")
    with pytest.raises(InputError, match=r"<basic@example.org>: unknown charset 'x-klingon'"):
        parse_message(raw)


def test_unknown_charset_but_utf8_is_accepted() -> None:
    raw = mail(BASIC + "Content-Type: text/plain; charset=x-klingon\n", "ok ü\n".encode())
    assert parse_message(raw).body == "ok ü\n"


def test_undecodable_utf8_body() -> None:
    raw = mail(BASIC + "Content-Type: text/plain; charset=utf-8\n", b"bad \xc3\x28 bytes\n")
    with pytest.raises(InputError, match=r"<basic@example.org>: body is not valid utf-8"):
        parse_message(raw)


def test_broken_base64() -> None:
    raw = mail(BASIC + "Content-Transfer-Encoding: base64\n", b"abc\n")
    with pytest.raises(InputError, match=r"<basic@example.org>: broken base64"):
        parse_message(raw)


def test_broken_mime_multipart_without_boundary_still_parses_text() -> None:
    # A multipart with a boundary that never appears: the email package records a defect;
    # kbot must not crash, and the message carries no usable text.
    raw = mail(BASIC + 'Content-Type: multipart/mixed; boundary="NOPE"\n', b"just text\n")
    m = parse_message(raw)
    assert m.msgid == "basic@example.org"
    assert "diff" not in m.body
