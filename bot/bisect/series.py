"""First bad patch of a series: each test's results after every patch, compared with the base.

Input: for each test, its runs at the base (commit 0) and after each patch (commits 1..N), any
number of runs per commit (repeats when the test is flaky); SKIP runs (apply/build/boot failure)
are "could not test", never evidence. Output: a SeriesVerdict with one TestVerdict per test:

- PASS          passes at the base and after every tested patch
- NEW           passes at the base, fails from `first_bad_patch` on (the Bayesian changepoint of
                bot.bisect.bayes over the series, so one unlucky pass after the culprit, or one
                stray failure, does not move it); `confidence` is its posterior probability and
                `first_bad_patch` is None while that is under the target: `more_runs` then says
                which commits to run again
- PRE_EXISTING  fails at the base and still fails at the tip
- FIXED         fails at the base, passes at the tip (`fixed_by_patch`: from which patch on)
- FLAKY         both passes and fails at the base: the failure is not the series' doing
- UNTESTED      no usable run at the base or at any patch
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from bot.bisect.bayes import FlakyModel, Posterior
from bot.bisect.graph import CommitGraph, linear_history
from bot.bisect.model import Verdict


class TestClass(enum.Enum):
    __test__ = False  # not a pytest test class despite the name

    PASS = "pass"
    NEW = "new"
    PRE_EXISTING = "pre-existing"
    FIXED = "fixed"
    FLAKY = "flaky"
    UNTESTED = "untested"


@dataclass(frozen=True)
class RunCounts:
    """Runs of one test at one commit."""

    fails: int = 0
    passes: int = 0
    skips: int = 0

    @classmethod
    def of(cls, verdicts: Sequence[Verdict]) -> RunCounts:
        return cls(
            fails=sum(1 for v in verdicts if v is Verdict.BAD),
            passes=sum(1 for v in verdicts if v is Verdict.GOOD),
            skips=sum(1 for v in verdicts if v is Verdict.SKIP),
        )

    @property
    def runs(self) -> int:
        """Usable runs (skips excluded)."""
        return self.fails + self.passes

    @property
    def tested(self) -> bool:
        return self.runs > 0

    def describe(self) -> str:
        """`fail:runs`, the kernel test robot's notation."""
        return f"{self.fails}:{self.runs}" if self.tested else "-"


@dataclass(frozen=True)
class TestRuns:
    """One test's runs at the base (index 0) and after each patch (1..N)."""

    __test__ = False

    test: str
    per_commit: tuple[tuple[Verdict, ...], ...]


@dataclass(frozen=True)
class TestVerdict:
    __test__ = False

    test: str
    kind: TestClass
    base: RunCounts
    patches: tuple[RunCounts, ...]  # patches[0] is patch 1
    first_bad_patch: int | None = None  # 1-based; NEW with confidence >= target
    confidence: float = 0.0  # of first_bad_patch (or of the best guess when it is None)
    likely_patch: int | None = None  # NEW: the most likely first bad patch, even if unsure
    fixed_by_patch: int | None = None  # FIXED, or NEW fixed again later in the series
    flaky: bool = False  # some commit both passed and failed
    more_runs: tuple[int, ...] = ()  # commit indices (0 = base) worth running again
    candidates: tuple[int, ...] = ()  # NEW but untested patches around it: one of these
    note: str = ""


@dataclass(frozen=True)
class SeriesVerdict:
    tests: tuple[TestVerdict, ...]
    patches: int  # N
    confidence_target: float

    @property
    def first_bad_patch(self) -> int | None:
        """The earliest patch that some test names with confidence, or None."""
        named = [t.first_bad_patch for t in self.tests if t.first_bad_patch is not None]
        return min(named) if named else None

    def of_kind(self, kind: TestClass) -> tuple[TestVerdict, ...]:
        return tuple(t for t in self.tests if t.kind is kind)

    @property
    def regressed(self) -> bool:
        return any(t.kind is TestClass.NEW for t in self.tests)

    @property
    def needs_more_runs(self) -> bool:
        return any(t.more_runs for t in self.tests)


def _last_change_to_pass(counts: Sequence[RunCounts]) -> int | None:
    """The first index from which every tested commit only passes (None if the tip fails)."""
    fixed: int | None = None
    for k in range(len(counts) - 1, 0, -1):
        c = counts[k]
        if not c.tested:
            continue
        if c.fails:
            break
        fixed = k
    return fixed


