"""kill -9 at every pipeline step, then a restart: nothing lost, nothing done twice.

A real `kbot watch --once --run-jobs` (child process; real archive, git, builds in the sandbox,
store and SMTP; only the VM stage is a fake, see tests/faults/fake_vm_kbot.py) is killed at a
failpoint, then run again. Afterwards: every ready series has one job, every job is done, every
report of a clean run was delivered exactly once (or is held with a reason) and no other report
exists. bench/faults.py runs the same scenarios in bulk, at more hits per step.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot import proc
from bot.intake.local_inbox import LocalInbox
from bot.state import Store
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

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@dataclass(frozen=True)
class Baseline:
    world: World
    smtp: SmtpSink
    subjects: tuple[str, ...]
    series: int
    boots: tuple[int, ...] = ()  # stored boots per job in the clean run (reruns included)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Baseline]:
    """One world for the module, and what a clean run of it mails."""
    root = tmp_path_factory.mktemp("pipeline-faults")
    inbox = LocalInbox(root / "public-inbox", ("kvm",))
    smtp = SmtpSink(port=free_port())
    inbox.start()
    smtp.start()
    try:
        world = make_world(root / "world", inbox, smtp)
        res = run_kbot(world, root / "clean", ["watch", "--once", "--run-jobs"])
        assert res.returncode == 0, res.describe()
        subjects = tuple(report_subjects([r.raw for r in smtp.received]))
        # What the world is built to show: the regression answered at patch 2/3, the build
        # failure at 1/1, and a summary per series.
        assert "Re: [PATCH 2/3] KVM: nSVM: Rework nested state restore" in subjects
        assert "Re: [PATCH 1/1] KVM: x86: Use the new accessor" in subjects
        with Store.in_state_dir(root / "clean") as store:
            jobs = [j for j in store.jobs() if j.kind == "test-series"]
            boots = tuple(len(store.steps(j.id, "vmtest")) for j in jobs)
        assert [j.status for j in jobs] == ["done"] * 3
        yield Baseline(world, smtp, subjects, len(jobs), boots)
    finally:
        smtp.stop()
        inbox.stop()


@pytest.mark.parametrize(("point", "hit"), [
    ("apply:done", 1),
    ("build:before", 2),
    ("build:after", 3),
    ("boot:before", 2),
    ("boot:after", 1),
    ("boot:after", 4),
    ("job:tested", 1),
    ("report:submitted", 1),
    ("report:submitted", 2),
])
def test_kill_at_a_pipeline_step_then_restart(
    baseline: Baseline, tmp_path: Path, point: str, hit: int
) -> None:
    result = kill_and_restart(baseline.world, tmp_path / "state", baseline.smtp, point, hit,
                              baseline.subjects, baseline.series)
    assert result.faults == 1, f"{point}@{hit} was never reached: the scenario tests nothing"
    assert result.ok, result


def test_restart_resumes_the_stored_boots_instead_of_booting_again(
    baseline: Baseline, tmp_path: Path
) -> None:
    """Killed after job 2's first boot: the restart reuses every boot made and boots only the
    rest."""
    state = tmp_path / "state"
    baseline.smtp.received.clear()
    first = run_kbot(baseline.world, state, ["watch", "--once", "--run-jobs"],
                     failpoints=f"boot:after@{baseline.boots[0] + 1}")
    assert first.returncode == -9
    second = run_kbot(baseline.world, state, ["watch", "--once", "--run-jobs"])
    text = second.stdout + second.stderr
    assert "resuming job(s) left running by an interrupted kbot: 2" in text
    assert text.count("already stored (resumed)") == 1  # job 2's c0 (stored before the kill)
    with Store.in_state_dir(state) as store:
        keys = [(j.id, s.key) for j in store.jobs() for s in store.steps(j.id, "vmtest")]
    # One stored boot per job, commit and round, as many as the clean run made: 4 commits and
    # the reruns that confirm the regression, 3, and the base of the series that does not build.
    assert baseline.boots[1:] == (3, 1) and baseline.boots[0] > 4
    assert len(keys) == len(set(keys)) == sum(baseline.boots)
    got = check(baseline.world, state, [r.raw for r in baseline.smtp.received],
                baseline.subjects, baseline.series)
    assert got.ok, got


def test_kill_at_a_random_moment_mid_boot(baseline: Baseline, tmp_path: Path) -> None:
    """No failpoint: SIGKILL from outside while a (slow) boot runs, three times over."""
    state = tmp_path / "state"
    baseline.smtp.received.clear()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBOT_")}
    env["KBOT_FAKE_VM_S"] = "0.4"
    argv = [str(REPO_ROOT / ".venv/bin/python"), "-m", "tests.faults.fake_vm_kbot", "-c",
            str(baseline.world.config), "--state-dir", str(state), "watch", "--once",
            "--run-jobs"]
    for delay in (1.5, 2.5, 3.5):
        child = subprocess.Popen(argv, cwd=REPO_ROOT, env=env,  # noqa: S603
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    final = run_kbot(baseline.world, state, ["watch", "--once", "--run-jobs"])
    assert final.returncode in (0, 1), final.describe()
    got = check(baseline.world, state, [r.raw for r in baseline.smtp.received],
                baseline.subjects, baseline.series)
    assert got.ok, got


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_for_the_state_dir(baseline: Baseline, tmp_path: Path) -> None:
    """A state dir on a full disk: a one-line infrastructure error (exit 3), no traceback;
    with room again, the next run does everything once."""
    state = tmp_path / "state"
    state.mkdir()
    proc.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)], timeout=30,
             check=True)
    try:
        baseline.smtp.received.clear()
        # Let the watcher store what it can, then fill the disk and run the jobs.
        first = run_kbot(baseline.world, state, ["watch", "--once"])
        assert first.returncode == 0, first.describe()
        filler = state / "filler"
        with filler.open("wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
            except OSError:
                pass
        full = run_kbot(baseline.world, state, ["run-jobs"])
        text = full.stdout + full.stderr
        assert full.returncode == 3, full.describe()
        assert "Traceback" not in text
        errors = [ln for ln in text.splitlines() if ln.startswith("kbot: error:")]
        assert len(errors) == 1 and str(state) in errors[0], text[-2000:]
        filler.unlink()
        again = run_kbot(baseline.world, state, ["watch", "--once", "--run-jobs"])
        assert again.returncode in (0, 1), again.describe()
        got = check(baseline.world, state, [r.raw for r in baseline.smtp.received],
                    baseline.subjects, baseline.series)
        assert got.ok, got
    finally:
        proc.run(["umount", "-l", str(state)], timeout=30)
        shutil.rmtree(state, ignore_errors=True)
