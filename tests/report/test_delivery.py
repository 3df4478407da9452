"""Delivery to a real SMTP server (aiosmtpd on loopback): threading, recipients, staging,
retries, and exactly-once across a SIGKILL between "sending" and "sent"."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bot.cli import main
from bot.config import Config
from bot.report import smtp
from bot.report.context import SeriesReport
from bot.report.deliver import Reporter
from bot.report.outbox import parse
from bot.state import Store
from tests.fixtures.smtp import SmtpSink, free_port
from tests.report.helpers import load_as, load_result, seed_regression, write_config

if TYPE_CHECKING:
    from bot.intake.local_inbox import LocalInbox  # the public_inbox fixture's server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
PATCH4 = "20210503150854.1144255-5-vkuznets@redhat.com"
COVER = "20210503150854.1144255-1-vkuznets@redhat.com"
EVERYONE = ["vkuznets@redhat.com", "kvm@vger.kernel.org", "pbonzini@redhat.com",
            "seanjc@google.com", "wanpengli@tencent.com", "jmattson@google.com",
            "mlevitsk@redhat.com", "linux-kernel@vger.kernel.org"]


def smtp_config(tmp: Path, sink: SmtpSink, extra: str = "", archive: str = "") -> Config:
    lines = f'\ndelivery = "smtp"\nretry_backoff_s = 30\nmax_attempts = 3\n{extra}\n'
    lines += f'[report.smtp]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\n'
    lines += "timeout_s = 10\n"
    if archive:
        return write_config(tmp, lines, archive_url=archive)
    return write_config(tmp, lines)


def reporter(cfg: Config, clock: list[float] | None = None) -> Reporter:
    store = Store.in_state_dir(cfg.state_dir)
    if clock is None:
        return Reporter(cfg, store)
    return Reporter(cfg, store, clock=lambda: clock[0])


def test_mail_threaded_addressed_and_once(
    tmp_path: Path, smtp_server: SmtpSink, seed_mbox: Path
) -> None:
    rep = reporter(smtp_config(tmp_path, smtp_server))
    seed = seed_regression(seed_mbox)
    row = rep.submit(seed, job_id=None)
    assert row is not None and row.status == "sent", row
    got = smtp_server.wait_for(1)
    assert len(got) == 1
    mail = got[0]
    assert mail.mail_from == "kbot@kbot.example"
    assert sorted(mail.rcpt_tos) == sorted(EVERYONE)
    msg = mail.message
    assert msg["Message-ID"] == f"<{row.msgid}>"
    assert msg["In-Reply-To"] == f"<{PATCH4}>"
    assert msg["References"].split() == [f"<{COVER}>", f"<{PATCH4}>"]
    assert msg["To"].addresses[0].addr_spec == "vkuznets@redhat.com"
    assert "Bcc" not in msg
    body = msg.get_content()
    assert "from this patch on, evmcs_test fails" in " ".join(body.split())
    assert f"| Closes: https://lore.kernel.org/kvm/{row.msgid}/" in body
    # The same result again: no second mail.
    assert rep.submit(seed) is not None
    assert rep.flush().sent == 0
    time.sleep(0.3)
    assert len(smtp_server.messages()) == 1
    # The series-wide report threads under the cover.
    rep.submit(dataclasses.replace(load_as("series", SeriesReport), series=seed.series))
    s = smtp_server.wait_for(2)[1].message
    assert s["In-Reply-To"] == f"<{COVER}>" and s["References"] == f"<{COVER}>"


def test_staging_allowlist(tmp_path: Path, smtp_server: SmtpSink, seed_mbox: Path) -> None:
    cfg = smtp_config(tmp_path, smtp_server,
                      'staging_allowlist = ["vkuznets@redhat.com", "@google.com"]')
    rep = reporter(cfg)
    row = rep.submit(seed_regression(seed_mbox))
    assert row is not None and row.status == "sent"
    (mail,) = smtp_server.wait_for(1)
    assert sorted(mail.rcpt_tos) == ["jmattson@google.com", "seanjc@google.com",
                                     "vkuznets@redhat.com"]
    assert "staging: not sent to kvm@vger.kernel.org" in row.last_error
    assert rep.outbox.has(row.msgid)  # the full mail stays in the outbox

    cfg2 = smtp_config(tmp_path / "b", smtp_server, 'staging_allowlist = ["@nowhere.example"]')
    rep2 = reporter(cfg2)
    held = rep2.submit(load_result("build-failure"))
    assert held is not None and held.status == "held"
    assert "allowlist" in held.last_error
    assert rep2.outbox.has(held.msgid)
    time.sleep(0.3)
    assert len(smtp_server.messages()) == 1


def test_smtp_down_then_up_loses_nothing(tmp_path: Path, smtp_server: SmtpSink) -> None:
    clock = [1000.0]
    rep = reporter(smtp_config(tmp_path, smtp_server), clock)
    smtp_server.stop()
    row = rep.submit(load_result("regression"))
    assert row is not None and row.status == "queued" and row.attempts == 1
    assert "Connection refused" in row.last_error or "refused" in row.last_error.lower()
    assert row.next_attempt_at == 1030.0
    assert rep.outbox.has(row.msgid)
    smtp_server.start()
    # Not due yet: backoff is respected.
    assert rep.flush().retrying == 1
    # A temporary refusal (451) keeps it queued, with a longer backoff.
    smtp_server.answer = "451 4.3.0 try again later"
    clock[0] = 1031.0
    s = rep.flush()
    assert s.retrying == 1 and s.sent == 0
    again = rep.store.get_report(row.msgid)
    assert again is not None and again.status == "queued" and again.attempts == 2
    assert "451" in again.last_error and again.next_attempt_at == 1031.0 + 60
    smtp_server.answer = ""
    clock[0] = 2000.0
    assert rep.flush().sent == 1
    assert [m.msgid for m in smtp_server.wait_for(1)] == [row.msgid]
    done = rep.store.get_report(row.msgid)
    assert done is not None and done.status == "sent" and done.attempts == 3
    assert rep.flush().sent == 0
    assert len(smtp_server.messages()) == 1


def test_refused_for_good_then_resent_on_purpose(tmp_path: Path, smtp_server: SmtpSink) -> None:
    rep = reporter(smtp_config(tmp_path, smtp_server))
    smtp_server.answer = "554 5.7.1 rejected by policy"
    row = rep.submit(load_result("apply-failure"))
    assert row is not None and row.status == "failed" and "554" in row.last_error
    assert rep.outbox.has(row.msgid)
    smtp_server.answer = ""
    assert rep.flush().sent == 0  # failed reports are not retried on their own
    assert rep.flush(resend=(row.msgid,)).sent == 1
    assert [m.msgid for m in smtp_server.wait_for(1)] == [row.msgid]


# -- a crash between "sending" and "sent" ---------------------------------------------------

CHILD = """
import pathlib, sys, time
from bot.config import load_config
from bot.report import smtp
from bot.report.deliver import Reporter
from bot.state import Store
cfg = load_config(sys.argv[1])
stage, flag = sys.argv[2], pathlib.Path(sys.argv[3])
def hook(s, msgid):
    if s == stage:
        flag.write_text(msgid)
        time.sleep(60)
