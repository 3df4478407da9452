"""One raw mail (bytes) -> a decoded, validated `Message`.

Mail is untrusted input: every check here names the message (its Message-ID when it has one)
and what is wrong, and raises InputError; callers turn that into a recorded skip.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import quopri
import re
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime

from bot.errors import InputError
from bot.intake.model import Message, Person

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 256 * 1024  # a header block this big is an attack or a broken file
MAX_ADDRESSES = 1000

_MSGID_RAW = re.compile(rb"^message-id:[ \t]*(?:\r?\n[ \t]+)?<?([^\s<>]+)>?", re.I | re.M)
_MSGID = re.compile(r"<([^<>\s]+)>")
_FOLD = re.compile(r"\r?\n[ \t]*")
# Parts whose text is the patch or the reply: text/plain, and diffs sent as attachments.
_TEXT_TYPES = ("text/plain", "text/x-patch", "text/x-diff")

_POLICY = email.policy.default.clone(max_line_length=None, raise_on_defect=False)
# The header block is split with compat32 (no per-header object work); values that need
# decoding go through policy.default's header registry in _header().
_PARSER = BytesParser(policy=email.policy.compat32)


def _header_end(raw: bytes, limit: int = MAX_HEADER_BYTES + 4) -> tuple[int, int] | None:
    """(end of the header block, start of the body), or None when there is no blank line."""
    lf = raw.find(b"\n\n", 0, limit)
    crlf = raw.find(b"\n\r\n", 0, limit)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 1, crlf + 3
    if lf >= 0:
        return lf + 1, lf + 2
    return None


def _raw_msgid(raw: bytes) -> str:
    """A best-effort Message-ID from the raw header block, to name a message that fails early."""
    end = _header_end(raw)
    head = raw[: end[0]] if end else raw[:MAX_HEADER_BYTES]
    found = _MSGID_RAW.search(head)
    if found is None:
        return ""
    return found.group(1).decode("ascii", errors="replace")


class _Unnamed:
    """Names a message in an error before its headers are parsed; worked out only if used."""

    def __init__(self, raw: bytes) -> None:
        self._raw = raw

    def __str__(self) -> str:
        return _name(_raw_msgid(self._raw))


def _name(msgid: str, subject: str = "") -> str:
    if msgid:
        return f"message <{msgid}>"
    if subject:
        return f"message without Message-ID (Subject: {subject[:80]!r})"
    return "message without Message-ID"


_ID_HEADERS = frozenset({"message-id", "in-reply-to", "references"})


def clean_msgid(value: str | None) -> str | None:
    """`<a@b>` -> `a@b`; a bare id is kept; None/empty/unusable -> None.

    An id goes into the store, into threading and into the In-Reply-To of kbot's reports:
    one with angle brackets or control characters in it is no id at all."""
    if not value:
        return None
    m = _MSGID.search(value)
    if m:
        found = m.group(1)
    else:
        words = value.split()
        found = words[0].strip("<>") if words else ""
    if not found or any(c in "<>" or ord(c) < 0x20 or ord(c) == 0x7F for c in found):
        return None
    return found


def _msgid_list(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    found = _MSGID.findall(value) or [v for v in value.split() if "@" in v]
    return tuple(c for v in found if (c := clean_msgid(f"<{v.strip('<>')}>")))


def _check_header_bytes(raw: bytes, who: object) -> bytes:
    """Validate the raw header block; return the message with CRLF line ends normalized to LF."""
    end = _header_end(raw)
    if end is None:
        if len(raw) > MAX_HEADER_BYTES:
            raise InputError(f"{who}: header block over {MAX_HEADER_BYTES} bytes")
        head = raw
    else:
        head = raw[: end[0]]
    if b"\0" in head:
        raise InputError(f"{who}: NUL byte in headers")
    if b"\r" in head:
        # A whole message with CRLF line ends (SMTP wire form) is fine; a lone CR is not.
        if head.replace(b"\r\n", b"").find(b"\r") >= 0:
            raise InputError(f"{who}: bare CR in headers")
        raw = raw.replace(b"\r\n", b"\n")
    return raw


def _unfold(value: str) -> str:
    if "\n" in value or "\r" in value:
        value = _FOLD.sub(" ", value)
    return value.strip()


def _header(raw: dict[str, str], name: str, who: object) -> str | None:
    """A header's decoded value. Plain ASCII values skip the (slow) header registry."""
    value = raw.get(name.lower())
    if value is None:
        return None
    if ("=?" not in value and value.isascii()) or name.lower() in _ID_HEADERS:
        # Message-IDs are never encoded words, and the header registry's msg-id parser cuts
        # an odd one short (`<\x80,@x>` became `<\x80`): take the text as it is.
        text = _unfold(value)
        if any("\udc80" <= c <= "\udcff" for c in text):
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    else:
        try:
            # Encoded-words or 8-bit text: the email package's header registry decodes them.
            text = str(_POLICY.header_factory(name, _unfold(value)))
        except Exception as exc:
            raise InputError(f"{who}: unparsable {name} header: {exc}") from exc
        # Undecodable 8-bit bytes come back as surrogates or U+FFFD: name the problem.
        if any("\udc80" <= c <= "\udcff" for c in text):
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if any(c in text for c in "\r\n\0"):
        # Encoded-words can smuggle line breaks into a header: header injection downstream.
        raise InputError(f"{who}: CR/LF/NUL in {name} header after decoding")
    return text


