"""A scripted, misbehaving SMTP server on loopback, and the report-delivery fault matrix.

aiosmtpd is a good server, which is the trouble: it will not answer 421 to QUIT after a 250,
hang after the final dot or reset the connection mid-body. `FaultySmtp` speaks enough SMTP by
hand (EHLO/HELO, STARTTLS with a real certificate, AUTH PLAIN, MAIL, RCPT, DATA, RSET, NOOP,
QUIT) and can be told, per connection, to do one wrong thing at one stage (`Fault`): answer any
code, answer and close or reset, close or reset without answering, stall, or send a line that is
no reply. At the final dot it can take the mail (and then misbehave) or not. It records what it
accepted (the mails it took at the final dot) and can hand each to a real public-inbox
(`LocalInbox`, public-inbox-mda), so kbot's archive confirmation asks a real archive over HTTP.

Reusable outside pytest (bench/faults.py imports this):

- `scenarios()`: the matrix, every reply class (2xx out of place, 1xx/3xx, 4xx, 5xx, no reply
  code) at every stage, drops, resets and stalls before and after the final dot, faults that
  last for every connection, with the statuses each may end in.
- `run_smtp_scenarios()`: runs them (and, with `crashes=True`, a kbot killed with SIGKILL at
  each delivery hook) against fresh stores; each gives a `ScenarioResult`: faults injected,
  reports lost, duplicate deliveries, held.

The invariant judged after each (repeated `Reporter.flush()` with the clock moved past every
backoff and the confirmation window): the report was accepted by the server exactly once, or
it is held/failed with a reason and was accepted zero times; held after an acceptance only if
the archive never showed it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import enum
import functools
import os
import queue
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bot import proc
from bot.config import Config
from bot.intake.local_inbox import LocalInbox
from bot.report.deliver import Reporter, archive_has
from bot.report.outbox import msgid_of
from bot.report.smtp import to_crlf
from bot.state import ReportRow, Store
from tests.report.helpers import load_result, write_config

REPO_ROOT = Path(__file__).resolve().parents[2]
CRASH_CHILD = Path(__file__).resolve().parent / "smtp_crash_child.py"
LIST = "kvm"
LOGIN = ("kbot", "s3cret")
USER_ENV, PASS_ENV = "KBOT_FAULTS_SMTP_USER", "KBOT_FAULTS_SMTP_PASSWORD"
MAX_LINE = 64 * 1024
SESSION_IDLE_S = 60.0  # a server thread gives up on a silent client after this
NORMAL_TIMEOUT_S = 10.0  # kbot's SMTP timeout where no stall is scripted: never hit on loopback
STALL_TIMEOUT_S = 2.0  # ... and where one is: how long kbot waits for a stalled server
ROUND_S = 200.0  # the clock moves this far between flushes: past any backoff below
CONFIRM_WINDOW_S = 600.0  # three rounds: kbot asks the archive three or four times
MAX_ROUNDS = 12


class Stage(enum.Enum):
    GREETING = "greeting"
    HELLO = "EHLO/HELO"  # both, so a refused EHLO is not rescued by HELO
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"
    DATA = "DATA"  # the DATA command (354 expected)
    BODY = "body"  # after 354, at the first body line, before the final dot
    DOT = "final dot"  # the reply to CRLF.CRLF
    QUIT = "QUIT"


class Act(enum.Enum):
    REPLY = "reply"  # answer `code` instead, and go on
    REPLY_CLOSE = "reply+close"  # answer `code`, then close (what 421 means)
    REPLY_RESET = "reply+reset"  # answer `code`, then reset the connection
    DROP = "drop"  # close without answering
    RESET = "reset"  # reset (RST, SO_LINGER 0) without answering
    STALL = "stall"  # say nothing until the client gives up
    GARBAGE = "garbage"  # a line with no reply code, and go on
    TLS_GARBAGE = "tls-garbage"  # STARTTLS: 220, then bytes that are no TLS handshake


class FaultClass(enum.Enum):
    MISPLACED_2XX = "2xx out of place"
    ODD_CODE = "1xx/3xx"
    TEMPORARY = "4xx"
    PERMANENT = "5xx"
    NO_CODE = "no reply code"
    DROP = "drop"
    RESET = "reset"
    STALL = "stall/timeout"
    TLS = "TLS"
    CRASH = "kbot SIGKILL"


@dataclass(frozen=True)
class Fault:
    stage: Stage
    act: Act
    code: int = 0
    accept: bool = False  # DOT, not REPLY*: take the mail before misbehaving
    first_only: bool = False  # RCPT: only the first recipient (else every one)

    @property
    def fault_class(self) -> FaultClass:
        if self.act in (Act.REPLY, Act.REPLY_CLOSE, Act.REPLY_RESET):
            if 200 <= self.code < 300:
                return FaultClass.MISPLACED_2XX
            if 400 <= self.code < 500:
                return FaultClass.TEMPORARY
            if 500 <= self.code < 600:
                return FaultClass.PERMANENT
            return FaultClass.ODD_CODE
        return {Act.DROP: FaultClass.DROP, Act.RESET: FaultClass.RESET,
                Act.STALL: FaultClass.STALL, Act.GARBAGE: FaultClass.NO_CODE,
                Act.TLS_GARBAGE: FaultClass.TLS}[self.act]

    @property
    def label(self) -> str:
        code = f" {self.code}" if self.code else ""
        extra = (" (mail taken)" if self.accept else "") + (" (first rcpt)" if self.first_only
                                                           else "")
        return f"{self.stage.value}: {self.act.value}{code}{extra}"


@dataclass(frozen=True)
class Accepted:
    """A mail the server took: it answered 2xx to the final dot (or took it, then misbehaved)."""

    mail_from: str
    rcpts: tuple[str, ...]
    raw: bytes

    @property
    def msgid(self) -> str:
        return msgid_of(self.raw)


class _Gone(Exception):
    """The connection is over (closed by us on purpose, or by the client)."""


class _Wire:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except OSError as exc:
                raise _Gone from exc
            if not chunk or len(self.buf) > MAX_LINE:
                raise _Gone
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def send(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise _Gone from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def reset(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def stall(self) -> None:
        """Read and drop whatever comes, answer nothing, until the client hangs up."""
        self.sock.settimeout(SESSION_IDLE_S)
        try:
            while self.sock.recv(65536):
                pass
        except OSError:
            pass
        self.close()


class FaultySmtp:
    """A scripted SMTP server on 127.0.0.1. Connection n gets `script[n]` (None: behave);
    past the script's end it behaves, or with `every` repeats the last entry."""

    def __init__(
        self,
        script: Sequence[Fault | None] = (),
        *,
        every: bool = False,
        cert: tuple[Path, Path] | None = None,
        login: tuple[str, str] | None = None,
        archive: LocalInbox | None = None,
    ) -> None:
        self.script = tuple(script)
        self.every = every
        self.login = login
        self.archive = archive
        self.tls: ssl.SSLContext | None = None
        if cert is not None:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(str(cert[0]), str(cert[1]))
        self.accepted: list[Accepted] = []
        self.injected: list[Fault] = []
        self.connections = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._sessions: list[threading.Thread] = []
        self._archive_q: queue.Queue[bytes | None] = queue.Queue()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True),
                         threading.Thread(target=self._archive_loop, daemon=True)]

    # -- life -------------------------------------------------------------------------------

    def start(self) -> FaultySmtp:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.settle()
        self._archive_q.put(None)
        for t in self._threads:
            t.join(timeout=10)
        self._listener.close()

    def __enter__(self) -> FaultySmtp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until every session has ended and every accepted mail is in the archive, so
        that what kbot asks next sees the world as it now is (no sleeps in tests)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                alive = [t for t in self._sessions if t.is_alive()]
            if not alive:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(alive)} SMTP session(s) still running")
            alive[0].join(timeout=max(0.0, deadline - time.monotonic()))
        self._archive_q.join()
        if self.errors:
            raise AssertionError("fault server: " + "; ".join(self.errors))

    def msgids(self) -> list[str]:
        return [a.msgid for a in self.accepted_copy()]

    def accepted_copy(self) -> list[Accepted]:
        with self._lock:
            return list(self.accepted)

    # -- plumbing ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                n = self.connections
                self.connections += 1
                fault = self._fault_for(n)
                t = threading.Thread(target=self._session, args=(sock, fault), daemon=True)
                self._sessions.append(t)
            t.start()

    def _fault_for(self, n: int) -> Fault | None:
        if n < len(self.script):
            return self.script[n]
        return self.script[-1] if self.every and self.script else None

    def _archive_loop(self) -> None:
        while True:
            raw = self._archive_q.get()
            try:
                if raw is None:
                    return
                if self.archive is not None:
                    self.archive.deliver(raw, LIST, refresh=False)
            except Exception as exc:  # any failure: reported by settle(), not lost in a thread
                self.errors.append(f"archiving failed: {exc}")
            finally:
                self._archive_q.task_done()

    def _take(self, mail_from: str, rcpts: list[str], raw: bytes) -> None:
        # Committed before any reply, as a real MTA queues before it answers 250.
        with self._lock:
            self.accepted.append(Accepted(mail_from, tuple(rcpts), raw))
        self._archive_q.put(raw)

    def _inject(self, w: _Wire, fault: Fault, normal: str) -> int:
        """Do `fault` where `normal` was due. Returns the code sent; _Gone if closed."""
        with self._lock:
            self.injected.append(fault)
        act, code = fault.act, fault.code
        reply = f"{code} fault injected at {fault.stage.value}\r\n"
        if act is Act.REPLY:
            w.send(reply)
            return code
        if act is Act.REPLY_CLOSE:
            w.send(reply)
            w.close()
        elif act is Act.REPLY_RESET:
            w.send(reply)
            w.reset()
        elif act is Act.DROP:
            w.close()
        elif act is Act.RESET:
            w.reset()
        elif act is Act.STALL:
            w.stall()
        elif act is Act.GARBAGE:
            w.send("this is not an SMTP reply\r\n")
            return -1
        elif act is Act.TLS_GARBAGE:
            w.send(normal)
            w.send(b"\x00" * 7 + b"not a TLS record\r\n")
            w.close()
        raise _Gone

    def _answer(self, w: _Wire, fault: Fault | None, stage: Stage, normal: str) -> int:
        if fault is not None and fault.stage is stage:
            return self._inject(w, fault, normal)
        w.send(normal)
        return int(normal[:3])

    def _session(self, sock: socket.socket, fault: Fault | None) -> None:
        sock.settimeout(SESSION_IDLE_S)
        w = _Wire(sock)
        try:
            self._converse(w, fault)
        except _Gone:
            pass
        except (OSError, ValueError) as exc:
            self.errors.append(f"session: {exc!r}")
        finally:
            with contextlib.suppress(OSError):
                w.sock.close()

    def _converse(self, w: _Wire, fault: Fault | None) -> None:
        self._answer(w, fault, Stage.GREETING, "220 faults.example ESMTP fault injector\r\n")
        in_tls, authed = False, self.login is None
        mail_from: str | None = None
        rcpts: list[str] = []
        asked = 0  # RCPT commands in this transaction
        while True:
            line = w.readline()
            verb, _, arg = line.strip().decode("utf-8", "replace").partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                if verb == "EHLO":
                    ext = ["faults.example", "8BITMIME", "SIZE 10485760"]
                    if self.tls is not None and not in_tls:
                        ext.append("STARTTLS")
                    if self.login is not None:
                        ext.append("AUTH PLAIN")
                    normal = "".join(f"250-{e}\r\n" for e in ext[:-1]) + f"250 {ext[-1]}\r\n"
                else:
                    normal = "250 faults.example\r\n"
                self._answer(w, fault, Stage.HELLO, normal)
                mail_from, rcpts = None, []
            elif verb == "STARTTLS":
                if self.tls is None or in_tls:
                    w.send("502 5.5.1 no STARTTLS here\r\n")
                    continue
                if self._answer(w, fault, Stage.STARTTLS, "220 2.0.0 go ahead\r\n") != 220:
                    continue
                try:
                    w.sock = self.tls.wrap_socket(w.sock, server_side=True)
                except OSError as exc:
                    raise _Gone from exc  # the client gave up on the handshake
                w.buf, in_tls, authed = b"", True, self.login is None
            elif verb == "AUTH":
                authed = self._auth(w, fault, arg)
            elif verb == "MAIL":
                if not authed:
                    w.send("530 5.7.0 authentication required\r\n")
                    continue
                code = self._answer(w, fault, Stage.MAIL, "250 2.1.0 sender ok\r\n")
                mail_from, rcpts, asked = (_address(arg) if code // 100 == 2 else None), [], 0
            elif verb == "RCPT":
                if mail_from is None:
                    w.send("503 5.5.1 MAIL first\r\n")
                    continue
                hit = fault if fault is not None and not (fault.first_only and asked) else None
                asked += 1
                if self._answer(w, hit, Stage.RCPT, "250 2.1.5 recipient ok\r\n") // 100 == 2:
                    rcpts.append(_address(arg))
            elif verb == "DATA":
                if mail_from is None or not rcpts:
                    w.send("503 5.5.1 no valid recipients\r\n")
                    continue
                if self._answer(w, fault, Stage.DATA, "354 end with <CRLF>.<CRLF>\r\n") != 354:
                    continue
                self._end_of_data(w, fault, mail_from, rcpts, self._body(w, fault))
                mail_from, rcpts = None, []
            elif verb == "RSET":
                mail_from, rcpts = None, []
                w.send("250 2.0.0 reset\r\n")
            elif verb == "NOOP":
                w.send("250 2.0.0 ok\r\n")
            elif verb == "QUIT":
                self._answer(w, fault, Stage.QUIT, "221 2.0.0 bye\r\n")
                w.close()
                raise _Gone
            else:
                w.send("500 5.5.2 what?\r\n")

    def _auth(self, w: _Wire, fault: Fault | None, arg: str) -> bool:
        mech, _, initial = arg.partition(" ")
        if mech.upper() != "PLAIN" or self.login is None:
            w.send("504 5.5.4 unrecognized authentication type\r\n")
            return self.login is None
        if not initial:
            w.send("334 \r\n")
            initial = w.readline().strip().decode("ascii", "replace")
        try:
            _, user, password = base64.b64decode(initial).split(b"\0")
            ok = (user.decode(), password.decode()) == self.login
        except (binascii.Error, ValueError):
            ok = False
        normal = "235 2.7.0 ok\r\n" if ok else "535 5.7.8 bad credentials\r\n"
        return self._answer(w, fault, Stage.AUTH, normal) == 235 and ok

    def _body(self, w: _Wire, fault: Fault | None) -> bytes:
        lines: list[bytes] = []
        first = True
        while True:
            line = w.readline()
            if first and fault is not None and fault.stage is Stage.BODY:
                self._inject(w, fault, "")  # always _Gone (DROP / RESET / STALL / +CLOSE)
            first = False
            if line in (b".\r\n", b".\n"):
                return b"".join(lines)
            lines.append(line[1:] if line.startswith(b".") else line)  # undo dot-stuffing

    def _end_of_data(
        self, w: _Wire, fault: Fault | None, mail_from: str, rcpts: list[str], raw: bytes
    ) -> int:
        if fault is None or fault.stage is not Stage.DOT:
            self._take(mail_from, rcpts, raw)
            w.send("250 2.0.0 queued\r\n")
            return 250
        replying = fault.act in (Act.REPLY, Act.REPLY_CLOSE, Act.REPLY_RESET)
        if (200 <= fault.code < 300) if replying else fault.accept:
            self._take(mail_from, rcpts, raw)
        return self._inject(w, fault, "")


def _address(arg: str) -> str:
    start, end = arg.find("<"), arg.find(">")
    return arg[start + 1 : end] if 0 <= start < end else arg.split(":", 1)[-1].strip()


# -- the matrix ------------------------------------------------------------------------------

SENT = frozenset({"sent"})
FAILED = frozenset({"failed"})
HELD = frozenset({"held"})
SENT_OR_HELD = frozenset({"sent", "held"})  # see BODY below


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Fault
    expect: frozenset[str]  # the statuses the report may end in
    every: bool = False  # the fault hits every connection, not just the first
    security: str = "none"  # none | starttls
    auth: bool = False
    archive: bool = False  # accepted mail reaches the list archive

    @property
    def stall(self) -> bool:
        return self.fault.act is Act.STALL


def _name(f: Fault, every: bool = False, archive: bool = False) -> str:
    parts = [f.stage.name.lower(), f.act.value.replace("+", "-")]
    if f.code:
        parts.append(str(f.code))
    if f.accept:
        parts.append("taken")
    if f.first_only:
        parts.append("first")
    if every:
        parts.append("always")
    if archive:
        parts.append("archived")
    return "-".join(parts)


def _before_data(stage: Stage, security: str = "none", auth: bool = False) -> list[Scenario]:
    """Faults before any body is sent: the server has nothing, so a retry is always safe.
    4xx, a drop, a reset, a stall, a garbled or out-of-place reply: retried, then sent once.
    5xx: failed with the reply as reason, nothing delivered (EHLO's 5xx is answered by HELO's
    too, as `Stage.HELLO` covers both)."""
    out = []
    misplaced = {Stage.GREETING: 250, Stage.HELLO: 220, Stage.STARTTLS: 250, Stage.AUTH: 250,
                 Stage.MAIL: 221, Stage.DATA: 250}
    odd = {Stage.GREETING: 354, Stage.HELLO: 354, Stage.STARTTLS: 354, Stage.AUTH: 354,
           Stage.MAIL: 354, Stage.DATA: 334}
    temporary = {Stage.GREETING: (450,), Stage.HELLO: (451,), Stage.STARTTLS: (454,),
                 Stage.AUTH: (454,), Stage.MAIL: (451, 452), Stage.DATA: (451, 452)}
    permanent = {Stage.GREETING: (554, 521), Stage.HELLO: (500, 550), Stage.STARTTLS: (501, 554),
                 Stage.AUTH: (535, 534), Stage.MAIL: (550, 553, 552), Stage.DATA: (554, 503)}
    faults: list[tuple[Fault, frozenset[str]]] = []
    # A 2xx where another reply is due: smtplib refuses a non-220 greeting, STARTTLS and AUTH
    # replies; a 220 to EHLO and a 221 to MAIL are successes to the client (2yz); a 250 to
    # DATA is no 354, so the body is never sent. Either way: at most one delivery.
    faults.append((Fault(stage, Act.REPLY, misplaced[stage]), SENT))
    faults.append((Fault(stage, Act.REPLY, odd[stage]), SENT))
    faults.append((Fault(stage, Act.REPLY_CLOSE, 421), SENT))
    faults += [(Fault(stage, Act.REPLY, c), SENT) for c in temporary[stage]]
    faults += [(Fault(stage, Act.REPLY, c), FAILED) for c in permanent[stage]]
    faults += [(Fault(stage, a), SENT) for a in (Act.DROP, Act.RESET, Act.STALL, Act.GARBAGE)]
    if stage is Stage.STARTTLS:
        faults.append((Fault(stage, Act.TLS_GARBAGE), SENT))
    for f, expect in faults:
        out.append(Scenario(_name(f), f, expect, security=security, auth=auth))
    return out


def _rcpt() -> list[Scenario]:
    """Some recipients refused: the mail goes to the others, once (the refusals are noted).
    All refused: retried if any refusal was temporary, else failed."""
    out = []
    for code, expect in ((450, SENT), (451, SENT), (452, SENT), (550, SENT), (553, SENT),
                         (252, SENT), (354, SENT)):
        f = Fault(Stage.RCPT, Act.REPLY, code, first_only=True)
        out.append(Scenario(_name(f), f, expect))
    for code, expect in ((450, SENT), (452, SENT), (550, FAILED), (551, FAILED), (251, SENT),
                         (354, SENT)):
        f = Fault(Stage.RCPT, Act.REPLY, code)
        out.append(Scenario(_name(f), f, expect))
    for f in (Fault(Stage.RCPT, Act.REPLY_CLOSE, 421, first_only=True),
              Fault(Stage.RCPT, Act.DROP, first_only=True),
              Fault(Stage.RCPT, Act.RESET, first_only=True),
              Fault(Stage.RCPT, Act.STALL, first_only=True),
              Fault(Stage.RCPT, Act.GARBAGE)):
        out.append(Scenario(_name(f), f, SENT))
    return out


def _body() -> list[Scenario]:
    """The server hangs up mid-body. kbot sends the body, commits "the server may have it",
    then looks whether the server has spoken or closed before it sends the final dot: if it
    sees the close it retries (sent once); if the close arrives after the dot left, it cannot
    tell, so it asks the archive and holds (never resends). Which of the two happens depends
    on when the close reaches kbot, so both are allowed (measured: 40 of 40 seen in time, all
    sent; without the look, every drop ended held); a stall mid-body always ends held."""
    out = []
    for f in (Fault(Stage.BODY, Act.DROP), Fault(Stage.BODY, Act.RESET),
              Fault(Stage.BODY, Act.REPLY_CLOSE, 421)):
        out.append(Scenario(_name(f), f, SENT_OR_HELD, archive=True))
    # A 554 read only after the dot left is a refusal of the mail: failed, nothing delivered.
    f = Fault(Stage.BODY, Act.REPLY_CLOSE, 554)
    out.append(Scenario(_name(f), f, SENT_OR_HELD | FAILED, archive=True))
    f = Fault(Stage.BODY, Act.STALL)
    out.append(Scenario(_name(f), f, HELD, archive=True))
    return out


def _dot() -> list[Scenario]:
    """The reply to the final dot decides. 2xx (any): delivered. 4xx: not taken, retried,
    delivered once. 5xx: failed, nothing delivered. 1xx/3xx or no code, a drop, a reset, a
    stall: kbot cannot tell; found in the archive -> sent, else held after the window."""
    out = []
    for code in (250, 251, 220, 299):
        f = Fault(Stage.DOT, Act.REPLY, code)
        out.append(Scenario(_name(f), f, SENT, archive=True))
    for act in (Act.REPLY_CLOSE, Act.REPLY_RESET):  # 250, then the server hangs up / resets
        f = Fault(Stage.DOT, act, 250)
        out.append(Scenario(_name(f), f, SENT, archive=True))
    for code in (421, 451, 452):
        f = Fault(Stage.DOT, Act.REPLY_CLOSE if code == 421 else Act.REPLY, code)
        out.append(Scenario(_name(f), f, SENT, archive=True))
    for code in (550, 552, 554):
        f = Fault(Stage.DOT, Act.REPLY, code)
        out.append(Scenario(_name(f), f, FAILED, archive=True))
    for code in (354, 300, 199):  # no verdict, nothing taken
        f = Fault(Stage.DOT, Act.REPLY, code)
        out.append(Scenario(_name(f), f, HELD, archive=True))
    for act in (Act.DROP, Act.RESET, Act.STALL, Act.GARBAGE):
        for taken in (False, True):
            f = Fault(Stage.DOT, act, accept=taken)
            # Taken and archived: confirmed, sent. Taken, never archived: held (the one case
            # a delivered report waits for a person). Not taken: held.
            out.append(Scenario(_name(f, archive=True), f, SENT if taken else HELD,
                                archive=True))
            if taken:
                out.append(Scenario(_name(f), f, HELD, archive=False))
    return out


def _quit() -> list[Scenario]:
    """Anything after a 250 to the final dot: delivered, sent, never resent (the bug: a 421
    to QUIT made smtplib's `with` raise and kbot resend the report three times)."""
    out = []
    for act, code in ((Act.REPLY_CLOSE, 421), (Act.REPLY, 451), (Act.REPLY, 500),
                      (Act.REPLY, 554), (Act.REPLY, 250), (Act.REPLY, 354), (Act.DROP, 0),
                      (Act.RESET, 0), (Act.STALL, 0), (Act.GARBAGE, 0),
                      (Act.REPLY_RESET, 421)):
        f = Fault(Stage.QUIT, act, code)
        out.append(Scenario(_name(f), f, SENT, archive=True))
    return out


def _lasting() -> list[Scenario]:
    """Faults on every connection: retries end after max_attempts (failed, with the reason,
    nothing delivered); an unanswered final dot is never retried at all."""
    out = []
    for f, expect in ((Fault(Stage.GREETING, Act.REPLY_CLOSE, 421), FAILED),
                      (Fault(Stage.GREETING, Act.STALL), FAILED),
                      (Fault(Stage.MAIL, Act.REPLY, 451), FAILED),
                      (Fault(Stage.RCPT, Act.REPLY, 450), FAILED),
                      (Fault(Stage.DATA, Act.DROP), FAILED),
                      (Fault(Stage.DATA, Act.REPLY, 250), FAILED),
                      (Fault(Stage.DOT, Act.REPLY, 451), FAILED),
                      (Fault(Stage.DOT, Act.DROP, accept=True), SENT),
                      (Fault(Stage.QUIT, Act.REPLY_CLOSE, 421), SENT)):
        out.append(Scenario(_name(f, every=True), f, expect, every=True,
                            archive=f.stage in (Stage.DOT, Stage.QUIT)))
    return out


def scenarios() -> list[Scenario]:
    out = _before_data(Stage.GREETING) + _before_data(Stage.HELLO)
    out += _before_data(Stage.STARTTLS, security="starttls")
    out += _before_data(Stage.AUTH, auth=True)
    out += _before_data(Stage.MAIL) + _rcpt() + _before_data(Stage.DATA)
    out += _body() + _dot() + _quit() + _lasting()
    names = [s.name for s in out]
    assert len(set(names)) == len(names), "scenario names must be unique"
    return out


# -- running them ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    fault_class: str
    stage: str
    faults_injected: int  # faults the server (or the crash hook) actually served
    reports: int
    accepted: int  # times the server took the report (2xx to its final dot)
    lost: int  # neither delivered nor held/failed with a reason (or "sent" but never taken)
    duplicate_deliveries: int  # acceptances beyond the first
    held: int
    failed: int
    sent: int
    status: str
    reason: str  # the report's last_error
    violations: tuple[str, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass
class FaultLab:
    """What the scenarios share: a work folder, one public-inbox, a certificate."""

    root: Path
    inbox: LocalInbox
    cert: tuple[Path, Path]
    _count: int = field(default=0)

    @classmethod
    @contextlib.contextmanager
    def open(cls, workdir: Path | None = None) -> Iterator[FaultLab]:
        from tests.fixtures.smtp import make_cert  # openssl; a second or so

        with tempfile.TemporaryDirectory(prefix="kbot-smtp-faults-", dir=workdir) as tmp:
            root = Path(tmp)
            inbox = LocalInbox(root / "public-inbox", (LIST,))
            inbox.start()
            try:
                yield cls(root, inbox, make_cert(root))
            finally:
                inbox.stop()

    def folder(self, name: str) -> Path:
        self._count += 1
        return self.root / f"{self._count:03d}-{name}"


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def report_config(lab: FaultLab, folder: Path, port: int, *, security: str = "none",
                  auth: bool = False, timeout_s: float = NORMAL_TIMEOUT_S) -> Config:
    lines = (f'\ndelivery = "smtp"\nmax_attempts = 3\nretry_backoff_s = 30\n'
             f"retry_max_backoff_s = 120\nconfirm_window_s = {CONFIRM_WINDOW_S}\n"
             f'[report.smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "{security}"\n'
             f"timeout_s = {timeout_s}\n")
    if auth:
        lines += f'username_env = "{USER_ENV}"\npassword_env = "{PASS_ENV}"\n'
    else:  # names nobody sets: no AUTH unless the scenario asks for it
        lines += 'username_env = "KBOT_FAULTS_NO_USER"\npassword_env = "KBOT_FAULTS_NO_PASS"\n'
    return write_config(folder, lines, archive_url=lab.inbox.list_url(LIST))


def _env_for(lab: FaultLab, *, security: str, auth: bool) -> dict[str, str]:
    env: dict[str, str] = {}
    if security != "none":
        env["SSL_CERT_FILE"] = str(lab.cert[0])  # trust our throwaway CA, as an operator would
    if auth:
        env.update({USER_ENV: LOGIN[0], PASS_ENV: LOGIN[1]})
    return env


def queue_report(cfg: Config) -> str:
    with Store.in_state_dir(cfg.state_dir) as store:
        row = Reporter(cfg, store).submit(load_result("regression"), send_now=False)
    assert row is not None and row.status == "queued", row
    return row.msgid


def flush_until_settled(cfg: Config, server: FaultySmtp, msgid: str) -> ReportRow:
    """Flush as a watcher would, round after round, the clock past every backoff and the
    confirmation window, until the report is settled and one more flush changes nothing."""
    clock = [1_000_000.0]
    settled_rounds = 0
    with Store.in_state_dir(cfg.state_dir) as store:
        reporter = Reporter(cfg, store, clock=lambda: clock[0])
        for _ in range(MAX_ROUNDS):
            reporter.flush()
            server.settle()
            clock[0] += ROUND_S
            row = store.get_report(msgid)
            assert row is not None
            if row.status in ("sent", "held", "failed"):
                settled_rounds += 1
                if settled_rounds >= 2:
                    break
        row = store.get_report(msgid)
        assert row is not None
        return row


def judge(
    name: str, fault_class: str, stage: str, row: ReportRow, server: FaultySmtp, lab: FaultLab,
    expect: frozenset[str], injected: int, seconds: float,
) -> ScenarioResult:
    copies = [a.raw for a in server.accepted_copy() if a.msgid == row.msgid]
    taken = len(copies)
    violations: list[str] = []
    sent_bytes = to_crlf(row.raw) if row.raw.endswith(b"\n") else to_crlf(row.raw) + b"\r\n"
    if any(c != sent_bytes for c in copies):
        violations.append("the server got other bytes than the stored report")
    lost = 0
    if taken > 1:
        violations.append(f"delivered {taken} times")
    if row.status == "sent" and taken == 0:
        violations.append("marked sent, but the server never took it")
        lost = 1
    if row.status not in ("sent", "held", "failed"):
        violations.append(f"left {row.status!r}")
        lost = 1
    if row.status in ("held", "failed") and not row.last_error:
        violations.append(f"{row.status} without a reason")
        lost = 1
    if row.status == "failed" and taken:
        violations.append("marked failed, but the server took it")
    if row.status == "held" and taken and archive_has(lab.inbox.list_url(LIST), row.msgid):
        violations.append("held, though the archive has it")
    if row.status not in expect:
        violations.append(f"ended {row.status}, expected {'/'.join(sorted(expect))}"
                          f" ({row.last_error})")
    if injected == 0:
        violations.append("no fault was injected")
    return ScenarioResult(
        name=name, fault_class=fault_class, stage=stage, faults_injected=injected, reports=1,
        accepted=taken, lost=lost, duplicate_deliveries=max(0, taken - 1),
        held=int(row.status == "held"), failed=int(row.status == "failed"),
        sent=int(row.status == "sent"), status=row.status, reason=row.last_error,
        violations=tuple(violations), seconds=seconds,
    )


def run_scenario(lab: FaultLab, sc: Scenario) -> ScenarioResult:
    start = time.monotonic()
    server = FaultySmtp(
        (sc.fault,), every=sc.every, cert=lab.cert if sc.security != "none" else None,
        login=LOGIN if sc.auth else None, archive=lab.inbox if sc.archive else None,
    ).start()
    try:
        cfg = report_config(lab, lab.folder(sc.name), server.port, security=sc.security,
                            auth=sc.auth,
                            timeout_s=STALL_TIMEOUT_S if sc.stall else NORMAL_TIMEOUT_S)
        with _environ(_env_for(lab, security=sc.security, auth=sc.auth)):
            msgid = queue_report(cfg)
            row = flush_until_settled(cfg, server, msgid)
    finally:
        server.stop()
    return judge(sc.name, sc.fault.fault_class.value, sc.fault.stage.value, row, server, lab,
                 sc.expect, len(server.injected), time.monotonic() - start)


# -- kbot itself killed mid-delivery ----------------------------------------------------------


@dataclass(frozen=True)
class Crash:
    """SIGKILL kbot at a delivery hook (bot.report.deliver.Hook), then restart and flush."""

    stage: str  # claimed | body | data | accepted
    archive: bool
    expect: frozenset[str]

    @property
    def name(self) -> str:
        return f"crash-at-{self.stage}" + ("-archived" if self.archive else "")


CRASHES = (
    Crash("claimed", True, SENT),  # nothing sent yet: send after the restart
    Crash("body", True, SENT),  # body out, no final dot: the server dropped it; send again
    Crash("data", True, HELD),  # "may have it" committed, dot never left: not found, held
    Crash("accepted", True, SENT),  # taken, archived: confirmed after the restart
    Crash("accepted", False, HELD),  # taken, never archived: held for a person, not resent
)


def run_crash(lab: FaultLab, crash: Crash) -> ScenarioResult:
    start = time.monotonic()
    server = FaultySmtp(archive=lab.inbox if crash.archive else None).start()
    try:
        cfg = report_config(lab, lab.folder(crash.name), server.port)
        msgid = queue_report(cfg)
        res = proc.run(
            [sys.executable, CRASH_CHILD, cfg.source, crash.stage], timeout=120, cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )
        server.settle()
        killed = res.returncode == -signal.SIGKILL
        row = flush_until_settled(cfg, server, msgid)
    finally:
        server.stop()
    result = judge(crash.name, FaultClass.CRASH.value, crash.stage, row, server, lab,
                   crash.expect, int(killed), time.monotonic() - start)
    if not killed:
        extra = f"the child was not killed at {crash.stage}: {res.describe()}"
        return dataclasses.replace(result, violations=(*result.violations, extra))
    return result


def run_smtp_scenarios(
    workdir: Path | None = None, *, names: Iterable[str] | None = None, crashes: bool = True,
) -> list[ScenarioResult]:
    """Every scenario of the matrix (or those named), then the crash scenarios."""
    wanted = set(names) if names is not None else None
    chosen = [s for s in scenarios() if wanted is None or s.name in wanted]
    kills = [c for c in CRASHES if crashes and (wanted is None or c.name in wanted)]
    results = []
    with FaultLab.open(workdir) as lab:
        for sc in chosen:
            results.append(_guarded(sc.name, sc.fault.fault_class, sc.fault.stage.value,
                                    functools.partial(run_scenario, lab, sc)))
        for crash in kills:
            results.append(_guarded(crash.name, FaultClass.CRASH, crash.stage,
                                    functools.partial(run_crash, lab, crash)))
    return results


def _guarded(
    name: str, fault_class: FaultClass, stage: str, run: Callable[[], ScenarioResult]
) -> ScenarioResult:
    """A scenario that raised (kbot or the harness) is a result with that violation, so a
    bulk run reports every scenario instead of stopping at the first surprise."""
    start = time.monotonic()
    try:
        return run()
    except Exception as exc:  # any: it is what the table must show
        return ScenarioResult(
            name=name, fault_class=fault_class.value, stage=stage, faults_injected=0,
            reports=1, accepted=0, lost=1, duplicate_deliveries=0, held=0, failed=0, sent=0,
            status="(raised)", reason=repr(exc), violations=(f"raised {exc!r}",),
            seconds=time.monotonic() - start,
        )


def distinct_faults(selected: Sequence[Scenario] | None = None) -> int:
    """Distinct (stage, act, code, variant) faults the matrix injects."""
    return len({(s.fault, s.every) for s in (selected or scenarios())})
