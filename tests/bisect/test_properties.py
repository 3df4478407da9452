"""Property tests: the deterministic search's bound on linear ranges, and agreement with
`git bisect run` on random DAGs (real tiny git repositories)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.bisect.core import BisectOptions, Bisector
from bot.bisect.gitgraph import load_range
from bot.bisect.graph import CommitGraph, linear_history
from bot.bisect.model import Commit, Mode, Status, Verdict
from bot.bisect.synth import descendants_of, git_bisect_run, make_repo


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_linear_within_log2_plus_one(data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=1, max_value=2000), label="n")
    culprit = data.draw(st.integers(min_value=1, max_value=n), label="culprit")
    hist = linear_history(n + 1)
    graph = CommitGraph(hist[1:], hist[-1].sha)
    calls: list[str] = []

    def ev(c: Commit) -> Verdict:
        calls.append(c.sha)
        return Verdict.BAD if int(c.sha[1:]) >= culprit else Verdict.GOOD

    res = Bisector(ev, BisectOptions(mode=Mode.DETERMINISTIC, check_endpoints=False)).bisect(
        graph, [hist[0]])
    assert res.status is Status.FOUND
    assert res.culprit == hist[culprit]
    assert len(calls) <= math.ceil(math.log2(n)) + 1 if n > 1 else len(calls) == 0
    assert len(set(calls)) == len(calls)  # never tests a commit twice


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[tuple[int, ...]], int]:
    """A single-root DAG whose last commit descends from every other (a tip merging all heads),
    and a culprit among the non-root commits."""
    n = draw(st.integers(min_value=2, max_value=24))
    parents: list[tuple[int, ...]] = [()]
    for i in range(1, n):
        first = draw(st.integers(min_value=max(0, i - 4), max_value=i - 1))
        ps = [first]
        if i > 2 and draw(st.booleans()):
            second = draw(st.integers(min_value=0, max_value=i - 1))
            if second != first:
                ps.append(second)
        parents.append(tuple(ps))
    has_child = {p for ps in parents for p in ps}
    heads = [i for i in range(n) if i not in has_child]
    if len(heads) > 1:
        parents.append(tuple(heads))
    culprit = draw(st.integers(min_value=1, max_value=len(parents) - 1))
    return parents, culprit


@pytest.mark.integration
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_dag_agrees_with_git_bisect_run(case: tuple[list[tuple[int, ...]], int]) -> None:
    parents, culprit = case
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        repo = Path(tmp) / "repo"
        shas = make_repo(repo, parents, culprit)
        git = git_bisect_run(repo, shas[0], shas[-1], Path(tmp) / "count")
        rng = load_range(repo, [shas[0]], shas[-1])
        bad = {shas[i] for i in descendants_of(parents, culprit)}
        res = Bisector(lambda c: Verdict.BAD if c.sha in bad else Verdict.GOOD,
                       BisectOptions(mode=Mode.DETERMINISTIC, check_endpoints=False)).bisect(
                           rng.graph, rng.goods)
        assert git.first_bad == shas[culprit]
        assert res.culprit is not None and res.culprit.sha == git.first_bad
        tested = [t.commit.sha for t in res.tested]
        assert len(tested) == len(set(tested)) == res.search_runs