def classify_test(runs: TestRuns, confidence: float = 0.95,
                  model: FlakyModel | None = None) -> TestVerdict:
    counts = [RunCounts.of(v) for v in runs.per_commit]
    if not counts:
        raise ValueError(f"{runs.test}: no base results")
    base, patches = counts[0], tuple(counts[1:])
    flaky = any(c.fails and c.passes for c in counts)
    tested = [k for k in range(1, len(counts)) if counts[k].tested]

    def verdict(kind: TestClass, **kw: object) -> TestVerdict:
        return TestVerdict(runs.test, kind, base, patches, flaky=flaky, **kw)  # type: ignore[arg-type]

    if not base.tested:
        return verdict(TestClass.UNTESTED, more_runs=(0,),
                       note="could not test the base: nothing to compare with")
    if not tested:
        return verdict(TestClass.UNTESTED, note="could not test any patch")
    tip = counts[tested[-1]]
    if base.fails and base.passes:
        return verdict(TestClass.FLAKY,
                       note=f"fails {base.fails} of {base.runs} runs at the base already")
    if base.fails:
        if tip.fails:
            return verdict(TestClass.PRE_EXISTING, note="fails at the base too")
        fixed = _last_change_to_pass(counts)
        return verdict(TestClass.FIXED, fixed_by_patch=fixed)
    if not any(counts[k].fails for k in tested):
        return verdict(TestClass.PASS)
    # The base passes and some patch fails: where does it start? Without any sign of flakiness
    # (no commit both passes and fails, the failures run from one patch to the tip) the answer is
    # read off directly, as `git bisect` would; only untested patches right before can blur it.
    first_fail = next(k for k in tested if counts[k].fails)
    if not flaky and all(counts[k].fails for k in tested if k >= first_fail):
        last_pass = max([0, *(k for k in tested if k < first_fail)])
        cands = tuple(range(last_pass + 1, first_fail + 1))
        if len(cands) == 1:
            return verdict(TestClass.NEW, first_bad_patch=first_fail, confidence=1.0,
                           likely_patch=first_fail)
        return verdict(TestClass.NEW, confidence=1.0 / len(cands), likely_patch=first_fail,
                       candidates=cands,
                       note=f"patches {cands[0]}..{cands[-2]} untested: the first bad patch is "
                            f"one of {', '.join(map(str, cands))}")
    n = len(counts) - 1
    hist = linear_history(n + 1, prefix="p")
    graph = CommitGraph(hist[1:], hist[-1].sha)
    post = Posterior(graph, model or FlakyModel())
    post.observe_outside(base.fails, base.passes)
    for k in tested:
        post.observe(graph.index[hist[k].sha], counts[k].fails, counts[k].passes)
    best, conf = post.best()
    likely = best + 1
    fixed_again = None
    if not tip.fails:
        fixed_again = _last_change_to_pass(counts)
    untested = {graph.index[hist[k].sha] for k in range(1, n + 1) if not counts[k].tested}
    if conf >= confidence:
        return verdict(TestClass.NEW, first_bad_patch=likely, confidence=conf,
                       likely_patch=likely, fixed_by_patch=fixed_again)
    # Not sure which patch: ask for more runs where they tell the most, and at the base (a
    # failure there would make this pre-existing).
    more = sorted({0, *(i + 1 for i in post.choose(1, untested))})
    note = f"patch {likely} most likely ({conf:.2f})"
    if (likely - 1) in untested or (likely - 2) in untested:
        note += "; untested patches next to it"
    return verdict(TestClass.NEW, confidence=conf, likely_patch=likely,
                   fixed_by_patch=fixed_again, more_runs=tuple(more), note=note)


def classify_series(results: Sequence[TestRuns], confidence: float = 0.95,
                    model: FlakyModel | None = None) -> SeriesVerdict:
    if not results:
        raise ValueError("no test results")
    n = {len(r.per_commit) for r in results}
    if len(n) != 1:
        raise ValueError("every test needs results for the same commits (base + each patch)")
    verdicts = tuple(classify_test(r, confidence, model) for r in results)
    return SeriesVerdict(verdicts, n.pop() - 1, confidence)
