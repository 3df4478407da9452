"""The kernel evaluator: build a commit with the build stage, run one selftest in a VM.

evaluate(commit) = KernelBuilder.build(repo, sha) -> bzImage + static selftests, then
run_plan(...) with a one-test plan cut from the configured plan -> TestRun, mapped to a verdict:

    test PASS                                   -> GOOD
    test FAIL / CRASH (kernel died in the test) -> BAD
    build FAIL/ERROR, selftest not built, boot failure, hang, emulator error,
    test SKIP / NOT_RUN / TIMEOUT, a failure under a known emulator limit -> SKIP

A build break is SKIP, not BAD: the question is which commit breaks the *test*; a commit that
does not build says nothing about it (git bisect run's exit 125).
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bot.bisect.model import Commit, Outcome, Verdict
from bot.build.kernel import BuildResult, BuildStatus, KernelBuilder
from bot.config import Config
from bot.errors import UserError
from bot.executor.base import BootTask, BuildTask, Executor, TaskRecord, make_executor
from bot.tree import git
from bot.vm.host import probe
from bot.vm.model import Backend, HostCaps, RunStatus, TestRun
from bot.vm.model import Outcome as TestOutcome
from bot.vm.plan import TestPlan, TestSet, choose_backend, load_plan
from bot.vm.runner import RunOptions, run_plan

# Faster backends first: when a test is in several sets (state_test is in vmx and svm), the set
# this host runs fastest is used unless one is named.
_BACKEND_PREFERENCE = (Backend.QEMU_KVM, Backend.QEMU_TCG, Backend.BOCHS)


@dataclass(frozen=True)
class TestChoice:
    """The one-test plan a bisection runs, and why this set and backend."""

    __test__ = False

    plan: TestPlan
    set_name: str
    backend: Backend
    reason: str


def one_test_plan(plan: TestPlan, test: str, host: HostCaps, forced: Backend | None,
                  set_name: str | None = None) -> TestChoice:
    """Cut `plan` down to `test` in one set: the named one, else the one this host runs best."""
    sets = [s for s in plan.sets if any(t.name == test for t in s.tests)]
    if set_name is not None:
        sets = [s for s in sets if s.name == set_name]
    if not sets:
        known = sorted({t.name for s in plan.sets for t in s.tests})
        where = f" in set {set_name!r}" if set_name else ""
        raise UserError(f"test {test!r} is not in plan {plan.name}{where} "
                        f"(known: {', '.join(known)})")
    choices = [(s, choose_backend(s, host, forced)) for s in sets]
    chosen, why = min(choices, key=lambda sc: _BACKEND_PREFERENCE.index(sc[1].backend))
    spec = next(t for t in chosen.tests if t.name == test)
    limits = tuple(lim for lim in chosen.limits if lim.test == test)
    cut = TestSet(chosen.name, chosen.requires, (spec,), limits)
    if not cut.tests_for(why.backend):
        raise UserError(f"test {test!r} is excluded on {why.backend.value}: "
                        f"{cut.limit_for(why.backend, test).reason}")  # type: ignore[union-attr]
    return TestChoice(
        TestPlan(f"{plan.name}:{test}", f"{test} from {plan.name}", (cut,), plan.source),
        chosen.name, why.backend, why.reason)


def verdict_of_build(build: BuildResult, test: str) -> Outcome | None:
    """SKIP when the build cannot run `test`; None when it can."""
    if build.status is BuildStatus.FAIL:
        return Outcome(Verdict.SKIP, f"does not build ({build.failed_step}): {build.message}")
    if build.status is BuildStatus.ERROR:
        return Outcome(Verdict.SKIP, f"could not build: {build.message}")
    if build.artifacts.bzimage is None or build.artifacts.selftests_dir is None:
        return Outcome(Verdict.SKIP, "build has no bzImage or selftests")
    if test not in build.selftests and not any(s.endswith("/" + test) for s in build.selftests):
        return Outcome(Verdict.SKIP, f"selftest {test} was not built")
    return None


def verdict_of_run(run: TestRun, test: str) -> Outcome:
    """Map one VM boot to a verdict for `test` (see the module docstring)."""
    if run.status in (RunStatus.BOOT_FAILURE, RunStatus.HANG, RunStatus.INFRA_ERROR):
        return Outcome(Verdict.SKIP, f"{run.status.value}: {run.status_detail}")
    mine = [r for r in run.results if r.name == test]
    if not mine:
        return Outcome(Verdict.SKIP, f"{test} did not report a result ({run.status_detail})")
    bad = [r for r in mine if r.outcome in (TestOutcome.FAIL, TestOutcome.CRASH)
           and r.known_limit is None]
    if bad:
        r = bad[0]
        where = f" at {r.assertion.location}" if r.assertion is not None else ""
        detail = (r.assertion.expression if r.assertion is not None else
                  (r.output[-1] if r.output else f"exit {r.exit_code}"))
        return Outcome(Verdict.BAD, f"{test} {r.outcome.value}{where}: {detail}"[:300])
    if all(r.outcome is TestOutcome.PASS for r in mine):
        return Outcome(Verdict.GOOD)
    r = next(r for r in mine if r.outcome is not TestOutcome.PASS)
    why = r.known_limit or r.skip_reason or r.outcome.value
    return Outcome(Verdict.SKIP, f"{test} {r.outcome.value}: {why}"[:300])


class KernelEvaluator:
    """evaluate(commit) for `kbot bisect --test NAME` (thread-safe: the K commits of a K-ary
    round build side by side in the executor's build slots, or one after the other in the
    builder's slot lock, and their VM boots run side by side).

    With an `executor` (bot/executor/) each build and boot is a task there: on this machine's
    thread pools, or on `kbot worker`s; `timeline` then says where and when each ran."""

    def __init__(self, builder: KernelBuilder, repo: Path, test: str, choice: TestChoice,
                 options: RunOptions, host: HostCaps,
                 progress: Callable[[str], None] | None = None, *,
                 executor: Executor | None = None, forced: Backend | None = None) -> None:
        self.builder = builder
        self.repo = repo
        self.test = test
        self.choice = choice
        self.options = options
        self.host = host
        self.progress = progress
        self.executor = executor
        self.forced = forced
        self.scope = f"bisect-{uuid.uuid4().hex[:12]}"
        self._lock = threading.Lock()
        self.builds: dict[str, BuildResult] = {}
        self.runs: dict[str, list[TestRun]] = {}
        self.timeline: list[TaskRecord] = []

    def _build(self, sha: str) -> BuildResult:
        if self.executor is None:
            return self.builder.build(self.repo, sha, progress=self.progress)
        task = BuildTask(self.repo, sha, git.tree_id(self.repo, sha),
                         self.builder.config_fingerprint, None, f"{sha[:12]} build")
        ran = self.executor.build(task).result()
        with self._lock:
            self.timeline.append(ran.record)
        return ran.value

    def _boot(self, sha: str, build: BuildResult) -> list[TestRun]:
        assert build.artifacts.bzimage is not None and build.artifacts.selftests_dir is not None
        if self.executor is None:
            return run_plan(build.artifacts.bzimage, build.artifacts.selftests_dir,
                            self.choice.plan, self.choice.backend, self.host,
                            options=self.options, progress=self.progress)
        with self._lock:
            n = len(self.runs.get(sha, ())) + 1  # the n-th boot of this commit
        runs: list[TestRun] = []
        futures = [self.executor.boot(BootTask(
            self.scope, build.key, build.artifacts.bzimage, build.artifacts.selftests_dir,
            self.choice.plan, route, n, f"{sha[:12]} r{n} {route.queue}"))
            for route in self.executor.routes(self.choice.plan, self.forced)]
        for fut in futures:
            ran = fut.result()
            runs.extend(ran.value)
            with self._lock:
                self.timeline.append(ran.record)
        return runs

    def __call__(self, commit: Commit) -> Outcome:
        build = self._build(commit.sha)
        with self._lock:
            self.builds[commit.sha] = build
        skip = verdict_of_build(build, self.test)
        if skip is not None:
            return skip
        runs = self._boot(commit.sha, build)
        with self._lock:
            self.runs.setdefault(commit.sha, []).extend(runs)
        if len(runs) != 1:
            return Outcome(Verdict.SKIP, f"expected one VM run, got {len(runs)}")
        return verdict_of_run(runs[0], self.test)


def _stderr(line: str) -> None:
    print(f"kbot bisect:   {line}", file=sys.stderr, flush=True)


def kernel_evaluator(config: Config, repo: Path, test: str, set_name: str | None = None,
                     verbose: bool = False) -> KernelEvaluator:
    """The evaluator `kbot bisect --test` uses, from the config's build and vm sections."""
    host = probe()
    forced = None if config.vm.backend == "auto" else Backend(config.vm.backend)
    choice = one_test_plan(load_plan(config.vm.plan), test, host, forced, set_name)
    _stderr(f"{test}: set {choice.set_name} on {choice.backend.value} ({choice.reason})")
    options = RunOptions(
        cache_dir=config.cache_dir / "vm",
        work_dir=config.state_dir / "bisect" / "vm",
        memory_mb=config.vm.memory_mb,
        boot_timeout_s=config.vm.boot_timeout_s,
    )
    progress = _stderr if verbose else None
    # Builds and boots go through the configured executor (bot/executor/): this process's
    # thread pools, or `kbot worker`s. The VM runner is this module's (a test's fake VM).
    executor = make_executor(config, host=host, run_plan=run_plan, options=options,
                             progress=progress)
    return KernelEvaluator(KernelBuilder.from_config(config), repo, test, choice, options, host,
                           progress, executor=executor, forced=forced)
