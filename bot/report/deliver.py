"""From a result to a delivered mail, once: decide, render, store, deliver, reconcile.

States of a report (the `reports` table):

    queued --claim--> sending --2xx to the final dot--> sent   (whatever QUIT then says)
       ^                 |  \\--4xx / down / broken before the final dot--> queued (backoff)
       |                 |   \\--5xx--> failed        (and queued .. failed after max_attempts)
       |                 \\--final dot sent, no verdict (drop, reset, timeout)--> unconfirmed
       +--restart: stage "claimed" (the final dot never left)
                          stage "smtp-data" (the server may have it) --> unconfirmed
    unconfirmed: asked the list archive for the Message-ID at each flush: found --> sent;
          not found within report.confirm_window_s --> held, with the reason. Never resent on
          a guess: a second copy on a kernel list is worse than a late one.
    held: kept in the outbox, not mailed (staging allowlist, low-confidence bisection,
          unconfirmed delivery, a series marked invalid by mail). `kbot outbox flush
          --resend MSGID` sends one on purpose.

Exactly once, honestly: the Message-ID is made and the whole mail stored before any delivery,
and the dedup key (series lineage + revision + kind + patch + result fingerprint) is UNIQUE, so
the same result never becomes two reports. "sending" is committed before the SMTP conversation
and the stage "smtp-data" after the body but before the final dot (bot.report.smtp), so after a
crash kbot knows whether the server can possibly have the mail. The windows left (a crash
between the server's 250 and our commit of "sent", a connection lost after the final dot) are
not resent blindly: the report is confirmed by its Message-ID in the list archive, or held for
a person. So a fault can hold a report, never send it twice, never lose it. Only one process
delivers at a time (an flock in the state directory), so a live sender's "sending" row is never
mistaken for a crashed one.
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import requests

from bot import __version__
from bot.config import Config
from bot.errors import InputError
from bot.locks import try_locked
from bot.report import smtp
from bot.report.context import Addr, BisectionReport, ReportContext
from bot.report.message import (
    Recipients,
    as_bytes,
    build_message,
    new_msgid,
    recipients,
    subject,
)
from bot.report.outbox import Outbox, open_outbox
from bot.report.render import Identity, Renderer
from bot.state import ReportRow, Store

log = logging.getLogger(__name__)

# (stage, msgid): test hook points, in order: claimed (before connecting), body (the body is
# out, the final dot is not; stage still "claimed"), data (stage "smtp-data" committed, the dot
# not yet sent), accepted (the server answered 2xx to the dot; "sent" not yet committed).
Hook = Callable[[str, str], None]
STAGE_CLAIMED = "claimed"
STAGE_DATA = "smtp-data"  # committed just before the final dot: the server may have it
UNCONFIRMED = "unconfirmed"  # status: the server may have it; looking for it in the archive
_MSGID_SAFE = "@!$&'()*+,;=:~-._"  # as lore links write a Message-ID


class Mode(enum.Enum):
    FULL = "full"
    BRIEF = "brief"  # a new revision that fails the same way: a short note
    SKIP = "skip"  # ... and report.unchanged = never


@dataclass(frozen=True)
class Prepared:
    """A rendered, addressed report before it is stored."""

    msgid: str
    kind: str
    mode: Mode
    dedup_key: str
    lineage: str
    version: int
    fingerprint: str
    subject: str
    rcpt: Recipients
    raw: bytes
    hold_reason: str = ""


@dataclass(frozen=True)
class FlushSummary:
    sent: int = 0
    held: int = 0
    retrying: int = 0
    failed: int = 0
    reconciled: int = 0
    confirmed: int = 0  # unconfirmed reports found in the archive: sent, not mailed again
    unconfirmed: int = 0  # still looked for in the archive (report.confirm_window_s)
    busy: bool = False


def lineage_of(ctx: ReportContext) -> tuple[str, int]:
    if ctx.series is not None:
        return ctx.series.lineage, ctx.series.version
    assert isinstance(ctx, BisectionReport)
    return f"bisect:{ctx.tree}/{ctx.branch}:{ctx.test}", 0


@dataclass(frozen=True)
class Answer:
    """The mail command a report answers (`#kbot test`, `#kbot bisect`: bot.commands): the
    report is threaded under that mail, its sender is Cc'd, and it is a report of its own
    (the dedup key names the command), even when an earlier report said the same."""

    msgid: str
    references: tuple[str, ...] = ()
    sender: Addr | None = None


def dedup_key(ctx: ReportContext, lineage: str, version: int, mode: Mode,
              answer: str = "") -> str:
    target = ctx.target.msgid if ctx.target is not None else ""
    parts = [lineage, str(version), ctx.kind.value, mode.value, target, ctx.fingerprint()]
    if answer:
        parts.append(answer)
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def allowed(address: str, allowlist: tuple[str, ...]) -> bool:
    """Staging: `user@host` exactly, `@host` for a domain, or an fnmatch pattern."""
    a = address.lower()
    for entry in allowlist:
        e = entry.lower()
        if a == e or (e.startswith("@") and a.endswith(e)) or fnmatch.fnmatchcase(a, e):
            return True
    return False


def archive_has(archive_url: str, msgid: str, timeout_s: float = 10.0) -> bool | None:
    """Does the list archive hold this Message-ID? None: could not tell."""
    base = archive_url if archive_url.endswith("/") else archive_url + "/"
    try:
        resp = requests.get(  # timeout=timeout_s below
            f"{base}{urllib.parse.quote(msgid, safe=_MSGID_SAFE)}/raw",
            timeout=timeout_s,
            headers={"User-Agent": f"kbot/{__version__} (report delivery check)"},
        )
    except requests.RequestException as exc:
        log.warning("cannot ask the archive about <%s>: %s", msgid, exc)
        return None
    if resp.status_code == 200:
        return msgid.encode() in resp.content
    if resp.status_code in (404, 410):
        return False
    return None


class Reporter:
    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        hook: Hook | None = None,
        confirm: Callable[[str], bool | None] | None = None,
    ) -> None:
        self.config = config
        self.cfg = config.report
        self.store = store
        self.clock = clock
        self.hook = hook
        self.identity = Identity(config.bot.name, config.bot.email, self.cfg.archive_url,
                                 config.bot.owner)
        self.renderer = Renderer(self.identity)
        self.confirm = confirm or (lambda m: archive_has(self.cfg.archive_url, m))
        self.state_dir = config.state_dir
        self.outbox: Outbox = open_outbox(self.state_dir, self.cfg.outbox_format)

    # -- decide and render ----------------------------------------------------------------

    def decide(self, ctx: ReportContext) -> tuple[Mode, ReportRow | None]:
        """FULL, or BRIEF/SKIP when an earlier revision already got this same result."""
        lineage, version = lineage_of(ctx)
        fp = ctx.fingerprint()
        kind = ctx.kind.value
        earlier = [
            r for r in self.store.reports_for_lineage(lineage)
            if r.version < version and r.fingerprint == fp and r.kind in (kind, kind + "-brief")
        ]
        if not earlier or self.cfg.unchanged == "always":
            return Mode.FULL, None
        if self.cfg.unchanged == "never":
            return Mode.SKIP, earlier[0]
        full = [r for r in earlier if r.kind == kind]
        return Mode.BRIEF, (full[0] if full else earlier[0])

    def prepare(
        self,
        ctx: ReportContext,
        *,
        msgid: str | None = None,
        date: datetime | None = None,
        mode: Mode | None = None,
        previous: ReportRow | None = None,
        answer: Answer | None = None,
    ) -> Prepared:
        if mode is None:
            mode, previous = self.decide(ctx)
        lineage, version = lineage_of(ctx)
        msgid = msgid or new_msgid(self.config.bot.email)
        if mode is Mode.BRIEF and previous is not None:
            body = self.renderer.render_unchanged(ctx, msgid, previous.msgid, previous.version)
        else:
            body = self.renderer.render(ctx, msgid)
        rcpt = recipients(ctx, self.config.bot.email)
        thread_to = None
        if answer is not None:
            thread_to = (answer.msgid, tuple(dict.fromkeys((*answer.references, answer.msgid))))
            rcpt = _also(rcpt, answer.sender, self.config.bot.email)
        msg = build_message(
            ctx, body, msgid=msgid, sender=Addr(self.config.bot.name, self.config.bot.email),
            rcpt=rcpt, date=date, thread_to=thread_to,
        )
        hold = ""
        if isinstance(ctx, BisectionReport) and ctx.confidence < self.cfg.min_bisect_confidence:
            hold = (f"bisection confidence {ctx.confidence:.2f} is under "
                    f"{self.cfg.min_bisect_confidence:.2f}: not mailed")
        kind = ctx.kind.value + ("-brief" if mode is Mode.BRIEF else "")
        return Prepared(
            msgid=msgid, kind=kind, mode=mode,
            dedup_key=dedup_key(ctx, lineage, version, mode, answer.msgid if answer else ""),
            lineage=lineage, version=version, fingerprint=ctx.fingerprint(),
            subject=subject(ctx), rcpt=rcpt, raw=as_bytes(msg), hold_reason=hold,
        )

    # -- store ----------------------------------------------------------------------------

    def submit(
        self, ctx: ReportContext, *, job_id: int | None = None, send_now: bool = True,
        answer: Answer | None = None,
    ) -> ReportRow | None:
        """Make the report for a result (once) and start its delivery. None: not sent by
        config (report.unchanged = never and the last revision failed the same way). A
        report that `answer`s a mail command is always the full report."""
        mode, previous = (Mode.FULL, None) if answer is not None else self.decide(ctx)
        if mode is Mode.SKIP:
            assert previous is not None
            log.info("not reporting: v%s fails the same way as <%s> (report.unchanged = never)",
                     lineage_of(ctx)[1], previous.msgid)
            return None
        prep = self.prepare(ctx, mode=mode, previous=previous, answer=answer)
        return self.submit_prepared(prep, job_id=job_id, send_now=send_now)

    def submit_prepared(self, prep: Prepared, *, job_id: int | None = None,
                        send_now: bool = True) -> ReportRow:
        """Store a prepared mail once (by its dedup key) and start its delivery: a report,
        or a short reply kbot made itself (bot.commands). A mail about a series marked
        invalid by mail (`#kbot invalid`) is held."""
        hold = prep.hold_reason
        if not hold and (invalid := self.store.invalid_lineage(prep.lineage)) is not None:
            hold = invalid.reason
        row, new = self.store.add_report(
            prep.msgid, job_id=job_id, kind=prep.kind, dedup_key=prep.dedup_key, raw=prep.raw,
            lineage=prep.lineage, version=prep.version, fingerprint=prep.fingerprint,
            subject=prep.subject, recipients=prep.rcpt.all,
        )
        if not new:
            log.info("report for this result exists already: <%s> (%s)", row.msgid, row.status)
            return row
        self.outbox.put(row.raw)
        if hold:
            self.store.set_report_status(row.msgid, "held", last_error=hold)
        elif self.cfg.delivery == "outbox":
            self.store.set_report_status(row.msgid, "sent", last_error="in the outbox",
                                         sent=True)
        elif send_now:
            self.flush()
        got = self.store.get_report(row.msgid)
        assert got is not None
        return got

    # -- deliver --------------------------------------------------------------------------

    def flush(self, *, resend: tuple[str, ...] = ()) -> FlushSummary:
        """Reconcile what a crash left, then deliver every queued report that is due."""
        with try_locked(self.state_dir / "report-delivery.lock") as got:
            if not got:
                return FlushSummary(busy=True)
            reconciled = self._reconcile()
            counts = {"sent": 0, "held": 0, "queued": 0, "failed": 0, UNCONFIRMED: 0}
            confirmed = self._check_unconfirmed(counts)
            for msgid in resend:
                self._requeue(msgid)
            now = self.clock()
            for row in self.store.reports("queued"):
                if row.next_attempt_at > now:
                    counts["queued"] += 1
                    continue
                counts[self._deliver(row, forced=row.msgid in resend)] += 1
            return FlushSummary(sent=counts["sent"], held=counts["held"],
                                retrying=counts["queued"], failed=counts["failed"],
                                reconciled=reconciled, confirmed=confirmed,
                                unconfirmed=counts[UNCONFIRMED])

    def _requeue(self, msgid: str) -> None:
        row = self.store.get_report(msgid)
        if row is None:
            raise InputError(f"no report with Message-ID <{msgid}> (see `kbot outbox list`)")
        if row.status not in ("held", "failed"):
            raise InputError(f"report <{msgid}> is {row.status}; only held or failed reports "
                             "can be resent")
        self.store.set_report_status(msgid, "queued", last_error=f"resend asked ({row.status})")

    def _reconcile(self) -> int:
        """Rows a dead process left in "sending" (we hold the delivery lock: none is live)."""
        n = 0
        for row in self.store.reports("sending"):
            n += 1
            if row.stage != STAGE_DATA:
                # The final dot never left: the server dropped the unfinished DATA with the
                # connection (RFC 5321 4.1.1.4), so it cannot have the mail.
                self.store.set_report_status(
                    row.msgid, "queued", last_error="interrupted before the final dot; will send")
                continue
            self._unconfirmed(row.msgid, "kbot stopped after handing it to SMTP")
        return n

    def _unconfirmed(self, msgid: str, why: str) -> None:
        """The server may have it: look for it in the archive until the window closes."""
        deadline = self.clock() + self.cfg.confirm_window_s
        self.store.set_report_status(msgid, UNCONFIRMED,
                                     last_error=f"delivery unconfirmed: {why}",
                                     next_attempt_at=deadline)
        log.warning("report <%s>: delivery unconfirmed (%s); looking for it in %s for %.0f s",
                    msgid, why, self.cfg.archive_url, self.cfg.confirm_window_s)

    def _check_unconfirmed(self, counts: dict[str, int]) -> int:
        """Ask the archive about each unconfirmed report: found -> sent; window over -> held
        (for a person, with the reason); else keep looking at the next flush."""
        confirmed = 0
        now = self.clock()
        for row in self.store.reports(UNCONFIRMED):
            seen = self.confirm(row.msgid)
            if seen:
                confirmed += 1
                self.store.set_report_status(
                    row.msgid, "sent", sent=True,
                    last_error=f"confirmed in the archive ({row.last_error})")
                log.info("report <%s> found in the archive: sent", row.msgid)
            elif now >= row.next_attempt_at:
                answer = "could not be asked" if seen is None else "does not show it"
                self.store.set_report_status(
                    row.msgid, "held",
                    last_error=(f"{row.last_error}; the archive {self.cfg.archive_url} {answer}"
                                f" after {self.cfg.confirm_window_s:.0f} s: check the list, then "
                                f"`kbot outbox flush --resend {row.msgid}` if it never arrived"))
                counts["held"] += 1
                log.warning("report <%s> held: delivery unconfirmed", row.msgid)
            else:
                counts[UNCONFIRMED] += 1
        return confirmed

    def _deliver(self, row: ReportRow, *, forced: bool = False) -> str:
        if not forced and (invalid := self.store.invalid_lineage(row.lineage)) is not None:
            # Marked invalid after it was queued: no more mail about that series (unless an
            # operator resends it on purpose).
            self.store.set_report_status(row.msgid, "held", last_error=invalid.reason)
            return "held"
        self.outbox.put(row.raw)  # idempotent: the record exists before any mail leaves
        if self.cfg.delivery != "smtp":
            self.store.set_report_status(row.msgid, "sent", last_error="in the outbox",
                                         sent=True)
            return "sent"
        if not self.cfg.smtp.host:
            self.store.set_report_status(
                row.msgid, "held",
                last_error="report.delivery is smtp but report.smtp.host is empty")
            return "held"
        rcpts = row.recipients
        held_back: tuple[str, ...] = ()
        if self.cfg.staging_allowlist:
            held_back = tuple(r for r in rcpts if not allowed(r, self.cfg.staging_allowlist))
            rcpts = tuple(r for r in rcpts if r not in held_back)
        if not rcpts:
            self.store.set_report_status(
                row.msgid, "held", last_error="staging: no recipient is on the allowlist")
            return "held"
        now = self.clock()
        if not self.store.claim_report(row.msgid, from_status="queued", now=now):
            return "queued"  # someone else changed it meanwhile
        attempts = row.attempts + 1
        self._hook(STAGE_CLAIMED, row.msgid)

        def before_dot() -> None:
            # From here the server may have the mail: a crash must not lead to a blind resend.
            self.store.set_report_stage(row.msgid, STAGE_DATA)
            self._hook("data", row.msgid)

        res = smtp.send(self.cfg.smtp, row.raw, self.config.bot.email, rcpts,
                        before_dot=before_dot, after_body=lambda: self._hook("body", row.msgid))
        if res.status is smtp.SendStatus.SENT:
            self._hook("accepted", row.msgid)
            notes = []
            if held_back:
                notes.append("staging: not sent to " + ", ".join(held_back))
            if res.refused:
                notes.append("refused by the server: " + ", ".join(res.refused))
            self.store.set_report_status(row.msgid, "sent", last_error="; ".join(notes),
                                         sent=True)
            log.info("sent <%s> to %s", row.msgid, ", ".join(rcpts))
            return "sent"
        if res.ambiguous:
            # The final dot left and no verdict came back: the server may have the mail.
            self._unconfirmed(row.msgid, res.detail)
            return UNCONFIRMED
        if res.status is smtp.SendStatus.PERMANENT or attempts >= self.cfg.max_attempts:
            self.store.set_report_status(row.msgid, "failed", last_error=res.detail)
            log.warning("report <%s> failed: %s", row.msgid, res.detail)
            return "failed"
        delay = min(self.cfg.retry_backoff_s * 2 ** (attempts - 1), self.cfg.retry_max_backoff_s)
        self.store.set_report_status(row.msgid, "queued", last_error=res.detail,
                                     next_attempt_at=self.clock() + delay)
        log.warning("report <%s>: %s; retry in %.0f s", row.msgid, res.detail, delay)
        return "queued"

    def _hook(self, stage: str, msgid: str) -> None:
        if self.hook is not None:
            self.hook(stage, msgid)


def _also(rcpt: Recipients, who: Addr | None, bot_email: str) -> Recipients:
    """`who` (whoever asked by mail) on Cc, unless the mail goes to them already."""
    if who is None or not who.email or who.email.lower() == bot_email.lower():
        return rcpt
    if who.email.lower() in (a.lower() for a in rcpt.all):
        return rcpt
    return Recipients(to=rcpt.to, cc=(*rcpt.cc, who))

