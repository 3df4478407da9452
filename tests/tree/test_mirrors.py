"""Several trees at once: a list's own tree and branch, trees mirrored only when reached, git's
progress while mirroring, and a reference clone whose objects a first mirror borrows."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bot.config import BaseRule, BotSection, Config, ListSection, TreeSection
from bot.tree import git as kgit
from bot.tree.trees import BaseRuleKind, Trees
from tests.build.fake_kernel import commit, git, make_fake_kernel
from tests.tree.series_from_git import series_from_range

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def two_trees(tmp_path: Path) -> tuple[Path, Path, str]:
    """`up` (master and queue, one commit apart) and `other`, a second project."""
    up = tmp_path / "up"
    base = make_fake_kernel(up)
    git(up, "checkout", "-q", "-b", "queue")
    commit(up, {"kernel/queued.c": "int queued;\n"}, "KVM: queued fix")
    git(up, "checkout", "-q", "master")
    other = tmp_path / "other"
    make_fake_kernel(other)
    return up, other, base


def _config(tmp_path: Path, up: Path, other: Path, *, list_tree: str = "",
            list_branch: str = "", rules: tuple[BaseRule, ...] = ()) -> Config:
    return Config(
        bot=BotSection(cache_dir=str(tmp_path / "cache")),
        lists=(ListSection(name="kvm", tree=list_tree, branch=list_branch),),
        trees=(TreeSection(name="other", path=str(other)),
               TreeSection(name="up", path=str(up), branches=("master", "queue"))),
        base_rules=rules,
    )


def _mirrors(tmp_path: Path) -> list[str]:
    root = tmp_path / "cache" / "trees"
    return sorted(p.name.rsplit("-", 1)[0] for p in root.glob("*.git")) if root.is_dir() else []


def test_a_series_goes_to_its_lists_tree_and_branch_and_mirrors_only_that(
    tmp_path: Path, two_trees: tuple[Path, Path, str]
) -> None:
    up, other, base = two_trees
    clone = tmp_path / "author"
    subprocess.run(["git", "clone", "-q", str(up), str(clone)], check=True)  # noqa: S603
    commit(clone, {"kernel/fork.c": "int fork_me(void)\n{\n\treturn 5;\n}\n"}, "KVM: x: one")
    series = series_from_range(clone, base, "HEAD")

    config = _config(tmp_path, up, other, list_tree="up", list_branch="queue")
    got = Trees(config).resolve_base(series, list_name="kvm")
    assert (got.tree, got.branch, got.rule) == ("up", "queue", BaseRuleKind.CONFIG_RULE)
    assert got.sha == git(up, "rev-parse", "queue") and "list kvm" in got.detail
    assert _mirrors(tmp_path) == ["up"]  # `other`, first in the config, was never mirrored

    # A list without its own tree: the first tree's default branch, as before.
    got = Trees(_config(tmp_path, up, other)).resolve_base(series, list_name="kvm")
    assert (got.tree, got.branch, got.rule) == ("other", "master", BaseRuleKind.DEFAULT_BRANCH)
    # A matching base rule is more specific than the list's tree.
    rule = BaseRule(tree="up", branch="master", subject_tags=("KVM: x:",))
    config = _config(tmp_path, up, other, list_tree="up", list_branch="queue", rules=(rule,))
    got = Trees(config).resolve_base(series, list_name="kvm")
    assert (got.tree, got.branch) == ("up", "master") and got.detail.startswith("base_rules[0]")


def test_a_base_commit_is_looked_up_in_the_lists_tree_first(
    tmp_path: Path, two_trees: tuple[Path, Path, str]
) -> None:
    up, other, _ = two_trees
    shared = tmp_path / "common"  # a commit both trees have (a mainline release, say)
    base = make_fake_kernel(shared)
    for repo in (up, other):
        git(repo, "fetch", "-q", str(shared), "master:shared")
    clone = tmp_path / "author"
    subprocess.run(["git", "clone", "-q", str(shared), str(clone)], check=True)  # noqa: S603
    commit(clone, {"kernel/fork.c": "int fork_me(void)\n{\n\treturn 5;\n}\n"}, "KVM: x: one")
    series = series_from_range(clone, base, "HEAD", base_commit=base)
    got = Trees(_config(tmp_path, up, other, list_tree="up")).resolve_base(series,
                                                                           list_name="kvm")
    assert (got.tree, got.rule, got.sha) == ("up", BaseRuleKind.BASE_COMMIT, base)


def _big_repo(path: Path, files: int = 300) -> Path:
    """A repository with a few hundred objects, so that git has progress to report."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "master")
    for i in range(files):
        (path / f"f{i:03}.txt").write_bytes(os.urandom(3000).hex().encode())
    git(path, "add", ".")
    git(path, "commit", "-qm", "many files")
    return path


def _url_config(tmp_path: Path, upstream: Path, reference: str = "") -> Config:
    return Config(bot=BotSection(cache_dir=str(tmp_path / "cache")),
                  trees=(TreeSection(name="big", url=f"file://{upstream}",
                                     reference=reference),))


