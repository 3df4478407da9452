"""The one git wrapper of bot.tree and bot.build: argv lists through bot.proc, never a chdir.

Every git command runs here (kbot does not use GitPython, whose subprocesses would bypass
bot.proc), with a timeout, a process-group kill, and an environment that holds no secrets and
ignores the user's global config (hooks, aliases, signing).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bot import proc
from bot.errors import InfraError

IDENTITY = ("-c", "user.name=kbot", "-c", "user.email=kbot@localhost")
# Never sign, never run a pager, never let a user's global config rewrite what we run.
SAFE_CONFIG = (
    "-c", "commit.gpgsign=false",
    "-c", "core.pager=cat",
    "-c", "advice.detachedHead=false",
    "-c", "core.hooksPath=/dev/null",
    "-c", "gc.auto=0",
)
DEFAULT_TIMEOUT_S = 600.0


def git_env() -> dict[str, str]:
    return proc.clean_env({"GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"})


def git(
    repo: Path,
    *args: str,
    timeout: float = DEFAULT_TIMEOUT_S,
    check: bool = True,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
) -> proc.ProcResult:
    """Run `git args` in `repo`. check=True raises InfraError naming the command on failure."""
    return proc.run(
        ["git", *IDENTITY, *SAFE_CONFIG, *args],
        cwd=repo,
        timeout=timeout,
        env={**git_env(), **(env or {})},
        check=check,
        input=input,
    )


def git_out(repo: Path, *args: str, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    return git(repo, *args, timeout=timeout).stdout.strip()


def rev_parse(repo: Path, rev: str) -> str:
    """The full sha of `rev` (a commit), or InfraError if the repo does not have it."""
    res = git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if not res.ok:
        raise InfraError(f"{repo}: no commit {rev!r}")
    return res.stdout.strip()


def has_commit(repo: Path, rev: str) -> bool:
    res = git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    return res.ok


def tree_id(repo: Path, rev: str) -> str:
    return git_out(repo, "rev-parse", "--verify", f"{rev}^{{tree}}")


def changed_files(repo: Path, old: str, new: str) -> tuple[str, ...]:
    out = git_out(repo, "diff", "--name-only", "--no-renames", old, new)
    return tuple(line for line in out.splitlines() if line)


# -- progress of long git work (the first mirror of a kernel tree: gigabytes, many minutes) ---

# "Receiving objects:  45% (123/456), 1.20 MiB | 2.00 MiB/s", "remote: Counting objects: 100%
# (9/9), done.", "remote: Enumerating objects: 1234, done." (no total).
_PROGRESS = re.compile(
    r"^(?P<remote>remote: )?(?P<phase>[A-Z][A-Za-z ]*?):\s+"
    r"(?:(?P<percent>\d{1,3})% \((?P<done>\d+)/(?P<total>\d+)\)|(?P<count>\d+))"
    r"(?P<rest>.*)$"
)
# "remote: Total 3 (delta 1), reused 0 (delta 0), pack-reused 0": the objects the server sent.
_TOTAL = re.compile(r"^remote: Total (?P<count>\d+)(?P<rest>.*)$")
TOTAL = "Total"


@dataclass(frozen=True)
class GitProgress:
    """One progress update of git (clone, fetch), as `--progress` prints it."""

    phase: str  # "Receiving objects", "Resolving deltas", "Counting objects", ...
    done: int
    total: int | None  # None when git counts without knowing the total
    percent: int | None
    rest: str = ""  # ", 1.20 MiB | 2.00 MiB/s" and/or ", done."
    remote: bool = False  # the server's side (upload-pack), relayed by git

    @property
    def finished(self) -> bool:
        return self.rest.rstrip().endswith("done.")

    def describe(self) -> str:
        count = (f"{self.percent}% ({self.done}/{self.total})" if self.total is not None
                 else str(self.done))
        return f"{'remote: ' if self.remote else ''}{self.phase}: {count}{self.rest}"


def parse_progress(line: str) -> GitProgress | None:
    """The update a line of git's progress output holds, or None for any other line."""
    m = _PROGRESS.match(line.strip())
    if m is None:
        t = _TOTAL.match(line.strip())
        return None if t is None else GitProgress(TOTAL, int(t["count"]), int(t["count"]), None,
                                                  t["rest"].rstrip(), True)
    if m["count"] is not None:
        return GitProgress(m["phase"], int(m["count"]), None, None, m["rest"].rstrip(),
                           bool(m["remote"]))
    return GitProgress(m["phase"], int(m["done"]), int(m["total"]), int(m["percent"]),
                       m["rest"].rstrip(), bool(m["remote"]))


class ProgressLines:
    """git's progress as the project's progress lines: at most one every `every_s` seconds
    (a kernel clone prints thousands of updates; a log wants one every few seconds), each
    naming what is being done; `summary()` at the end says what crossed the network."""

    def __init__(
        self, label: str, emit: Callable[[str], None], every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.emit = emit
        self.every_s = every_s
        self.clock = clock
        self.start = clock()
        self.last: float | None = None
        self.received: GitProgress | None = None  # the last "Receiving objects" update
        self.sent: int | None = None  # the server's "Total N": what crossed the network

    def __call__(self, update: GitProgress) -> None:
        if update.phase == TOTAL:
            self.sent = update.done
            return
        if update.phase == "Receiving objects":
            self.received = update
        now = self.clock()
        if self.last is None or now - self.last >= self.every_s:
            self.last = now
            self.emit(f"{self.label}: {update.describe()}")

    def summary(self) -> str:
        took = f"{self.clock() - self.start:.0f}s"
        r = self.received
        count = self.sent if self.sent is not None else (
            r.total if r is not None and r.total is not None else r.done if r else 0)
        # A small fetch is unpacked without progress: no size then.
        size = r.rest.removesuffix(", done.").lstrip(", ").split(" | ")[0] if r else ""
        return (f"{self.label}: done in {took}, {count} objects received"
                + (f" ({size})" if size else ""))


def git_progress(
    repo: Path, *args: str, on_progress: Callable[[GitProgress], None],
    timeout: float = DEFAULT_TIMEOUT_S,
) -> proc.ProcResult:
    """`git args` (a clone or fetch given --progress), each progress update parsed and passed
    to `on_progress`; raises InfraError like git(check=True)."""

    def on_line(line: str) -> None:
        update = parse_progress(line)
        if update is not None:
            on_progress(update)

    return proc.run(
        ["git", *IDENTITY, *SAFE_CONFIG, *args], cwd=repo, timeout=timeout, env=git_env(),
        check=True, on_line=on_line, split_cr=True,
    )
