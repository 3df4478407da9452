"""The job runner as an operator sees it: retries with backoff, then failed with the reason;
`kbot jobs list|show|retry|cancel`; one runner per state dir.

Real kbot child processes over the small world of tests/faults/pipeline_world.py (real archive,
git, sandboxed builds of the fake kernel, store, SMTP; only the VM stage is a fake).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.intake.local_inbox import LocalInbox
from bot.locks import try_locked
from bot.pipeline.runner import RUNNER_LOCK
from bot.state import Store
from tests.faults.pipeline_world import World, make_world, run_kbot
from tests.fixtures.smtp import SmtpSink, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[World, SmtpSink]]:
    inbox = LocalInbox(tmp_path / "public-inbox", ("kvm",))
    smtp = SmtpSink(port=free_port())
    inbox.start()
    smtp.start()
    try:
        w = make_world(tmp_path / "world", inbox, smtp)
        text = w.config.read_text(encoding="utf-8").replace(
            "[jobs]\n", "[jobs]\nmax_attempts = 2\n")
        w.config.write_text(text, encoding="utf-8")
        yield w, smtp
    finally:
        smtp.stop()
        inbox.stop()


def kbot_json(w: World, state: Path, *args: str) -> object:
    res = run_kbot(w, state, [*args, "--json"])
    assert res.returncode == 0, res.describe()
    return json.loads(res.stdout)


def test_infra_errors_are_retried_then_failed_then_retried_by_hand(
    world: tuple[World, SmtpSink], tmp_path: Path
) -> None:
    w, smtp = world
    state = tmp_path / "state"
    assert run_kbot(w, state, ["watch", "--once"]).returncode == 0
    healthy = w.config.read_text(encoding="utf-8")
    # The build sandbox cannot start here: kbot could not build, which says nothing about
    # the series (infrastructure), so nothing may be reported and the jobs are retried.
    w.config.write_text(healthy.replace("[build]\n", '[build]\nbwrap = "/nonexistent/bwrap"\n'),
                        encoding="utf-8")
    res = run_kbot(w, state, ["run-jobs"])
    assert res.returncode == 0, res.describe()
    assert "could not test (attempt 1 of 2" in res.stderr
    jobs = kbot_json(w, state, "jobs", "list")
    assert isinstance(jobs, list) and len(jobs) == 3
    for j in jobs:
        assert j["status"] == "failed" and j["attempts"] == 2
        assert j["last_error"].startswith("gave up after 2 attempt(s): could not build the base")
        assert "/nonexistent/bwrap" in j["last_error"]
    assert smtp.received == []  # could not test: no mail claims anything
    w.config.write_text(healthy, encoding="utf-8")
    res = run_kbot(w, state, ["jobs", "retry", "1"])
    assert res.returncode == 0 and "job 1 queued again" in res.stdout
    assert run_kbot(w, state, ["jobs", "retry", "1"]).returncode == 2  # queued already
    assert run_kbot(w, state, ["run-jobs"]).returncode == 0
    shown = kbot_json(w, state, "jobs", "show", "1")
    assert isinstance(shown, dict)
    assert (shown["status"], shown["attempts"], shown["first_bad_patch"]) == ("done", 1, 2)
    assert shown["boots"] >= 4
    kinds = sorted(r["kind"] for r in shown["reports"])
    assert "regression" in kinds and all(r["status"] == "sent" for r in shown["reports"])
    assert {s["step"] for s in shown["steps"]} >= {"apply", "build", "vmtest", "verdict"}


def test_cancel_a_queued_job_and_unknown_jobs(
    world: tuple[World, SmtpSink], tmp_path: Path
) -> None:
    w, _ = world
    state = tmp_path / "state"
    assert run_kbot(w, state, ["watch", "--once"]).returncode == 0
    res = run_kbot(w, state, ["jobs", "cancel", "2"])
    assert res.returncode == 0 and "job 2 cancelled (now)" in res.stdout
    assert run_kbot(w, state, ["run-jobs"]).returncode == 0
    with Store.in_state_dir(state) as store:
        assert [j.status for j in store.jobs()] == ["done", "cancelled", "done"]
        assert store.steps(2) == []  # never started
    missing = run_kbot(w, state, ["jobs", "show", "99"])
    assert missing.returncode == 2
    assert missing.stderr.strip() == "kbot: error: no job 99 (see `kbot jobs list`)"
    listed = run_kbot(w, state, ["jobs", "list"])
    assert listed.stdout.splitlines()[0].split() == [
        "job", "status", "tries", "first", "bad", "boots", "reports", "updated", "series"]


def test_one_runner_per_state_dir(world: tuple[World, SmtpSink], tmp_path: Path) -> None:
    w, _ = world
    state = tmp_path / "state"
    assert run_kbot(w, state, ["watch", "--once"]).returncode == 0
    with try_locked(state / RUNNER_LOCK) as held:
        assert held
        res = run_kbot(w, state, ["run-jobs"])
    assert res.returncode == 0
    assert "another kbot is running jobs" in res.stderr
    with Store.in_state_dir(state) as store:
        assert [j.status for j in store.jobs()] == ["queued"] * 3