def test_mirroring_shows_gits_progress(tmp_path: Path) -> None:
    upstream = _big_repo(tmp_path / "upstream")
    lines: list[str] = []
    trees = Trees(_url_config(tmp_path, upstream), progress=lines.append, progress_every_s=0)
    tree = trees.get(trees.section("big"))
    received = [ln for ln in lines if "Receiving objects:" in ln]
    # One update per line, as git rewrote it (CR), not a pile of them at the end.
    assert len(received) > 1 and all(ln.count("objects:") == 1 for ln in received), received
    assert all(ln.startswith(f"mirroring big from file://{upstream}: ") for ln in received)
    assert re.search(r"Receiving objects: 100% \((\d+)/\1\)", received[-1]), received[-1]
    assert re.fullmatch(r"mirroring big from file://\S+: done in \d+s, 30\d objects "
                        r"received \(.*\)", lines[-1]), lines[-1]
    # A later fetch reports too.
    commit_new(upstream)
    lines.clear()
    trees.get(trees.section("big"), fetch=True)
    assert any(ln.startswith("fetching big: remote: Counting objects:") for ln in lines), lines
    assert lines[-1].startswith("fetching big: done in ") and \
        lines[-1].endswith(" 3 objects received"), lines[-1]  # commit, tree, blob
    assert git(tree.mirror, "rev-parse", "master") == git(upstream, "rev-parse", "master")


def test_progress_lines_come_at_most_every_few_seconds() -> None:
    now = [0.0]
    lines: list[str] = []
    show = kgit.ProgressLines("mirroring k", lines.append, every_s=5.0, clock=lambda: now[0])
    for i in range(20):  # an update every half second for ten seconds
        now[0] = i * 0.5
        show(kgit.GitProgress("Receiving objects", i, 20, i * 5, ", 1.00 MiB | 2.00 MiB/s"))
    assert lines == ["mirroring k: Receiving objects: 0% (0/20), 1.00 MiB | 2.00 MiB/s",
                     "mirroring k: Receiving objects: 50% (10/20), 1.00 MiB | 2.00 MiB/s"]
    assert show.summary() == "mirroring k: done in 10s, 20 objects received (1.00 MiB)"


@pytest.mark.parametrize(
    ("line", "want"),
    [
        ("Receiving objects:  45% (123/456), 1.20 MiB | 2.00 MiB/s",
         ("Receiving objects", 123, 456, 45, False)),
        ("remote: Counting objects: 100% (9/9), done.        ",
         ("Counting objects", 9, 9, 100, True)),
        ("remote: Enumerating objects: 1234, done.",
         ("Enumerating objects", 1234, None, None, True)),
        ("Cloning into bare repository 'x.git'...", None),
        ("remote: Total 12 (delta 2), reused 0 (delta 0), pack-reused 0",
         ("Total", 12, 12, None, False)),
    ],
)
def test_progress_lines_are_parsed(line: str, want: tuple[object, ...] | None) -> None:
    got = kgit.parse_progress(line)
    if want is None:
        assert got is None
    else:
        assert got is not None
        assert (got.phase, got.done, got.total, got.percent, got.finished) == want


def commit_new(repo: Path) -> str:
    (repo / "new.txt").write_text("one more\n")
    git(repo, "add", "new.txt")
    git(repo, "commit", "-qm", "one more")
    return git(repo, "rev-parse", "HEAD")


def _received(lines: list[str]) -> int:
    m = re.search(r"done in \d+s, (\d+) objects received", lines[-1])
    assert m, lines[-1]
    return int(m[1])


def _pack_objects(mirror: Path) -> int:
    out = git(mirror, "count-objects", "-v")
    counts = dict(line.split(": ") for line in out.splitlines())
    return int(counts["in-pack"]) + int(counts["count"])


def test_a_reference_clone_lends_its_objects_and_the_mirror_keeps_them(tmp_path: Path) -> None:
    upstream = _big_repo(tmp_path / "upstream")
    operators = tmp_path / "operators-linux"  # the clone the operator already has
    subprocess.run(["git", "clone", "-q", str(upstream), str(operators)],  # noqa: S603
                   check=True)
    commit_new(upstream)  # the mirror needs one commit the reference lacks

    plain_lines: list[str] = []
    plain = Trees(_url_config(tmp_path / "a", upstream), progress=plain_lines.append)
    plain_tree = plain.get(plain.section("big"))
    ref_lines: list[str] = []
    borrowing = Trees(_url_config(tmp_path / "b", upstream, reference=str(operators)),
                      progress=ref_lines.append)
    ref_tree = borrowing.get(borrowing.section("big"))

    without, with_ref = _received(plain_lines), _received(ref_lines)
    # Without: 300 blobs + tree + commit, and the new commit's commit, tree, blob; with: those 3.
    assert (without, with_ref) == (305, 3)
    # Copied, not shared: both mirrors hold every object themselves, with no alternates, and
    # the reference may go away.
    assert _pack_objects(ref_tree.mirror) == _pack_objects(plain_tree.mirror)
    assert not (ref_tree.mirror / "objects" / "info" / "alternates").exists()
    shutil.rmtree(operators)
    git(ref_tree.mirror, "fsck", "--no-progress", "--connectivity-only")
    assert git(ref_tree.mirror, "rev-parse", "master") == git(upstream, "rev-parse", "master")


def test_a_reference_that_is_gone_costs_a_full_download_not_a_failure(tmp_path: Path) -> None:
    upstream = _big_repo(tmp_path / "upstream", files=20)
    lines: list[str] = []
    trees = Trees(_url_config(tmp_path, upstream, reference=str(tmp_path / "nowhere")),
                  progress=lines.append)
    tree = trees.get(trees.section("big"))
    assert _received(lines) >= 20
    assert git(tree.mirror, "rev-parse", "master") == git(upstream, "rev-parse", "master")
