"""Apply a series patch by patch: c0 = base, c1..cN = one commit per patch (`git am -3`).

A patch that does not apply is a result (ApplyResult naming the patch, the conflicting files and
git's own message), never an exception, and the worktree is left clean. Patches are checked
before anything is written (bot.tree.safety).
"""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime
from enum import Enum
from pathlib import Path

from bot.intake.model import Patch, Series
from bot.tree import git
from bot.tree.safety import PatchProblem, check_patches
from bot.tree.trees import ResolvedBase, Tree, Trees

AM_TIMEOUT_S = 600.0
_CONFLICT = re.compile(r"^CONFLICT \([^)]*\): .*?(?:in|of) (?P<path>\S+)", re.M)
_PATCH_FAILED = re.compile(r"^error: patch failed: (?P<path>.+?):\d+$", re.M)
_NOT_EXIST = re.compile(r"^error: (?P<path>.+?): (?:does not exist in index|No such file)", re.M)
_NO_ANCESTOR = re.compile(
    r"^error: sha1 information is lacking or useless \((?P<path>.+)\)\.$", re.M
)


class ApplyStatus(Enum):
    APPLIED = "applied"
    CONFLICT = "conflict"  # a patch does not apply to this base
    REJECTED = "rejected"  # a patch failed the safety checks: nothing was applied


@dataclass(frozen=True)
class AppliedPatch:
    index: int
    title: str
    sha: str
    message_id: str = ""


@dataclass(frozen=True)
class ApplyResult:
    status: ApplyStatus
    tree: str
    base: ResolvedBase
    repo: Path  # the repository holding the commits (kbot's mirror)
    commits: tuple[AppliedPatch, ...]  # c1..ck that applied, in order
    ref: str = ""  # refs/kbot/... naming the last applied commit
    failed_index: int | None = None  # the patch that did not apply
    failed_title: str = ""
    conflicts: tuple[str, ...] = ()  # files git could not merge
    git_message: str = ""  # what git am said
    problems: tuple[PatchProblem, ...] = ()  # safety rejects

    @property
    def ok(self) -> bool:
        return self.status is ApplyStatus.APPLIED

    @property
    def shas(self) -> tuple[str, ...]:
        """c0 (the base), c1, ..., ck."""
        return (self.base.sha, *(c.sha for c in self.commits))

    def summary(self) -> str:
        head = f"base {self.base.describe()}"
        if self.status is ApplyStatus.APPLIED:
            return f"{head}: {len(self.commits)} patch(es) applied"
        if self.status is ApplyStatus.REJECTED:
            return f"{head}: rejected: " + "; ".join(str(p) for p in self.problems)
        files = ", ".join(self.conflicts) or "unknown files"
        return (f"{head}: patch {self.failed_index} ({self.failed_title}) does not apply "
                f"({files})")


def patch_mail(patch: Patch) -> bytes:
    """One patch as the mail `git am` reads: author, date, subject, message, diff."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = str(patch.author)
    if patch.date is not None:
        msg["Date"] = format_datetime(patch.date)
    msg["Subject"] = patch.title
    body = patch.commit_message.rstrip("\n") + "\n---\n" + patch.diff
    if not body.endswith("\n"):
        body += "\n"
    msg.set_content(body, cte="8bit")
    return msg.as_bytes()


def check_series(series: Series, repo: Path, base: str) -> tuple[PatchProblem, ...]:
    # The checks read the very mails `git am` will read: the email layer re-splits lines (a
    # lone CR in a diff becomes a line break), and a commit message is text git may parse too.
    return check_patches(repo, base, ((p.index, patch_mail(p)) for p in series.patches))


def apply_series(
    trees: Trees,
    series: Series,
    *,
    tree: str | None = None,
    list_name: str | None = None,
    base: ResolvedBase | None = None,
    keep_worktree: bool = True,
) -> ApplyResult:
    """Resolve the base (unless given) and apply every patch as its own commit."""
    if base is None:
        base = trees.resolve_base(series, tree=tree, list_name=list_name)
    t: Tree = trees.get(trees.section(base.tree))
    problems = check_series(series, t.mirror, base.sha)
    if problems:
        return ApplyResult(ApplyStatus.REJECTED, t.name, base, t.mirror, (), problems=problems)
    applied: list[AppliedPatch] = []
    ref = f"refs/kbot/series/{_ref_safe(series.key)}"
    with trees.worktree(t, base.sha, keep=keep_worktree) as wt:
        for p in sorted(series.patches, key=lambda p: p.index):
            res = git.git(wt, "am", "-3", "--no-gpg-sign",
                          input=patch_mail(p), check=False, timeout=AM_TIMEOUT_S,
                          env=_committer_date(p))
            if not res.ok:
                text = (res.stdout + res.stderr).strip()
                git.git(wt, "am", "--abort", check=False)
                # Without the blobs a 3-way merge needs, `am -3` names no hunk: a plain
                # check on the clean base says which files and lines do not apply.
                check = git.git(wt, "apply", "--check", "--verbose", input=p.diff.encode(),
                                check=False)
                if not check.ok:
                    text += "\n" + "\n".join(
                        ln for ln in check.stderr.splitlines() if ln.startswith("error:")
                    )
                conflicts = _conflicts(wt, text)
                return ApplyResult(
                    ApplyStatus.CONFLICT, t.name, base, t.mirror, tuple(applied),
                    ref=ref if applied else "", failed_index=p.index, failed_title=p.title,
                    conflicts=conflicts, git_message=text[-4000:],
                )
            sha = git.git_out(wt, "rev-parse", "HEAD")
            applied.append(AppliedPatch(p.index, p.title, sha, p.message_id))
            git.git(t.mirror, "update-ref", ref, sha)
    return ApplyResult(ApplyStatus.APPLIED, t.name, base, t.mirror, tuple(applied), ref=ref)


def _committer_date(patch: Patch) -> dict[str, str]:
    """Commit with the mail's own date: the same series on the same base then always makes
    the same commits, so a job resumed after a crash, a rerun and a reader's own `git am`
    with this date name the same shas (and the builds and stored boots keyed by them)."""
    try:
        when = int(patch.date.timestamp()) if patch.date is not None else 0
    except (OverflowError, ValueError, OSError):  # a hostile Date: header
        when = 0
    return {"GIT_COMMITTER_DATE": f"@{min(max(when, 0), 2**32)} +0000"}


def _conflicts(wt: Path, text: str) -> tuple[str, ...]:
    files: dict[str, None] = {}
    res = git.git(wt, "diff", "--name-only", "--diff-filter=U", check=False)
    for line in res.stdout.splitlines():
        if line.strip():
            files.setdefault(line.strip(), None)
    for rx in (_CONFLICT, _PATCH_FAILED, _NOT_EXIST, _NO_ANCESTOR):
        for m in rx.finditer(text):
            files.setdefault(m["path"], None)
    return tuple(files)


def _ref_safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:100] or "series"
