"""One SMTP submission, split so the caller can record how far it got.

Exactly-once hangs on one byte sequence: the end-of-data mark ("CRLF . CRLF"). Until the server
has it, it cannot have accepted the mail (RFC 5321 4.1.1.4: a transaction is aborted when the
connection drops), so any failure before it is safe to retry. Once it has left, only the
server's reply says what happened:

- a 2xx reply to the final dot: delivered, whatever happens next (a 421 or a reset instead of
  221 to QUIT, a timeout while quitting). smtplib's `with` block raises on a bad QUIT reply,
  which once made kbot resend a delivered report three times; QUIT is best effort here.
- 4xx / 5xx: the server says it did not take it (retry / give up).
- nothing (drop, reset, timeout) or a reply that is no verdict: UNKNOWN. The server may have
  it; the caller must confirm (list archive) or hold, never resend on a guess.

So the body goes out without the final dot, then `before_dot` runs (the caller commits "the
server may have it"), then the dot. A crash before that commit leaves the server with an
unfinished DATA that dies with our connection: safe to send again after a restart.
"""

from __future__ import annotations

import enum
import os
import re
import select
import smtplib
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bot.config import SmtpSection
from bot.errors import ConfigError

END_OF_DATA = b".\r\n"  # sent after a body that ends in CRLF: together they are CRLF.CRLF


class SendStatus(enum.Enum):
    SENT = "sent"  # a 2xx to the final dot (for the recipients not in `refused`)
    RETRY = "retry"  # down, 4xx, or broken before the final dot left: the server has nothing
    PERMANENT = "permanent"  # 5xx for the whole mail: retrying will not help
    UNKNOWN = "unknown"  # the final dot left and no verdict came back: the server may have it


class Step(enum.Enum):
    """Where in the conversation a submission ended (for the reason a person reads)."""

    GREETING = "greeting"
    EHLO = "EHLO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"
    DATA = "DATA"  # the DATA command, before the server's 354
    BODY = "message body"  # after 354, before the final dot
    END = "end of data"  # the final dot and the reply to it


@dataclass(frozen=True)
class SendResult:
    status: SendStatus
    detail: str = ""
    refused: tuple[str, ...] = ()  # recipients the server refused while taking the mail
    step: Step = Step.GREETING

    @property
    def ambiguous(self) -> bool:
        """The server may have accepted the mail without kbot hearing so."""
        return self.status is SendStatus.UNKNOWN


def _credentials(cfg: SmtpSection, env: Mapping[str, str]) -> tuple[str, str] | None:
    user = env.get(cfg.username_env, "")
    password = env.get(cfg.password_env, "")
    if not user and not password:
        return None
    if not (user and password):
        missing = cfg.password_env if user else cfg.username_env
        raise ConfigError("(environment)", missing, "set both SMTP user and password, or neither")
    return user, password


def to_crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def data_body(raw: bytes) -> bytes:
    """The DATA payload without the end-of-data mark: CRLF lines, dot-stuffed (RFC 5321
    4.5.2), ending in CRLF, so that END_OF_DATA completes CRLF.CRLF and nothing before does."""
    body = _LEADING_DOT.sub(b"..", to_crlf(raw))
    return body if body.endswith(b"\r\n") else body + b"\r\n"


def _positive(code: int) -> bool:
    return 200 <= code < 300


def _text(resp: bytes | str) -> str:
    return resp.decode("utf-8", "replace") if isinstance(resp, bytes) else resp


def _refusal(
    code: int, resp: bytes | str, step: Step, refused: tuple[str, ...] = ()
) -> SendResult:
    """A reply that says the server did not take the mail: 5xx for good, anything else for now
    (4xx, or a reply out of place such as 250 to DATA: retries are bounded by max_attempts)."""
    status = SendStatus.PERMANENT if 500 <= code < 600 else SendStatus.RETRY
    return SendResult(status, f"{step.value}: {code} {_text(resp)}", refused, step)


def _connect(cfg: SmtpSection) -> smtplib.SMTP:
    if cfg.security == "ssl":
        return smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_s,
                                context=ssl.create_default_context())
    return smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)


def _peer_spoke(server: smtplib.SMTP) -> bool:
    """Did the server close or say anything since its 354? It must stay silent until the
    final dot (RFC 5321 4.1.1.4), so anything readable (EOF, a 421) means the transaction is
    dead and the dot must not go: not sending it keeps the outcome certain."""
    sock = server.sock
    if sock is None:
        return True
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def _quit(server: smtplib.SMTP) -> None:
    """QUIT politely; its reply (421, 5xx, a reset, a timeout) changes nothing already decided."""
    try:
        if server.sock is not None:
            server.quit()
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        server.close()


