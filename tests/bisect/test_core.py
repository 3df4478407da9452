"""The bisection core on fake ranges with scripted verdicts (no git, no kernel)."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Sequence

import pytest

from bot.bisect.core import CONFIRM_RUNS, FLAKY_BAD_ENDPOINT_RUNS, BisectOptions, Bisector, Hooks
from bot.bisect.graph import CommitGraph, linear_history
from bot.bisect.model import Commit, Mode, Outcome, Progress, Role, Status, Verdict
from bot.errors import InfraError


def line(n: int) -> tuple[CommitGraph, Commit, list[Commit]]:
    """Good commit 0, candidates 1..n (bad = n)."""
    hist = linear_history(n + 1)
    return CommitGraph(hist[1:], hist[-1].sha), hist[0], hist


def idx(c: Commit) -> int:
    return int(c.sha[1:])


class Script:
    """Deterministic test: bad iff the commit is at or after `culprit`; `skip` never builds."""

    def __init__(self, culprit: int, skip: Sequence[int] = ()) -> None:
        self.culprit = culprit
        self.skip = set(skip)
        self.calls: list[int] = []

    def __call__(self, c: Commit) -> Verdict:
        i = idx(c)
        self.calls.append(i)
        if i in self.skip:
            return Verdict.SKIP
        return Verdict.BAD if i >= self.culprit else Verdict.GOOD


@pytest.mark.parametrize("culprit", [1, 2, 7, 8, 15, 16])
def test_linear_finds_culprit(culprit: int) -> None:
    graph, good, hist = line(16)
    ev = Script(culprit)
    res = Bisector(ev).bisect(graph, [good])
    assert res.status is Status.FOUND
    assert res.culprit == hist[culprit]
    assert res.confidence == 1.0
    # Endpoints first (good, then bad), then at most log2(16) search steps.
    assert ev.calls[:2] == [0, 16]
    assert res.search_runs <= 4
    assert res.culprit.sha in res.replay_log
    assert "git bisect bad c0000016" in res.replay_log


def test_skip_next_to_culprit_is_inconclusive_with_list() -> None:
    graph, good, hist = line(16)
    ev = Script(culprit=9, skip=[8])
    res = Bisector(ev).bisect(graph, [good])
    assert res.status is Status.INCONCLUSIVE
    assert res.culprit is None
    assert {c.sha for c in res.candidates} == {hist[8].sha, hist[9].sha}
    assert "first bad commit is one of" in res.message
    assert any(t.commit == hist[8] and t.verdict is Verdict.SKIP for t in res.tested)
    assert f"git bisect skip {hist[8].sha}" in res.replay_log


def test_skip_away_from_culprit_still_finds_it() -> None:
    graph, good, hist = line(16)
    ev = Script(culprit=12, skip=[8, 4])
    res = Bisector(ev).bisect(graph, [good])
    assert res.status is Status.FOUND
    assert res.culprit == hist[12]


def test_infra_error_is_a_skip_not_bad() -> None:
    graph, good, hist = line(8)

    def ev(c: Commit) -> Verdict:
        if idx(c) == 5:
            raise InfraError("VM hung after 120 s")
        return Verdict.BAD if idx(c) >= 5 else Verdict.GOOD

    res = Bisector(ev).bisect(graph, [good])
    assert res.status is Status.INCONCLUSIVE
    assert {idx(c) for c in res.candidates} == {5, 6}
    skipped = [t for t in res.tested if t.commit == hist[5]]
    assert skipped and "VM hung" in skipped[0].outcomes[0].note


def test_wrong_good_endpoint() -> None:
    graph, good, _ = line(8)
    ev = Script(culprit=0)  # everything fails, the "good" end too
    res = Bisector(ev).bisect(graph, [good])
    assert res.status is Status.WRONG_ENDPOINT
    assert "good endpoint" in res.message and good.sha[:12] in res.message
    assert res.culprit is None


def test_wrong_bad_endpoint() -> None:
    graph, good, hist = line(8)
    ev = Script(culprit=100)  # nothing fails
    res = Bisector(ev).bisect(graph, [good])
    assert res.status is Status.WRONG_ENDPOINT
    assert "bad endpoint" in res.message and hist[8].sha[:12] in res.message
    # The user said it fails: it is run again, up to the endpoint budget, before kbot says no.
    assert ev.calls == [0] + [8] * FLAKY_BAD_ENDPOINT_RUNS
    assert f"({FLAKY_BAD_ENDPOINT_RUNS} of {FLAKY_BAD_ENDPOINT_RUNS} runs)" in res.message


@pytest.mark.parametrize("mode", [None, Mode.DETERMINISTIC])
def test_bad_endpoint_that_passes_is_rerun_until_it_fails(mode: Mode | None) -> None:
    """A flaky regression whose bad endpoint passes its first two runs: reruns stop at the
    first failure, and auto mode switches to the flaky search by itself (and says so)."""
    graph, good, hist = line(16)
    at_bad = iter([Verdict.GOOD, Verdict.GOOD, Verdict.BAD])
    rng = random.Random(3)
    modes: list[str] = []

    class H(Hooks):
        def on_mode(self, mode: Mode, reason: str) -> None:
            modes.append(f"{mode.value}: {reason}")

    def ev(c: Commit) -> Verdict:
        if idx(c) == 16:
            v = next(at_bad, None)
            if v is not None:
                return v
        return Verdict.BAD if idx(c) >= 6 and rng.random() < 0.8 else Verdict.GOOD

    res = Bisector(ev, BisectOptions(mode=mode), H()).bisect(graph, [good])
    bad_end = next(t for t in res.tested if t.role is Role.ENDPOINT_BAD)
    assert (bad_end.runs, bad_end.fails) == (3, 1)
    if mode is Mode.DETERMINISTIC:
        assert res.status is Status.WRONG_ENDPOINT
        assert "fails only 1 of 3 runs" in res.message and "flaky" in res.message
        return
    assert modes == ["flaky: the bad endpoint both passes and fails"]
    assert res.mode is Mode.FLAKY
    assert res.notes == ("switched to the flaky search after 4 runs: bad endpoint failed 1 of "
                         "3 runs",)
    assert res.status is Status.FOUND and res.culprit == hist[6]
    assert res.confidence >= 0.95


def test_deterministic_answer_is_confirmed_by_reruns() -> None:
    """Auto mode reruns the culprit and its parent before naming it; a forced deterministic
    search does not (it is `git bisect run`)."""
    graph, good, hist = line(16)
    ev = Script(culprit=7)
    res = Bisector(ev).bisect(graph, [good])
    assert res.status is Status.FOUND and res.culprit == hist[7] and res.confidence == 1.0
    assert res.mode is Mode.DETERMINISTIC and res.notes == ()
    runs = {idx(t.commit): (t.fails, t.passes) for t in res.tested}
    assert runs[7] == (1 + CONFIRM_RUNS, 0) and runs[6] == (0, 1 + CONFIRM_RUNS)
    assert res.search_runs <= 4 and res.runs == 2 + res.search_runs + 2 * CONFIRM_RUNS
    assert ev.calls[-2 * CONFIRM_RUNS:] == [6, 7] * CONFIRM_RUNS
    forced = Script(culprit=7)
    res = Bisector(forced, BisectOptions(mode=Mode.DETERMINISTIC)).bisect(graph, [good])
    assert res.culprit == hist[7] and len(forced.calls) == len(set(forced.calls))


def test_flaky_regression_is_found_without_being_told() -> None:
    """A test failing 70% of the time after the culprit, bisected in the default (auto) mode:
    a binary search misled by a lucky pass is caught by the confirmation reruns and continues
    as a flaky search. Without them, most of these end on the wrong commit."""
    graph, good, hist = line(64)
    rng = random.Random(99)
    right = switched = 0
    for _ in range(20):
        culprit = rng.randrange(1, 65)

        def ev(c: Commit, culprit: int = culprit) -> Verdict:
            return Verdict.BAD if idx(c) >= culprit and rng.random() < 0.7 else Verdict.GOOD

        res = Bisector(ev).bisect(graph, [good])
        if res.status is Status.WRONG_ENDPOINT:
            continue  # the bad end passed 6 runs in a row (0.3^6): kbot says so
        right += res.culprit == hist[culprit]
        switched += res.mode is Mode.FLAKY
        if res.mode is Mode.FLAKY:
            assert any("switched to the flaky search" in n for n in res.notes)
    assert right >= 17
    assert switched >= 5


def test_merge_culprit_confirms_both_parents() -> None:
    graph, good, commits = dag()
    bad_set = {graph.commit(i).sha for i in range(len(graph))
               if graph.index["m"] in graph.ancestors(i)}
    calls: list[str] = []

    def ev(c: Commit) -> Verdict:
        calls.append(c.sha)
        return Verdict.BAD if c.sha in bad_set else Verdict.GOOD

    res = Bisector(ev).bisect(graph, [good])
    assert res.culprit == commits["m"] and res.mode is Mode.DETERMINISTIC
    assert calls[-3 * CONFIRM_RUNS:] == ["b", "y", "m"] * CONFIRM_RUNS


def test_good_endpoint_failing_on_a_confirmation_rerun() -> None:
    graph, good, _ = line(8)
    seen = {0: 0}

    def ev(c: Commit) -> Verdict:
        if idx(c) == 0:
            seen[0] += 1
            return Verdict.BAD if seen[0] == 2 else Verdict.GOOD
        return Verdict.BAD

    res = Bisector(ev).bisect(graph, [good])
    assert res.status is Status.WRONG_ENDPOINT
    assert res.message.startswith(f"good endpoint {good.short}")
    assert "fails on a rerun (1 of 2 runs)" in res.message and "not good" in res.message


def test_untestable_endpoint() -> None:
    graph, good, _ = line(8)
    res = Bisector(Script(culprit=3, skip=[8])).bisect(graph, [good])
    assert res.status is Status.UNTESTABLE_ENDPOINT
    assert "could not be tested" in res.message


def dag() -> tuple[CommitGraph, Commit, dict[str, Commit]]:
    """g -- a -- b ------- m -- t      (m merges the side branch x -- y)
              \\-- x -- y --/"""
    g = Commit("g", "base")
    a = Commit("a", "a", parents=("g",))
    b = Commit("b", "b", parents=("a",))
    x = Commit("x", "x", parents=("a",))
    y = Commit("y", "y", parents=("x",))
    m = Commit("m", "Merge branch side", parents=("b", "y"))
    t = Commit("t", "t", parents=("m",))
    commits = {c.sha: c for c in (g, a, b, x, y, m, t)}
    return CommitGraph([a, b, x, y, m, t], "t"), g, commits


@pytest.mark.parametrize("culprit", ["a", "b", "x", "y", "m", "t"])
def test_merges_follow_ancestry(culprit: str) -> None:
    graph, good, commits = dag()
    # Bad iff the culprit is an ancestor of the commit (the regression flows through merges).
    bad_set = {graph.commit(i).sha for i in range(len(graph))
               if graph.index[culprit] in graph.ancestors(i)}
    res = Bisector(lambda c: Verdict.BAD if c.sha in bad_set else Verdict.GOOD).bisect(
        graph, [good])
    assert res.status is Status.FOUND
    assert res.culprit == commits[culprit]
    assert res.search_runs <= math.ceil(math.log2(len(graph)))


def test_merge_candidates_exclude_good_side() -> None:
    graph, _, _ = dag()
    assert len(graph) == 6 and not graph.is_linear
    assert graph.ancestor_counts([True] * 6)[graph.index["m"]] == 5
    assert graph.ancestor_counts([True] * 6)[graph.index["y"]] == 3


def test_flaky_seeded_finds_culprit_with_confidence() -> None:
    graph, good, hist = line(64)
    rng = random.Random(1234)
    right = 0
    for _ in range(20):
        culprit = rng.randrange(1, 65)

        def ev(c: Commit, culprit: int = culprit) -> Verdict:
            return Verdict.BAD if idx(c) >= culprit and rng.random() < 0.7 else Verdict.GOOD

        res = Bisector(ev, BisectOptions(mode=Mode.FLAKY)).bisect(graph, [good])
        assert res.mode is Mode.FLAKY
        if res.status is Status.FOUND:
            assert res.confidence >= 0.95
        right += res.culprit == hist[culprit]
        assert res.runs <= 64
    assert right >= 18


def test_flaky_budget_gives_low_confidence() -> None:
    graph, good, _ = line(256)
    rng = random.Random(7)

    def ev(c: Commit) -> Verdict:
        return Verdict.BAD if idx(c) >= 100 and rng.random() < 0.3 else Verdict.GOOD

    res = Bisector(ev, BisectOptions(mode=Mode.FLAKY, max_runs=12)).bisect(graph, [good])
    assert res.runs == 12
    assert res.status in (Status.LOW_CONFIDENCE, Status.WRONG_ENDPOINT)
    if res.status is Status.LOW_CONFIDENCE:
        assert res.confidence < 0.95 and "run budget spent" in res.message


def test_auto_mode_switches_to_flaky_on_mixed_bad_endpoint() -> None:
    graph, good, hist = line(16)
    runs_at_bad = iter([Verdict.BAD, Verdict.GOOD, Verdict.BAD])
    rng = random.Random(3)
    modes: list[Mode] = []

    class H(Hooks):
        def on_mode(self, mode: Mode, reason: str) -> None:
            modes.append(mode)

    def ev(c: Commit) -> Verdict:
        if idx(c) == 16:
            v = next(runs_at_bad, None)
            if v is not None:
                return v
        return Verdict.BAD if idx(c) >= 6 and rng.random() < 0.8 else Verdict.GOOD

    res = Bisector(ev, BisectOptions(endpoint_runs=3), H()).bisect(graph, [good])
    assert modes == [Mode.FLAKY]
    assert res.mode is Mode.FLAKY
    assert len(res.notes) == 1 and "bad endpoint failed 2 of 3 runs" in res.notes[0]
    assert res.culprit == hist[6]


def test_deterministic_mode_refuses_flaky_endpoint() -> None:
    graph, good, _ = line(16)
    at_bad = iter([Verdict.BAD, Verdict.GOOD, Verdict.BAD])

    def ev(c: Commit) -> Verdict:
        return next(at_bad) if idx(c) == 16 else Verdict.GOOD

    res = Bisector(ev, BisectOptions(mode=Mode.DETERMINISTIC, endpoint_runs=3)).bisect(
        graph, [good])
    assert res.status is Status.WRONG_ENDPOINT
    assert "fails only 2 of 3 runs" in res.message and "flaky" in res.message


@pytest.mark.parametrize("culprit", [1, 50, 333, 999, 1000])
def test_parallel_rounds(culprit: int) -> None:
    graph, good, hist = line(1000)
    lock = threading.Lock()
    active = [0, 0]  # now, max

    def ev(c: Commit) -> Verdict:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        try:
            return Verdict.BAD if idx(c) >= culprit else Verdict.GOOD
        finally:
            with lock:
                active[0] -= 1

    res = Bisector(ev, BisectOptions(jobs=4, check_endpoints=False)).bisect(graph, [good])
    assert res.culprit == hist[culprit]
    # The search's rounds, then one round per confirmation rerun (culprit and parent at once).
    assert res.rounds <= math.ceil(math.log(1000, 5)) + 1 + CONFIRM_RUNS
    assert res.search_runs <= 4 * (res.rounds - CONFIRM_RUNS)
    assert active[1] <= 4


def test_parallel_contradiction_switches_to_flaky() -> None:
    graph, good, hist = line(20)
    seen: dict[int, int] = {}
    rng = random.Random(5)

    def ev(c: Commit) -> Verdict:
        i = idx(c)
        seen[i] = seen.get(i, 0) + 1
        # The first run at 16 passes although 10..20 are bad: a flaky test.
        if i == 16 and seen[i] == 1:
            return Verdict.GOOD
        return Verdict.BAD if i >= 10 and rng.random() < 0.9 else Verdict.GOOD

    res = Bisector(ev, BisectOptions(jobs=4, check_endpoints=False)).bisect(graph, [good])
    assert res.mode is Mode.FLAKY
    assert res.culprit == hist[10]


def test_progress_hooks() -> None:
    graph, good, _ = line(100)
    seen: list[Progress] = []
    finished = []

    class H(Hooks):
        def on_run(self, commit: Commit, outcome: Outcome, progress: Progress) -> None:
            seen.append(progress)

        def on_finish(self, result: object) -> None:
            finished.append(result)

    res = Bisector(Script(culprit=37), hooks=H()).bisect(graph, [good])
    assert [p.steps_done for p in seen] == list(range(1, res.runs + 1))
    lefts = [p.candidates_left for p in seen]
    assert lefts == sorted(lefts, reverse=True) and lefts[-1] == 1
    assert seen[2].est_steps_left == math.ceil(math.log2(seen[2].candidates_left))
    assert finished == [res]


def test_tested_commits_record_every_run() -> None:
    graph, good, hist = line(16)
    res = Bisector(Script(culprit=5), BisectOptions(endpoint_runs=2)).bisect(graph, [good])
    first = res.tested[0]
    assert first.commit == good and first.role is Role.ENDPOINT_GOOD and first.runs == 2
    assert res.tested[1].role is Role.ENDPOINT_BAD and res.tested[1].fails == 2
    assert sum(t.runs for t in res.tested) == res.runs


def test_bad_evaluator_return_is_a_type_error() -> None:
    graph, good, _ = line(4)
    with pytest.raises(TypeError):
        Bisector(lambda c: "bad").bisect(graph, [good])  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("culprit", ["a", "x", "y", "m"])
def test_flaky_on_merges(culprit: str) -> None:
    graph, good, commits = dag()
    bad_set = {graph.commit(i).sha for i in range(len(graph))
               if graph.index[culprit] in graph.ancestors(i)}
    rng = random.Random(culprit)

    def ev(c: Commit) -> Verdict:
        return Verdict.BAD if c.sha in bad_set and rng.random() < 0.7 else Verdict.GOOD

    res = Bisector(ev, BisectOptions(mode=Mode.FLAKY)).bisect(graph, [good])
    assert res.status is Status.FOUND
    assert res.culprit == commits[culprit]


def test_flaky_skip_next_to_culprit_is_inconclusive() -> None:
    graph, good, hist = line(32)
    rng = random.Random(2)

    def ev(c: Commit) -> Verdict:
        if idx(c) == 20:
            return Verdict.SKIP
        return Verdict.BAD if idx(c) >= 21 and rng.random() < 0.8 else Verdict.GOOD

    res = Bisector(ev, BisectOptions(mode=Mode.FLAKY, max_runs=200)).bisect(graph, [good])
    assert res.status is Status.INCONCLUSIVE
    assert {hist[20], hist[21]} <= set(res.candidates)
    assert res.runs < 200  # it stops when no run can tell them apart, not at the budget


def test_flaky_parallel_rounds() -> None:
    graph, good, hist = line(200)
    rng = random.Random(4)
    lock = threading.Lock()

    def ev(c: Commit) -> Verdict:
        with lock:
            u = rng.random()
        return Verdict.BAD if idx(c) >= 77 and u < 0.75 else Verdict.GOOD

    one = Bisector(ev, BisectOptions(mode=Mode.FLAKY)).bisect(graph, [good])
    four = Bisector(ev, BisectOptions(mode=Mode.FLAKY, jobs=4)).bisect(graph, [good])
    assert one.culprit == hist[77] and four.culprit == hist[77]
    assert four.rounds < one.rounds
