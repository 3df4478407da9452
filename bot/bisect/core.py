"""The bisection core: a stateless Bisector driving a Bisection with an injected evaluator.

In the style of mozregression: the evaluator says GOOD / BAD / SKIP for one run of one commit (and
may raise InfraError, which is a SKIP: kbot could not test, the commit is not to blame); the
Bisection holds one run's state and decides what to test next; hooks report progress. Nothing
here runs git or a kernel, so the whole search is tested with scripted verdicts.

Deterministic mode narrows the candidates like `git bisect`: GOOD drops the commit's ancestors,
BAD keeps only its ancestors, SKIP marks it untestable; it stops when only the bad commit is left
(found) or only skipped commits stand between it and the goods (inconclusive, with the list).
With `jobs` K > 1 each round tests K commits splitting the candidates into K + 1 parts.
Flaky mode (bot.bisect.bayes) runs when asked, or when the evidence shows the test is not
deterministic: an endpoint that both passes and fails, or a round whose results contradict.

The user says the bad endpoint fails: when it passes, it is run again (up to
`bad_endpoint_runs`, stopping at the first failure) before the bisection concludes that it does
not fail; a failure seen only on a rerun is a flaky test, and the search switches to flaky mode.
Unless the mode was forced, a deterministic answer is confirmed before it is given: the first
bad commit and its parents are run `confirm_runs` more times; a parent that fails or a culprit
that passes means a flaky test fooled the binary search, which then continues as a flaky search
from every run made so far. So a flaky regression is found without being told it is flaky.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from bot.bisect.bayes import FlakyModel, Posterior
from bot.bisect.graph import CommitGraph
from bot.bisect.model import (
    BisectResult,
    Commit,
    Mode,
    Outcome,
    Progress,
    Role,
    Status,
    TestedCommit,
    Verdict,
)
from bot.bisect.replay import replay_log
from bot.errors import InfraError

Evaluator = Callable[[Commit], "Verdict | Outcome"]

# A bad endpoint that passes is run again until it first fails, at most this many times in all:
# a test that fails 50% of the time passes 6 runs in a row 1.6% of the time.
FLAKY_BAD_ENDPOINT_RUNS = 6
# Reruns of a deterministic answer's culprit and parents (auto mode): a binary search misled by
# a flaky pass lands on a culprit whose parent is bad too; a test failing 70% of the time shows
# that in 2 reruns 91% of the time, at the cost of 2 runs per commit when the test is sound.
CONFIRM_RUNS = 2


@dataclass(frozen=True)
class BisectOptions:
    mode: Mode | None = None  # None: deterministic until the results show flakiness
    jobs: int = 1
    confidence: float = 0.95
    max_runs: int = 64
    endpoint_runs: int = 1  # runs at each good endpoint (and at the bad one, deterministic)
    check_endpoints: bool = True
    model: FlakyModel = field(default_factory=FlakyModel)
    bad_endpoint_runs: int = FLAKY_BAD_ENDPOINT_RUNS  # most runs at a bad endpoint that passes
    confirm_runs: int = CONFIRM_RUNS  # auto mode: reruns of a deterministic culprit and parents

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError("jobs must be at least 1")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError("confidence must be in [0.5, 1.0)")
        if self.max_runs < 1 or self.endpoint_runs < 1:
            raise ValueError("max_runs and endpoint_runs must be at least 1")
        if self.bad_endpoint_runs < 1 or self.confirm_runs < 0:
            raise ValueError("bad_endpoint_runs must be at least 1, confirm_runs at least 0")


class Hooks:
    """Progress callbacks; override what you need. Called from the driving thread only."""

    def on_run(self, commit: Commit, outcome: Outcome, progress: Progress) -> None:
        """After each evaluator run is recorded."""

    def on_round(self, commits: Sequence[Commit], progress: Progress) -> None:
        """Before a round starts: the commits about to be tested."""

    def on_mode(self, mode: Mode, reason: str) -> None:
        """The search switched mode (deterministic -> flaky)."""

    def on_finish(self, result: BisectResult) -> None:
        """Once, with the result."""


def _as_outcome(value: Verdict | Outcome) -> Outcome:
    if isinstance(value, Outcome):
        return value
    if isinstance(value, Verdict):
        return Outcome(value)
    raise TypeError(f"evaluator returned {value!r}, not a Verdict or Outcome")


def safe_evaluate(evaluator: Evaluator, commit: Commit) -> Outcome:
    """Run the evaluator once; infrastructure errors become SKIP with their message."""
    try:
        return _as_outcome(evaluator(commit))
    except InfraError as exc:
        return Outcome(Verdict.SKIP, f"could not test: {exc}")


class Bisection:
    """The state of one bisection over `graph`, with `goods` outside it."""

    def __init__(self, graph: CommitGraph, goods: Sequence[Commit], options: BisectOptions):
        self.graph = graph
        self.goods = tuple(goods)
        self.options = options
        self.mode = options.mode or Mode.DETERMINISTIC
        n = len(graph)
        self.alive = [True] * n
        self.bad = graph.bad
        self.skipped: set[int] = set()
        self.outcomes: dict[str, list[Outcome]] = {}
        self.roles: dict[str, Role] = {}
        self.order: list[str] = []  # first-tested order
        self.runs = 0
        self.search_runs = 0
        self.rounds = 0
        self.contradiction = ""
        self.notes: list[str] = []
        self.posterior: Posterior | None = None
        self._last_gain = 1.0
        if self.mode is Mode.FLAKY:
            self.posterior = Posterior(graph, options.model)

    # -- recording ---------------------------------------------------------------------------

    def record(self, commit: Commit, outcome: Outcome, role: Role = Role.SEARCH) -> None:
        if commit.sha not in self.outcomes:
            self.outcomes[commit.sha] = []
            self.roles[commit.sha] = role
            self.order.append(commit.sha)
        self.outcomes[commit.sha].append(outcome)
        self.runs += 1
        if role is Role.SEARCH:
            self.search_runs += 1
        i = self.graph.index.get(commit.sha)
        fails = 1 if outcome.verdict is Verdict.BAD else 0
        passes = 1 if outcome.verdict is Verdict.GOOD else 0
        if self.posterior is not None:
            if i is None:
                self.posterior.observe_outside(fails, passes)
            else:
                self.posterior.observe(i, fails, passes)
        if i is None:
            return
        if outcome.verdict is Verdict.SKIP:
            # A commit that ever failed to build or boot is not offered again; one that ran
            # fine before keeps its data.
            if not any(o.verdict is not Verdict.SKIP for o in self.outcomes[commit.sha]):
                self.skipped.add(i)
            return
        if self.mode is Mode.DETERMINISTIC and role is Role.SEARCH:
            self._narrow(i, outcome.verdict)

    def _narrow(self, i: int, verdict: Verdict) -> None:
        anc = self.graph.ancestors(i)
        if verdict is Verdict.BAD:
            # Only a commit no longer a candidate can have a passing descendant.
            for sha, outs in (self.outcomes.items() if not self.alive[i] else ()):
                g = self.graph.index.get(sha)
                if (g is not None and self.roles[sha] is Role.SEARCH and g != i
                        and any(o.verdict is Verdict.GOOD for o in outs)
                        and i in self.graph.ancestors(g)):
                    self.contradiction = (f"{self.graph.commit(i).describe()} fails but "
                                          f"{self.graph.commit(g).describe()}, which descends "
                                          "from it, passes")
                    return
            was_alive = self.alive[i]
            for j in range(len(self.alive)):
                if j not in anc:
                    self.alive[j] = False
            # Two failing commits of one round, neither an ancestor of the other: the culprit is
            # a common ancestor; the candidates shrink, the bad end stays where it is.
            if was_alive:
                self.bad = i
        else:
            if self.bad in anc:
                self.contradiction = (f"{self.graph.commit(i).describe()} passes but descends "
                                      f"from {self.graph.commit(self.bad).describe()}, which fails")
                return
            for j in anc:
                self.alive[j] = False

    def switch_to_flaky(self, reason: str) -> None:
        self.notes.append(f"switched to the flaky search after {self.runs} runs: {reason}")
        self.mode = Mode.FLAKY
        post = Posterior(self.graph, self.options.model)
        for sha, outs in self.outcomes.items():
            fails = sum(1 for o in outs if o.verdict is Verdict.BAD)
            passes = sum(1 for o in outs if o.verdict is Verdict.GOOD)
            i = self.graph.index.get(sha)
            if i is None:
                post.observe_outside(fails, passes)
            else:
                post.observe(i, fails, passes)
        self.posterior = post
        self.contradiction = ""

    # -- choosing ------------------------------------------------------------------------------

    def testable(self) -> list[int]:
        return [i for i, a in enumerate(self.alive)
                if a and i != self.bad and i not in self.skipped]

    def candidates_left(self) -> int:
        if self.posterior is not None:
            return len(self.posterior.credible_set(self.options.confidence))
        return sum(self.alive)

    def next_commits(self, k: int) -> list[Commit]:
        """Up to k commits for the next round; [] when the search is over."""
        if self.posterior is not None:
            if self.runs >= self.options.max_runs:
                return []
            _, p = self.posterior.best()
            if p >= self.options.confidence:
                return []
            k = min(k, self.options.max_runs - self.runs)
            picks = self.posterior.choose(k, self.skipped)
            if picks:
                self._last_gain = max(self.posterior.gains()[picks[0]], 1e-3)
            return [self.graph.commit(i) for i in picks]
        testable = self.testable()
        if not testable:
            return []
        weights = self.graph.ancestor_counts(self.alive)
        n = sum(self.alive)
        if k == 1:
            # git's rule: the commit whose ancestors are closest to half the candidates.
            best = max(testable, key=lambda i: (min(weights[i], n - weights[i]), -i))
            return [self.graph.commit(best)]
        chosen: list[int] = []
        for j in range(1, k + 1):
            target = j * n / (k + 1)
            rest = [i for i in testable if i not in chosen]
            if not rest:
                break
            chosen.append(min(rest, key=lambda i: (abs(weights[i] - target), i)))
        return [self.graph.commit(i) for i in chosen]

    def progress(self) -> Progress:
        k = self.options.jobs
        if self.posterior is not None:
            _, conf = self.posterior.best()
            left = min(self.posterior.expected_runs_left(self.options.confidence, self._last_gain),
                       max(0, self.options.max_runs - self.runs))
            return Progress(self.candidates_left(), self.runs, self.rounds, left, conf)
        n = sum(self.alive)
        rounds_left = math.ceil(math.log(n) / math.log(k + 1) - 1e-9) if n > 1 else 0
        return Progress(n, self.runs, self.rounds, rounds_left * k if k > 1 else rounds_left,
                        1.0 if n == 1 else 0.0)

    # -- results -------------------------------------------------------------------------------

    def tested(self) -> tuple[TestedCommit, ...]:
        out = []
        goods = {g.sha: g for g in self.goods}
        for sha in self.order:
            i = self.graph.index.get(sha)
            commit = self.graph.commit(i) if i is not None else goods[sha]
            out.append(TestedCommit(commit, tuple(self.outcomes[sha]), self.roles[sha]))
        return tuple(out)

    def result(self, status: Status | None = None, message: str = "",
               culprit_index: int | None = None) -> BisectResult:
        conf = 0.0
        culprit: Commit | None = None
        candidates: tuple[Commit, ...] = ()
        if status is None:
            if self.posterior is not None:
                best, conf = self.posterior.best()
                if conf >= self.options.confidence:
                    status, culprit_index = Status.FOUND, best
                elif self.posterior.choose(1, self.skipped) == [] and self.runs < (
                        self.options.max_runs):
                    status = Status.INCONCLUSIVE
                    candidates = tuple(self.graph.commit(i) for i in sorted(
                        self.posterior.credible_set(self.options.confidence)))
                else:
                    status, culprit_index = Status.LOW_CONFIDENCE, best
            else:
                alive = [i for i, a in enumerate(self.alive) if a]
                if alive == [self.bad]:
                    status, culprit_index, conf = Status.FOUND, self.bad, 1.0
                else:
                    status = Status.INCONCLUSIVE
                    candidates = tuple(self.graph.commit(i) for i in alive)
        if culprit_index is not None:
            culprit = self.graph.commit(culprit_index)
        if not message:
            message = _message(status, culprit, conf, candidates)
        tested = self.tested()
        return BisectResult(
            status=status,
            mode=self.mode,
            good=self.goods,
            bad=self.graph.commit(self.graph.bad),
            culprit=culprit,
            confidence=conf,
            candidates=candidates,
            tested=tested,
            runs=self.runs,
            rounds=self.rounds,
            jobs=self.options.jobs,
            message=message,
            replay_log=replay_log(self.graph, self.goods, tested, culprit, candidates),
            candidates_at_start=len(self.graph),
            search_runs=self.search_runs,
            notes=tuple(self.notes),
        )


def _message(status: Status, culprit: Commit | None, conf: float,
             candidates: Sequence[Commit]) -> str:
    if status is Status.FOUND and culprit is not None:
        return f"{culprit.sha} is the first bad commit (confidence {conf:.3f})"
    if status is Status.LOW_CONFIDENCE and culprit is not None:
        return (f"run budget spent: the most likely first bad commit is {culprit.sha} "
                f"(probability {conf:.3f})")
    if status is Status.INCONCLUSIVE:
        return ("inconclusive: the first bad commit is one of " +
                ", ".join(c.short for c in candidates))
    return str(status.value)


class Bisector:
    """Drives a Bisection with an evaluator; holds no state of its own between runs."""

    def __init__(self, evaluator: Evaluator, options: BisectOptions | None = None,
                 hooks: Hooks | None = None) -> None:
        self.evaluator = evaluator
        self.options = options or BisectOptions()
        self.hooks = hooks or Hooks()

    def bisect(self, graph: CommitGraph, goods: Sequence[Commit]) -> BisectResult:
        state = Bisection(graph, goods, self.options)
        result = self._run(state)
        self.hooks.on_finish(result)
        return result

    def _round(self, state: Bisection, commits: Sequence[Commit],
               roles: Sequence[Role]) -> list[Outcome]:
        state.rounds += 1
        self.hooks.on_round(commits, state.progress())
        if len(commits) == 1 or self.options.jobs == 1:
            outcomes = []
            for commit, role in zip(commits, roles, strict=True):
                outcome = safe_evaluate(self.evaluator, commit)
                self._record(state, commit, outcome, role)
                outcomes.append(outcome)
            return outcomes
        with ThreadPoolExecutor(max_workers=self.options.jobs) as pool:
            futures = [pool.submit(safe_evaluate, self.evaluator, c) for c in commits]
            outcomes = [f.result() for f in futures]
        # Record BADs first so that a GOOD in the same round is checked against the new bad end.
        # Descendants first, so that each later BAD is still a candidate when it is recorded.
        order = sorted(range(len(commits)), key=lambda j: (
            0 if outcomes[j].verdict is Verdict.BAD else 1,
            -state.graph.index.get(commits[j].sha, -1)))
        for j in order:
            self._record(state, commits[j], outcomes[j], roles[j])
        return outcomes

    def _record(self, state: Bisection, commit: Commit, outcome: Outcome, role: Role) -> None:
        state.record(commit, outcome, role)
        self.hooks.on_run(commit, outcome, state.progress())

    def _endpoints(self, state: Bisection) -> BisectResult | None:
        opts = self.options
        bad = state.graph.commit(state.graph.bad)
        flaky = state.mode is Mode.FLAKY
        commits: list[Commit] = []
        roles: list[Role] = []
        for g in state.goods:
            commits += [g] * opts.endpoint_runs
            roles += [Role.ENDPOINT_GOOD] * opts.endpoint_runs
        first = 1 if flaky else opts.endpoint_runs
        commits += [bad] * first
        roles += [Role.ENDPOINT_BAD] * first
        self._round(state, commits, roles)
        # The user says the bad end fails: while it only passes, run it again until it fails
        # once (a flaky test) or the allowance is spent (it really passes). Flaky mode also
        # retries a run that could not test it.
        while True:
            outs = state.outcomes[bad.sha]
            if any(o.verdict is Verdict.BAD for o in outs) or len(outs) >= opts.bad_endpoint_runs:
                break
            if not flaky and not any(o.verdict is Verdict.GOOD for o in outs):
                break
            self._round(state, [bad], [Role.ENDPOINT_BAD])
        for g in state.goods:
            outs = state.outcomes[g.sha]
            if all(o.verdict is Verdict.SKIP for o in outs):
                return state.result(Status.UNTESTABLE_ENDPOINT,
                                    f"good endpoint {g.describe()} could not be tested: "
                                    f"{outs[-1].note or 'skipped'}")
            fails = sum(1 for o in outs if o.verdict is Verdict.BAD)
            if fails:
                return state.result(Status.WRONG_ENDPOINT,
                                    f"good endpoint {g.describe()} fails the test "
                                    f"({fails} of {len(outs)} runs): it is not good")
        outs = state.outcomes[bad.sha]
        if all(o.verdict is Verdict.SKIP for o in outs):
            return state.result(Status.UNTESTABLE_ENDPOINT,
                                f"bad endpoint {bad.describe()} could not be tested: "
                                f"{outs[-1].note or 'skipped'}")
        fails = sum(1 for o in outs if o.verdict is Verdict.BAD)
        passes = sum(1 for o in outs if o.verdict is Verdict.GOOD)
        if fails == 0:
            return state.result(Status.WRONG_ENDPOINT,
                                f"bad endpoint {bad.describe()} passes the test "
                                f"({passes} of {passes} runs): it is not bad")
        if passes and state.mode is Mode.DETERMINISTIC:
            if opts.mode is Mode.DETERMINISTIC:
                return state.result(Status.WRONG_ENDPOINT,
                                    f"bad endpoint {bad.describe()} fails only {fails} of "
                                    f"{fails + passes} runs: the test is flaky (use flaky mode)")
            state.switch_to_flaky(f"bad endpoint failed {fails} of {fails + passes} runs")
            self.hooks.on_mode(Mode.FLAKY, "the bad endpoint both passes and fails")
        return None

    def _confirm(self, state: Bisection) -> BisectResult | str:
        """Rerun the deterministic culprit and its parents: "" when they agree, else why not
        (or a result, when a good endpoint fails on its rerun)."""
        alive = [i for i, a in enumerate(state.alive) if a]
        if alive != [state.bad]:
            return ""  # inconclusive (skips): nothing named to confirm
        culprit = state.graph.commit(state.bad)
        goods = {g.sha: g for g in state.goods}
        parents = [state.graph.commit(p) for p in state.graph.parents(state.bad)]
        parents += [goods[p] for p in culprit.parents if p in goods]
        if not parents:
            parents = list(state.goods)  # its parents are older than a good endpoint
        batch = [*parents, culprit]
        roles = [Role.CONFIRM] * len(batch)
        for _ in range(self.options.confirm_runs):
            if self.options.jobs == 1:
                groups = [[(c, r)] for c, r in zip(batch, roles, strict=True)]
            else:
                groups = [list(zip(batch, roles, strict=True))]
            for group in groups:
                self._round(state, [c for c, _ in group], [r for _, r in group])
                for commit, _ in group:
                    why = self._disagrees(state, commit, culprit)
                    if why and commit.sha in goods:
                        return state.result(Status.WRONG_ENDPOINT,
                                            f"good endpoint {why}: it is not good")
                    if why:
                        return why
        return ""

    @staticmethod
    def _disagrees(state: Bisection, commit: Commit, culprit: Commit) -> str:
        outs = state.outcomes[commit.sha]
        fails = sum(1 for o in outs if o.verdict is Verdict.BAD)
        passes = sum(1 for o in outs if o.verdict is Verdict.GOOD)
        if commit.sha == culprit.sha and passes:
            return (f"the first bad commit {commit.describe()} passes on a rerun "
                    f"({fails} of {fails + passes} runs fail)")
        if commit.sha != culprit.sha and fails:
            return (f"{commit.describe()}, a parent of the first bad commit, fails on a rerun "
                    f"({fails} of {fails + passes} runs)")
        return ""

    def _run(self, state: Bisection) -> BisectResult:
        if self.options.check_endpoints:
            early = self._endpoints(state)
            if early is not None:
                return early
        # Only a search left to its own judgement confirms its answer: a forced mode is the
        # user's word that the test is (or is not) deterministic.
        confirmed = self.options.mode is not None or self.options.confirm_runs == 0
        while True:
            picks = state.next_commits(self.options.jobs)
            if not picks:
                if confirmed or state.mode is Mode.FLAKY:
                    break
                confirmed = True
                why = self._confirm(state)
                if isinstance(why, BisectResult):
                    return why
                if not why:
                    break
                state.switch_to_flaky(why)
                self.hooks.on_mode(Mode.FLAKY, why)
                continue
            self._round(state, picks, [Role.SEARCH] * len(picks))
            if state.contradiction:
                if self.options.mode is Mode.DETERMINISTIC:
                    return state.result(Status.INCONCLUSIVE,
                                        f"results contradict each other ({state.contradiction})"
                                        ": the test is not deterministic; use flaky mode")
                reason = state.contradiction
                state.switch_to_flaky(reason)
                self.hooks.on_mode(Mode.FLAKY, reason)
        return state.result()
