"""A store filled by a real pipeline run, plus a real bisection, for the web tests and bench.

- the pipeline world of tests/faults/pipeline_world.py (fake kernel tree, real public-inbox,
  real SMTP, the real `kbot watch --once --run-jobs` as a child; only the VM stage is fake),
  with one more series whose subject is hostile HTML;
- a bisection run through bot.bisect (Bisector, flaky mode) over a real git repository with a
  scripted evaluator, stored as a "bisect" job with its "bisect" step, the way the bisect job
  stores it (bot.bisect.record.bisect_step_data);
- a console log of a stored boot with terminal escape sequences appended (what a guest can
  print), and a job artifact folder with a hostile file name.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bot import codec
from bot.bisect.core import BisectOptions, Bisector
from bot.bisect.gitgraph import load_range
from bot.bisect.model import BisectResult, Commit, Mode, Outcome, Verdict
from bot.bisect.record import bisect_step_data
from bot.config import Config, load_config
from bot.errors import InfraError
from bot.intake.local_inbox import LocalInbox
from bot.pipeline.jobs_cli import job_artifacts_dir
from bot.state import Store
from bot.vm.model import Outcome as TestOutcome
from bot.vm.model import TestRun
from tests.build.fake_kernel import commit, git
from tests.faults.pipeline_world import START, _mail, make_world, run_kbot
from tests.fixtures.smtp import SmtpSink, free_port

HOSTILE_TITLE = "KVM: x86: <script>alert('kbot')</script> & <b>bold</b>"
HOSTILE_CONSOLE = "\x1b[31mRED\x1b[0m \x1b]0;pwned\x07 \x00nul <script>alert(2)</script>\n"
HOSTILE_FILE = "odd <img src=x onerror=alert(4)> & co.txt"
BISECT_TEST = "state_test"
BISECT_COMMITS = 24
BISECT_CULPRIT = 15  # 1-based position of the first bad commit after the good one
BISECT_SKIP = 10  # this commit cannot be tested (a build break): SKIP


@dataclass(frozen=True)
class WebWorld:
    root: Path
    state_dir: Path
    config: Config
    regress_series: int  # patch 2 of 3 breaks state_test
    clean_series: int  # patch 2's state_test: one pass, one fail (a flaky cell)
    flaky_key: str  # the failing boot of that cell
    nobuild_series: int
    hostile_series: int
    bisect_job: int
    bisect_culprit: str
    console_job: int  # the job whose first boot's console holds HOSTILE_CONSOLE
    console_key: str


def _hostile_mail(repo: Path, base: str) -> bytes:
    git(repo, "checkout", "-q", "-B", "series-hostile", base)
    sha = commit(repo, {"arch/x86/kvm/hostile.c": "int hostile;\n"},
                 f"{HOSTILE_TITLE}\n\nWhy: tests.\n\nSigned-off-by: Ada <ada@example.org>")
    diff = git(repo, "show", "--format=", "--no-color", sha)
    git(repo, "checkout", "-q", "master")
    body = f"Why: tests.\n\nSigned-off-by: Ada <ada@example.org>\n---\n{diff}\n-- \n2.40.0\n"
    return _mail("hostile-1@example.org", f"[PATCH] {HOSTILE_TITLE}", body,
                 START + timedelta(days=1), None)


def _linear_repo(repo: Path) -> tuple[str, list[str]]:
    """good, then BISECT_COMMITS commits on top of it (oldest first)."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "master")
    good = commit(repo, {"value.h": "#define VALUE 0\n"}, "base: the good commit")
    shas = [commit(repo, {"value.h": f"#define VALUE {i}\n"},
                   f"KVM: step {i}{' (breaks state_test)' if i == BISECT_CULPRIT else ''}")
            for i in range(1, BISECT_COMMITS + 1)]
    return good, shas