_SIMPLE_ADDR = re.compile(r"^\s*(?:([^<>,]*?)\s*<([^<>@\s]+@[^<>\s]+)>|([^<>\s@]+@[^<>\s]+))\s*$")


_CONTROL = re.compile(r"[\r\n\0]")


def _lenient(name: str, value: str) -> str:
    """A header decoded for display/lookup in Message.headers: never raises, no line breaks."""
    if "=?" not in value and value.isascii():
        return _unfold(value)
    try:
        text = str(_POLICY.header_factory(name, _unfold(value)))
    except Exception:
        text = _unfold(value)
    if any("\udc80" <= c <= "\udcff" for c in text):
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _CONTROL.sub(" ", text)


def _people(value: str | None) -> tuple[Person, ...]:
    if not value:
        return ()
    if not any(c in value for c in '"(;:\\'):
        # The common `Name <a@b>, c@d` form; email.utils' full RFC 5322 parser is slow.
        out: list[Person] = []
        for piece in value.split(",")[:MAX_ADDRESSES]:
            if not piece.strip():
                continue
            m = _SIMPLE_ADDR.match(piece)
            if m is None:
                break
            if m.group(2):
                out.append(Person(m.group(1).strip(), m.group(2)))
            else:
                out.append(Person("", m.group(3)))
        else:
            return tuple(out)
    pairs = getaddresses([value])[:MAX_ADDRESSES]
    return tuple(Person(n.strip(), e.strip()) for n, e in pairs if e.strip())


def _decode_part(part: EmailMessage, who: str) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    return _decode_bytes(payload, part.get_content_charset() or "us-ascii", who)


_CTYPE = re.compile(r"^\s*([A-Za-z0-9.+-]+/[A-Za-z0-9.+-]+)\s*(;.*)?$", re.S)
_CHARSET = re.compile(r";\s*charset\s*=\s*\"?([A-Za-z0-9._:+-]+)\"?", re.I)


def _decode_bytes(payload: bytes, charset: str, who: str) -> str:
    try:
        return payload.decode(charset)
    except LookupError:
        # Unknown charset label: harmless only if the bytes are plain UTF-8 anyway.
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(
                f"{who}: unknown charset {charset!r} and the body is not UTF-8"
            ) from None
    except UnicodeDecodeError as exc:
        if charset.lower() in ("us-ascii", "ascii"):
            # Very common: 8-bit UTF-8 text labelled (or defaulted to) ASCII.
            try:
                return payload.decode("utf-8")
            except UnicodeDecodeError:
                pass
        raise InputError(
            f"{who}: body is not valid {charset} (byte {exc.start}: {exc.reason})"
        ) from None


