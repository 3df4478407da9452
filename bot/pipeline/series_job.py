"""One series job from assembled series to stored results and queued reports.

    apply (c0 = base, c1..cN) -> build each commit in order (incremental) -> boot each built
    kernel and run the test plan -> classify every test over base and patches (new,
    pre-existing, fixed, flaky; more boots where the answer is unsure) -> reports.

Each step's result is stored as it lands (results table), so a crash loses at most the step in
flight. The stages do the work; this module only sequences them and turns their values into
per-test verdict inputs.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bot import codec, failpoints
from bot.bisect.model import Verdict
from bot.bisect.series import SeriesVerdict, TestRuns, classify_series, rerun_plan
from bot.build.kernel import BuildResult, BuildStatus, KernelBuilder
from bot.config import Config
from bot.errors import InfraError, InputError, KbotError, UserError
from bot.executor.base import BootTask, BuildTask, Executor, Ran, TaskRecord, make_executor
from bot.intake.model import Series
from bot.state import Store
from bot.tree import git
from bot.tree.apply import ApplyResult, apply_series
from bot.tree.trees import Trees
from bot.vm.host import probe
from bot.vm.model import Backend, HostCaps, Outcome, RunStatus, TestResult, TestRun
from bot.vm.plan import TestPlan, load_plan
from bot.vm.runner import RunOptions, default_options, run_plan

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def stderr_progress(line: str) -> None:
    print(f"kbot: {line}", file=sys.stderr, flush=True)


class JobCancelled(KbotError):
    """An operator cancelled the job (`kbot jobs cancel`): it stops at its next step."""


class JobInterrupted(KbotError):
    """The runner is stopping (SIGTERM): the job stops at its next step and is resumed from
    its stored steps at the next start, without counting as an attempt."""


@dataclass(frozen=True)
class CommitRuns:
    """Everything kbot did at one commit of the series: c0 is the base."""

    index: int
    sha: str
    title: str
    build: BuildResult | None  # None: not built (the series stopped applying before it)
    runs: tuple[TestRun, ...] = ()  # every boot, all rounds


@dataclass(frozen=True)
class SeriesJobResult:
    series: Series
    list_name: str
    apply: ApplyResult
    commits: tuple[CommitRuns, ...]
    verdict: SeriesVerdict | None  # None when nothing could be tested
    plan: str
    plan_order: tuple[str, ...] = ()  # test names in the plan's order (most important first)
    report_msgids: tuple[str, ...] = field(default=())

    @property
    def first_bad_patch(self) -> int | None:
        return self.verdict.first_bad_patch if self.verdict else None


def result_key(backend: Backend, name: str) -> str:
    """Tests are per backend: state_test under Bochs (VMX) and under TCG (SVM) differ."""
    return f"{name} [{backend.value}]"


def _result_verdict(r: TestResult) -> Verdict:
    if r.counts_as_failure:
        return Verdict.BAD
    if r.outcome is Outcome.PASS:
        return Verdict.GOOD
    return Verdict.SKIP  # skipped, not run, or a known emulator limit: says nothing


def verdict_inputs(commits: Sequence[CommitRuns]) -> list[TestRuns]:
    """Per-test verdict sequences over c0..cN, including two kinds of pseudo-test the plan
    does not name but a maintainer cares about: `boot` (the kernel reached init) and each
    kernel console signature (WARNING/BUG/...) seen on any commit."""
    per: dict[str, list[list[Verdict]]] = {}
    n = len(commits)

    def add(key: str, index: int, verdict: Verdict) -> None:
        per.setdefault(key, [[] for _ in range(n)])[index].append(verdict)

    titles = {(run.backend, sig.title) for c in commits for run in c.runs
              for sig in run.signatures}
    for c in commits:
        for run in c.runs:
            infra = run.status.is_infrastructure
            boot_key = result_key(run.backend, "boot")
            if infra:
                add(boot_key, c.index, Verdict.SKIP)
            else:
                add(boot_key, c.index,
                    Verdict.BAD if run.status is RunStatus.BOOT_FAILURE else Verdict.GOOD)
            for r in run.results:
                add(result_key(run.backend, r.name), c.index,
                    Verdict.SKIP if infra else _result_verdict(r))
            seen = {s.title for s in run.signatures}
            for backend, title in titles:
                if backend is run.backend:
                    add(result_key(backend, f"kernel: {title}"), c.index,
                        Verdict.BAD if title in seen else
                        (Verdict.SKIP if infra else Verdict.GOOD))
    # A test that skipped everywhere (a VMX test under TCG, a known emulator limit) has nothing
    # to compare: it shows in the series table with its reason, not in the verdict.
    return [TestRuns(key, tuple(tuple(v) for v in seqs)) for key, seqs in sorted(per.items())
            if any(v is not Verdict.SKIP for seq in seqs for v in seq)]


@dataclass
class SeriesJob:
    """Runs one series through apply, build, VM tests and verdict, storing each step."""

    config: Config
    store: Store | None = None
    job_id: int | None = None
    backend: Backend | None = None
    plan: TestPlan | None = None
    host: HostCaps | None = None
    vm_options: RunOptions | None = None
    progress: Progress = stderr_progress
    boundary: Callable[[], None] | None = None  # the runner's check between steps
    # Where builds and boots run (bot/executor/): None = the configured one, for this job.
    executor: Executor | None = None
    timeline: list[TaskRecord] = field(default_factory=list)  # where and when each ran

    def _save(self, key: str, step: str, status: str, sha: str, data: object) -> None:
        """Store one step of the job under `key` (a rerun of the step replaces it)."""
        if self.store is not None and self.job_id is not None:
            self.store.put_step(self.job_id, key, step, status, commit_sha=sha, data=data)

    def step_boundary(self) -> None:
        """Between two steps (before each build, each boot): stop here if an operator
        cancelled the job (JobCancelled) or the runner is shutting down (`boundary` raises
        JobInterrupted). What is stored so far stays: a resumed job starts from it."""
        if self.store is not None and self.job_id is not None:
            job = self.store.get_job(self.job_id)
            if job is not None and job.status == "cancelled":
                raise JobCancelled(f"job {self.job_id} was cancelled")
        if self.boundary is not None:
            self.boundary()

    def _stored_runs(self, key: str) -> tuple[TestRun, ...] | None:
        """The boots a previous, interrupted run of this job already made (None: none)."""
        if self.store is None or self.job_id is None:
            return None
        for row in self.store.steps(self.job_id, "vmtest"):
            if row.key == key:
                try:
                    runs: tuple[TestRun, ...] = codec.load(tuple[TestRun, ...], row.data, key)
                except InputError as exc:  # stored by an older kbot: boot again
                    log.warning("job %s: stored %s unreadable, booting again: %s",
                                self.job_id, key, exc)
                    return None
                return runs
        return None

    def run(self, series: Series, *, tree: str | None = None,
            list_name: str | None = None) -> SeriesJobResult:
        if not series.patches:
            raise UserError(f"series {series.title!r} has no patches")
        plan = self.plan or load_plan(self.config.plan_for(list_name))  # the list's, else vm.plan
        trees = Trees(self.config)
        self.progress(f"applying v{series.version} {series.title!r} "
                      f"({len(series.patches)}/{series.total} patches)")
        applied_at = time.time()
        applied = apply_series(trees, series, tree=tree, list_name=list_name)
        self._stage("apply", applied_at)
        self.progress(applied.summary())
        failpoints.hit("apply:done")
        self._save("apply", "apply", applied.status.value, applied.base.sha, {
            "summary": applied.summary(), "base": applied.base.describe(),
            "failed_index": applied.failed_index, "conflicts": list(applied.conflicts),
            "git_message": applied.git_message,
            "commits": [{"index": c.index, "sha": c.sha, "title": c.title}
                        for c in applied.commits]})
        titles = ["base: " + applied.base.describe()] + [c.title for c in applied.commits]
        commits = [CommitRuns(i, sha, titles[i], None) for i, sha in enumerate(applied.shas)]
        verdict: SeriesVerdict | None = None
        if not applied.commits:
            self.progress("no patch applied: nothing to test")
        else:
            commits, verdict = self._build_and_test(applied.repo, commits, plan)
        judged_at = time.time()
        if verdict is not None:
            self._save("verdict", "verdict", "regressed" if verdict.regressed else "ok", "", {
                "first_bad_patch": verdict.first_bad_patch,
                "tests": [{"test": t.test, "kind": t.kind.value,
                           "base": t.base.describe(),
                           "patches": [p.describe() for p in t.patches],
                           "first_bad_patch": t.first_bad_patch,
                           "confidence": t.confidence, "note": t.note}
                          for t in verdict.tests]})
        self._stage("judge", judged_at)
        self._save_timeline(self.executor.name if self.executor is not None else
                            self.config.executor.kind)
        order = tuple(dict.fromkeys(t.name for st in plan.sets for t in st.tests))
        result = SeriesJobResult(series, list_name or "", applied, tuple(commits), verdict,
                                 plan.name, order)
        if self.job_id is not None:
            # The job's folder (repro.sh, .config, logs, results): what its reports link.
            from bot.pipeline.artifacts import write_job_artifacts  # late: it imports us

            write_job_artifacts(self.config, self.job_id, result)
        return result

    # --- builds and boots, through the executor --------------------------------------------

    def _boot_key(self, c: CommitRuns, plan: TestPlan, round_no: int) -> str:
        backend = self.backend.value if self.backend is not None else "auto"
        return f"boot:{c.sha}:{plan.name}:{backend}:r{round_no}"

    def _build_and_test(self, repo: Path, commits: list[CommitRuns],
                        plan: TestPlan) -> tuple[list[CommitRuns], SeriesVerdict | None]:
        """Build c0..cN in order (one slot: incremental) and boot each built commit as soon as
        its build lands, so the build of patch i+1 overlaps the boots of patch i and boots of
        different commits run side by side (up to the executor's limits). Then, round by
        round, boot again the commits an unsure verdict asks for (a new failure or fix is only
        named once reproduced: see bot.bisect.series) until every verdict is sure or the
        budget is spent: vm.max_rounds runs per commit at most, bisect.series_max_reruns boots
        after the first round. Each round is a function of the stored boots, so a resumed job
        asks for the same boots; every result is stored by this thread as it lands."""
        if self.host is None:
            self.host = probe()
        if self.vm_options is None:
            self.vm_options = default_options(self.config)
        owned = self.executor is None
        ex = self.executor or make_executor(self.config, host=self.host, run_plan=run_plan,
                                            options=self.vm_options, progress=self.progress)
        flow = _Flow(self, ex, repo, commits, plan)
        try:
            flow.build_and_boot()
            return flow.rounds()
        finally:
            try:
                flow.drain()
            finally:
                self.timeline.extend(flow.records)
                if owned:
                    ex.close()

    def _stage(self, name: str, started: float) -> None:
        """A step the coordinator itself ran, on the job's timeline."""
        self.timeline.append(TaskRecord("stage", name, name, "coordinator", "", started,
                                        started, time.time(), "ok"))

    def _save_timeline(self, executor: str) -> None:
        """Where and when each build and boot ran (bench/time_to_report.py reads it)."""
        if self.store is None or self.job_id is None or not self.timeline:
            return
        n = len(self.store.steps(self.job_id, "timeline")) + 1
        self._save(f"timeline:{n}", "timeline", executor, "",
                   {"tasks": codec.dump(tuple(self.timeline))})


class _Flow:
    """One series job's builds and boots in flight. Only the job's thread touches it (and the
    store): executor threads or workers only run tasks and hand back values."""

    def __init__(self, job: SeriesJob, ex: Executor, repo: Path, commits: list[CommitRuns],
                 plan: TestPlan) -> None:
        self.job, self.ex, self.repo, self.plan = job, ex, repo, plan
        self.commits = commits
        self.fingerprint = KernelBuilder.from_config(job.config).config_fingerprint
        self.builds: list[BuildResult] = []
        self.pending: dict[Future[Any], tuple[str, int, int, int]] = {}
        self.parts: dict[tuple[int, int], list[tuple[TestRun, ...] | None]] = {}
        self.failed: set[tuple[int, int]] = set()
        self.records: list[TaskRecord] = []
        # Boots are keyed by job (and by this coordinator's store: two stores may share a
        # broker), so a resumed job asks for the same boots and gets what was stored.
        store_id = hashlib.sha256(str(job.config.state_dir).encode()).hexdigest()[:8]
        self.scope = (f"{store_id}-job{job.job_id}" if job.job_id is not None
                      else uuid.uuid4().hex[:12])
        self.stopping = False

    def build_and_boot(self) -> None:
        self._submit_build(0)
        while self.pending:
            self._settle(self._next_done())
        if self.builds and self.builds[0].status is BuildStatus.ERROR:
            # kbot could not build the base here (sandbox, disk, timeout): nothing about the
            # series is known yet. The job is retried later rather than reported.
            raise InfraError(f"could not build the base {self.builds[0].rev[:12]}: "
                             f"{self.builds[0].message}")

    def rounds(self) -> tuple[list[CommitRuns], SeriesVerdict | None]:
        job, config = self.job, self.job.config
        if not self.builds or not self.builds[0].ok:
            job.progress("the base does not build: nothing can be tested")
            return self.commits, None
        rounds = max(1, config.vm.max_rounds)
        reruns_left = config.bisect.series_max_reruns
        bootable = {c.index for c in self.commits if c.build is not None and c.build.ok}
        verdict: SeriesVerdict | None = None
        round_no = 1
        while True:
            runs = verdict_inputs(self.commits)
            if not runs:
                break
            verdict = classify_series(runs, config.bisect.confidence)
            if not verdict.unsure:
                break
            todo = rerun_plan(verdict, bootable, reruns_left)
            if round_no == rounds or not todo:
                break
            reruns_left -= len(todo)
            job.progress(f"unsure after round {round_no}: "
                         + "; ".join(f"{t.test} patch {t.likely_patch} ({t.confidence:.2f})"
                                     for t in verdict.unsure)
                         + ": booting " + ", ".join(f"c{i}" for i in todo) + " again")
            round_no += 1
            for i in todo:  # a round's boots side by side; the next round waits for them all
                self._submit_boot(i, round_no)
            while self.pending:
                self._settle(self._next_done())
        if verdict is not None and verdict.unsure:
            why = ("run budget spent" if round_no == rounds or reruns_left <= 0 else
                   "the commits to boot again do not build")
            job.progress(f"{why}, still unsure (no regression claimed): "
                         + "; ".join(f"{t.test}: {t.note}" for t in verdict.unsure))
        return self.commits, verdict

    def drain(self) -> None:
        """After an error or a stop: start nothing new, cancel what has not started, let
        what runs finish and store what completed (a resumed job does not run it again)."""
        if not self.pending:
            return
        self.stopping = True
        for fut in self.pending:
            fut.cancel()
        while self.pending:
            fut = self._next_done()
            if fut.cancelled():
                del self.pending[fut]
                continue
            try:
                self._settle(fut)
            except Exception as exc:  # the job is failing already: keep draining
                log.warning("job %s: while stopping: %s", self.job.job_id, exc)

    def _next_done(self) -> Future[Any]:
        done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
        return next(f for f in self.pending if f in done)  # the earliest submitted first

    def _submit_build(self, i: int) -> None:
        job = self.job
        job.step_boundary()
        failpoints.hit("build:before")
        c = self.commits[i]
        task = BuildTask(self.repo, c.sha, git.tree_id(self.repo, c.sha), self.fingerprint,
                         self.builds[-1] if self.builds else None, f"c{i} build")
        self.pending[self.ex.build(task)] = ("build", i, 0, 0)

    def _submit_boot(self, i: int, round_no: int) -> None:
        job, c = self.job, self.commits[i]
        key = job._boot_key(c, self.plan, round_no)
        stored = job._stored_runs(key)
        if stored is not None:
            job.progress(f"c{c.index} round {round_no}: {len(stored)} boot(s) of "
                         f"{c.sha[:12]} already stored (resumed)")
            self.commits[i] = replace(c, runs=c.runs + stored)
            return
        assert c.build is not None and c.build.artifacts.bzimage is not None
        assert c.build.artifacts.selftests_dir is not None
        job.step_boundary()
        job.progress(f"c{c.index} round {round_no}: booting {c.sha[:12]} ({c.title})")
        failpoints.hit("boot:before")
        routes = self.ex.routes(self.plan, job.backend)
        self.parts[(i, round_no)] = [None] * len(routes)
        for g, route in enumerate(routes):
            task = BootTask(self.scope, c.build.key, c.build.artifacts.bzimage,
                            c.build.artifacts.selftests_dir, self.plan, route, round_no,
                            f"c{i} r{round_no} {route.queue}")
            self.pending[self.ex.boot(task)] = ("boot", i, round_no, g)

    def _settle(self, fut: Future[Any]) -> None:
        kind, i, round_no, g = self.pending.pop(fut)
        if kind == "build":
            self._built(i, fut.result())
            return
        try:
            ran = fut.result()
        except InfraError as exc:
            # Could not test this commit this round: its tests stay untested, not failed,
            # and nothing is stored, so a retried job boots it again.
            if (i, round_no) not in self.failed:
                self.job.progress(f"c{i}: could not test: {exc}")
            self.failed.add((i, round_no))
            self.parts[(i, round_no)][g] = ()
        else:
            self.records.append(ran.record)
            self.parts[(i, round_no)][g] = ran.value
        if all(p is not None for p in self.parts[(i, round_no)]):
            self._booted(i, round_no)

    def _built(self, i: int, ran: Ran[BuildResult]) -> None:
        job, b = self.job, ran.value
        self.records.append(ran.record)
        self.builds.append(b)
        self.commits[i] = replace(self.commits[i], build=b)
        job.progress(f"c{i} build: {b.summary()}")
        job._save(f"build:{b.rev}", "build", b.status.value, b.rev, b.to_json())
        failpoints.hit("build:after")
        if self.stopping or (i == 0 and b.status is BuildStatus.ERROR):
            return
        if i + 1 < len(self.commits):
            self._submit_build(i + 1)  # the next build first: builds are the longest path
        if self.builds[0].ok and b.ok:
            self._submit_boot(i, 1)

    def _booted(self, i: int, round_no: int) -> None:
        parts = self.parts.pop((i, round_no))
        if (i, round_no) in self.failed:
            self.failed.discard((i, round_no))
            return
        c = self.commits[i]
        runs = tuple(run for part in parts if part for run in part)
        status = "/".join(dict.fromkeys(run.status.value for run in runs)) or "none"
        self.job._save(self.job._boot_key(c, self.plan, round_no), "vmtest", status, c.sha,
                       codec.dump(runs))
        failpoints.hit("boot:after")
        self.commits[i] = replace(c, runs=c.runs + runs)
