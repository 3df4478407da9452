"""In-series first bad patch: per-test classification against the base."""

from __future__ import annotations

import random

import pytest

from bot.bisect.model import Verdict
from bot.bisect.series import RunCounts, TestClass, TestRuns, classify_series, classify_test

G, B, S = Verdict.GOOD, Verdict.BAD, Verdict.SKIP


def runs(test: str, *per_commit: str) -> TestRuns:
    """'gg' = two passes, 'b' = one fail, 's' = could not test, '' = not run."""
    m = {"g": G, "b": B, "s": S}
    return TestRuns(test, tuple(tuple(m[ch] for ch in c) for c in per_commit))


def test_deterministic_new_failure_names_first_bad_patch() -> None:
    v = classify_test(runs("state_test", "g", "g", "g", "b", "b"))
    assert v.kind is TestClass.NEW
    assert v.first_bad_patch == 3
    assert v.confidence >= 0.95
    assert not v.flaky and v.more_runs == ()


def test_pass_pre_existing_fixed() -> None:
    assert classify_test(runs("t", "g", "g", "g")).kind is TestClass.PASS
    pre = classify_test(runs("t", "b", "b", "b"))
    assert pre.kind is TestClass.PRE_EXISTING and pre.first_bad_patch is None
    fixed = classify_test(runs("t", "b", "b", "g", "g"))
    assert fixed.kind is TestClass.FIXED and fixed.fixed_by_patch == 2


def test_flaky_at_base_is_not_blamed_on_the_series() -> None:
    v = classify_test(runs("t", "gbg", "b", "b"))
    assert v.kind is TestClass.FLAKY
    assert v.first_bad_patch is None and "at the base already" in v.note


def test_untested() -> None:
    assert classify_test(runs("t", "s", "b")).kind is TestClass.UNTESTED
    v = classify_test(runs("t", "g", "s", "ss"))
    assert v.kind is TestClass.UNTESTED and "any patch" in v.note


def test_build_break_before_failure_leaves_it_open() -> None:
    # Patch 2 could not be tested: patch 2 or 3 may be the first bad one.
    v = classify_test(runs("t", "gggg", "gggg", "s", "bbbb", "bbbb"))
    assert v.kind is TestClass.NEW
    assert v.first_bad_patch is None
    assert v.likely_patch in (2, 3) and v.confidence < 0.95
    assert "untested" in v.note and v.candidates == (2, 3)


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
        runs("state_test", "g", "g", "b", "b"),
        runs("evmcs_test", "g", "g", "g", "b"),
        runs("smm_test", "b", "b", "b", "b"),
        runs("svm_test", "g", "g", "g", "g"),
    ])
    assert sv.patches == 3
    assert sv.first_bad_patch == 2
    assert sv.regressed
    assert [t.test for t in sv.of_kind(TestClass.NEW)] == ["state_test", "evmcs_test"]
    assert [t.test for t in sv.of_kind(TestClass.PRE_EXISTING)] == ["smm_test"]
    assert sv.tests[0].patches[1] == RunCounts(fails=1)
    assert sv.tests[0].base.describe() == "0:1"


def test_series_input_errors() -> None:
    with pytest.raises(ValueError, match="same commits"):
        classify_series([runs("a", "g", "g"), runs("b", "g")])
    with pytest.raises(ValueError, match="no test results"):
        classify_series([])
