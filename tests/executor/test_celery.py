"""Builds and boots on `kbot worker`s through a real `redis-server` on loopback.

Two workers with different capabilities (one pretends to be build-only, `--capabilities
build`), started by the test as real processes with the fault suite's fake VM; the coordinator
is a real `kbot watch --once --run-jobs` (or `kbot bisect`) with `[executor] kind = "celery"`.
What a clean in-process run of the same world mails is the yardstick: the same reports, each
delivered once, the same boots stored once each.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot import codec, proc
from bot.executor.base import TaskRecord
from bot.executor.registry import Registry
from bot.intake.local_inbox import LocalInbox
from bot.state import Store
from tests.build.fake_kernel import commit
from tests.executor.lab import (
    RedisServer,
    child_env,
    max_overlap,
    start_worker,
    use_celery,
    wait_for,
)
from tests.faults.pipeline_world import (
    REPO_ROOT,
    World,
    check,
    kill_and_restart,
    make_world,
    report_subjects,
    run_kbot,
)
from tests.fixtures.smtp import SmtpSink, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@dataclass(frozen=True)
class Lab:
    world: World
    smtp: SmtpSink
    subjects: tuple[str, ...]  # what the clean in-process run mailed
    boots: dict[int, int]  # stored boots per job in that run


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("celery-lab")
    inbox = LocalInbox(root / "public-inbox", ("kvm",))
    smtp = SmtpSink(port=free_port())
    inbox.start()
    smtp.start()
    try:
        world = make_world(root / "world", inbox, smtp)
        res = run_kbot(world, root / "clean", ["watch", "--once", "--run-jobs"])
        assert res.returncode == 0, res.describe()
        with Store.in_state_dir(root / "clean") as store:
            boots = {j.id: len(store.steps(j.id, "vmtest")) for j in store.jobs()}
        yield Lab(world, smtp, tuple(report_subjects([r.raw for r in smtp.received])), boots)
    finally:
        smtp.stop()
        inbox.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def celery_world(lab: Lab, broker: RedisServer, tmp_path: Path) -> World:
    """The lab's world with its own config: the same tree, archive and cache, this broker."""
    config = tmp_path / "kbot.toml"
    config.write_text(lab.world.config.read_text(encoding="utf-8"), encoding="utf-8")
    world = dataclasses.replace(lab.world, config=config)
    use_celery(world, broker.url)
    return world


def stored_boots(state: Path) -> tuple[dict[int, int], list[tuple[int, str]]]:
    with Store.in_state_dir(state) as store:
        keys = [(j.id, s.key) for j in store.jobs() for s in store.steps(j.id, "vmtest")]
    return dict(collections.Counter(job for job, _ in keys)), keys


def job_timeline(state: Path) -> list[TaskRecord]:
    with Store.in_state_dir(state) as store:
        steps = [s for j in store.jobs() for s in store.steps(j.id, "timeline")]
    return [r for s in steps for r in codec.load(tuple[TaskRecord, ...], s.data["tasks"])]


def test_a_series_runs_through_a_build_worker_and_a_vm_worker(
    lab: Lab, broker: RedisServer, tmp_path: Path
) -> None:
    world = celery_world(lab, broker, tmp_path)
    registry = Registry(broker.url, 2.0)
    workers = [start_worker(world, registry, "builder", "build", log_dir=tmp_path),
               start_worker(world, registry, "vm", "vm-tcg,vm-bochs", log_dir=tmp_path)]
    try:
        listed = run_kbot(world, tmp_path / "state", ["workers", "--json"])
        assert listed.returncode == 0, listed.describe()
        lab.smtp.received.clear()
        res = run_kbot(world, tmp_path / "state", ["watch", "--once", "--run-jobs"])
        assert res.returncode == 0, res.describe()
    finally:
        for w in workers:
            w.stop()
    shown = {w["name"]: w for w in json.loads(listed.stdout)["workers"]}
    assert shown["builder"]["capabilities"] == ["build"]
    assert shown["vm"]["queues"] == ["vm-tcg", "vm-bochs", "vm-tcg@vm", "vm-bochs@vm"]
    got = check(world, tmp_path / "state", [r.raw for r in lab.smtp.received], lab.subjects,
                len(lab.boots))
    assert got.ok, got
    counts, keys = stored_boots(tmp_path / "state")
    assert counts == lab.boots and len(keys) == len(set(keys))
    records = job_timeline(tmp_path / "state")
    assert {r.worker for r in records if r.kind == "build"} == {"builder"}
    assert {r.worker for r in records if r.kind == "boot"} == {"vm"}
    # A boot of an artifact the vm worker already booted goes to its own queue when it has
    # an emulator free: job 1's first boots cannot (nobody holds its kernels yet), the
    # reruns of its second round can (and later jobs' boots of the same base).
    ran = [r for r in registry.history() if r.kind == "boot" and "-job1:" in r.token]
    firsts = [r for r in ran if " r1 " in r.label]
    reruns = [r for r in ran if " r2 " in r.label]
    assert firsts and not any("@" in r.queue for r in firsts), firsts
    assert any(r.queue.endswith("@vm") for r in reruns), reruns


