"""`kbot serve` as an operator runs it: a real child process over the small real world of
tests/faults/pipeline_world.py (archive, git, sandboxed builds, store, SMTP; a fake VM).

SIGTERM in the middle of a job: the step in flight finishes, the process exits 0, the job is
back in the queue (not counted as an attempt) with its stored boots; the next start resumes
it and every report is mailed once. A second signal stops at once; the next start resumes the
orphaned job. `kbot status` shows the heartbeats.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot import proc
from bot.intake.local_inbox import LocalInbox
from bot.state import Store
from tests.faults.pipeline_world import (
    REPO_ROOT,
    World,
    make_world,
    report_subjects,
    run_kbot,
)
from tests.fixtures.smtp import SmtpSink, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[World, SmtpSink, tuple[str, ...]]]:
    root = tmp_path_factory.mktemp("serve")
    inbox = LocalInbox(root / "public-inbox", ("kvm",))
    smtp = SmtpSink(port=free_port())
    inbox.start()
    smtp.start()
    try:
        w = make_world(root / "world", inbox, smtp)
        clean = run_kbot(w, root / "clean", ["watch", "--once", "--run-jobs"])
        assert clean.returncode == 0, clean.describe()
        yield w, smtp, tuple(sorted(report_subjects([r.raw for r in smtp.received])))
    finally:
        smtp.stop()
        inbox.stop()


def start_serve(w: World, state: Path, log: Path, vm_s: float = 0.6) -> proc.Background:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBOT_")}
    env["KBOT_FAKE_VM_S"] = str(vm_s)
    env["KBOT_FAKE_VM_LOGS"] = str(state.parent / "vm-logs")
    return proc.start_background(
        [sys.executable, "-m", "tests.faults.fake_vm_kbot", "-c", str(w.config),
         "--state-dir", str(state), "serve", "--log-format", "json"],
        cwd=REPO_ROOT, env=env, log_path=log, max_lifetime_s=300, ready_timeout=60,
        ready=lambda: log.is_file() and "serving kvm" in log.read_text(errors="replace"),
    )


def wait_for(what: str, check: object, timeout: float = 120) -> None:
    assert callable(check)
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def wait_exit(bg: proc.Background, timeout: float = 60) -> int:
    wait_for("kbot serve to exit", lambda: not bg.alive(), timeout)
    return bg.stop()


def test_sigterm_mid_job_finishes_the_step_then_resumes_with_one_report_each(
    world: tuple[World, SmtpSink, tuple[str, ...]], tmp_path: Path
) -> None:
    w, smtp, expected = world
    smtp.received.clear()
    state, log = tmp_path / "state", tmp_path / "serve-1.log"
    bg = start_serve(w, state, log)
    try:
        wait_for("a boot", lambda: "round 1: booting" in log.read_text(errors="replace"))
        os.kill(bg.pid, signal.SIGTERM)
        assert wait_exit(bg) == 0, log.read_text()[-3000:]
    finally:
        bg.stop()
    msgs = [str(e["msg"]) for e in events(log)]
    assert any("stopping after the step in flight" in m for m in msgs)
    assert any("stopping (kbot is shutting down)" in m for m in msgs)
    with Store.in_state_dir(state) as store:
        job = store.jobs()[0]
        assert (job.status, job.attempts) == ("queued", 0), job
        assert "interrupted by a shutdown" in job.last_error
        booted = len(store.steps(job.id, "vmtest"))
        assert booted >= 1  # the boot in flight finished and was stored
        assert {b.state for b in store.heartbeats()} == {"stopped"}
    status = run_kbot(w, state, ["status"])
    assert "intake" in status.stdout and "stopped" in status.stdout
    # Start again: the job resumes from its stored boots and everything is mailed once.
    log2 = tmp_path / "serve-2.log"
    bg = start_serve(w, state, log2, vm_s=0.0)
    try:
        wait_for("every report", lambda: len(smtp.received) >= len(expected))
        time.sleep(1.0)  # nothing more may come
        os.kill(bg.pid, signal.SIGTERM)
        assert wait_exit(bg) == 0
    finally:
        bg.stop()
    text = log2.read_text()
    assert "already stored (resumed)" in text
    assert tuple(sorted(report_subjects([r.raw for r in smtp.received]))) == expected
    ids = collections.Counter(r.msgid for r in smtp.received)
    assert max(ids.values()) == 1
    with Store.in_state_dir(state) as store:
        assert [j.status for j in store.jobs()] == ["done"] * 3
        assert store.jobs()[0].attempts == 1


def test_second_signal_stops_at_once_and_the_next_start_resumes(
    world: tuple[World, SmtpSink, tuple[str, ...]], tmp_path: Path
) -> None:
    w, smtp, expected = world
    smtp.received.clear()
    state, log = tmp_path / "state", tmp_path / "serve-1.log"
    bg = start_serve(w, state, log, vm_s=5.0)
    try:
        wait_for("a boot", lambda: "round 1: booting" in log.read_text(errors="replace"))
        os.kill(bg.pid, signal.SIGTERM)
        time.sleep(0.3)
        os.kill(bg.pid, signal.SIGINT)
        assert wait_exit(bg, timeout=20) == 130
    finally:
        bg.stop()
    with Store.in_state_dir(state) as store:
        assert store.jobs()[0].status == "running"  # left behind: resumed as an orphan
    log2 = tmp_path / "serve-2.log"
    bg = start_serve(w, state, log2, vm_s=0.0)
    try:
        wait_for("every report", lambda: len(smtp.received) >= len(expected))
        os.kill(bg.pid, signal.SIGTERM)
        assert wait_exit(bg) == 0
    finally:
        bg.stop()
    assert "resuming job(s) left running by an interrupted kbot: 1" in log2.read_text()
    assert tuple(sorted(report_subjects([r.raw for r in smtp.received]))) == expected
