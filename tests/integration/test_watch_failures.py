"""Bad input and a failing archive: clear errors, recorded skips, nothing stored is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ArchiveSection
from bot.errors import InfraError
from bot.intake.client import ArchiveClient
from bot.intake.local_inbox import LocalInbox
from bot.intake.watcher import Cursor, watch_once
from bot.state import INTAKE_ASSEMBLE, INTAKE_FETCH, Store
from tests.fixtures.public_inbox import WatchConfig, patch_mail, series_mails

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_archive_down_raises_clear_infra_error_and_loses_nothing(
    local_inbox: LocalInbox, watch_config: WatchConfig, seed_mbox: Path, tmp_path: Path
) -> None:
    local_inbox.deliver_mbox(seed_mbox, "kvm")
    cfg = watch_config()
    with Store.in_state_dir(tmp_path / "state") as store:
        with ArchiveClient(cfg.archive) as client:
            assert len(watch_once(cfg, store, client).recorded) == 1
        cursor_before = store.get_cursor("kvm")
        local_inbox.deliver_many(series_mails("while-down", 2), "kvm")
        old_url = local_inbox.base_url
        local_inbox.stop()
        with ArchiveClient(cfg.archive) as client, pytest.raises(InfraError) as err:
            watch_once(cfg, store, client)
        assert f"{old_url}/kvm/new.atom" in str(err.value)
        assert "unreachable" in str(err.value)
        assert len(store.messages("kvm")) == 6 and len(store.jobs()) == 1
        assert store.get_cursor("kvm") == cursor_before

        local_inbox.start()  # a new port: the config follows it
        cfg = watch_config()
        with ArchiveClient(cfg.archive) as client:
            report = watch_once(cfg, store, client)
        assert [r.title for r in report.recorded] == ["KVM: nVMX: series while-down"]
        assert len(store.jobs()) == 2


class DiesBeforeThreads(ArchiveClient):
    """A real client whose archive goes away right after the new mail was read."""

    def __init__(self, cfg: ArchiveSection, inbox: LocalInbox) -> None:
        super().__init__(cfg)
        self.inbox = inbox

    def thread_messages(self, msgid: str, list_name: str | None = None) -> tuple[bytes, ...]:
        self.inbox.stop()
        return super().thread_messages(msgid, list_name)


def test_archive_dying_mid_poll_keeps_the_threads_to_fetch(
    local_inbox: LocalInbox, watch_config: WatchConfig, tmp_path: Path
) -> None:
    cfg = watch_config()
    local_inbox.deliver_many(series_mails("mid", 3), "kvm")
    with Store.in_state_dir(tmp_path / "state") as store:
        with DiesBeforeThreads(cfg.archive, local_inbox) as client, pytest.raises(InfraError):
            watch_once(cfg, store, client)
        # The messages were stored (discovery finished, so the cursor moved), and each still
        # waits for its thread in the store.
        assert len(store.messages("kvm")) == 4
        assert Cursor.load(store, "kvm").rt is not None
        assert len(store.messages_in_intake("kvm", INTAKE_FETCH)) == 4
        assert store.jobs() == []

        local_inbox.start()
        cfg = watch_config()
        with ArchiveClient(cfg.archive) as client:
            report = watch_once(cfg, store, client)
        assert report.new_messages == 0  # all known: the stored intake state carries the series
        assert [(r.patches, r.complete) for r in report.recorded] == [(3, True)]
        assert store.messages_in_intake("kvm", INTAKE_FETCH) == []
        assert store.messages_in_intake("kvm", INTAKE_ASSEMBLE) == []


def test_bad_messages_are_recorded_skips_and_the_poll_goes_on(
    local_inbox: LocalInbox, watch_config: WatchConfig, tmp_path: Path
) -> None:
    cfg = watch_config(archive={"max_message_bytes": 3_000_000, "max_inflated_bytes": 2_000_000})
    bare_cr = b"".join([
        b"From: Eve <eve@example.org>\nSubject: [PATCH] evil\rBcc: victim@example.org\n",
        b"Message-ID: <bare-cr@example.org>\nDate: Thu, 1 Jan 2015 00:00:00 +0000\n\nx\n",
    ])
    nul = (b"From: Eve <eve@example.org>\nSubject: [PATCH] n\0l\n"
           b"Message-ID: <nul@example.org>\n\nx\n")
    line = "B" * 79 + "\n"
    huge = patch_mail("huge@example.org", "[PATCH] KVM: huge", files=(), body=line * 100_000)
    inflating = patch_mail("inflating@example.org", "[PATCH] KVM: inflating", files=(),
                           body=line * 31_000)  # 2.5 MB: one message fits, its thread not
    mails = [bare_cr, nul, huge, inflating, *series_mails("fine", 2)]
    with Store.in_state_dir(tmp_path / "state") as store:
        store.add_message("kept@example.org", "kvm", subject="stored earlier", raw=b"x")
        local_inbox.deliver_many(mails, "kvm")
        with ArchiveClient(cfg.archive) as client:
            report = watch_once(cfg, store, client)
        (lst,) = report.lists
        skipped = {s.msgid: s.error for s in lst.skipped}
        assert "bare CR in headers" in skipped["bare-cr@example.org"]
        assert "NUL byte in headers" in skipped["nul@example.org"]
        assert "huge@example.org/raw: message is over the 3000000-byte limit" in (
            skipped["huge@example.org"]
        )
        assert len(lst.errors) == 1
        assert "inflating@example.org/t.mbox.gz: gzip body inflates past" in (
            lst.errors[0]
        )
        assert [(r.title, r.patches) for r in report.recorded] == [
            ("KVM: nVMX: series fine", 2)
        ]
        for msgid in ("bare-cr@example.org", "nul@example.org", "huge@example.org"):
            row = store.get_message(msgid)
            assert row is not None and row.status == "skipped" and row.error
        assert store.get_message("bare-cr@example.org").raw is not None  # type: ignore[union-attr]
        kept = store.get_message("kept@example.org")
        assert kept is not None and kept.raw == b"x"
        # Skips are stored once: the next poll neither retries nor re-reports them.
        with ArchiveClient(cfg.archive) as client:
            again = watch_once(cfg, store, client)
        assert again.skipped == () and again.recorded == ()
        # The delivery-order sweep meets the inflating mail first and stops there, saying so.
        (lst,) = again.lists
        assert [e.split(": ")[0] for e in lst.errors] == ["sweep"]
        assert "gzip body inflates past the 2000000-byte limit" in lst.errors[0]
