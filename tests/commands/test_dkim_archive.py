"""A DKIM signature survives the way to kbot's store: signed mail delivered to a real
public-inbox list, read back by the real watcher (and by a thread fetch, as mboxrd), verifies
against the stub DNS; the same mail altered on the way does not, and is not obeyed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bot.commands.act import process
from bot.commands.auth import DkimStatus, check_dkim
from bot.config import CommandsSection
from bot.intake.client import ArchiveClient
from bot.intake.local_inbox import LocalInbox
from bot.intake.watcher import watch_once
from bot.state import Store
from tests.commands.keys import make_key, sign, stub_dns
from tests.fixtures.public_inbox import WatchConfig, series_mails

pytestmark = pytest.mark.integration


def reply(msgid: str, body: str) -> bytes:
    return (f"From: Paolo <paolo@example.org>\nTo: kvm@vger.kernel.org\n"
            f"Subject: Re: [PATCH 0/2] KVM: nVMX: series d1\n"
            f"Date: Fri, 04 Dec 2026 22:00:00 +0000\nMessage-ID: <{msgid}>\n"
            f"In-Reply-To: <d1-v1-0@example.org>\nReferences: <d1-v1-0@example.org>\n\n"
            f"{body}").encode()


def test_signed_command_verifies_from_the_store(tmp_path: Path, local_inbox: LocalInbox,
                                                watch_config: WatchConfig) -> None:
    key = make_key(tmp_path)
    dns = stub_dns({"test._domainkey.example.org": key.txt})
    good = sign(reply("signed@example.org", "#kbot help\n"), key, "example.org")
    bad = sign(reply("altered@example.org", "#kbot help\n"), key, "example.org").replace(
        b"#kbot help", b"#kbot invalid")
    local_inbox.deliver_many([*series_mails("d1", 2), good, bad], "kvm")
    config = replace(watch_config(), commands=CommandsSection(
        enabled=True, allow=("paolo@example.org",), require_dkim=("example.org",)))
    with Store(tmp_path / "state" / "kbot.sqlite3") as store:
        with ArchiveClient(config.archive) as client:
            watch_once(config, store, client)
            # The thread as the watcher fetches it (t.mbox.gz, mboxrd) keeps it intact too.
            thread = client.thread_messages("d1-v1-0@example.org", "kvm")
        stored = store.get_message("signed@example.org")
        assert stored is not None and stored.raw is not None
        assert check_dkim(stored.raw, "paolo@example.org", dns).status is DkimStatus.PASS
        (from_thread,) = [r for r in thread if b"<signed@example.org>" in r]
        assert check_dkim(from_thread, "paolo@example.org", dns).status is DkimStatus.PASS
        report = process(config, store, dnsfunc=dns)
        states = {r.msgid: r.state for r in report.recorded}
        assert states == {"signed@example.org": "acted", "altered@example.org": "ignored"}
