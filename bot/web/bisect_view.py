"""A stored bisection as the bisection page shows it: the commit range as a line of tested
commits, and how sure the search is (the posterior over the candidates).

A bisection job (kind "bisect") stores its outcome as the step "bisect" (see bot.bisect.record):
the BisectResult, the candidate commits in topological order (so untested commits can be drawn
and the posterior recomputed) and the search's model and confidence target. A bare dumped
BisectResult is read too: the page then draws the tested commits only, in testing order.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.bisect.bayes import Posterior
from bot.bisect.graph import CommitGraph
from bot.bisect.model import Commit, Mode, Role, TestedCommit, Verdict
from bot.bisect.record import StoredBisection
from bot.web.svg import Bar, LinePoint

MAX_BARS = 48  # posterior bars drawn at most (the most likely candidates)
MAX_LINE_POINTS = 80


@dataclass(frozen=True)
class Candidate:
    commit: Commit
    probability: float


@dataclass(frozen=True)
class BisectionView:
    stored: StoredBisection
    line: tuple[LinePoint, ...]
    line_note: str
    bars: tuple[Bar, ...]
    bars_note: str
    top: tuple[Candidate, ...]  # most likely first
    tested: tuple[TestedCommit, ...]


def _state(t: TestedCommit) -> str:
    if t.fails and t.passes:
        return "flaky"
    return {Verdict.BAD: "fail", Verdict.GOOD: "pass", Verdict.SKIP: "skip"}[t.verdict]


def _text(t: TestedCommit) -> str:
    if t.role is Role.ENDPOINT_GOOD:
        return "good"
    if t.role is Role.ENDPOINT_BAD:
        return "bad"
    return f"{t.fails}/{t.runs}"


def _tip(t: TestedCommit) -> str:
    notes = "; ".join(dict.fromkeys(o.note for o in t.outcomes if o.note))
    return (f"{t.commit.short} {t.commit.subject} - {t.role.value}: {t.runs} run(s), "
            f"{t.fails} failed, {t.passes} passed, {t.skips} could not test"
            + (f" ({notes})" if notes else ""))


def _posterior(st: StoredBisection) -> tuple[CommitGraph, list[float], str] | None:
    """Each candidate's probability of being the first bad commit, given every run."""
    res = st.result
    if not st.range:
        return None
    try:
        graph = CommitGraph(st.range, res.bad.sha)
    except Exception:  # a range that does not fit its result: draw without it
        return None
    tested = {t.commit.sha: t for t in res.tested}
    if res.mode is Mode.FLAKY:
        post = Posterior(graph, st.model)
        for t in res.tested:
            i = graph.index.get(t.commit.sha)
            if i is None:
                post.observe_outside(t.fails, t.passes)
            else:
                post.observe(i, t.fails, t.passes)
        return graph, post.probs(), "posterior P(first bad commit) given every run"
    # Deterministic: a commit is still a candidate unless a passing commit descends from it
    # or a failing one does not; what is left is equally likely.
    alive = [True] * len(graph)
    for sha, t in tested.items():
        i = graph.index.get(sha)
        if i is None or t.verdict is Verdict.SKIP:
            continue
        anc = graph.ancestors(i)
        for j in range(len(graph)):
            if (t.verdict is Verdict.GOOD and j in anc) or (t.verdict is Verdict.BAD
                                                           and j not in anc):
                alive[j] = False
    n = sum(alive)
    if n == 0:
        return None
    return graph, [1.0 / n if a else 0.0 for a in alive], \
        "candidates left (deterministic search: each equally likely)"


def _line_from_range(st: StoredBisection, graph: CommitGraph) -> list[LinePoint]:
    res = st.result
    tested = {t.commit.sha: t for t in res.tested}
    culprit = res.culprit.sha if res.culprit else ""
    points: list[LinePoint] = []
    for g in res.good:
        t = tested.get(g.sha)
        points.append(LinePoint(g.short, _state(t) if t else "pass", "good",
                                _tip(t) if t else f"{g.short} {g.subject} - good (given)"))
    gap: list[Commit] = []

    def flush() -> None:
        if gap:
            points.append(LinePoint("", "none", "", f"{len(gap)} untested: "
                                    f"{gap[0].short}..{gap[-1].short}", gap=len(gap)))
            gap.clear()

    order = range(len(graph)) if graph.is_linear else sorted(
        range(len(graph)), key=lambda i: (graph.commit(i).date, i))
    for i in order:
        c = graph.commit(i)
        t = tested.get(c.sha)
        if t is None and c.sha != culprit and c.sha != res.bad.sha:
            gap.append(c)
            continue
        flush()
        if t is None:
            points.append(LinePoint(c.short, "none", "", f"{c.short} {c.subject} - untested",
                                    culprit=c.sha == culprit))
        else:
            points.append(LinePoint(c.short, _state(t), _text(t), _tip(t),
                                    culprit=c.sha == culprit))
    flush()
    return points


def bisection_view(st: StoredBisection) -> BisectionView:
    res = st.result
    post = _posterior(st)
    culprit = res.culprit.sha if res.culprit else ""
    if post is not None:
        graph, probs, bars_note = post
        line = _line_from_range(st, graph)
        note = (f"{len(graph)} candidate commits, oldest left; a dot per tested commit "
                "(failed/runs), untested stretches folded")
        ranked = sorted(range(len(probs)), key=lambda i: -probs[i])
        shown = sorted(ranked[:MAX_BARS])
        bars = tuple(Bar(graph.commit(i).short, probs[i],
                         f"{graph.commit(i).short} {graph.commit(i).subject}: "
                         f"P = {probs[i]:.3f}", graph.commit(i).sha == culprit)
                     for i in shown)
        top = tuple(Candidate(graph.commit(i), probs[i]) for i in ranked[:10] if probs[i] > 0)
        if len(probs) > MAX_BARS:
            bars_note += f" (the {MAX_BARS} most likely of {len(probs)}, in commit order)"
    else:
        line = [LinePoint(t.commit.short, _state(t), _text(t), _tip(t),
                          culprit=t.commit.sha == culprit) for t in res.tested]
        note = "tested commits in the order they were tested (the range was not stored)"
        bars = ()
        bars_note = "the candidate range was not stored: no posterior to draw"
        top = ((Candidate(res.culprit, res.confidence),) if res.culprit else
               tuple(Candidate(c, 1.0 / len(res.candidates)) for c in res.candidates))
    if len(line) > MAX_LINE_POINTS:
        line = line[:MAX_LINE_POINTS // 2] + [LinePoint(
            "", "none", "", f"{len(line) - MAX_LINE_POINTS} more points", gap=len(line)
            - MAX_LINE_POINTS)] + line[-MAX_LINE_POINTS // 2:]
        note += "; the middle of the line is folded"
    return BisectionView(st, tuple(line), note, bars, bars_note, top, res.tested)
