"""The watcher loses nothing and duplicates nothing, whatever cuts a poll short.

(a, b) An archive of 40 series on a real public-inbox, behind a FaultProxy: a real `kbot watch
--once` process SIGKILLed at varied moments (a request of discovery, of the thread fetches,
just after the last request, or a failpoint in the settle phase), or the archive answering
503 / resetting / truncating part-way through the thread fetches; then healthy polls: every
ready series has exactly one job and no stored mail is lost (tests/faults/scenarios.py).
(c-e) Series that fill in late keep one identity: a late cover, a late 1/N, a missing patch
that arrives after the incomplete series was tested, two series of one author that reply to
different missing messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.intake.client import ArchiveClient
from bot.intake.local_inbox import LocalInbox
from bot.intake.watcher import JOB_KIND, MAX_FETCH_TRIES, watch_once
from bot.pipeline.source import series_from_store
from bot.state import Store
from tests.faults.fault_proxy import Fault, Rule
from tests.faults.scenarios import (
    THREAD_PATTERN,
    ExpectedSeries,
    WatchArchive,
    check_store,
)
from tests.fixtures.public_inbox import WatchConfig, patch_mail

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WatchArchive]:
    with WatchArchive(tmp_path_factory.mktemp("watch-faults"), series=40, seed=7) as arch:
        yield arch


@dataclass(frozen=True)
class KillAt:
    phase: str
    where: float  # 0..1 through the requests of that phase
    delay_s: float = 0.0


KILLS = [
    KillAt("discovery", 0.0), KillAt("discovery", 0.5), KillAt("discovery", 1.0),
    KillAt("threads", 0.0), KillAt("threads", 0.5), KillAt("threads", 1.0),
    KillAt("after-last-request", 1.0, 0.02), KillAt("after-last-request", 1.0, 0.08),
]


@pytest.mark.parametrize("kill", KILLS, ids=lambda k: f"{k.phase}-{k.where}+{k.delay_s}s")
def test_sigkill_at_a_request_then_healthy_polls_record_each_series_once(
    archive: WatchArchive, kill: KillAt, tmp_path: Path
) -> None:
    probe = archive.probe
    assert probe is not None and probe.threads >= 30
    if kill.phase == "discovery":
        k = 1 + round(kill.where * (probe.discovery_end - 1))
    else:
        k = probe.discovery_end + 1 + round(kill.where * (probe.threads - 1))
    state = tmp_path / "state"
    assert archive.kill_at_request(state, k, kill.delay_s) or kill.delay_s > 0
    with Store.in_state_dir(state) as store:
        stored_before = {m.msgid for m in store.messages("kvm")}
    archive.heal(state)
    inv = archive.check(state)
    assert inv.ok, inv.describe()
    with Store.in_state_dir(state) as store:
        assert stored_before <= {m.msgid for m in store.messages("kvm")}
        assert len(store.jobs()) == len(archive.expected)


@pytest.mark.parametrize("point", ["watch:stored", "watch:thread", "watch:saved",
                                   "watch:settled"])
@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_sigkill_at_a_failpoint_then_healthy_polls_record_each_series_once(
    archive: WatchArchive, point: str, where: float, tmp_path: Path
) -> None:
    probe = archive.probe
    assert probe is not None
    at = 1 + round(where * (probe.failpoint_hits[point] - 1))
    state = tmp_path / "state"
    assert archive.kill_at_failpoint(state, point, at)
    archive.heal(state)
    inv = archive.check(state)
    assert inv.ok, inv.describe()


@pytest.mark.parametrize("fault", [Fault.STATUS, Fault.RESET, Fault.TRUNCATE])
@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_archive_failing_part_way_through_threads_then_healthy(
    archive: WatchArchive, fault: Fault, where: float, tmp_path: Path
) -> None:
    probe = archive.probe
    assert probe is not None
    first = 1 + round(where * (probe.threads - 1))
    state = tmp_path / "state"
    injected = archive.fail_threads(state, Rule(fault, pattern=THREAD_PATTERN, first=first))
    assert injected >= 1
    with Store.in_state_dir(state) as store:
        # The failing poll settled (only) the series whose threads it had stored.
        assert len(store.jobs()) < len(archive.expected)
    archive.heal(state)
    inv = archive.check(state)
    assert inv.ok, inv.describe()


def test_a_thread_the_archive_never_serves_does_not_stop_the_list(
    archive: WatchArchive, tmp_path: Path
) -> None:
    name = archive.expected[5].name  # every thread fetch of one series answers 503
    state = tmp_path / "state"
    proxy, config = archive._parts()
    proxy.reset()
    proxy.add(Rule(Fault.STATUS, pattern=f"/{re.escape(name)}-\\d+@example\\.org"
                   + THREAD_PATTERN))
    try:
        with Store.in_state_dir(state) as store, ArchiveClient(config.archive) as client:
            for poll in range(1, MAX_FETCH_TRIES):
                (lst,) = watch_once(config, store, client).lists
                (error,) = lst.errors
                assert error.startswith(f"thread of <{name}-") and "HTTP 503" in error
                assert f"(try {poll} of {MAX_FETCH_TRIES}; again next poll)" in error
                # Every other series is recorded by the first poll already.
                assert len(store.jobs()) == len(archive.expected) - 1, poll
            report = watch_once(config, store, client)
            (lst,) = report.lists
            (error,) = lst.errors
            assert f"gave up after {MAX_FETCH_TRIES} failed polls" in error
            assert len(report.recorded) == 1
    finally:
        proxy.reset()
    inv = archive.check(state)
    assert inv.ok, inv.describe()


# -- (c-e) one identity while a series fills in ------------------------------------------------


def _expected(name: str, *ids: str) -> ExpectedSeries:
    return ExpectedSeries(name, frozenset(ids))


def test_late_cover_keeps_one_job_that_sees_the_full_series(
    local_inbox: LocalInbox, watch_config: WatchConfig, tmp_path: Path
) -> None:
    cfg = watch_config(settle_s=0)
    cover_id = "late-cover-0@example.org"
    patches = [patch_mail(f"late-cover-{i}@example.org", f"[PATCH {i}/3] KVM: part {i}",
                          in_reply_to=cover_id) for i in (1, 2, 3)]
    cover = patch_mail(cover_id, "[PATCH 0/3] KVM: a series whose cover comes late", files=(),
                       body="The cover letter.\n")
    with Store.in_state_dir(tmp_path / "state") as store, ArchiveClient(cfg.archive) as client:
        local_inbox.deliver_many(patches, "kvm")
        first = watch_once(cfg, store, client)
        assert [(r.patches, r.complete) for r in first.recorded] == [(3, True)]
        local_inbox.deliver(cover, "kvm")
        second = watch_once(cfg, store, client)
        assert second.recorded == () and second.requeued == ()
        (job,) = store.jobs()
        assert job.status == "queued" and job.detail["key"] == f"{cover_id}#v1"
        series, _ = series_from_store(store, job.series_id or 0)
        assert series.cover is not None and series.cover.message_id == cover_id
        assert [p.index for p in series.patches] == [1, 2, 3]
        inv = check_store(store, [_expected("late", cover_id, *(f"late-cover-{i}@example.org"
                                                               for i in (1, 2, 3)))])
        assert inv.ok, inv.describe()


def test_cover_filtered_before_its_patches_arrive_is_recorded_when_they_do(
    local_inbox: LocalInbox, watch_config: WatchConfig, tmp_path: Path
) -> None:
    # Seen in bench/service.py: a cover alone touches no files, so a list with `files` filtered
    # it, and the filtered state was final: its patches arrived and no job was ever made.
    cfg = watch_config(settle_s=0, files=["arch/x86/kvm/*"])
    cover_id = "early-cover-0@example.org"
    cover = patch_mail(cover_id, "[PATCH 0/2] KVM: cover first", files=())
    patches = [patch_mail(f"early-cover-{i}@example.org", f"[PATCH {i}/2] KVM: part {i}",
                          in_reply_to=cover_id) for i in (1, 2)]
    with Store.in_state_dir(tmp_path / "state") as store, ArchiveClient(cfg.archive) as client:
        local_inbox.deliver(cover, "kvm")
        first = watch_once(cfg, store, client)
        assert first.recorded == ()
        local_inbox.deliver_many(patches, "kvm")
        second = watch_once(cfg, store, client)
        assert [(r.patches, r.complete) for r in second.recorded] == [(2, True)]
        (job,) = store.jobs()
        assert job.status == "queued"
        # A series that still touches no watched files stays filtered, without a job.
        local_inbox.deliver(patch_mail("other-1@example.org", "[PATCH 1/1] docs: elsewhere",
                                       files=("Documentation/x.rst",)), "kvm")
        third = watch_once(cfg, store, client)
        assert third.recorded == () and len(store.jobs()) == 1


def test_late_cover_after_the_job_ran_is_not_a_retest(
    local_inbox: LocalInbox, watch_config: WatchConfig, tmp_path: Path
) -> None:
    cfg = watch_config(settle_s=0)
    cover_id = "ran-0@example.org"
    patches = [patch_mail(f"ran-{i}@example.org", f"[PATCH {i}/2] KVM: part {i}",
                          in_reply_to=cover_id) for i in (1, 2)]
    with Store.in_state_dir(tmp_path / "state") as store, ArchiveClient(cfg.archive) as client:
        local_inbox.deliver_many(patches, "kvm")
        (rec,) = watch_once(cfg, store, client).recorded
        store.set_job_status(rec.job_id, "done")
        local_inbox.deliver(patch_mail(cover_id, "[PATCH 0/2] KVM: ran", files=()), "kvm")
        report = watch_once(cfg, store, client)
        assert report.recorded == () and report.requeued == ()
        (job,) = store.jobs()
        assert job.status == "done"
        row = store.get_series(rec.series_id)
        assert row is not None and row.data["cover"]["message_id"] == cover_id


def test_cover_less_series_whose_first_patch_comes_late_is_one_job(
    local_inbox: LocalInbox, watch_config: WatchConfig, tmp_path: Path
) -> None:
    cfg = watch_config(settle_s=0)
    root = "late-one-1@example.org"
    p1 = patch_mail(root, "[PATCH 1/3] KVM: late one part 1")
    rest = [patch_mail(f"late-one-{i}@example.org", f"[PATCH {i}/3] KVM: late one part {i}",
                       in_reply_to=root) for i in (2, 3)]
    with Store.in_state_dir(tmp_path / "state") as store, ArchiveClient(cfg.archive) as client:
        local_inbox.deliver_many(rest, "kvm")
        (rec,) = watch_once(cfg, store, client).recorded
        assert (rec.complete, rec.missing) == (False, (1,))
        local_inbox.deliver(p1, "kvm")
        report = watch_once(cfg, store, client)
        assert report.recorded == ()
        (job,) = store.jobs()
        assert job.status == "queued" and job.detail["complete"] is True
        series, _ = series_from_store(store, job.series_id or 0)
        assert [p.index for p in series.patches] == [1, 2, 3]
        assert len(store.all_series("kvm")) == 1


def test_incomplete_series_is_tested_once_more_when_its_missing_patch_arrives(
    local_inbox: LocalInbox, watch_config: WatchConfig, tmp_path: Path
) -> None:
    cfg = watch_config(settle_s=0)
    cover_id = "gap-0@example.org"
    cover = patch_mail(cover_id, "[PATCH 0/3] KVM: gap", files=())
    p1, p2, p3 = (patch_mail(f"gap-{i}@example.org", f"[PATCH {i}/3] KVM: gap part {i}",
                             in_reply_to=cover_id) for i in (1, 2, 3))
    with Store.in_state_dir(tmp_path / "state") as store, ArchiveClient(cfg.archive) as client:
        local_inbox.deliver_many([cover, p1, p3], "kvm")
        (rec,) = watch_once(cfg, store, client).recorded
        assert rec.missing == (2,)
        store.set_job_status(rec.job_id, "done")  # the runner tested the incomplete series
        local_inbox.deliver(p2, "kvm")
        report = watch_once(cfg, store, client)
        assert report.recorded == ()
        assert [(r.job_id, r.patches, r.complete) for r in report.requeued] == [
            (rec.job_id, 3, True)]
        (job,) = store.jobs()
        assert job.status == "queued" and job.detail["requeued"] == 1
        store.set_job_status(job.id, "done")
        # A resend of patch 2 (same change, new Message-ID) is assembled, and changes nothing.
        local_inbox.deliver(patch_mail("gap-2-resend@example.org", "[PATCH 2/3] KVM: gap part 2",
                                       in_reply_to=cover_id,
                                       body=_body_of(p2)), "kvm")
        again = watch_once(cfg, store, client)
        assert again.new_messages == 1 and again.requeued == () and again.recorded == ()
        (job,) = store.jobs()
        assert job.status == "done" and job.detail["requeued"] == 1


def _body_of(raw: bytes) -> str:
    return raw.split(b"\n\n", 1)[1].decode()


def test_two_series_of_one_author_replying_to_different_missing_messages(
    local_inbox: LocalInbox, watch_config: WatchConfig, tmp_path: Path
) -> None:
    cfg = watch_config(settle_s=0)
    prep = _body_of(patch_mail("x@example.org", "[PATCH 1/2] KVM: prep"))  # the same change
    a = [patch_mail("two-a-1@example.org", "[PATCH 1/2] KVM: prep", body=prep,
                    in_reply_to="gone-a@example.org"),
         patch_mail("two-a-2@example.org", "[PATCH 2/2] KVM: feature A",
                    in_reply_to="gone-a@example.org")]
    b = [patch_mail("two-b-1@example.org", "[PATCH 1/2] KVM: prep", body=prep,
                    in_reply_to="gone-b@example.org"),
         patch_mail("two-b-2@example.org", "[PATCH 2/2] KVM: feature B",
                    in_reply_to="gone-b@example.org")]
    with Store.in_state_dir(tmp_path / "state") as store, ArchiveClient(cfg.archive) as client:
        local_inbox.deliver_many(a + b, "kvm")
        report = watch_once(cfg, store, client)
        assert sorted((r.patches, r.complete) for r in report.recorded) == [(2, True)] * 2
        inv = check_store(store, [_expected("a", "two-a-1@example.org", "two-a-2@example.org"),
                                  _expected("b", "two-b-1@example.org", "two-b-2@example.org")])
        assert inv.ok, inv.describe()
        for row in store.all_series("kvm"):
            assert not [n for n in row.data["notes"] if "dropped" in n]
        assert all(j.kind == JOB_KIND for j in store.jobs())
