"""The in-process executor: boots of different commits side by side, the build of patch i+1
during the boots of patch i, and several build slots per repository.

Overlap is read from recorded start/end times — the fake VM's own log of each emulator run
(tests/faults/fake_vm_kbot.py, boots.jsonl) and the job's stored timeline — never from how
long a run took.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot import codec
from bot.build.kernel import BuildResult, KernelBuilder
from bot.config import BuildSection
from bot.executor.base import TaskRecord
from bot.intake.local_inbox import LocalInbox
from bot.state import Store
from tests.build.fake_kernel import FRAGMENT, commit, make_fake_kernel
from tests.faults.pipeline_world import World, make_world, run_kbot
from tests.fixtures.smtp import SmtpSink, free_port

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    inbox = LocalInbox(tmp_path / "public-inbox", ("kvm",))
    smtp = SmtpSink(port=free_port())
    inbox.start()
    smtp.start()
    try:
        yield make_world(tmp_path / "world", inbox, smtp)
    finally:
        smtp.stop()
        inbox.stop()


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def timeline(state: Path, job_id: int) -> list[TaskRecord]:
    with Store.in_state_dir(state) as store:
        steps = store.steps(job_id, "timeline")
    assert steps, f"job {job_id} stored no timeline"
    return [r for s in steps for r in codec.load(tuple[TaskRecord, ...], s.data["tasks"])]


@pytest.mark.integration
def test_boots_of_different_commits_overlap_and_the_next_build_overlaps_them(
    world: World, tmp_path: Path
) -> None:
    with world.config.open("a", encoding="utf-8") as fh:
        fh.write('\n[executor]\nkind = "local"\nmax_boots = 4\n')
    state = tmp_path / "state"
    res = run_kbot(world, state, ["watch", "--once", "--run-jobs"], vm_seconds=1.0)
    assert res.returncode == 0, res.describe()
    # The fake VM's own record of every emulator run (each boot is two: the plan's VMX part
    # for Bochs and its SVM part for QEMU TCG).
    boots = [json.loads(line) for line in
             (tmp_path / "fake-vm-logs" / "boots.jsonl").read_text().splitlines()]
    by_kernel: dict[str, list[tuple[float, float]]] = {}
    for b in boots:
        by_kernel.setdefault(b["kernel"], []).append((b["started"], b["ended"]))
    assert len(by_kernel) >= 4  # the regress series' four commits, at least
    kernels = list(by_kernel)
    crossing = [(k1, k2) for i, k1 in enumerate(kernels) for k2 in kernels[i + 1:]
                if any(overlaps(a, b) for a in by_kernel[k1] for b in by_kernel[k2])]
    assert crossing, "no two commits' boots ever ran at the same time"
    # The job's timeline: the build of c(i+1) ran while c(i) booted.
    records = timeline(state, 1)
    builds = {r.label.split()[0]: (r.started, r.ended) for r in records if r.kind == "build"}
    first_boots = [r for r in records if r.kind == "boot" and " r1 " in r.label]
    assert {r.worker for r in records if r.kind != "stage"} == {"local"}
    during = [r.label for r in first_boots
              if (nxt := builds.get(f"c{int(r.label.split()[0][1:]) + 1}")) is not None
              and overlaps((r.started, r.ended), nxt)]
    assert during, f"no build ran during the previous commit's boot: {records}"


def test_two_build_slots_build_two_commits_at_once_in_their_own_slots(tmp_path: Path) -> None:
    repo = tmp_path / "linux"
    base = make_fake_kernel(repo)
    one = commit(repo, {"arch/x86/kvm/one.c": "int one;\n"}, "one")
    two = commit(repo, {"arch/x86/kvm/two.c": "int two;\n"}, "two")
    frag = tmp_path / "kvm.config"
    frag.write_text(FRAGMENT)
    builder = KernelBuilder(tmp_path / "cache", BuildSection(timeout_s=120), [frag],
                            ccache=False, jobs=1, slots=2)
    assert builder.build(repo, base, progress=lambda s: None).ok
    # In a slot from its first line ("checking out") to its result.
    spans: dict[str, tuple[float, float]] = {}
    results: dict[str, BuildResult] = {}

    def build(sha: str) -> None:
        started: list[float] = []

        def progress(line: str) -> None:
            if not started:
                started.append(time.time())

        results[sha] = builder.build(repo, sha, progress=progress)
        spans[sha] = (started[0], time.time())

    threads = [threading.Thread(target=build, args=(sha,)) for sha in (one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[one].ok and results[two].ok
    assert overlaps(spans[one], spans[two]), spans
    fp = builder.config_fingerprint
    revs = {json.loads((builder.slot_dir(repo, n) / f"state-{fp}.json").read_text())["rev"]
            for n in (0, 1)}
    assert revs == {one, two}
    # The walk stays incremental: a child goes to the slot that holds its parent.
    three = commit(repo, {"arch/x86/kvm/three.c": "int three;\n"}, "three")  # child of two
    assert builder.build(repo, three, progress=lambda s: None).ok
    holder = next(n for n in (0, 1) if json.loads(
        (builder.slot_dir(repo, n) / f"state-{fp}.json").read_text())["rev"] == three)
    other = json.loads((builder.slot_dir(repo, 1 - holder) / f"state-{fp}.json").read_text())
    assert other["rev"] == one
