"""Re-assembling a job's series reads that series' stored threads, not the whole list."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.intake.client import ArchiveClient
from bot.intake.local_inbox import LocalInbox
from bot.intake.mail import parse_message
from bot.intake.model import Message
from bot.intake.watcher import watch_once
from bot.pipeline import source
from bot.state import Store
from tests.fixtures.public_inbox import WatchConfig, patch_mail, series_mails

pytestmark = pytest.mark.integration


def test_series_from_store_reads_only_its_threads(
    local_inbox: LocalInbox, watch_config: WatchConfig, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = watch_config(settle_s=0)
    mine = series_mails("mine", 2)
    review = patch_mail("review-1@example.org", "Re: [PATCH 1/2] KVM: nVMX: series mine part 1",
                        files=(), in_reply_to="mine-v1-1@example.org",
                        author="Rita Reviewer <rita@example.org>",
                        body="Looks right.\n\nReviewed-by: Rita Reviewer <rita@example.org>\n")
    others = series_mails("other", 3) + [
        patch_mail(f"chat-{i}@example.org", f"Re: unrelated {i}", files=(),
                   in_reply_to="chat-0@example.org" if i else None, body="Chatter.\n")
        for i in range(5)]
    local_inbox.deliver_many([*mine, review, *others], "kvm")
    with Store.in_state_dir(tmp_path / "state") as store, ArchiveClient(cfg.archive) as client:
        watch_once(cfg, store, client)
        job = next(j for j in store.jobs() if store.get_series(j.series_id or 0)
                   and "mine" in store.get_series(j.series_id or 0).title)  # type: ignore[union-attr]
        read: list[str] = []

        def recording(raw: bytes, *args: object, **kwargs: object) -> Message:
            msg = parse_message(raw)
            read.append(msg.msgid)
            return msg

        monkeypatch.setattr(source, "parse_message", recording)
        series, list_name = source.series_from_store(store, job.series_id or 0)
    assert list_name == "kvm"
    assert sorted(read) == sorted(["mine-v1-0@example.org", "mine-v1-1@example.org",
                                   "mine-v1-2@example.org", "review-1@example.org"])
    assert [p.index for p in series.patches] == [1, 2]
    assert any(t.name == "Reviewed-by" for t in series.patches[0].trailers)
