"""The shared seed thread, served by a real public-inbox and watched: one job, 4 patches."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main
from bot.config import ArchiveSection
from bot.intake.client import ArchiveClient
from bot.intake.local_inbox import LocalInbox, serve_mbox
from bot.intake.watcher import watch_once
from bot.state import Store
from tests.fixtures.public_inbox import WatchConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SEED_COVER = "20210503150854.1144255-1-vkuznets@redhat.com"


def test_seed_thread_becomes_one_job_with_four_patches(
    local_inbox: LocalInbox, watch_config: WatchConfig, seed_mbox: Path, tmp_path: Path
) -> None:
    assert local_inbox.deliver_mbox(seed_mbox, "kvm") == 6
    # The kvm.toml filters: this series touches arch/x86/kvm/vmx/* and uapi kvm.h.
    cfg = watch_config(files=["arch/x86/kvm/*", "include/uapi/linux/kvm*"],
                       skip_prefixes=["kvm-unit-tests", "RFC"])
    with Store.in_state_dir(tmp_path / "st") as store, ArchiveClient(cfg.archive) as client:
        report = watch_once(cfg, store, client)
        assert len(report.recorded) == 1
        rec = report.recorded[0]
        assert (rec.patches, rec.total, rec.complete) == (4, 4, True)
        assert rec.key == f"{SEED_COVER}#v1"
        assert report.new_messages == 6  # the cover, 4 patches and Paolo's reply, stored once
        assert len(store.messages("kvm")) == 6
        jobs = store.jobs()
        assert [(j.kind, j.series_id) for j in jobs] == [("test-series", rec.series_id)]
        row = store.get_series(rec.series_id)
        assert row is not None and row.state == "ready"
        assert [p["index"] for p in row.data["patches"]] == [1, 2, 3, 4]
        assert row.data["cover"]["message_id"] == SEED_COVER


def test_watch_once_cli_twice_records_nothing_new(
    local_inbox: LocalInbox, watch_config: WatchConfig, seed_mbox: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    local_inbox.deliver_mbox(seed_mbox, "kvm")
    cfg = watch_config()
    assert main(["-c", str(cfg.source), "watch", "--once"]) == 0
    first = capsys.readouterr().out
    assert "job 1" in first and "4/4" in first
    assert main(["-c", str(cfg.source), "watch", "--once", "--list", "kvm"]) == 0
    second = capsys.readouterr().out
    assert "kvm: 0 new message(s)" in second and "job" not in second
    with Store.in_state_dir(cfg.state_dir) as store:
        assert len(store.jobs()) == 1
        assert len(store.all_series("kvm")) == 1


def test_serve_mbox_for_the_demo(seed_mbox: Path, tmp_path: Path) -> None:
    inbox = serve_mbox(tmp_path / "demo-inbox", [seed_mbox], "kvm")
    pid = inbox.server_pid
    try:
        with ArchiveClient(ArchiveSection(base_url=inbox.base_url)) as client:
            assert len(client.new_atom("kvm")) == 6
            assert b"[PATCH 4/4]" in client.thread_mbox(SEED_COVER, "kvm")
    finally:
        inbox.stop()
    assert pid is not None and not Path(f"/proc/{pid}").exists()
