"""Safety checks on patch text and on the base tree's symlinks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.tree.safety import check_diff, diff_paths, path_problem, symlinks_on_paths
from tests.build.fake_kernel import git, make_fake_kernel


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("arch/x86/kvm/x86.c", None),
        ("/etc/passwd", "absolute path"),
        ("../outside.c", "'..' in path"),
        ("arch/../../outside.c", "'..' in path"),
        (".git/hooks/post-checkout", "path inside .git"),
        ("sub/.GIT/config", "path inside .git"),
        ("dots..fine.c", None),
    ],
)
def test_path_problem(path: str, problem: str | None) -> None:
    assert path_problem(path) == problem


def test_symlink_creation_and_big_binaries_are_found() -> None:
    diff = (
        "diff --git a/evil b/evil\nnew file mode 120000\nindex 0000000..1111111\n"
        "--- /dev/null\n+++ b/evil\n@@ -0,0 +1 @@\n+/etc\n\\ No newline at end of file\n"
        "diff --git a/fw.bin b/fw.bin\nnew file mode 100644\nindex 0000000..2222222\n"
        "GIT binary patch\nliteral 5000000\nzcmeIu0Sy2E0K%a6Pi+o7\n\nliteral 0\nHcmV?d00001\n\n"
        "diff --git a/small.bin b/small.bin\nnew file mode 100644\nindex 0000000..3333333\n"
        "GIT binary patch\nliteral 10\nRcmZQz\n\nliteral 0\nHcmV?d00001\n\n"
    )
    assert diff_paths(diff) == ("evil", "fw.bin", "small.bin")
    problems = {(p.path, p.problem) for p in check_diff(diff, 2)}
    assert problems == {
        ("evil", "creates or changes a symlink"),
        ("fw.bin", "binary blob of 5000000 bytes (limit 1048576)"),
    }


def test_rename_paths_are_checked() -> None:
    diff = ("diff --git a/x.c b/x.c\nsimilarity index 100%\nrename from x.c\n"
            "rename to ../x.c\n")
    assert [(p.path, p.problem) for p in check_diff(diff)] == [("../x.c", "'..' in path")]


def test_paths_through_a_symlink_in_the_tree(tmp_path: Path) -> None:
    repo = tmp_path / "t"
    base = make_fake_kernel(repo)
    os.symlink("/tmp", repo / "arch" / "link")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "link")
    head = git(repo, "rev-parse", "HEAD")
    assert symlinks_on_paths(repo, head, ("arch/link/x.c", "arch/x86/kvm/x86.c")) == [
        ("arch/link/x.c", "arch/link")
    ]
    assert symlinks_on_paths(repo, base, ("arch/link/x.c",)) == []
