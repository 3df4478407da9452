"""patch-id and files touched against real git on generated patches (adds, deletes, renames,
mode changes, binary files, no newline at end of file, several hunks and files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot import proc
from bot.intake.mail import parse_message
from bot.intake.mbox import iter_raw
from bot.intake.patch import parse_patch_body
from bot.intake.series import assemble

pytestmark = pytest.mark.integration

ENV = {
    "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "T",
    "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent",
}


def git(repo: Path, *args: str, input: bytes | None = None) -> str:
    return proc.run(["git", "-C", str(repo), *args], timeout=60, env=proc.clean_env(ENV),
                    input=input, check=True).stdout


def commit(repo: Path, msg: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", msg)


@pytest.fixture(scope="module")
def patches_mbox(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    repo = tmp_path_factory.mktemp("pid") / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "master")
    big = "\n".join(f"line {i}" for i in range(200)) + "\n"
    (repo / "a.c").write_text(big)
    (repo / "old.txt").write_text("old file\n" * 20)
    (repo / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (repo / "dir with space").mkdir()
    (repo / "dir with space" / "f.txt").write_text("spaced\n")
    commit(repo, "base")
    # 1: two hunks in one file, and a whitespace-only change
    lines = big.split("\n")
    lines[10] = "line 10 changed"
    lines[150] = "line  150"
    (repo / "a.c").write_text("\n".join(lines))  # also drops the final newline
    commit(repo, "two hunks, no newline at end")
    # 2: add + delete + rename with edit
    (repo / "new.h").write_text("#define NEW 1\n")
    (repo / "script.sh").unlink()
    git(repo, "mv", "old.txt", "renamed.txt")
    (repo / "renamed.txt").write_text("old file\n" * 19 + "edited\n")
    commit(repo, "add, delete, rename")
    # 3: mode change only, then a binary file, and a path with a space
    os.chmod(repo / "renamed.txt", 0o755)
    (repo / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (repo / "dir with space" / "f.txt").write_text("spaced edited\n")
    commit(repo, "mode, binary, space")
    # 4: the binary file changes
    (repo / "blob.bin").write_bytes(bytes(reversed(range(256))) * 4)
    commit(repo, "binary edit")
    out = repo.parent / "series.mbox"
    out.write_text(git(repo, "format-patch", "--stdout", "--binary", "--cover-letter",
                       "--thread=shallow", "HEAD~4"))
    return repo, out


def test_patch_id_equals_git_stable(patches_mbox: tuple[Path, Path]) -> None:
    repo, mbox = patches_mbox
    git_ids = [line.split()[0] for line in
               git(repo, "patch-id", "--stable", input=mbox.read_bytes()).splitlines()]
    [series] = assemble(parse_message(r) for r in iter_raw(mbox))
    assert len(series.patches) == 4 and series.complete
    assert [p.patch_id for p in series.patches] == git_ids


def test_files_touched_match_git(patches_mbox: tuple[Path, Path]) -> None:
    repo, mbox = patches_mbox
    [series] = assemble(parse_message(r) for r in iter_raw(mbox))
    for n, patch in enumerate(series.patches):
        rev = f"HEAD~{3 - n}"
        names = git(repo, "show", "--format=", "--name-only", "--no-renames", rev).split("\n")
        assert set(patch.files) == {n for n in names if n}, rev


def test_truncated_diff_is_an_error(patches_mbox: tuple[Path, Path]) -> None:
    _repo, mbox = patches_mbox
    raws = list(iter_raw(mbox))
    body = parse_message(raws[1]).body
    cut = body[: body.index("@@", body.index("@@") + 2) + 40]  # inside the second hunk
    with pytest.raises(Exception, match="diff is truncated"):
        parse_patch_body(cut, "message <x>")
