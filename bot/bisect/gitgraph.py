"""Read a bisection's candidate commits from a git repository (via bot.proc, no checkout)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bot import proc
from bot.bisect.graph import CommitGraph
from bot.bisect.model import Commit
from bot.errors import InfraError, UserError

GIT_TIMEOUT_S = 300.0
# Fields are separated by unit separators and records by NUL, so subjects may hold anything.
_FORMAT = "%H%x1f%P%x1f%an <%ae>%x1f%aI%x1f%s%x00"
MAX_CANDIDATES = 2_000_000


def git(repo: Path, *args: str, timeout: float = GIT_TIMEOUT_S) -> str:
    res = proc.run(["git", "-C", str(repo), *args], timeout=timeout,
                   capture_limit=1 << 30)
    if not res.ok:
        raise InfraError(res.describe())
    return res.stdout


def resolve(repo: Path, rev: str) -> str:
    """A revision to a full commit sha; a clear UserError if it names no commit."""
    if rev.startswith("-"):
        raise UserError(f"revision {rev!r} must not start with '-'")
    res = proc.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet",
                    f"{rev}^{{commit}}"], timeout=GIT_TIMEOUT_S)
    if not res.ok:
        raise UserError(f"{repo}: {rev!r} is not a commit")
    return res.stdout.strip()


def _parse(out: str) -> list[Commit]:
    commits = []
    for rec in out.split("\0"):
        rec = rec.lstrip("\n")
        if not rec:
            continue
        sha, parents, author, date, subject = rec.split("\x1f", 4)
        commits.append(Commit(sha, subject, author, date, tuple(parents.split())))
    return commits


def commit_info(repo: Path, rev: str) -> Commit:
    out = git(repo, "log", "-1", f"--format={_FORMAT}", resolve(repo, rev), "--")
    return _parse(out)[0]


@dataclass(frozen=True)
class Range:
    graph: CommitGraph
    goods: tuple[Commit, ...]
    bad: Commit


def load_range(repo: Path, good: Sequence[str], bad: str) -> Range:
    """Candidates = ancestors of bad that are not ancestors of a good (like `git bisect`)."""
    if not (repo / ".git").exists() and not (repo / "HEAD").exists():
        raise UserError(f"{repo} is not a git repository")
    if not good:
        raise UserError("give at least one good revision")
    bad_sha = resolve(repo, bad)
    good_shas = [resolve(repo, g) for g in good]
    for g, rev in zip(good_shas, good, strict=True):
        if g == bad_sha:
            raise UserError(f"good {rev!r} and bad {bad!r} are the same commit")
        res = proc.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", g, bad_sha],
                       timeout=GIT_TIMEOUT_S)
        if res.returncode == 1:
            bases = git(repo, "merge-base", "--all", g, bad_sha).split()
            hint = f" (merge base: {bases[0][:12]})" if bases else " (no common history)"
            raise UserError(f"good {rev!r} is not an ancestor of bad {bad!r}{hint}; "
                            "give the merge base as the good revision")
        if not res.ok:
            raise InfraError(res.describe())
    count = int(git(repo, "rev-list", "--count", bad_sha, *[f"^{g}" for g in good_shas], "--"))
    if count > MAX_CANDIDATES:
        raise UserError(f"{count} candidate commits is over the limit of {MAX_CANDIDATES}")
    out = git(repo, "log", "--topo-order", "--reverse", f"--format={_FORMAT}", bad_sha,
              *[f"^{g}" for g in good_shas], "--")
    commits = _parse(out)
    goods = tuple(commit_info(repo, g) for g in good_shas)
    graph = CommitGraph(commits, bad_sha)
    return Range(graph, goods, graph.commit(graph.bad))
