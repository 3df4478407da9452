"""Who may command kbot: the allowlist, DKIM (a test key, a stub DNS), and robots."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.commands.auth import DkimStatus, allowed, authorize, automatic, check_dkim
from bot.config import CommandsSection
from bot.intake.mail import parse_message
from tests.commands.keys import Key, make_key, sign, stub_dns

ALLOW = CommandsSection(enabled=True, allow=("paolo@example.org", "@kernel.test"))
BOT = "kbot@example.net"


def mail(sender: str = "Paolo <paolo@example.org>", body: str = "#kbot test\n",
         extra: str = "") -> bytes:
    return (f"From: {sender}\nTo: kvm@example.org\nSubject: Re: [PATCH 0/3] x\n"
            f"Date: Fri, 04 Dec 2026 22:00:00 +0000\nMessage-ID: <cmd@example.org>\n"
            f"In-Reply-To: <regress-0@example.org>\n{extra}\n{body}").encode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Key, Key]:
    tmp = tmp_path_factory.mktemp("dkim")
    return make_key(tmp, "good"), make_key(tmp, "evil")


def test_allowlist_is_exact_addresses_and_whole_domains_only() -> None:
    allow = ("Paolo@Example.org", "@kernel.test")
    assert allowed("paolo@example.org", allow)
    assert allowed("anyone@kernel.test", allow)
    assert not allowed("paolo@example.org.evil.net", allow)
    assert not allowed("x@evil.kernel.test", allow)  # no subdomains
    assert not allowed("sean@example.org", allow)
    assert not allowed("kernel.test", allow)


@pytest.mark.parametrize(("extra", "sender", "why"), [
    ("", "kbot <KBOT@example.net>", "sent by kbot itself"),
    ("X-Kbot-Report: regression\n", "other-kbot@example.com", "X-Kbot-Report"),
    ("Auto-Submitted: auto-replied\n", "paolo@example.org", "Auto-Submitted"),
    ("Precedence: junk\n", "paolo@example.org", "Precedence"),
    ("X-Autoreply: yes\n", "paolo@example.org", "auto-reply"),
    ("", "MAILER-DAEMON@example.org", "bounce"),
])
def test_mail_from_robots_is_never_obeyed(extra: str, sender: str, why: str) -> None:
    msg = parse_message(mail(sender, extra=extra))
    assert why in automatic(msg, BOT)
    assert not authorize(ALLOW, msg, mail(sender, extra=extra), BOT).allowed


def test_list_mail_headers_are_not_robots() -> None:
    extra = "Precedence: bulk\nList-Id: <kvm.vger.kernel.org>\nAuto-Submitted: no\n"
    assert automatic(parse_message(mail(extra=extra)), BOT) == ""


def test_only_allowed_senders(keys: tuple[Key, Key]) -> None:
    raw = mail("Mallory <mallory@example.org>")
    got = authorize(ALLOW, parse_message(raw), raw, BOT)
    assert not got.allowed and "not on commands.allow" in got.reason
    raw = mail()
    assert authorize(ALLOW, parse_message(raw), raw, BOT).allowed  # unsigned, not required


def test_a_valid_signature_of_the_senders_domain_passes(keys: tuple[Key, Key]) -> None:
    good, _ = keys
    dns = stub_dns({"test._domainkey.example.org": good.txt})
    raw = sign(mail(), good, "example.org")
    cfg = CommandsSection(True, ALLOW.allow, require_dkim=("example.org",))
    got = authorize(cfg, parse_message(raw), raw, BOT, dns)
    assert got.allowed, got.reason
    assert got.dkim is not None and got.dkim.status is DkimStatus.PASS
    # A parent domain's signature covers its subdomains' senders too.
    raw = sign(mail("Dev <dev@lab.kernel.test>"), good, "kernel.test")
    dns = stub_dns({"test._domainkey.kernel.test": good.txt})
    assert check_dkim(raw, "dev@lab.kernel.test", dns).status is DkimStatus.PASS


def test_a_broken_signature_is_rejected_even_when_not_required(keys: tuple[Key, Key]) -> None:
    good, _ = keys
    dns = stub_dns({"test._domainkey.example.org": good.txt})
    signed = sign(mail(body="#kbot help\n"), good, "example.org")
    tampered = signed.replace(b"#kbot help", b"#kbot invalid")
    got = authorize(ALLOW, parse_message(tampered), tampered, BOT, dns)
    assert not got.allowed and "body hash mismatch" in got.reason
    # Signed with another key than the one in DNS: the signature does not verify.
    _, evil = keys
    forged = sign(mail(), evil, "example.org")
    got = authorize(ALLOW, parse_message(forged), forged, BOT, dns)
    assert not got.allowed and "does not verify" in got.reason


def test_forged_from_with_another_domains_valid_signature(keys: tuple[Key, Key]) -> None:
    """Mallory signs with her own domain's key and puts Paolo's address in From:."""
    _, evil = keys
    dns = stub_dns({"test._domainkey.evil.test": evil.txt})
    raw = sign(mail(), evil, "evil.test")
    assert check_dkim(raw, "paolo@example.org", dns).status is DkimStatus.NONE
    required = CommandsSection(True, ALLOW.allow, require_dkim=("example.org",))
    got = authorize(required, parse_message(raw), raw, BOT, dns)
    assert not got.allowed
    assert "require_dkim names example.org" in got.reason and "evil.test" in got.reason
    # Unsigned mail from a domain that must sign: not obeyed either.
    got = authorize(required, parse_message(mail()), mail(), BOT, dns)
    assert not got.allowed and "no DKIM signature of example.org" in got.reason
    # A domain that need not sign: its unsigned (or other-signed) mail is obeyed.
    lax = CommandsSection(True, ALLOW.allow, require_dkim=("kernel.test",))
    assert authorize(lax, parse_message(raw), raw, BOT, dns).allowed


def test_signature_checked_on_the_raw_bytes_kbot_stored(tmp_path: Path,
                                                        keys: tuple[Key, Key]) -> None:
    """CRLF line ends (SMTP's form) verify as well as LF (the archive's)."""
    good, _ = keys
    dns = stub_dns({"test._domainkey.example.org": good.txt})
    raw = sign(mail(), good, "example.org").replace(b"\n", b"\r\n")
    assert check_dkim(raw, "paolo@example.org", dns).status is DkimStatus.PASS
