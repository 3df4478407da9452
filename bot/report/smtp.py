"""One SMTP submission, split so the caller can record how far it got.

The split matters for exactly-once: until the server has the DATA's final dot it has not
accepted the mail (RFC 5321 4.1.1.4: a transaction is aborted when the connection drops), so a
crash before `on_data` is safe to retry. After `on_data` the server may have it; the caller
records that stage before we send DATA.
"""

from __future__ import annotations

import enum
import os
import smtplib
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bot.config import SmtpSection
from bot.errors import ConfigError


class SendStatus(enum.Enum):
    SENT = "sent"  # the server accepted it (for the recipients not in `refused`)
    RETRY = "retry"  # down, refusing for now (4xx), connection dropped before DATA ended
    PERMANENT = "permanent"  # 5xx for the whole mail: retrying will not help


@dataclass(frozen=True)
class SendResult:
    status: SendStatus
    detail: str = ""
    refused: tuple[str, ...] = ()
    reached_data: bool = False  # DATA was started
    answered: bool = True  # the server replied; False: the connection broke (no verdict)

    @property
    def ambiguous(self) -> bool:
        """The server may have accepted the mail without kbot hearing so."""
        return self.reached_data and not self.answered


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


def send(
    cfg: SmtpSection,
    raw: bytes,
    sender: str,
    rcpts: tuple[str, ...],
    *,
    on_data: Callable[[], None],
    env: Mapping[str, str] | None = None,
) -> SendResult:
    """Submit `raw` to `rcpts`. Never raises for the server's answers: they are results."""
    creds = _credentials(cfg, os.environ if env is None else env)
    reached_data = False
    try:
        server: smtplib.SMTP
        if cfg.security == "ssl":
            server = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_s,
                                      context=ssl.create_default_context())
        else:
            server = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
        with server:
            server.ehlo_or_helo_if_needed()
            if cfg.security == "starttls":
                server.starttls(context=ssl.create_default_context())
                server.ehlo()
            if creds is not None:
                server.login(*creds)
            eight_bit = not raw.isascii() and server.has_extn("8bitmime")
            code, resp = server.mail(sender, ["BODY=8BITMIME"] if eight_bit else [])
            if code != 250:
                return _answer(code, resp, "MAIL FROM")
            refused: list[str] = []
            last: tuple[int, bytes] = (0, b"")
            for rcpt in rcpts:
                code, resp = server.rcpt(rcpt)
                if code not in (250, 251):
                    refused.append(rcpt)
                    last = (code, resp)
            if len(refused) == len(rcpts):
                server.rset()
                return _answer(last[0], last[1], "RCPT TO", tuple(refused))
            on_data()
            reached_data = True
            code, resp = server.data(to_crlf(raw))
            if code != 250:
                return _answer(code, resp, "DATA", tuple(refused), reached_data=True)
            return SendResult(SendStatus.SENT, resp.decode("utf-8", "replace"), tuple(refused),
                              reached_data=True)
    except smtplib.SMTPResponseException as exc:
        return _answer(exc.smtp_code, exc.smtp_error, "SMTP", reached_data=reached_data)
    except (OSError, smtplib.SMTPException) as exc:
        where = f"{cfg.host}:{cfg.port}"
        return SendResult(SendStatus.RETRY, f"{where}: {exc}", reached_data=reached_data,
                          answered=False)


def _answer(
    code: int,
    resp: bytes | str,
    step: str,
    refused: tuple[str, ...] = (),
    *,
    reached_data: bool = False,
) -> SendResult:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else resp
    status = SendStatus.PERMANENT if 500 <= code < 600 else SendStatus.RETRY
    return SendResult(status, f"{step}: {code} {text}", refused, reached_data=reached_data)
