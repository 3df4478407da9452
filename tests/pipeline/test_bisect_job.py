"""A bisection as a job (what `#kbot bisect` queues): run by the job runner, stored step by
step, resumed after kill -9 without running any commit twice, answered with one report.

Real kbot child processes over the small world of tests/faults/pipeline_world.py (real git,
sandboxed builds of the fake kernel, store, SMTP; a fake VM that fails `state_test` when the
image carries the mark).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot import codec
from bot.bisect.record import load_bisection
from bot.intake.local_inbox import LocalInbox
from bot.pipeline.bisect_job import BisectRequest
from bot.state import Store
from tests.build.fake_kernel import commit
from tests.faults.pipeline_world import World, make_world, run_kbot
from tests.fixtures.smtp import SmtpSink, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
CULPRIT = 5


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[World, SmtpSink, list[str]]]:
    inbox = LocalInbox(tmp_path / "public-inbox", ("kvm",))
    smtp = SmtpSink(port=free_port())
    inbox.start()
    smtp.start()
    try:
        w = make_world(tmp_path / "world", inbox, smtp)
        shas = []
        for i in range(1, 9):
            files = {f"arch/x86/kvm/step{i}.c": f"int step{i};\n"}
            if i == CULPRIT:
                files["arch/x86/kvm/bad.c"] = 'const char bad[] = "KBOT_FAKE_FAIL:state_test";\n'
            shas.append(commit(w.repo, files, f"KVM: x86: step {i}"))
        yield w, smtp, shas
    finally:
        smtp.stop()
        inbox.stop()


def queue_bisect(state: Path, w: World, bad: str) -> int:
    req = BisectRequest(tree="fake", good=(w.base,), bad=bad, test="state_test",
                        list_name="kvm", in_reply_to="regress-0@example.org",
                        requested_by="maintainer@example.org")
    with Store.in_state_dir(state) as store:
        return store.add_job(None, "bisect", codec.dump(req))


def test_bisect_job_names_the_culprit_and_replies_in_the_thread(
    world: tuple[World, SmtpSink, list[str]], tmp_path: Path
) -> None:
    w, smtp, shas = world
    state = tmp_path / "state"
    job = queue_bisect(state, w, shas[-1])
    res = run_kbot(w, state, ["run-jobs"])
    assert res.returncode == 0, res.describe()
    with Store.in_state_dir(state) as store:
        row = store.get_job(job)
        assert row is not None and row.status == "done", row
        (step,) = [s for s in store.steps(job) if s.key == "bisect"]
        stored = load_bisection(step.data)
        evals = store.steps(job, "eval")
    assert stored.result.culprit is not None and stored.result.culprit.sha == shas[CULPRIT - 1]
    assert len(stored.range) == len(shas)
    assert evals and all(s.key.startswith("eval:") for s in evals)
    (mail,) = smtp.received
    msg = mail.message
    assert msg["In-Reply-To"].strip("<>") == "regress-0@example.org"
    assert shas[CULPRIT - 1][:12] in msg.get_content()


def test_bisect_job_killed_mid_search_resumes_without_running_a_commit_twice(
    world: tuple[World, SmtpSink, list[str]], tmp_path: Path
) -> None:
    w, smtp, shas = world
    state = tmp_path / "state"
    job = queue_bisect(state, w, shas[-1])
    first = run_kbot(w, state, ["run-jobs"], failpoints="bisect:eval@3")
    assert first.returncode == -9
    with Store.in_state_dir(state) as store:
        before = [s.key for s in store.steps(job, "eval")]
    assert len(before) == 3
    second = run_kbot(w, state, ["run-jobs"])
    assert second.returncode == 0, second.describe()
    assert "3 stored run(s) reused (resumed)" in second.stderr
    with Store.in_state_dir(state) as store:
        evals = [s.key for s in store.steps(job, "eval")]
        assert store.get_job(job).status == "done"  # type: ignore[union-attr]
    assert evals[:3] == before
    assert max(collections.Counter(evals).values()) == 1
    assert len(smtp.received) == 1
