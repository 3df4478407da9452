"""Synthetic git histories for tests and benchmarks, and a `git bisect run` to compare against.

`make_repo` writes any DAG with `git fast-import` (100,000 commits in seconds); the commits at
and after the culprit carry a file named `bad`, so "the test" is whether that file exists.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bot import proc
from bot.errors import InfraError

TIMEOUT_S = 600.0
BAD_FILE = "bad"


def descendants_of(parents: Sequence[Sequence[int]], culprit: int) -> set[int]:
    """Indices that have `culprit` among their ancestors (itself included); parents[i] < i."""
    out = {culprit}
    for i in range(culprit + 1, len(parents)):
        if any(p in out for p in parents[i]):
            out.add(i)
    return out


def make_repo(path: Path, parents: Sequence[Sequence[int]], culprit: int) -> list[str]:
    """A repo whose commit i has parents `parents[i]` (all < i); returns the shas by index.

    Commit i's tree holds `id` (its index) and, when it descends from the culprit, `bad`.
    The branch `master` points at the last commit.
    """
    path.mkdir(parents=True, exist_ok=True)
    _git(path, "init", "-q", "-b", "master")
    bad = descendants_of(parents, culprit)
    chunks: list[bytes] = []
    linear = all(len(p) <= 1 and (not p or p[0] == i - 1) for i, p in enumerate(parents))
    for i, ps in enumerate(parents):
        msg = f"commit {i}\n".encode()
        when = 1_600_000_000 + i * 60
        head = [
            b"commit refs/heads/master\n",
            f"mark :{i + 1}\n".encode(),
            f"author Dev {i % 7} <dev{i % 7}@example.org> {when} +0000\n".encode(),
            f"committer Dev <dev@example.org> {when} +0000\n".encode(),
            f"data {len(msg)}\n".encode() + msg,
        ]
        if ps:
            head.append(f"from :{ps[0] + 1}\n".encode())
            head += [f"merge :{p + 1}\n".encode() for p in ps[1:]]
        elif i > 0:
            raise ValueError(f"commit {i} has no parents: only commit 0 may be a root")
        if linear:
            # Only what changes: keeps 100,000 commits quick to write and to check out.
            if i == 0:
                ops = [_file("README", b"synthetic history\n")]
            else:
                ops = []
            if i == culprit:
                ops.append(_file(BAD_FILE, b"regression\n"))
        else:
            ops = [b"deleteall\n", _file("id", f"{i}\n".encode())]
            if i in bad:
                ops.append(_file(BAD_FILE, b"regression\n"))
        chunks.append(b"".join(head) + b"".join(ops) + b"\n")
    stream = b"".join(chunks) + b"done\n"
    res = proc.run(["git", "-C", str(path), "fast-import", "--quiet", "--done",
                    f"--export-marks={path / '.git' / 'kbot-marks'}"],
                   timeout=TIMEOUT_S, input=stream)
    if not res.ok:
        raise InfraError(res.describe())
    marks = (path / ".git" / "kbot-marks").read_text().split("\n")
    by_mark = {}
    for line in marks:
        if line:
            mark, sha = line.split()
            by_mark[int(mark[1:])] = sha
    _git(path, "checkout", "-q", "-f", "master")
    return [by_mark[i + 1] for i in range(len(parents))]


def _file(name: str, data: bytes) -> bytes:
    return f"M 100644 inline {name}\ndata {len(data)}\n".encode() + data + b"\n"


def _git(repo: Path, *args: str) -> str:
    res = proc.run(["git", "-C", str(repo), *args], timeout=TIMEOUT_S)
    if not res.ok:
        raise InfraError(res.describe())
    return res.stdout


@dataclass(frozen=True)
class GitBisectRun:
    first_bad: str | None  # None when git could not name one
    invocations: int  # how many times git ran the test
    output: str


def git_bisect_run(repo: Path, good: str, bad: str, counter: Path,
                   test: str = f"test ! -e {BAD_FILE}") -> GitBisectRun:
    """`git bisect run sh -c TEST` (default: the `bad`-file test); counts the test's
    invocations in `counter`."""
    counter.write_text("")
    script = f"echo x >> {shlex.quote(str(counter))}; {test}"
    try:
        _git(repo, "bisect", "start", bad, good)
        res = proc.run(["git", "-C", str(repo), "bisect", "run", "sh", "-c", script],
                       timeout=TIMEOUT_S)
        out = res.stdout
        first = None
        for line in out.splitlines():
            if line.endswith(" is the first bad commit"):
                first = line.split()[0]
    finally:
        proc.run(["git", "-C", str(repo), "bisect", "reset", "-q"], timeout=TIMEOUT_S)
    n = len(counter.read_text().splitlines())
    return GitBisectRun(first, n, out)
