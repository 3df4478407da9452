"""The watcher against a real public-inbox: new mail, bursts, old dates, settle, restarts."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.intake.client import ArchiveClient
from bot.intake.local_inbox import LocalInbox
from bot.intake.watcher import Source, WatchReport, watch_forever, watch_once
from bot.state import Store
from tests.fixtures.public_inbox import WatchConfig, patch_mail, series_mails

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def store_at(tmp_path: Path) -> Store:
    return Store.in_state_dir(tmp_path / "state")


def test_message_delivered_after_start_is_picked_up_on_next_poll(
    local_inbox: LocalInbox, watch_config: WatchConfig, tmp_path: Path
) -> None:
    cfg = watch_config()
    with store_at(tmp_path) as store, ArchiveClient(cfg.archive) as client:
        first = watch_once(cfg, store, client)
        assert first.new_messages == 0 and first.recorded == ()
        local_inbox.deliver_many(series_mails("late", 2), "kvm")
        local_inbox.deliver(patch_mail("elsewhere@example.org", "[PATCH] other list"), "other")
        second = watch_once(cfg, store, client)
        assert second.new_messages == 3
        assert [(r.title, r.patches, r.complete) for r in second.recorded] == [
            ("KVM: nVMX: series late", 2, True)
        ]
        assert not store.has_message("elsewhere@example.org")  # another list's mail
        third = watch_once(cfg, store, client)
        assert third.new_messages == 0 and third.recorded == ()
        assert len(store.jobs()) == 1


def test_burst_over_25_then_old_dated_message_without_received(
    local_inbox: LocalInbox, watch_config: WatchConfig, tmp_path: Path
) -> None:
    # Search pages of 10 and no sweep: the burst must come through rt: paging.
    cfg = watch_config(archive={"search_page": 10, "sweep_max": 0})
    with store_at(tmp_path) as store, ArchiveClient(cfg.archive) as client:
        watch_once(cfg, store, client)
        burst = series_mails("burst", 29)  # cover + 29 patches = 30 messages
        local_inbox.deliver_many(burst, "kvm")
        assert len(client.new_atom("kvm")) == 25  # the feed alone would miss 5
        report = watch_once(cfg, store, client)
        (lst,) = report.lists
        assert lst.new_messages[Source.FEED] == 25 and lst.new_messages[Source.SEARCH] == 5
        assert [(r.patches, r.total, r.complete) for r in report.recorded] == [(29, 29, True)]
        assert lst.threads_fetched == 1  # one t.mbox.gz for the whole thread

        # Dated 2015 and no Received: public-inbox files it under 2015, so neither the
        # (full) feed nor an rt: search from the cursor lists it.
        old = patch_mail("old-dated@example.org", "[PATCH] KVM: x86: fix from long ago",
                         date=datetime(2015, 1, 1, tzinfo=UTC))
        local_inbox.deliver(old, "kvm")
        assert "old-dated@example.org" not in {e.msgid for e in client.new_atom("kvm")}
        since = int(time.time()) - 3600
        assert client.search_atom("kvm", f"rt:{since}..", limit=200)  # the burst is there
        assert "old-dated@example.org" not in {
            e.msgid for e in client.search_atom("kvm", f"rt:{since}..", limit=200)
        }
        without_sweep = watch_once(cfg, store, client)
        assert without_sweep.new_messages == 0  # what the feed and rt: alone see

        cfg = watch_config()  # the default: sweep on
        swept = watch_once(cfg, store, client)
        (lst,) = swept.lists
        assert lst.new_messages[Source.SWEEP] == 1
        assert store.has_message("old-dated@example.org")
        assert [r.title for r in swept.recorded] == ["KVM: x86: fix from long ago"]
        assert watch_once(cfg, store, client).new_messages == 0
        assert len(store.jobs()) == 2


def test_incomplete_series_waits_then_fills_in(
    local_inbox: LocalInbox, watch_config: WatchConfig, tmp_path: Path
) -> None:
    cfg = watch_config(settle_s=600)
    cover, p1, p2, p3 = series_mails("gap", 3)
    with store_at(tmp_path) as store, ArchiveClient(cfg.archive) as client:
        local_inbox.deliver_many([cover, p1, p3], "kvm")
        report = watch_once(cfg, store, client)
        assert report.recorded == ()
        (lst,) = report.lists
        assert [(w.title, w.missing) for w in lst.waiting] == [("KVM: nVMX: series gap", (2,))]
        local_inbox.deliver(p2, "kvm")
        report = watch_once(cfg, store, client)
        assert [(r.patches, r.complete) for r in report.recorded] == [(3, True)]
        assert len(store.jobs()) == 1


def test_incomplete_series_is_recorded_after_settle_marked_incomplete(
    local_inbox: LocalInbox, watch_config: WatchConfig, tmp_path: Path
) -> None:
    cfg = watch_config(settle_s=1.0)
    cover, p1, _p2, p3 = series_mails("hole", 3)
    with store_at(tmp_path) as store, ArchiveClient(cfg.archive) as client:
        local_inbox.deliver_many([cover, p1, p3], "kvm")
        assert watch_once(cfg, store, client).recorded == ()
        time.sleep(1.1)
        report = watch_once(cfg, store, client)  # no new mail: the waiting series is due
        assert report.new_messages == 0
        assert [(r.patches, r.total, r.complete, r.missing) for r in report.recorded] == [
            (2, 3, False, (2,))
        ]
        job = store.jobs()[0]
        assert job.detail["complete"] is False and job.detail["missing"] == [2]
        assert watch_once(cfg, store, client).recorded == ()


def test_filters_and_supersede(
    local_inbox: LocalInbox, watch_config: WatchConfig, tmp_path: Path
) -> None:
    cfg = watch_config(
        files=["arch/x86/kvm/*", "tools/testing/selftests/kvm/*"],
        skip_prefixes=["kvm-unit-tests", "RFC"],
        subject_patterns=["^KVM"],
    )
    mails = (
        series_mails("kut", 1, prefix="kvm-unit-tests PATCH")
        + series_mails("rfc", 1, prefix="RFC PATCH")
        + series_mails("net", 1, files=("net/core/dev.c",))
        + series_mails("title", 1, title="x86/mm: not kvm")
        + series_mails("keep", 2)
    )
    with store_at(tmp_path) as store, ArchiveClient(cfg.archive) as client:
        local_inbox.deliver_many(mails, "kvm")
        report = watch_once(cfg, store, client)
        (lst,) = report.lists
        reasons = {f.title: f.reason for f in lst.filtered}
        assert reasons == {
            "KVM: nVMX: series kut": "subject prefix 'kvm-unit-tests' is skipped",
            "KVM: nVMX: series rfc": "subject prefix 'RFC' is skipped",
            "KVM: nVMX: series net": "touches no watched files (net/core/dev.c)",
            "x86/mm: not kvm": "subject matches none of subject_patterns",
        }
        assert [r.title for r in report.recorded] == ["KVM: nVMX: series keep"]
        states = {r.title: r.state for r in store.all_series("kvm")}
        assert states["KVM: nVMX: series net"] == "filtered"

        local_inbox.deliver_many(series_mails("keep", 2, version=2), "kvm")
        report = watch_once(cfg, store, client)
        (lst,) = report.lists
        assert [(r.title, r.version) for r in report.recorded] == [("KVM: nVMX: series keep", 2)]
        assert [(s.older, s.reason) for s in lst.superseded] == [
            ("keep-v1-0@example.org#v1", "title and author")
        ]
        v1 = store.series_by_key("keep-v1-0@example.org#v1")
        assert v1 is not None and v1.state == "superseded"
        assert len(store.jobs()) == 2


def test_watch_loop_picks_up_mail_delivered_while_running(
    local_inbox: LocalInbox, watch_config: WatchConfig, tmp_path: Path
) -> None:
    cfg = watch_config(poll_s=1)
    reports: list[WatchReport] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        try:
            with store_at(tmp_path) as store, ArchiveClient(cfg.archive) as client:
                watch_forever(cfg, store, client, stop=stop, on_report=reports.append)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not reports and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reports and reports[0].new_messages == 0  # the loop ran on an empty list
        local_inbox.deliver_many(series_mails("live", 1), "kvm")
        while not any(r.recorded for r in reports) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and errors == []
    recorded = [r for rep in reports for r in rep.recorded]
    assert [r.title for r in recorded] == ["KVM: nVMX: series live"]


def test_older_revision_arriving_after_newer_is_not_recorded(
    local_inbox: LocalInbox, watch_config: WatchConfig, tmp_path: Path
) -> None:
    cfg = watch_config()
    with store_at(tmp_path) as store, ArchiveClient(cfg.archive) as client:
        local_inbox.deliver_many(series_mails("late-v1", 1, version=2), "kvm")
        assert [r.version for r in watch_once(cfg, store, client).recorded] == [2]
        local_inbox.deliver_many(series_mails("late-v1", 1, version=1), "kvm")
        report = watch_once(cfg, store, client)
        assert report.recorded == ()
        (lst,) = report.lists
        assert [(s.older, s.newer) for s in lst.superseded] == [
            ("late-v1-v1-0@example.org#v1", "late-v1-v2-0@example.org#v2")
        ]
        assert len(store.jobs()) == 1
