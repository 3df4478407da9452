"""Evaluators over a real git repository: checkouts in scratch worktrees, one per worker.

`CommandEvaluator` is `git bisect run` as an evaluator: the command runs in a checkout of the
commit; exit 0 is GOOD, 125 is SKIP, 1..127 is BAD, anything else (killed, timed out) is SKIP.
"""

from __future__ import annotations

import queue
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bot import proc
from bot.bisect.model import Commit, Outcome, Verdict
from bot.errors import InfraError

GIT_TIMEOUT_S = 600.0
SKIP_EXIT = 125


class WorktreePool:
    """Up to `size` detached worktrees of `repo` under `scratch`, lent one per thread."""

    def __init__(self, repo: Path, scratch: Path, size: int) -> None:
        self.repo = repo
        self.scratch = scratch
        self._free: queue.Queue[Path] = queue.Queue()
        self._all: list[Path] = []
        scratch.mkdir(parents=True, exist_ok=True)
        for k in range(size):
            path = scratch / f"wt{k}"
            if path.exists():
                self._git("worktree", "remove", "--force", str(path), check=False)
                shutil.rmtree(path, ignore_errors=True)
            self._git("worktree", "add", "--detach", "--force", str(path), "HEAD")
            self._all.append(path)
            self._free.put(path)

    def _git(self, *args: str, check: bool = True, cwd: Path | None = None) -> proc.ProcResult:
        res = proc.run(["git", "-C", str(cwd or self.repo), *args], timeout=GIT_TIMEOUT_S)
        if check and not res.ok:
            raise InfraError(res.describe())
        return res

    @contextmanager
    def checkout(self, sha: str) -> Iterator[Path]:
        path = self._free.get()
        try:
            self._git("checkout", "--quiet", "--detach", "--force", sha, cwd=path)
            # Build products of the previous commit must not leak into this one.
            self._git("clean", "-fdxq", cwd=path)
            yield path
        finally:
            self._free.put(path)

    def close(self) -> None:
        for path in self._all:
            self._git("worktree", "remove", "--force", str(path), check=False)
        self._git("worktree", "prune", check=False)


class CommandEvaluator:
    """Run `argv` in a checkout of each commit, with `git bisect run`'s exit-code meaning."""

    def __init__(self, pool: WorktreePool, argv: Sequence[str], timeout: float,
                 log_dir: Path | None = None) -> None:
        if not argv:
            raise ValueError("empty command")
        self.pool = pool
        self.argv = tuple(argv)
        self.timeout = timeout
        self.log_dir = log_dir

    def __call__(self, commit: Commit) -> Outcome:
        with self.pool.checkout(commit.sha) as path:
            log = self.log_dir / f"{commit.sha[:12]}.log" if self.log_dir else None
            res = proc.run(self.argv, timeout=self.timeout, cwd=path, env=proc.clean_env(),
                           log_path=log)
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [""]
        if res.timed_out:
            return Outcome(Verdict.SKIP, f"timed out after {self.timeout:.0f}s")
        if res.returncode == 0:
            return Outcome(Verdict.GOOD)
        if res.returncode == SKIP_EXIT:
            return Outcome(Verdict.SKIP, f"exit {SKIP_EXIT}: {tail[0]}")
        if 0 < res.returncode < 128:
            return Outcome(Verdict.BAD, f"exit {res.returncode}: {tail[0]}")
        return Outcome(Verdict.SKIP, f"killed ({res.returncode}): {tail[0]}")
