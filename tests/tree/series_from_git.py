"""Series values made from real commits (what intake would parse from `git format-patch`)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

from bot.intake.model import Patch, Person, Series


def _git(repo: Path, *args: str, input: str | None = None) -> str:
    return subprocess.run(  # noqa: S603
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True,
        input=input,
    ).stdout


def patch_id(diff: str, repo: Path) -> str:
    out = _git(repo, "patch-id", "--stable", input=diff)
    return out.split()[0] if out else ""


def patch_from_commit(repo: Path, sha: str, index: int, total: int) -> Patch:
    name, email, title, body = _git(
        repo, "log", "-1", "--format=%an%x00%ae%x00%s%x00%b", sha
    ).split("\x00", 3)
    diff = _git(repo, "show", "--format=", "--no-color", sha)
    return Patch(
        index=index, total=total, message_id=f"{sha[:12]}@test",
        subject=f"[PATCH {index}/{total}] {title}",
        title=title, author=Person(name, email), date=datetime(2024, 1, 1, tzinfo=UTC),
        commit_message=body.strip() + "\n", diff=diff,
        files=tuple(_git(repo, "diff-tree", "--no-commit-id", "--name-only", "-r", sha).split()),
        patch_id=patch_id(diff, repo), trailers=(),
    )


def series_from_range(
    repo: Path, base: str, tip: str, *, base_commit: str | None = None,
    prerequisites: tuple[str, ...] = (), title: str = "",
) -> Series:
    shas = _git(repo, "rev-list", "--reverse", f"{base}..{tip}").split()
    patches = tuple(patch_from_commit(repo, s, i, len(shas)) for i, s in enumerate(shas, 1))
    return Series(
        version=1, title=title or patches[0].title, prefixes=("PATCH",), total=len(patches),
        cover=None, patches=patches, missing=(), base_commit=base_commit,
        prerequisite_patch_ids=prerequisites,
    )