Reporter(cfg, Store.in_state_dir(cfg.state_dir), hook=hook).flush()
"""


def crash_while_delivering(cfg: Config, stage: str, tmp: Path) -> str:
    """Run a delivering kbot in a child process and SIGKILL it at `stage`."""
    flag = tmp / f"at-{stage}"
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", CHILD, str(cfg.source), stage, str(flag)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 30
        while not flag.exists():
            assert child.poll() is None, f"child exited {child.returncode} before {stage}"
            assert time.monotonic() < deadline, f"child never reached {stage}"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return flag.read_text()


@pytest.fixture
def archive(smtp_server: SmtpSink) -> Iterator[str]:
    """A list archive on loopback that has what the SMTP server received (lore's /raw)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            if len(parts) == 3 and parts[0] == "kvm" and parts[2] == "raw":
                for m in smtp_server.messages():
                    if m.msgid == parts[1]:
                        self.send_response(200)
                        self.end_headers()
                        self.wfile.write(m.raw)
                        return
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/kvm/"
    finally:
        server.shutdown()
        server.server_close()


def _queue(cfg: Config) -> str:
    rep = reporter(cfg)
    row = rep.submit(load_result("regression"), send_now=False)
    assert row is not None and row.status == "queued"
    return row.msgid


def test_crash_after_server_accepted_confirmed_by_archive(
    tmp_path: Path, smtp_server: SmtpSink, archive: str
) -> None:
    cfg = smtp_config(tmp_path, smtp_server, archive=archive)
    msgid = _queue(cfg)
    assert crash_while_delivering(cfg, "accepted", tmp_path) == msgid
    assert [m.msgid for m in smtp_server.wait_for(1)] == [msgid]
    left = Store.in_state_dir(cfg.state_dir).get_report(msgid)
    assert left is not None and left.status == "sending" and left.stage == "smtp-data"
    # Restart: the archive has it, so it is "sent" and not mailed again.
    s = reporter(cfg).flush()
    assert (s.reconciled, s.sent) == (1, 0)
    row = Store.in_state_dir(cfg.state_dir).get_report(msgid)
    assert row is not None and row.status == "sent" and "confirmed" in row.last_error
    reporter(cfg).flush()
    time.sleep(0.3)
    assert len(smtp_server.messages()) == 1


def test_crash_after_server_accepted_unconfirmed_is_held(
    tmp_path: Path, smtp_server: SmtpSink
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/kvm/"  # nobody listens: the archive cannot tell
    cfg = smtp_config(tmp_path, smtp_server, extra="confirm_window_s = 600", archive=dead)
    msgid = _queue(cfg)
    crash_while_delivering(cfg, "accepted", tmp_path)
    assert len(smtp_server.wait_for(1)) == 1
    clock = [1000.0]
    s = reporter(cfg, clock).flush()
    # Within the window it is still looked for, not held and not resent.
    assert (s.reconciled, s.sent, s.unconfirmed) == (1, 0, 1)
    row = Store.in_state_dir(cfg.state_dir).get_report(msgid)
    assert row is not None and row.status == "unconfirmed" and row.next_attempt_at == 1600.0
    clock[0] = 1599.0
    assert reporter(cfg, clock).flush().unconfirmed == 1
    clock[0] = 1600.0
    s = reporter(cfg, clock).flush()
    assert (s.sent, s.held, s.unconfirmed) == (0, 1, 0)
    row = Store.in_state_dir(cfg.state_dir).get_report(msgid)
    assert row is not None and row.status == "held"
    assert "unconfirmed" in row.last_error and f"--resend {msgid}" in row.last_error
    assert "could not be asked" in row.last_error
    assert reporter(cfg).flush().sent == 0
    time.sleep(0.3)
    assert len(smtp_server.messages()) == 1  # held, listed, never sent twice


def test_crash_before_data_is_sent_once_after_restart(
    tmp_path: Path, smtp_server: SmtpSink
) -> None:
    cfg = smtp_config(tmp_path, smtp_server)
    msgid = _queue(cfg)
    flag = tmp_path / "at-claimed"
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", CHILD, str(cfg.source), "claimed", str(flag)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 30
        while not flag.exists():
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        # While it is alive, nobody else delivers (or mistakes its row for a crashed one).
        assert reporter(cfg).flush().busy
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    left = Store.in_state_dir(cfg.state_dir).get_report(msgid)
    assert left is not None and left.status == "sending" and left.stage == "claimed"
    assert smtp_server.messages() == []
    s = reporter(cfg).flush()
    assert (s.reconciled, s.sent) == (1, 1)
    assert [m.msgid for m in smtp_server.wait_for(1)] == [msgid]
    reporter(cfg).flush()
    time.sleep(0.3)
    assert len(smtp_server.messages()) == 1
    row = Store.in_state_dir(cfg.state_dir).get_report(msgid)
    assert row is not None and row.status == "sent"
    assert parse(row.raw)["Message-ID"] == f"<{msgid}>"


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")
@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_tls_and_credentials_from_environment(
    mode: str, tmp_path: Path, smtp_tls_server: Callable[[str], SmtpSink],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = smtp_tls_server(mode)
    extra = '[report.smtp]\nhost = "127.0.0.1"\n' + f'port = {sink.port}\nsecurity = "{mode}"\n'
    extra += 'username_env = "TEST_SMTP_USER"\npassword_env = "TEST_SMTP_PASS"\ntimeout_s = 10\n'
    cfg = write_config(tmp_path, '\ndelivery = "smtp"\n' + extra)
    monkeypatch.setenv("TEST_SMTP_USER", "kbot")
    monkeypatch.setenv("TEST_SMTP_PASS", "wrong")
    rep = reporter(cfg)
    row = rep.submit(load_result("regression"))
    assert row is not None and row.status == "failed" and "535" in row.last_error
    monkeypatch.setenv("TEST_SMTP_PASS", "secret")
    assert rep.flush(resend=(row.msgid,)).sent == 1
    assert [m.msgid for m in sink.wait_for(1)] == [row.msgid]
    assert sink.logins == ["kbot"]


def test_cli_flush_delivers_queued(
    tmp_path: Path, smtp_server: SmtpSink, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = smtp_config(tmp_path, smtp_server)
    msgid = _queue(cfg)
    assert main(["-c", str(cfg.source), "outbox", "flush"]) == 0
    assert "sent 1, held 0" in capsys.readouterr().out
    assert [m.msgid for m in smtp_server.wait_for(1)] == [msgid]
    assert main(["-c", str(cfg.source), "outbox", "flush"]) == 0
    assert "sent 0" in capsys.readouterr().out
    assert main(["-c", str(cfg.source), "outbox", "flush", "--resend", "nope@x"]) == 2
    assert len(smtp_server.messages()) == 1


def test_body_lines_with_dots_and_bare_newlines_arrive_intact(
    tmp_path: Path, smtp_server: SmtpSink
) -> None:
    """kbot writes DATA itself (to send the final dot on its own): a line that is a lone "."
    must be stuffed, or the server ends the mail there and takes the rest as commands."""
    cfg = smtp_config(tmp_path, smtp_server)
    raw = (b"From: kbot <kbot@kbot.example>\nTo: a@example.org\nSubject: dots\n"
           b"Message-ID: <dots@kbot.example>\n\nfirst\n.\n..two\n.three\nlast")
    stages: list[str] = []
    res = smtp.send(cfg.report.smtp, raw, "kbot@kbot.example", ("a@example.org",),
                    before_dot=lambda: stages.append("dot"),
                    after_body=lambda: stages.append("body"))
    assert res.status is smtp.SendStatus.SENT, res
    assert stages == ["body", "dot"]
    (mail,) = smtp_server.wait_for(1)
    assert mail.raw.replace(b"\r\n", b"\n").rstrip(b"\n") == raw


def test_smtp_without_host_is_held(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '\ndelivery = "smtp"\n')
    row = reporter(cfg).submit(load_result("regression"))
    assert row is not None and row.status == "held" and "smtp.host is empty" in row.last_error


def test_non_ascii_names_travel_intact(tmp_path: Path, smtp_server: SmtpSink) -> None:
    import dataclasses

    from bot.report.context import Addr, RegressionReport

    reg = load_result("regression")
    assert isinstance(reg, RegressionReport)
    patches = tuple(
        dataclasses.replace(p, author=Addr("Radim Krčmář", "rkrcmar@example.com"))
        if p.index == reg.first_bad else p for p in reg.series.patches)
    ctx = dataclasses.replace(reg, series=dataclasses.replace(reg.series, patches=patches))
    row = reporter(smtp_config(tmp_path, smtp_server)).submit(ctx)
    assert row is not None and row.status == "sent"
    (mail,) = smtp_server.wait_for(1)
    msg = mail.message
    assert msg["To"].addresses[0].display_name == "Radim Krčmář"
    assert msg.get_content().replace("\r\n", "\n").startswith("Hi Radim Krčmář,\n\n")


def test_crash_confirmed_by_a_real_public_inbox(
    tmp_path: Path, smtp_server: SmtpSink, local_inbox: LocalInbox
) -> None:
    """The same crash, confirmed by Debian's public-inbox serving the list (lore's software)."""
    cfg = smtp_config(tmp_path, smtp_server, archive=local_inbox.list_url("kvm"))
    msgid = _queue(cfg)
    crash_while_delivering(cfg, "accepted", tmp_path)
    (mail,) = smtp_server.wait_for(1)
    assert Reporter(cfg, Store.in_state_dir(cfg.state_dir)).confirm(msgid) is False
    local_inbox.deliver(mail.raw, "kvm")  # the list got it and archived it
    s = reporter(cfg).flush()
    assert (s.reconciled, s.sent) == (1, 0)
    row = Store.in_state_dir(cfg.state_dir).get_report(msgid)
    assert row is not None and row.status == "sent" and "confirmed" in row.last_error
    assert len(smtp_server.messages()) == 1
