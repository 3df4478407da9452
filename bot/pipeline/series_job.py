"""One series job from assembled series to stored results and queued reports.

    apply (c0 = base, c1..cN) -> build each commit in order (incremental) -> boot each built
    kernel and run the test plan -> classify every test over base and patches (new,
    pre-existing, fixed, flaky; more boots where the answer is unsure) -> reports.

Each step's result is stored as it lands (results table), so a crash loses at most the step in
flight. The stages do the work; this module only sequences them and turns their values into
per-test verdict inputs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bot.bisect.model import Verdict
from bot.bisect.series import SeriesVerdict, TestClass, TestRuns, classify_series
from bot.build.kernel import BuildResult, KernelBuilder
from bot.build.series import build_commits
from bot.config import Config
from bot.errors import InfraError, UserError
from bot.intake.model import Series
from bot.state import Store
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

    def _save(self, step: str, status: str, sha: str, data: dict[str, object]) -> None:
        if self.store is not None and self.job_id is not None:
            self.store.add_result(self.job_id, step, status, commit_sha=sha, data=data)

    def run(self, series: Series, *, tree: str | None = None,
            list_name: str | None = None) -> SeriesJobResult:
        if not series.patches:
            raise UserError(f"series {series.title!r} has no patches")
        plan = self.plan or load_plan(self.config.vm.plan)
        trees = Trees(self.config)
        self.progress(f"applying v{series.version} {series.title!r} "
                      f"({len(series.patches)}/{series.total} patches)")
        applied = apply_series(trees, series, tree=tree, list_name=list_name)
        self.progress(applied.summary())
        self._save("apply", applied.status.value, applied.base.sha, {
            "summary": applied.summary(), "base": applied.base.describe(),
            "failed_index": applied.failed_index, "conflicts": list(applied.conflicts),
            "git_message": applied.git_message,
            "commits": [{"index": c.index, "sha": c.sha, "title": c.title}
                        for c in applied.commits]})
        titles = ["base: " + applied.base.describe()] + [c.title for c in applied.commits]
        builder = KernelBuilder.from_config(self.config)
        # No per-line progress here: the builder shows its own (a rewritten line on a terminal,
        # one every 30 s in a log), not every line make prints.
        shas = applied.shas if applied.commits else ()
        builds = build_commits(builder, applied.repo, shas)
        for i, b in enumerate(builds):
            self.progress(f"c{i} build: {b.summary()}")
            self._save("build", b.status.value, b.rev, b.to_json())
        commits = [CommitRuns(i, sha, titles[i], builds[i] if i < len(builds) else None)
                   for i, sha in enumerate(applied.shas)]
        verdict: SeriesVerdict | None = None
        if not applied.commits:
            self.progress("no patch applied: nothing to test")
        elif builds[0].ok:
            commits, verdict = self._test(commits, plan)
        else:
            self.progress("the base does not build: nothing can be tested")
        if verdict is not None:
            self._save("verdict", "regressed" if verdict.regressed else "ok", "", {
                "first_bad_patch": verdict.first_bad_patch,
                "tests": [{"test": t.test, "kind": t.kind.value,
                           "base": t.base.describe(),
                           "patches": [p.describe() for p in t.patches],
                           "first_bad_patch": t.first_bad_patch,
                           "confidence": t.confidence, "note": t.note}
                          for t in verdict.tests]})
        order = tuple(dict.fromkeys(t.name for st in plan.sets for t in st.tests))
        return SeriesJobResult(series, list_name or "", applied, tuple(commits), verdict,
                               plan.name, order)

    def _boot(self, c: CommitRuns, plan: TestPlan, round_no: int) -> CommitRuns:
        assert c.build is not None and c.build.artifacts.bzimage is not None
        assert c.build.artifacts.selftests_dir is not None
        self.progress(f"c{c.index} round {round_no}: booting {c.sha[:12]} ({c.title})")
        try:
            runs = run_plan(c.build.artifacts.bzimage, c.build.artifacts.selftests_dir, plan,
                            self.backend, self.host, options=self.vm_options,
                            progress=self.progress)
        except InfraError as exc:
            # Could not test this commit this round: its tests stay untested, not failed.
            self.progress(f"c{c.index}: could not test: {exc}")
            return c
        for run in runs:
            self._save("vmtest", run.status.value, c.sha, {
                "backend": run.backend.value, "round": round_no, "detail": run.status_detail,
                "console_log": str(run.console_log),
                "results": [{"name": r.name, "outcome": r.outcome.value,
                             "skip_reason": r.skip_reason, "known_limit": r.known_limit}
                            for r in run.results],
                "signatures": [s.title for s in run.signatures]})
        return CommitRuns(c.index, c.sha, c.title, c.build, c.runs + tuple(runs))

    def _test(self, commits: list[CommitRuns],
              plan: TestPlan) -> tuple[list[CommitRuns], SeriesVerdict | None]:
        if self.host is None:
            self.host = probe()
        if self.vm_options is None:
            self.vm_options = default_options(self.config)
        todo = [c.index for c in commits if c.build is not None and c.build.ok]
        verdict: SeriesVerdict | None = None
        for round_no in range(1, max(1, self.config.vm.max_rounds) + 1):
            for i in todo:
                commits[i] = self._boot(commits[i], plan, round_no)
            runs = verdict_inputs(commits)
            if not runs:
                break
            verdict = classify_series(runs, self.config.bisect.confidence)
            buildable = {c.index for c in commits if c.build is not None and c.build.ok}
            todo = sorted({i for t in verdict.tests if t.kind is not TestClass.UNTESTED
                           for i in t.more_runs} & buildable)
            if not todo:
                break
            self.progress(f"unsure after round {round_no}: more runs of "
                          + ", ".join(f"c{i}" for i in todo))
        return commits, verdict
