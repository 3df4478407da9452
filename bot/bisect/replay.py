"""A bisection log in the format `git bisect log` writes, so that `git bisect replay` accepts it.

Each tested commit gets one `git bisect good|bad|skip` line, with its runs in a comment. When the
search named a culprit, a commit's mark is what the culprit implies (bad iff it descends from the
culprit): with a flaky test a bad commit may have passed some runs, and git must see a consistent
history to arrive at the same first bad commit.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.bisect.graph import CommitGraph
from bot.bisect.model import Commit, Role, TestedCommit, Verdict


def _mark(graph: CommitGraph, t: TestedCommit, culprit: Commit | None) -> Verdict:
    if t.role is Role.ENDPOINT_GOOD:
        return Verdict.GOOD
    if t.role is Role.ENDPOINT_BAD:
        return Verdict.BAD
    if t.verdict is Verdict.SKIP:
        return Verdict.SKIP
    if culprit is not None and t.commit.sha in graph.index:
        c = graph.index[culprit.sha]
        return Verdict.BAD if c in graph.ancestors(graph.index[t.commit.sha]) else Verdict.GOOD
    return t.verdict


def _runs_comment(t: TestedCommit) -> str:
    parts = [f"{t.runs} run{'s' if t.runs != 1 else ''}"]
    if t.fails:
        parts.append(f"{t.fails} failed")
    if t.passes:
        parts.append(f"{t.passes} passed")
    if t.skips:
        parts.append(f"{t.skips} could not test")
    return ", ".join(parts)


def replay_log(graph: CommitGraph, goods: Sequence[Commit], tested: Sequence[TestedCommit],
               culprit: Commit | None, candidates: Sequence[Commit]) -> str:
    lines = ["git bisect start"]
    bad = graph.commit(graph.bad)
    endpoints = (Role.ENDPOINT_GOOD, Role.ENDPOINT_BAD)
    endpoint_done = {t.commit.sha for t in tested if t.role in endpoints}
    # Endpoints first, as `git bisect start BAD GOOD...` would, even when they were not run.
    pre: list[tuple[Verdict, Commit, str]] = []
    pre.append((Verdict.BAD, bad, ""))
    pre += [(Verdict.GOOD, g, "") for g in goods]
    by_sha = {t.commit.sha: t for t in tested}
    good_shas = {g.sha for g in goods}
    for verdict, commit, _ in pre:
        t = by_sha.get(commit.sha)
        note = f" ({_runs_comment(t)})" if t is not None and commit.sha in endpoint_done else ""
        lines.append(f"# {verdict.value}: [{commit.sha}] {commit.subject}{note}")
        lines.append(f"git bisect {verdict.value} {commit.sha}")
    for t in tested:
        if t.role in endpoints or t.commit.sha == bad.sha or t.commit.sha in good_shas:
            continue
        mark = _mark(graph, t, culprit)
        lines.append(f"# {mark.value}: [{t.commit.sha}] {t.commit.subject} ({_runs_comment(t)})")
        lines.append(f"git bisect {mark.value} {t.commit.sha}")
    if culprit is not None:
        lines.append(f"# first bad commit: [{culprit.sha}] {culprit.subject}")
    elif candidates:
        lines.append("# only skipped commits left to test; the first bad commit is one of:")
        lines += [f"# possible first bad commit: [{c.sha}] {c.subject}" for c in candidates]
    return "\n".join(lines) + "\n"