def run_bisection(repo: Path, store: Store, seed: int = 13) -> tuple[int, BisectResult]:
    """Bisect a real repository with a scripted, flaky evaluator; store it as a bisect job."""
    good, shas = _linear_repo(repo)
    bad_from = set(shas[BISECT_CULPRIT - 1:])
    skip = shas[BISECT_SKIP - 1]
    rnd = random.Random(seed)

    def evaluate(c: Commit) -> Outcome:
        if c.sha == skip:
            raise InfraError("build break unrelated to the test")
        if c.sha in bad_from and rnd.random() < 0.7:
            return Outcome(Verdict.BAD, "state_test: FAIL (vmx_set_nested_state)")
        return Outcome(Verdict.GOOD)

    rng = load_range(repo, [good], shas[-1])
    options = BisectOptions(mode=Mode.FLAKY, confidence=0.95, max_runs=80)
    result = Bisector(evaluate, options).bisect(rng.graph, rng.goods)
    job = store.add_job(None, "bisect", {"tree": str(repo), "good": good, "bad": shas[-1],
                                         "test": BISECT_TEST})
    store.put_step(job, "bisect", "bisect", result.status.value,
                   commit_sha=result.culprit.sha if result.culprit else "",
                   data=bisect_step_data(result, rng.graph, options))
    store.set_job_state(job, "done")
    return job, result


def _second_round(store: Store, series_id: int) -> str:
    """A second round at the clean series' last patch in which state_test fails, stored as
    the job stores a round (the fake VM is deterministic, so a real run never flakes)."""
    job = store.job_for_series(series_id, "test-series")
    assert job is not None
    last = store.steps(job.id, "vmtest")[-1]
    runs = codec.load(tuple[TestRun, ...], last.data)
    failed = tuple(dataclasses.replace(run, results=tuple(
        dataclasses.replace(t, outcome=TestOutcome.FAIL, exit_code=1) if t.name == BISECT_TEST
        else t for t in run.results)) for run in runs)
    key = last.key.removesuffix(":r1") + ":r2"
    store.put_step(job.id, key, "vmtest", "completed", commit_sha=last.commit_sha,
                   data=codec.dump(failed))
    return key


def build_web_world(root: Path) -> WebWorld:
    """The whole world under `root` (empty); servers are stopped again before it returns."""
    inbox = LocalInbox(root / "public-inbox", ("kvm",))
    smtp = SmtpSink(port=free_port())
    inbox.start()
    smtp.start()
    try:
        world = make_world(root / "world", inbox, smtp)
        inbox.deliver_many([_hostile_mail(world.repo, world.base)], "kvm")
        state = root / "state"
        res = run_kbot(world, state, ["watch", "--once", "--run-jobs"], log=root / "kbot.log")
        if res.returncode not in (0, 1):
            raise AssertionError(f"pipeline run failed: {res.describe()}")
    finally:
        smtp.stop()
        inbox.stop()
    config = load_config(world.config)
    config = dataclasses.replace(config, bot=dataclasses.replace(config.bot,
                                                                 state_dir=str(state)))
    with Store.in_state_dir(state) as store:
        unfinished = [(j.id, j.status, j.last_error) for j in store.jobs() if j.status != "done"]
        if unfinished or len(store.jobs()) != 4:
            log = (root / "kbot.log").read_text(errors="replace").splitlines()
            raise AssertionError(f"the pipeline run did not test all 4 series ({unfinished}); "
                                 "kbot's log ends:\n" + "\n".join(log[-25:]))
        by_title = {s.title: s.id for s in store.all_series()}
        regress = by_title["KVM: regress series"]
        job = store.job_for_series(regress, "test-series")
        assert job is not None
        boot = next(s for s in store.steps(job.id) if s.step == "vmtest")
        runs = codec.load(tuple[TestRun, ...], boot.data)
        with runs[0].console_log.open("a", encoding="utf-8") as fh:
            fh.write(HOSTILE_CONSOLE)
        folder = job_artifacts_dir(state, job.id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / HOSTILE_FILE).write_text("<script>alert(3)</script>\n", encoding="utf-8")
        if not any(folder.glob("repro.sh")):
            (folder / "repro.sh").write_text("#!/bin/sh\nkbot test-series ...\n",
                                             encoding="utf-8")
        flaky_key = _second_round(store, by_title["KVM: clean series"])
        bisect_job, result = run_bisection(root / "bisect-repo", store)
        hostile = next(i for t, i in by_title.items() if "<script>" in t)
        assert result.culprit is not None
        return WebWorld(root, state, config, regress, by_title["KVM: clean series"], flaky_key,
                        by_title["KVM: nobuild series"], hostile, bisect_job,
                        result.culprit.sha, job.id, boot.key)
