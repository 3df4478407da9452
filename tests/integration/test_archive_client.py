"""ArchiveClient against a real public-inbox-httpd on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ArchiveSection
from bot.errors import InfraError, InputError
from bot.intake.client import ArchiveClient, ArchiveHTTPError
from bot.intake.local_inbox import LocalInbox
from tests.fixtures.public_inbox import patch_mail

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

COVER = "20210503150854.1144255-1-vkuznets@redhat.com"
REPLY = "87de6570-750c-5ce1-17a2-36abe99813ac@redhat.com"


DEFAULTS = ArchiveSection()


def client_for(
    inbox: LocalInbox,
    *,
    max_inflated_bytes: int = DEFAULTS.max_inflated_bytes,
    max_download_bytes: int = DEFAULTS.max_download_bytes,
    max_message_bytes: int = DEFAULTS.max_message_bytes,
) -> ArchiveClient:
    return ArchiveClient(ArchiveSection(
        base_url=inbox.base_url, retries=0, timeout_s=10,
        max_inflated_bytes=max_inflated_bytes, max_download_bytes=max_download_bytes,
        max_message_bytes=max_message_bytes,
    ))


def test_feed_search_thread_and_raw(local_inbox: LocalInbox, seed_mbox: Path) -> None:
    local_inbox.deliver_mbox(seed_mbox, "kvm")
    with client_for(local_inbox) as client:
        feed = client.new_atom("kvm")
        assert len(feed) == 6
        assert feed[0].msgid == REPLY  # newest received first
        assert feed[0].in_reply_to == "20210503150854.1144255-5-vkuznets@redhat.com"
        assert feed[0].updated is not None and feed[0].updated.year == 2021
        assert client.new_atom("other") == []  # an existing, empty inbox
        with pytest.raises(ArchiveHTTPError, match="no list 'nosuch'"):
            client.new_atom("nosuch")

        # rt: takes epoch seconds; pages of 4 then 2 cover the 6 messages once each.
        first = client.search_atom("kvm", "rt:1620000000..", offset=0, limit=4)
        second = client.search_atom("kvm", "rt:1620000000..", offset=4, limit=4)
        assert len(first) == 4 and len(second) == 2
        assert {e.msgid for e in first + second} == {e.msgid for e in feed}
        assert client.search_atom("kvm", "rt:1620000000..", offset=8, limit=4) == []
        assert client.search_atom("kvm", "rt:1900000000..") == []

        thread = client.thread_mbox(COVER, "kvm")
        assert thread.startswith(b"From mboxrd@z")
        assert thread.count(b"\nFrom mboxrd@z") == 5  # six messages

        raw = client.raw(REPLY, "kvm")
        assert b"Message-ID: <" + REPLY.encode() + b">" in raw

        swept = [m for m in client.iter_search_mbox("kvm", "z:1..")]
        assert len(swept) == 6 and REPLY.encode() in swept[0]
        assert len(client.search_mbox("kvm", "s:nVMX")) > 10_000
        with pytest.raises(ArchiveHTTPError) as err:
            client.raw("no-such-message@example.org", "kvm")
        assert err.value.status == 404 and "no-such-message@example.org/raw" in str(err.value)


def test_thread_mbox_that_inflates_past_the_limit_is_an_input_error(
    local_inbox: LocalInbox,
) -> None:
    # 8 MB of one repeated line compresses to a few kB: a gzip bomb in miniature.
    bomb = patch_mail("bomb-1@example.org", "[PATCH] KVM: x86: big", files=(),
                      body="A" * 79 + "\n" * 1 + ("B" * 79 + "\n") * 100_000)
    local_inbox.deliver(bomb, "kvm")
    with client_for(local_inbox, max_inflated_bytes=1_000_000) as client:
        with pytest.raises(InputError, match=r"bomb-1@example.org/t\.mbox\.gz: gzip body "
                                             r"inflates past the 1000000-byte limit"):
            client.thread_mbox("bomb-1@example.org", "kvm")
    with client_for(local_inbox, max_download_bytes=1000) as client:
        with pytest.raises(InputError, match="over the 1000-byte"):
            client.thread_mbox("bomb-1@example.org", "kvm")
    with client_for(local_inbox, max_message_bytes=100_000) as client:
        with pytest.raises(InputError, match="message is over the 100000-byte limit"):
            client.raw("bomb-1@example.org", "kvm")
    with client_for(local_inbox) as client:  # the default limits take it
        assert len(client.thread_mbox("bomb-1@example.org", "kvm")) > 8_000_000


def test_server_down_is_an_infra_error_naming_the_url(local_inbox: LocalInbox) -> None:
    url = local_inbox.base_url
    local_inbox.stop()
    cfg = ArchiveSection(base_url=url, retries=2, backoff_s=0.01, timeout_s=2)
    with ArchiveClient(cfg) as client, pytest.raises(InfraError) as err:
        client.new_atom("kvm")
    msg = str(err.value)
    assert f"GET {url}/kvm/new.atom" in msg and "unreachable after 3 tries" in msg
    assert "ConnectionError" in msg