def send(
    cfg: SmtpSection,
    raw: bytes,
    sender: str,
    rcpts: tuple[str, ...],
    *,
    before_dot: Callable[[], None],
    after_body: Callable[[], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> SendResult:
    """Submit `raw` to `rcpts`. Never raises for the server's answers: they are results.

    `before_dot` runs when everything but the final dot has been sent (record "the server may
    have it" there); `after_body` just before that (a hook for crash tests).
    """
    creds = _credentials(cfg, os.environ if env is None else env)
    where = f"{cfg.host}:{cfg.port}"
    step = Step.GREETING
    refused: tuple[str, ...] = ()
    server: smtplib.SMTP | None = None
    in_data = False  # between 354 and the reply to the dot: a QUIT now would be body text
    try:
        server = _connect(cfg)  # smtplib insists on a 220 greeting (SMTPConnectError)
        step = Step.EHLO
        server.ehlo_or_helo_if_needed()  # EHLO, HELO if EHLO is refused (SMTPHeloError)
        if cfg.security == "starttls":
            step = Step.STARTTLS
            server.starttls(context=ssl.create_default_context())
            step = Step.EHLO
            server.ehlo_or_helo_if_needed()  # starttls() forgot the pre-TLS EHLO
        if creds is not None:
            step = Step.AUTH
            server.login(*creds)
        step = Step.MAIL
        eight_bit = not raw.isascii() and server.has_extn("8bitmime")
        code, resp = server.mail(sender, ["BODY=8BITMIME"] if eight_bit else [])
        if not _positive(code):
            return _refusal(code, resp, step)
        step = Step.RCPT
        answers: list[tuple[str, int, str]] = []
        for rcpt in rcpts:
            code, resp = server.rcpt(rcpt)
            if not _positive(code):  # 250, 251 and 252 all take the recipient
                answers.append((rcpt, code, _text(resp)))
        refused = tuple(a[0] for a in answers)
        if len(refused) == len(rcpts):
            try:
                server.rset()
            except (OSError, smtplib.SMTPException):
                pass  # a 421 to RCPT closes the connection: nothing to reset
            # One temporary refusal is enough to try again: the recipient may come back.
            temporary = any(not 500 <= code < 600 for _, code, _ in answers)
            detail = "; ".join(f"{r}: {code} {text}" for r, code, text in answers)
            return SendResult(SendStatus.RETRY if temporary else SendStatus.PERMANENT,
                              f"{step.value}: every recipient refused: {detail}", refused, step)
        step = Step.DATA
        code, resp = server.docmd("DATA")
        if code != 354:  # not asked for the body (a 250 here is out of place, not an accept)
            return _refusal(code, resp, step, refused)
        step, in_data = Step.BODY, True
        server.send(data_body(raw))
        if after_body is not None:
            after_body()
        before_dot()
        # Looked at as late as possible (after the caller's commit), so that a server that
        # hung up mid-body is seen, and the dot held back, as often as can be.
        if _peer_spoke(server):
            return SendResult(SendStatus.RETRY,
                              f"{where}: the server closed or spoke during DATA; the final dot "
                              "was not sent, so it has nothing", refused, step)
        step = Step.END
        result = _finish(server, where, refused)
        in_data = False
        return result
    except smtplib.SMTPResponseException as exc:
        return _refusal(exc.smtp_code, exc.smtp_error, step, refused)
    except (OSError, smtplib.SMTPException) as exc:
        return SendResult(SendStatus.RETRY, f"{where}: {step.value}: {exc}", refused, step)
    finally:
        if server is not None and in_data:
            server.close()  # no QUIT: it would only be read as more of the unfinished body
        elif server is not None:
            _quit(server)


def _finish(server: smtplib.SMTP, where: str, refused: tuple[str, ...]) -> SendResult:
    """Send the final dot and read the verdict. Nothing here may turn into RETRY once the dot
    may have left, except the server's own 4xx."""
    try:
        server.send(END_OF_DATA)
    except smtplib.SMTPServerDisconnected as exc:
        # sendall() failed, so the last bytes of CRLF.CRLF never left: no server has it.
        return SendResult(SendStatus.RETRY, f"{where}: sending the final dot: {exc}", refused,
                          Step.END)
    try:
        code, resp = server.getreply()
    except (OSError, smtplib.SMTPException) as exc:
        return SendResult(SendStatus.UNKNOWN, f"{where}: no reply to the final dot: {exc}",
                          refused, Step.END)
    if _positive(code):
        return SendResult(SendStatus.SENT, _text(resp), refused, Step.END)
    if 400 <= code < 600:
        return _refusal(code, resp, Step.END, refused)
    return SendResult(SendStatus.UNKNOWN,
                      f"{where}: reply {code} {_text(resp)!r} to the final dot is no verdict",
                      refused, Step.END)
