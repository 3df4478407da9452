"""The one git wrapper of bot.tree and bot.build: argv lists through bot.proc, never a chdir.

Every git command runs here (kbot does not use GitPython, whose subprocesses would bypass
bot.proc), with a timeout, a process-group kill, and an environment that holds no secrets and
ignores the user's global config (hooks, aliases, signing).
"""

from __future__ import annotations

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
