"""First bad patch of a series: each test's results after every patch, compared with the base.

Input: for each test, its runs at the base (commit 0) and after each patch (commits 1..N), any
number of runs per commit (the job boots the commits that decide a verdict again); SKIP runs
(apply/build/boot failure) are "could not test", never evidence. Output: a SeriesVerdict with one
TestVerdict per test:

- PASS          passes at the base and after every tested patch
- NEW           passes at the base, fails from `first_bad_patch` on
- PRE_EXISTING  fails at the base and still fails at the tip
- FIXED         fails at the base, passes at the tip (`fixed_by_patch`: from which patch on)
- FLAKY         both passes and fails at the base: the failure is not the series' doing
- UNTESTED      no usable run at the base or at any patch

A regression (NEW) or a fix (FIXED) is a claim about one patch, so it is never made from one run:
`first_bad_patch` / `fixed_by_patch` is set only when that patch's posterior probability under
the series model (bot.bisect.windows: the failure may also be chance, or a test that fails with
or without the series) reaches the confidence target, and the patch and its parent each have
MIN_RUNS_AT_CHANGE usable runs. Until then the verdict is unsure: `likely_patch` and
`confidence` say what the runs point at and `more_runs` which commits to boot again (the patch,
its parent, and the base while "flaky anyway" is still a fair explanation).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from bot.bisect.bayes import FlakyModel
from bot.bisect.model import Verdict
from bot.bisect.windows import ChangePosterior, SeriesRunCounts, change_posterior

# One boot can fail, or pass, for reasons no model sees (a half-written build, a host that
# stalled the guest): the patch named and its parent must each have run this often, whatever
# the posterior says (a long series failing after one patch is otherwise "certain" from a
# single run at each commit) ...
MIN_RUNS_AT_CHANGE = 2
# ... and the new state (failing for NEW, passing for FIXED) must have been seen this often from
# the patch on: its own reruns, or later patches showing the same change. A commit failing twice
# in a row is a 9% event for a test that fails 30% of runs anyway, three times 2.7%: for a
# failure only the last patch shows, that costs one more boot of it (bench/bisection.py).
MIN_SEEN_AFTER_CHANGE = 3

# The series model: even odds that a regression fails every run (most kernel test regressions
# do) or some unknown fraction of runs; a good commit fails 1% of runs anyway. With these, a
# failure reproduced twice at the patch and two passes at its parent reach 0.95 on a short
# series, and one run each does not (tests/bisect/test_series.py, bench/bisection.py).
SERIES_MODEL = FlakyModel(deterministic=0.5)


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
    first_bad_patch: int | None = None  # 1-based; NEW, confirmed (see the module doc)
    # NEW / FIXED: the posterior probability of likely_patch (confirmed or not): what a report
    # states next to the fail:runs of `base` and `patches` (RunCounts.describe()).
    confidence: float = 0.0
    likely_patch: int | None = None  # NEW: the most likely first bad patch; FIXED: fixing patch
    fixed_by_patch: int | None = None  # FIXED, confirmed; or NEW fixed again later in the series
    flaky: bool = False  # some commit both passed and failed
    more_runs: tuple[int, ...] = ()  # commit indices (0 = base) worth running again
    candidates: tuple[int, ...] = ()  # NEW but untested patches around it: one of these
    note: str = ""

    @property
    def unsure(self) -> bool:
        """A NEW or FIXED that the runs so far do not confirm: no regression (or fix) may be
        claimed from it; the series table shows it with `likely_patch` and `confidence`."""
        return self.kind in (TestClass.NEW, TestClass.FIXED) and bool(self.more_runs)

    @property
    def change_runs(self) -> tuple[RunCounts, RunCounts] | None:
        """NEW / FIXED: the runs at likely_patch and at the commit before it (the evidence)."""
        if self.likely_patch is None:
            return None
        k = self.likely_patch
        before = next((j for j in range(k - 1, 0, -1) if self.patches[j - 1].tested), 0)
        return self.patches[k - 1], (self.patches[before - 1] if before else self.base)


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
        """Some test newly fails, for certain (its patch named, or one of its candidates)."""
        return any(t.kind is TestClass.NEW and not t.unsure for t in self.tests)

    @property
    def unsure(self) -> tuple[TestVerdict, ...]:
        """NEW / FIXED verdicts the runs do not confirm (the run budget ended first)."""
        return tuple(t for t in self.tests if t.unsure)

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


def _where(k: int) -> str:
    return "the base" if k == 0 else f"patch {k}"


def _untested(ks: Sequence[int]) -> str:
    return f"patch {ks[0]}" if len(ks) == 1 else f"patches {ks[0]}..{ks[-1]}"


@dataclass(frozen=True)
class _Change:
    """The most likely patch where a test changed (first bad, or fixing), and its evidence."""

    patch: int
    parent: int  # the nearest tested commit before it (0: the base)
    confidence: float  # P(this patch) under the series model
    set_confidence: float  # P(one of `candidates`)
    candidates: tuple[int, ...]  # patch, and the untested patches between parent and it
    missing: str  # what evidence the minimums still lack ("": none)

    @property
    def runs_ok(self) -> bool:
        return not self.missing


def _change(counts: Sequence[RunCounts], probs: dict[int, float], min_runs: int,
            fixing: bool = False) -> _Change:
    tested = {k for k, c in enumerate(counts) if c.tested}
    # Only a tested patch is named: an untested one right before it explains the runs as well
    # (a little better, even, having more windows that start there), so it is a candidate.
    patch = max((k for k in probs if k in tested), key=lambda k: (probs[k], -k))
    parent = max(k for k in tested if k < patch) if any(k < patch for k in tested) else 0
    cands = tuple(range(parent + 1, patch + 1))
    seen = sum(c.passes if fixing else c.fails for c in counts[patch:])
    missing = ""
    if counts[patch].runs < min_runs or counts[parent].runs < min_runs:
        missing = f"{min_runs} runs each at patch {patch} and {_where(parent)} needed"
    elif seen < MIN_SEEN_AFTER_CHANGE:
        missing = (f"{'passing' if fixing else 'failing'} {MIN_SEEN_AFTER_CHANGE} times from "
                   f"patch {patch} on needed")
    return _Change(patch, parent, probs[patch], sum(probs.get(k, 0.0) for k in cands), cands,
                   missing)


def _more_runs(ch: _Change, post: ChangePosterior, confidence: float) -> tuple[int, ...]:
    """Commits to run again: the patch and its parent (with any untested patch between, in case
    it was only a VM hiccup), and the base while "the series changed nothing" (a test that is
    flaky anyway) alone keeps the answer under the target."""
    more = {ch.parent, *ch.candidates}
    if post.unchanged > 1.0 - confidence:
        more.add(0)
    return tuple(sorted(more))


def classify_test(runs: TestRuns, confidence: float = 0.95,
                  model: FlakyModel | None = None,
                  min_runs: int = MIN_RUNS_AT_CHANGE) -> TestVerdict:
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
    if base.fails and tip.fails:
        return verdict(TestClass.PRE_EXISTING, note="fails at the base too")
    if not base.fails and not any(counts[k].fails for k in tested):
        return verdict(TestClass.PASS)
    post = change_posterior([SeriesRunCounts(c.fails, c.passes) for c in counts],
                            model or SERIES_MODEL)
    n = len(counts) - 1
    if base.fails:
        # Failing at the base, passing at the tip: which patch fixed it? The same evidence as a
        # regression: the fixing patch passes and its parent fails, each more than once.
        ch = _change(counts, {e: post.fixed_by(e) for e in range(1, n + 1)}, min_runs,
                     fixing=True)
        evidence = (f"{counts[ch.patch].describe()} at patch {ch.patch}, "
                    f"{counts[ch.parent].describe()} at {_where(ch.parent)}")
        if len(ch.candidates) == 1 and ch.confidence >= confidence and ch.runs_ok:
            return verdict(TestClass.FIXED, fixed_by_patch=ch.patch, likely_patch=ch.patch,
                           confidence=ch.confidence, note=f"fixed by patch {ch.patch} ({evidence})")
        return verdict(TestClass.FIXED, likely_patch=ch.patch, confidence=ch.confidence,
                       more_runs=_more_runs(ch, post, confidence),
                       note=f"patch {ch.patch} most likely fixes it ({ch.confidence:.2f}; "
                            f"{evidence}): unsure: "
                            f"{ch.missing or f'under the {confidence:.2f} target'}")
    # The base passes and some patch fails: where does it start?
    ch = _change(counts, {s: post.first_bad(s) for s in range(1, n + 1)}, min_runs)
    fixed_again = _last_change_to_pass(counts) if not tip.fails else None
    evidence = (f"{counts[ch.patch].describe()} at patch {ch.patch}, "
                f"{counts[ch.parent].describe()} at {_where(ch.parent)}")
    if len(ch.candidates) == 1 and ch.confidence >= confidence and ch.runs_ok:
        return verdict(TestClass.NEW, first_bad_patch=ch.patch, confidence=ch.confidence,
                       likely_patch=ch.patch, fixed_by_patch=fixed_again,
                       note=f"first fails at patch {ch.patch} ({evidence})")
    if len(ch.candidates) > 1:
        # Untested patches (build breaks) right before it: more runs cannot tell those apart;
        # they can still make sure that the series is to blame at all.
        settled = ch.set_confidence >= confidence and ch.runs_ok
        return verdict(TestClass.NEW, confidence=ch.confidence, likely_patch=ch.patch,
                       candidates=ch.candidates, fixed_by_patch=fixed_again,
                       more_runs=() if settled else _more_runs(ch, post, confidence),
                       note=f"{_untested(ch.candidates[:-1])} untested: the first bad patch "
                            f"is one of {', '.join(map(str, ch.candidates))} "
                            f"({ch.set_confidence:.2f})")
    why = f"unsure: {ch.missing or f'under the {confidence:.2f} target'}"
    note = f"patch {ch.patch} most likely ({ch.confidence:.2f}; {evidence}): {why}"
    if post.unchanged > 1.0 - confidence:
        note += f"; may fail without the series too ({post.unchanged:.2f})"
    return verdict(TestClass.NEW, confidence=ch.confidence, likely_patch=ch.patch,
                   fixed_by_patch=fixed_again, more_runs=_more_runs(ch, post, confidence),
                   note=note)


def classify_series(results: Sequence[TestRuns], confidence: float = 0.95,
                    model: FlakyModel | None = None) -> SeriesVerdict:
    if not results:
        raise ValueError("no test results")
    n = {len(r.per_commit) for r in results}
    if len(n) != 1:
        raise ValueError("every test needs results for the same commits (base + each patch)")
    verdicts = tuple(classify_test(r, confidence, model) for r in results)
    return SeriesVerdict(verdicts, n.pop() - 1, confidence)


def rerun_plan(verdict: SeriesVerdict, bootable: Collection[int], limit: int) -> tuple[int, ...]:
    """The commits to boot again in the next round: those some unsure verdict asks for (an
    untested base asks for nothing: there is no comparison to settle), at most `limit`,
    the ones most tests wait for first; in commit order."""
    wanted = Counter(i for t in verdict.tests if t.kind is not TestClass.UNTESTED
                     for i in t.more_runs if i in bootable)
    chosen = sorted(wanted, key=lambda i: (-wanted[i], i))[:max(0, limit)]
    return tuple(sorted(chosen))