def _single_body(body: bytes, hdrs: dict[str, str], who: str) -> str | None:
    """Fast path for a one-part mail with a plain Content-Type; None: use the full parser."""
    raw_ctype = _unfold(hdrs.get("content-type", "text/plain"))
    m = _CTYPE.match(raw_ctype)
    if m is None or "*" in raw_ctype:
        return None
    ctype = m.group(1).lower()
    if ctype not in _TEXT_TYPES:
        return "" if not ctype.startswith("application/") else None
    cs = _CHARSET.search(m.group(2) or "")
    charset = cs.group(1) if cs else "us-ascii"
    data = body
    cte = _unfold(hdrs.get("content-transfer-encoding", "7bit")).lower()
    if cte == "base64":
        try:
            data = base64.b64decode(data)
        except (binascii.Error, ValueError) as exc:
            raise InputError(f"{who}: broken base64 body: {exc}") from None
    elif cte == "quoted-printable":
        data = quopri.decodestring(data)
    text = _decode_bytes(data, charset, who)
    return text.replace("\r\n", "\n") if "\r" in text else text


def _body(msg: EmailMessage, who: str) -> str:
    texts: list[str] = []
    parts = msg.walk() if msg.is_multipart() else iter([msg])
    for part in parts:
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype in _TEXT_TYPES:
            texts.append(_decode_part(part, who))
        elif ctype == "application/octet-stream" and (part.get_filename() or "").endswith(
            (".patch", ".diff")
        ):
            texts.append(_decode_part(part, who))
    body = "\n".join(texts)
    if "\r" in body:
        body = body.replace("\r\n", "\n")
    return body


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        # OverflowError: a year, hour or zone of 20 digits does not fit datetime's C ints.
        return None


def parse_message(raw: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Message:
    """Decode one mail. Raises InputError naming the message and what is wrong with it."""
    who: object = _Unnamed(raw)
    if len(raw) > max_bytes:
        raise InputError(f"{who}: {len(raw)} bytes, over the {max_bytes}-byte limit")
    raw = _check_header_bytes(raw, who)
    try:
        # Headers only: the body stays one payload string, decoded below; a full MIME parse
        # (slower) only for multipart mail.
        end = _header_end(raw)
        head, body_bytes = (raw[: end[1]], raw[end[1]:]) if end else (raw, b"")
        msg = _PARSER.parsebytes(head, headersonly=True)
    except Exception as exc:
        raise InputError(f"{who}: cannot parse: {exc}") from exc
    hdrs: dict[str, str] = {}
    for key, val in msg.raw_items():
        hdrs.setdefault(key.lower(), val)
    subject = _header(hdrs, "Subject", who) or ""
    msgid = clean_msgid(_header(hdrs, "Message-ID", who))
    if not msgid:
        raise InputError(f"{_name('', subject)}: no Message-ID header")
    who = _name(msgid)
    sender = _people(_header(hdrs, "From", who))
    in_reply_to = _msgid_list(_header(hdrs, "In-Reply-To", who))
    try:
        fast = None
        if "multipart/" not in hdrs.get("content-type", "").lower():
            fast = _single_body(body_bytes, hdrs, who)
        if fast is None:
            full = email.message_from_bytes(raw, policy=_POLICY)
            assert isinstance(full, EmailMessage)
            body = _body(full, who)
        else:
            body = fast
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{who}: broken MIME body: {exc}") from exc
    headers = tuple((k, _lenient(k, v)) for k, v in msg.raw_items())
    return Message(
        msgid=msgid,
        subject=re.sub(r"\s+", " ", subject).strip(),
        sender=sender[0] if sender else Person("", ""),
        date=_date(_header(hdrs, "Date", who)),
        in_reply_to=in_reply_to[-1] if in_reply_to else None,
        references=_msgid_list(_header(hdrs, "References", who)),
        to=_people(_header(hdrs, "To", who)),
        cc=_people(_header(hdrs, "Cc", who)),
        body=body,
        raw_size=len(raw),
        headers=headers,
    )
