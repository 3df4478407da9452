"""Commits made without a checkout: new file contents on top of a parent, through a temporary
index. Used for test histories and benchmarks on the kernel tree, where checking out 75,000 files
to change one would cost more than building it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from bot.errors import UserError
from bot.tree import git

Edit = Callable[[str], str] | tuple[str, str] | str | None
"""A callable old->new text; (old, new): replace exactly one occurrence; a str: the new
content; None: delete the file."""


def apply_edit(path: str, old: str | None, edit: Edit) -> str | None:
    if edit is None:
        return None
    if isinstance(edit, str):
        return edit
    if isinstance(edit, tuple):
        before, after = edit
        if old is None or old.count(before) != 1:
            found = 0 if old is None else old.count(before)
            raise UserError(f"{path}: expected exactly one {before!r}, found {found}")
        return old.replace(before, after)
    if old is None:
        raise UserError(f"{path}: no such file to edit")
    return edit(old)


def commit_edits(
    repo: Path,
    parent: str,
    edits: Mapping[str, Edit],
    message: str,
    *,
    ref: str | None = None,
    author_date: str = "",
) -> str:
    """A new commit on `parent` with `edits` applied; returns its sha. `ref` (e.g.
    refs/kbot/test/x) keeps it reachable. The repository's checkout is never touched."""
    with tempfile.TemporaryDirectory(prefix="kbot-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if author_date:
            env |= {"GIT_AUTHOR_DATE": author_date, "GIT_COMMITTER_DATE": author_date}
        git.git(repo, "read-tree", parent, env=env, timeout=300)
        for path, edit in edits.items():
            res = git.git(repo, "show", f"{parent}:{path}", check=False)
            old = res.stdout if res.ok else None
            new = apply_edit(path, old, edit)
            if new is None:
                git.git(repo, "update-index", "--force-remove", "--", path, env=env)
                continue
            blob = git.git(
                repo, "hash-object", "-w", "--stdin", input=new.encode("utf-8")
            ).stdout.strip()
            git.git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
        tree = git.git(repo, "write-tree", env=env).stdout.strip()
        sha = git.git(
            repo, "commit-tree", tree, "-p", parent, input=message.encode("utf-8"), env=env
        ).stdout.strip()
    if ref:
        git.git(repo, "update-ref", ref, sha)
    return sha
