"""The candidate commits of a bisection as a DAG, with the ancestry queries the searches need.

Like `git bisect`: the candidates are the ancestors of the bad commit that are not ancestors of
any good commit (the bad commit included). Nodes are numbered in a topological order, parents
before children, and only parent links inside the candidate set are kept: a parent outside it is
an ancestor of a good commit, hence good.

The one costly query is "sum of a value over the ancestors of every node". A node with a single
parent inside the set gets its parent's sum plus its own value (its ancestors are its parent's plus
itself), which makes a linear history O(n); only merges with two or more parents inside the set
need a walk of their own ancestry, as in git's own `do_find_bisection`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bot.bisect.model import Commit
from bot.errors import UserError

# Merges whose ancestry walks are kept between queries, so that searches over kernel-sized
# merge-heavy ranges do not redo them every step; past this, they are recomputed on demand.
MAX_CACHED_ANCESTOR_ENTRIES = 20_000_000


@dataclass(frozen=True)
class _Node:
    commit: Commit
    parents: tuple[int, ...]


class CommitGraph:
    """Candidates (ancestors of `bad` minus ancestors of the goods), topologically ordered."""

    def __init__(self, commits: Sequence[Commit], bad: str) -> None:
        """`commits` are the candidates in any order; parents outside them are dropped."""
        given = {c.sha: c for c in commits}
        if bad not in given:
            raise UserError(f"bad commit {bad} is not among the candidates (is it an ancestor "
                            "of a good commit?)")
        # Only ancestors of bad are candidates: drop anything else the caller passed.
        by_sha: dict[str, Commit] = {}
        stack = [bad]
        while stack:
            sha = stack.pop()
            if sha in by_sha:
                continue
            by_sha[sha] = given[sha]
            stack.extend(p for p in given[sha].parents if p in given and p not in by_sha)
        order = _topo_order({sha: c for sha, c in given.items() if sha in by_sha})
        self.index: dict[str, int] = {sha: i for i, sha in enumerate(order)}
        self.nodes: list[_Node] = [
            _Node(by_sha[sha], tuple(self.index[p] for p in by_sha[sha].parents if p in by_sha))
            for sha in order
        ]
        self.bad = self.index[bad]
        self.is_linear = all(len(n.parents) <= 1 for n in self.nodes)
        self._merge_anc: dict[int, list[int]] = {}
        self._cached = 0

    def __len__(self) -> int:
        return len(self.nodes)

    def commit(self, i: int) -> Commit:
        return self.nodes[i].commit

    def parents(self, i: int) -> tuple[int, ...]:
        return self.nodes[i].parents

    def ancestors(self, i: int) -> set[int]:
        """Node i and every candidate it descends from."""
        seen = {i}
        stack = [i]
        while stack:
            for p in self.nodes[stack.pop()].parents:
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
        return seen

    def _merge_ancestors(self, i: int) -> Iterable[int]:
        got = self._merge_anc.get(i)
        if got is not None:
            return got
        anc = sorted(self.ancestors(i))
        if self._cached + len(anc) <= MAX_CACHED_ANCESTOR_ENTRIES:
            self._merge_anc[i] = anc
            self._cached += len(anc)
        return anc

    def ancestor_sums(self, values: Sequence[float]) -> list[float]:
        """For every node i: the sum of `values` over i's ancestors (i included)."""
        out = [0.0] * len(self.nodes)
        for i, node in enumerate(self.nodes):
            ps = node.parents
            if not ps:
                out[i] = values[i]
            elif len(ps) == 1:
                out[i] = values[i] + out[ps[0]]
            else:
                out[i] = sum(values[a] for a in self._merge_ancestors(i))
        return out

    def ancestor_counts(self, alive: Sequence[bool]) -> list[int]:
        """For every node i: how many alive nodes are among its ancestors (i included)."""
        out = [0] * len(self.nodes)
        for i, node in enumerate(self.nodes):
            ps = node.parents
            own = 1 if alive[i] else 0
            if not ps:
                out[i] = own
            elif len(ps) == 1:
                out[i] = own + out[ps[0]]
            else:
                out[i] = sum(1 for a in self._merge_ancestors(i) if alive[a])
        return out


def _topo_order(by_sha: dict[str, Commit]) -> list[str]:
    """Parents before children (Kahn), ties broken by the order given: stable and deterministic."""
    children: dict[str, list[str]] = {sha: [] for sha in by_sha}
    pending: dict[str, int] = {}
    for sha, c in by_sha.items():
        inside = [p for p in c.parents if p in by_sha]
        pending[sha] = len(inside)
        for p in inside:
            children[p].append(sha)
    ready = [sha for sha, n in pending.items() if n == 0]
    ready.reverse()
    order: list[str] = []
    while ready:
        sha = ready.pop()
        order.append(sha)
        for ch in reversed(children[sha]):
            pending[ch] -= 1
            if pending[ch] == 0:
                ready.append(ch)
    if len(order) != len(by_sha):
        raise UserError("the commit history has a cycle: not a git history")
    return order


def linear_history(n: int, prefix: str = "c") -> list[Commit]:
    """n fake commits in a line (index 0 first): handy for tests and benchmarks."""
    commits: list[Commit] = []
    for i in range(n):
        sha = f"{prefix}{i:07d}"
        commits.append(Commit(sha, subject=f"commit {i}", parents=(commits[-1].sha,) if commits
                              else ()))
    return commits