def test_killing_a_worker_mid_boot_loses_nothing_and_duplicates_nothing(
    lab: Lab, broker: RedisServer, tmp_path: Path
) -> None:
    world = celery_world(lab, broker, tmp_path)
    registry = Registry(broker.url, 2.0)
    builder = start_worker(world, registry, "builder", "build", log_dir=tmp_path)
    doomed = start_worker(world, registry, "vm1", "vm-tcg,vm-bochs", vm_seconds=3.0,
                          log_dir=tmp_path)
    rescuer: proc.Background | None = None
    lab.smtp.received.clear()
    state = tmp_path / "state"
    coordinator = proc.start_background(
        [sys.executable, "-m", "tests.faults.fake_vm_kbot", "-c", str(world.config),
         "--state-dir", str(state), "watch", "--once", "--run-jobs"],
        ready=lambda: True, ready_timeout=10, max_lifetime_s=600, cwd=REPO_ROOT,
        env=child_env(0.0, tmp_path / "fake-vm-logs"), log_path=tmp_path / "coordinator.log")
    try:
        def booting() -> list[str]:
            return [t.token for w in registry.workers() if w.name == "vm1"
                    for t in w.running if t.kind == "boot" and not t.waiting]

        wait_for("vm1 to run a boot", lambda: bool(booting()))
        killed = booting()
        doomed.signal(signal.SIGKILL)
        wait_for("vm1 to die", lambda: not doomed.alive())
        rescuer = start_worker(world, registry, "vm2", "vm-tcg,vm-bochs", vm_seconds=0.2,
                               log_dir=tmp_path)
        wait_for("the coordinator to finish", lambda: not coordinator.alive(), 300)
        code = coordinator.stop()
    finally:
        coordinator.stop()
        for w in (builder, doomed, rescuer):
            if w is not None:
                w.stop()
    log = (tmp_path / "coordinator.log").read_text()
    assert code == 0, log[-3000:]
    assert "vm1 is gone: sending the task again" in log
    got = check(world, state, [r.raw for r in lab.smtp.received], lab.subjects, len(lab.boots))
    assert got.ok, got
    counts, keys = stored_boots(state)
    assert counts == lab.boots and len(keys) == len(set(keys))
    # The boots vm1 died in ran again, on vm2; no task ran to completion twice.
    done = [r for r in registry.history() if r.status == "ok"]
    finished_by = {r.token: r.worker for r in done}
    assert all(finished_by.get(token) == "vm2" for token in killed), (killed, finished_by)
    assert len(done) == len({r.token for r in done})


def test_a_bisection_with_jobs_2_dispatches_two_commits_at_once(
    lab: Lab, broker: RedisServer, tmp_path: Path
) -> None:
    world = celery_world(lab, broker, tmp_path)
    git_base = world.base
    shas = []
    for i in range(1, 7):  # the 4th commit makes the fake state_test fail
        files = {f"arch/x86/kvm/bisect{i}.c": f"int bisect{i};\n"}
        if i == 4:
            files["arch/x86/kvm/bisect_bad.c"] = 'const char b[] = "KBOT_FAKE_FAIL:state_test";\n'
        shas.append(commit(world.repo, files, f"KVM: x86: bisect step {i}"))
    registry = Registry(broker.url, 2.0)
    workers = [start_worker(world, registry, "builder", "build", extra=["--build-slots", "2"],
                            log_dir=tmp_path),
               start_worker(world, registry, "vm", "vm-tcg,vm-bochs", vm_seconds=1.0,
                            extra=["--max-boots", "2"], log_dir=tmp_path)]
    try:
        res = run_kbot(world, tmp_path / "state", [
            "bisect", "--tree", str(world.repo), "--good", git_base, "--bad", shas[-1],
            "--test", "state_test", "--jobs", "2"])
    finally:
        for w in workers:
            w.stop()
    assert res.returncode in (0, 1), res.describe()
    assert shas[3][:12] in res.stdout, res.stdout
    ran = [r for r in registry.history() if r.status == "ok"]
    builds = [r for r in ran if r.kind == "build"]
    boots = [r for r in ran if r.kind == "boot"]
    assert {r.worker for r in builds} == {"builder"} and {r.worker for r in boots} == {"vm"}
    # Two commits at once: their builds (two slots) and their boots (two emulators) overlap
    # in time on the workers' own clocks.
    assert max_overlap(builds) >= 2, builds
    assert max_overlap(boots) >= 2, boots


def test_a_coordinator_killed_mid_job_resumes_on_the_workers_without_running_a_task_twice(
    lab: Lab, broker: RedisServer, tmp_path: Path
) -> None:
    world = celery_world(lab, broker, tmp_path)
    registry = Registry(broker.url, 2.0)
    workers = [start_worker(world, registry, "builder", "build", log_dir=tmp_path),
               start_worker(world, registry, "vm", "vm-tcg,vm-bochs", log_dir=tmp_path)]
    try:
        result = kill_and_restart(world, tmp_path / "state", lab.smtp, "boot:after", 3,
                                  lab.subjects, len(lab.boots))
    finally:
        for w in workers:
            w.stop()
    assert result.faults == 1 and result.ok, result
    counts, keys = stored_boots(tmp_path / "state")
    assert counts == lab.boots and len(keys) == len(set(keys))
    # The restarted coordinator asked again for what was in flight: the workers answered
    # from the stored results, nothing ran to completion twice. Each stored boot is two
    # emulator runs (the plan's VMX part for Bochs, its SVM part for QEMU TCG).
    done = [r for r in registry.history() if r.status == "ok"]
    assert len(done) == len({r.token for r in done})
    assert sum(1 for r in done if r.kind == "boot") == 2 * sum(lab.boots.values())
