"""In-series first bad patch: per-test classification against the base."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bot.bisect.bayes import FlakyModel
from bot.bisect.model import Verdict
from bot.bisect.series import (
    SERIES_MODEL,
    RunCounts,
    TestClass,
    TestRuns,
    TestVerdict,
    classify_series,
    classify_test,
    rerun_plan,
)
from bot.bisect.windows import SeriesRunCounts, change_posterior

G, B, S = Verdict.GOOD, Verdict.BAD, Verdict.SKIP


def runs(test: str, *per_commit: str) -> TestRuns:
    """'gg' = two passes, 'b' = one fail, 's' = could not test, '' = not run."""
    m = {"g": G, "b": B, "s": S}
    return TestRuns(test, tuple(tuple(m[ch] for ch in c) for c in per_commit))


def test_deterministic_new_failure_names_first_bad_patch() -> None:
    v = classify_test(runs("state_test", "g", "g", "gg", "bb", "b"))
    assert v.kind is TestClass.NEW
    assert v.first_bad_patch == 3 and v.likely_patch == 3
    assert 0.95 <= v.confidence < 1.0
    assert not v.flaky and v.more_runs == () and not v.unsure
    assert v.note == "first fails at patch 3 (2:2 at patch 3, 0:2 at patch 2)"
    assert v.change_runs == (RunCounts(fails=2), RunCounts(passes=2))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 20])
def test_one_run_each_never_names_a_regression(n: int) -> None:
    """However long the series (a long one makes the posterior alone "sure"), a failure seen
    once at the patch is not named: the patch and its parent are booted again first."""
    for k in range(1, n + 1):
        v = classify_test(runs("t", *("g" * (i < k) or "b" for i in range(n + 1))))
        assert v.kind is TestClass.NEW and v.unsure
        assert v.first_bad_patch is None and v.likely_patch == k
        assert {k - 1, k} <= set(v.more_runs)
        assert "unsure: 2 runs each at patch" in v.note


def test_one_fail_and_one_pass_are_not_095() -> None:
    v = classify_test(runs("t", "g", "b"))
    assert v.first_bad_patch is None and v.confidence < 0.95
    assert v.more_runs == (0, 1)
    assert v.note == ("patch 1 most likely (0.91; 1:1 at patch 1, 0:1 at the base): unsure: "
                      "2 runs each at patch 1 and the base needed; may fail without the series "
                      "too (0.09)")
    # Only the last patch fails: its failure is seen three times before it is named (a test
    # failing 30% of runs anyway fails two runs in a row 9% of the time).
    v = classify_test(runs("t", "gg", "bb"))
    assert v.first_bad_patch is None and v.more_runs == (0, 1)
    assert v.note.endswith("unsure: failing 3 times from patch 1 on needed")
    v = classify_test(runs("t", "gg", "bbb"))
    assert v.first_bad_patch == 1 and 0.95 <= v.confidence < 0.999


def test_pass_pre_existing_fixed() -> None:
    assert classify_test(runs("t", "g", "g", "g")).kind is TestClass.PASS
    pre = classify_test(runs("t", "b", "b", "b"))
    assert pre.kind is TestClass.PRE_EXISTING and pre.first_bad_patch is None
    # A fix is a claim about one patch too: not from one run each.
    once = classify_test(runs("t", "b", "b", "g", "g"))
    assert once.kind is TestClass.FIXED and once.unsure
    assert once.fixed_by_patch is None and once.likely_patch == 2
    assert once.more_runs == (0, 1, 2) and once.confidence < 0.95
    fixed = classify_test(runs("t", "bb", "bb", "gg", "g"))
    assert fixed.kind is TestClass.FIXED and not fixed.unsure
    assert fixed.fixed_by_patch == 2 and fixed.confidence >= 0.95
    assert fixed.note == "fixed by patch 2 (0:2 at patch 2, 2:2 at patch 1)"


def test_flaky_at_base_is_not_blamed_on_the_series() -> None:
    v = classify_test(runs("t", "gbg", "b", "b"))
    assert v.kind is TestClass.FLAKY
    assert v.first_bad_patch is None and "at the base already" in v.note


def test_untested() -> None:
    assert classify_test(runs("t", "s", "b")).kind is TestClass.UNTESTED
    v = classify_test(runs("t", "g", "s", "ss"))
    assert v.kind is TestClass.UNTESTED and "any patch" in v.note


def test_build_break_before_failure_leaves_it_open() -> None:
    # Patch 2 could not be tested: patch 2 or 3 may be the first bad one. More runs cannot
    # tell them apart, so none are asked for once the series is surely to blame.
    v = classify_test(runs("t", "gggg", "gggg", "s", "bbbb", "bbbb"))
    assert v.kind is TestClass.NEW
    assert v.first_bad_patch is None
    assert v.likely_patch == 3 and v.confidence < 0.95
    assert v.candidates == (2, 3) and v.more_runs == () and not v.unsure
    assert v.note.startswith("patch 2 untested: the first bad patch is one of 2, 3 (")
    once = classify_test(runs("t", "g", "g", "s", "b", "b"))
    assert once.unsure and once.candidates == (2, 3) and {1, 2, 3} <= set(once.more_runs)


def test_flaky_new_failure_with_repeats() -> None:
    # A failure that shows in about 2 of 3 runs from patch 2 on; one pass after it is noise.
    v = classify_test(runs("t", "gggggg", "gggggg", "bgbbgb", "bbgbbb", "gbbbbg"))
    assert v.kind is TestClass.NEW and v.flaky
    assert v.first_bad_patch == 2 and v.confidence >= 0.95


def test_single_flaky_failure_asks_for_more_runs() -> None:
    v = classify_test(runs("t", "g", "g", "g", "b", "g"))
    assert v.kind is TestClass.NEW
    assert v.first_bad_patch is None
    assert 0 in v.more_runs and len(v.more_runs) >= 2
    assert v.fixed_by_patch == 4


def test_repeats_settle_what_one_run_could_not() -> None:
    rng = random.Random(11)

    def flaky_runs(k: int, bad: bool) -> str:
        return "".join("b" if bad and rng.random() < 0.6 else "g" for _ in range(k))

    once = classify_test(TestRuns("t", tuple(
        tuple(G if ch == "g" else B for ch in flaky_runs(1, i >= 3)) for i in range(6))))
    many = classify_test(TestRuns("t", tuple(
        tuple(G if ch == "g" else B for ch in flaky_runs(12, i >= 3)) for i in range(6))))
    assert many.first_bad_patch == 3
    assert many.confidence > once.confidence


def test_series_verdict_aggregates() -> None:
    sv = classify_series([
        runs("state_test", "gg", "gg", "bb", "bb"),
        runs("evmcs_test", "gg", "gg", "gg", "b"),
        runs("smm_test", "bb", "bb", "bb", "bb"),
        runs("svm_test", "gg", "gg", "gg", "gg"),
    ])
    assert sv.patches == 3
    assert sv.first_bad_patch == 2
    assert sv.regressed
    assert [t.test for t in sv.of_kind(TestClass.NEW)] == ["state_test", "evmcs_test"]
    assert [t.test for t in sv.unsure] == ["evmcs_test"]  # one run at patch 3
    assert [t.test for t in sv.of_kind(TestClass.PRE_EXISTING)] == ["smm_test"]
    assert sv.tests[0].patches[1] == RunCounts(fails=2)
    assert sv.tests[0].base.describe() == "0:2"
    assert rerun_plan(sv, range(4), 8) == (0, 2, 3)
    assert rerun_plan(sv, {0, 1, 2}, 8) == (0, 2)  # 3 does not build
    once = classify_series([runs("state_test", "g", "g", "b", "b")])
    assert not once.regressed and once.first_bad_patch is None and once.needs_more_runs


def test_series_input_errors() -> None:
    with pytest.raises(ValueError, match="same commits"):
        classify_series([runs("a", "g", "g"), runs("b", "g")])
    with pytest.raises(ValueError, match="no test results"):
        classify_series([])


def test_rerun_plan_boots_what_most_unsure_tests_wait_for_first() -> None:
    sv = classify_series([
        runs("a", "gg", "gg", "gg", "b", "b"),  # wants 2, 3
        runs("b", "gg", "gg", "b", "b", "b"),  # wants 1, 2
        runs("c", "s", "g", "g", "g", "g"),  # untested base: nothing to settle by reruns
    ])
    assert [t.test for t in sv.unsure] == ["a", "b"]
    assert rerun_plan(sv, range(5), 12) == (1, 2, 3)
    assert rerun_plan(sv, range(5), 2) == (1, 2)  # 2, asked for by both, then in order
    assert rerun_plan(sv, range(5), 0) == ()


def job_rounds(fail_rates: list[float], rounds: int,
               rng: random.Random) -> tuple[TestVerdict, list[int], int]:
    """The series job's round loop for one test: every commit once, then again the commits
    the verdict asks for, up to `rounds` runs per commit. Returns the verdict, the boots per
    commit and the rounds used."""
    per: list[list[Verdict]] = [[] for _ in fail_rates]
    todo = list(range(len(fail_rates)))
    for round_no in range(1, rounds + 1):
        for i in todo:
            per[i].append(B if rng.random() < fail_rates[i] else G)
        v = classify_test(TestRuns("t", tuple(tuple(p) for p in per)))
        todo = list(v.more_runs)
        if not todo or round_no == rounds:
            break
    return v, [len(p) for p in per], round_no


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 12])
def test_deterministic_regression_is_named_after_one_or_two_rerun_rounds(n: int) -> None:
    """Reproduced at the patch, passing at its parent: named with confidence >= 0.95 in the
    second round (the third when only the last patch fails: one more run of it), with the
    patch and its parent booted more than once and only a few boots added."""
    rng = random.Random(n)
    for k in range(1, n + 1):
        v, boots, used = job_rounds([0.0] * k + [1.0] * (n + 1 - k), 3, rng)
        assert v.first_bad_patch == k, (k, v.note)
        assert 0.95 <= v.confidence < 1.0
        assert used == (2 if k < n else 3)
        assert boots[k] >= 2 and boots[k - 1] >= 2
        assert sum(boots) - (n + 1) <= 5


@pytest.mark.parametrize("n", [1, 3, 8])
def test_deterministic_fix_is_named_after_reruns(n: int) -> None:
    rng = random.Random(n)
    for k in range(1, n + 1):
        v, boots, _ = job_rounds([1.0] * k + [0.0] * (n + 1 - k), 3, rng)
        assert v.kind is TestClass.FIXED and v.fixed_by_patch == k, v.note
        assert v.confidence >= 0.95 and boots[k] >= 2 and boots[k - 1] >= 2


def test_flaky_at_base_is_flaky_not_new() -> None:
    """A test failing 30% of runs with or without the series: within the job's 3 rounds the
    base is run again while "flaky anyway" is a fair explanation, so it is mostly caught
    failing there (FLAKY); a regression is almost never named (one of the runs of two fails
    at one patch and passes at its parent is what a real regression looks like too)."""
    kinds: Counter[str] = Counter()
    named = 0
    trials = 0
    for n in (2, 3, 5):
        for seed in range(300):
            v, _, _ = job_rounds([0.3] * (n + 1), 3, random.Random(seed))
            trials += 1
            kinds[v.kind.value] += 1
            named += v.first_bad_patch is not None
    assert named / trials <= 0.03
    assert kinds["flaky"] / trials >= 0.35
    assert kinds["new"] - named >= named  # mostly left unsure: no mail


def test_change_posterior_is_a_distribution_and_the_model_mixture() -> None:
    counts = [SeriesRunCounts(0, 2), SeriesRunCounts(0, 2), SeriesRunCounts(2, 0),
              SeriesRunCounts(1, 0)]
    post = change_posterior(counts, SERIES_MODEL)
    assert abs(post.none + sum(post.windows.values()) - 1.0) < 1e-9
    assert len(post.windows) == 4 * 5 // 2  # every [s, e) with 0 <= s < e <= N + 1
    assert post.first_bad(2) > 0.95 and post.fixed_by(2) < 1e-3 and post.unchanged < 0.05
    # Without the deterministic half of the prior, two fails and two passes at the parent
    # are far from enough: a commit failing half its runs passes twice 25% of the time.
    assert change_posterior(counts, FlakyModel()).first_bad(2) < 0.9
    beta_only = FlakyModel()
    assert beta_only.log_bad(0, 0) == 0.0 and beta_only.mean_fail(0, 0) == 0.4
    assert SERIES_MODEL.mean_fail(2, 0) > 0.9 and SERIES_MODEL.mean_fail(2, 1) < 0.75
