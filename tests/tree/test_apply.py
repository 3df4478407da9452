"""Mirrors, base resolution and `git am -3` per patch, on real git repos (the fake kernel)."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from bot.config import BaseRule, BotSection, Config, TreeSection
from bot.tree.apply import ApplyStatus, apply_series
from bot.tree.trees import BaseRuleKind, Trees
from tests.build.fake_kernel import commit, git, make_fake_kernel
from tests.tree.series_from_git import patch_id, series_from_range

pytestmark = pytest.mark.timeout(120)

X86 = "arch/x86/kvm/x86.c"


@pytest.fixture
def upstream(tmp_path: Path) -> tuple[Path, str]:
    """A user's checkout: master, and a `queue` branch one commit ahead."""
    repo = tmp_path / "user-linux"
    base = make_fake_kernel(repo)
    git(repo, "checkout", "-q", "-b", "queue")
    commit(repo, {"kernel/queued.c": "int queued;\n"}, "KVM: queued fix")
    git(repo, "checkout", "-q", "master")
    return repo, base


def make_config(tmp_path: Path, repo: Path, rules: tuple[BaseRule, ...] = ()) -> Config:
    return Config(
        bot=BotSection(cache_dir=str(tmp_path / "cache")),
        trees=(TreeSection(name="up", path=str(repo), branches=("master", "queue")),),
        base_rules=rules,
    )


def author_series(tmp_path: Path, upstream: Path, base: str, name: str = "author") -> Path:
    """The patch author's clone with three commits on `base`."""
    clone = tmp_path / name
    subprocess.run(["git", "clone", "-q", str(upstream), str(clone)], check=True)  # noqa: S603
    git(clone, "checkout", "-q", base)
    commit(clone, {X86: "int kvm_x86_init(void)\n{\n\treturn 1;\n}\n"}, "KVM: x86: one")
    commit(clone, {"arch/x86/kvm/vmx/nested.c": "int nested_vmx_check(int s)\n{\n"
                   "\treturn !!s;\n}\n"}, "KVM: nVMX: two")
    commit(clone, {"kernel/fork.c": "int fork_me(void)\n{\n\treturn 5;\n}\n"}, "KVM: three")
    return clone


def status_of(repo: Path) -> tuple[str, str, str]:
    return (git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain"),
            git(repo, "worktree", "list"))


def test_series_applies_one_commit_per_patch_without_touching_the_users_checkout(
    tmp_path: Path, upstream: tuple[Path, str]
) -> None:
    repo, base = upstream
    clone = author_series(tmp_path, repo, base)
    series = series_from_range(clone, base, "HEAD")
    before = status_of(repo)
    result = apply_series(Trees(make_config(tmp_path, repo)), series)
    assert result.status is ApplyStatus.APPLIED, result.summary()
    assert result.base.rule is BaseRuleKind.DEFAULT_BRANCH and result.base.guessed
    assert (result.base.branch, result.base.sha) == ("master", base)
    assert [c.index for c in result.commits] == [1, 2, 3]
    # Each commit is exactly the author's commit: same tree, same title.
    author_trees = git(clone, "log", "--reverse", "--format=%T", f"{base}..HEAD").split()
    mirror = result.repo
    assert [git(mirror, "rev-parse", f"{c.sha}^{{tree}}") for c in result.commits] == author_trees
    assert git(mirror, "log", "-1", "--format=%s", result.commits[1].sha) == "KVM: nVMX: two"
    assert git(mirror, "rev-parse", result.ref) == result.commits[-1].sha
    assert mirror != repo and status_of(repo) == before


def test_base_commit_footer_wins_when_the_mirror_has_it(
    tmp_path: Path, upstream: tuple[Path, str]
) -> None:
    repo, base = upstream
    clone = author_series(tmp_path, repo, base)
    series = series_from_range(clone, base, "HEAD", base_commit=base)
    resolved = Trees(make_config(tmp_path, repo)).resolve_base(series)
    assert (resolved.rule, resolved.sha, resolved.branch) == (BaseRuleKind.BASE_COMMIT, base, None)
    assert not resolved.guessed and "base-commit" in resolved.describe()


def test_unknown_base_commit_falls_back_to_rules_and_says_so(
    tmp_path: Path, upstream: tuple[Path, str]
) -> None:
    repo, base = upstream
    clone = author_series(tmp_path, repo, base)
    series = series_from_range(clone, base, "HEAD", base_commit="deadbeef" * 5)
    rule = BaseRule(tree="up", branch="queue", subject_tags=("KVM: nVMX",))
    resolved = Trees(make_config(tmp_path, repo, (rule,))).resolve_base(series)
    assert resolved.rule is BaseRuleKind.CONFIG_RULE and resolved.branch == "queue"
    assert resolved.sha == git(repo, "rev-parse", "queue")
    assert any("deadbeefdead not found" in n for n in resolved.notes)
    # A rule whose tag matches nothing leaves the default branch.
    other = BaseRule(tree="up", branch="queue", subject_tags=("KVM: SVM",))
    fallback = Trees(make_config(tmp_path, repo, (other,))).resolve_base(series)
    assert fallback.rule is BaseRuleKind.DEFAULT_BRANCH and fallback.branch == "master"


def test_prerequisite_patch_ids_pick_the_branch_that_has_them(
    tmp_path: Path, upstream: tuple[Path, str]
) -> None:
    repo, base = upstream
    clone = author_series(tmp_path, repo, base)
    queued = git(repo, "show", "--format=", "queue")
    prereq = patch_id(queued, repo)
    config = make_config(tmp_path, repo, (BaseRule(tree="up", branch="master"),
                                          BaseRule(tree="up", branch="queue")))
    series = series_from_range(clone, base, "HEAD", prerequisites=(prereq,))
    resolved = Trees(config).resolve_base(series)
    assert (resolved.rule, resolved.branch) == (BaseRuleKind.PREREQUISITES, "queue")
    assert any("not in the last" in n and "up/master" in n for n in resolved.notes)


def test_patch_that_does_not_apply_is_a_result_and_leaves_the_worktree_clean(
    tmp_path: Path, upstream: tuple[Path, str]
) -> None:
    repo, base = upstream
    clone = author_series(tmp_path, repo, base)
    series = series_from_range(clone, base, "HEAD")
    # Upstream moves on: the same line of nested.c changed differently.
    commit(repo, {"arch/x86/kvm/vmx/nested.c": "int nested_vmx_check(int s)\n{\n"
                  "\treturn s > 1;\n}\n"}, "upstream change")
    trees = Trees(make_config(tmp_path, repo))
    result = apply_series(trees, series)
    assert result.status is ApplyStatus.CONFLICT
    assert (result.failed_index, result.failed_title) == (2, "KVM: nVMX: two")
    assert result.conflicts == ("arch/x86/kvm/vmx/nested.c",)
    assert "nested.c" in result.git_message
    assert [c.index for c in result.commits] == [1]
    (wt,) = [p for p in (trees.config.cache_dir / "worktrees").iterdir() if p.is_dir()]
    assert git(wt, "status", "--porcelain") == ""
    assert not (Path(git(wt, "rev-parse", "--git-dir")) / "rebase-apply").exists()
    # The next job starts from a clean worktree and works.
    git(repo, "reset", "-q", "--hard", base)
    trees2 = Trees(make_config(tmp_path, repo))
    trees2.get(trees2.section("up"), fetch=True)
    assert apply_series(trees2, series).ok


def test_unsafe_patch_is_rejected_before_anything_is_applied(
    tmp_path: Path, upstream: tuple[Path, str]
) -> None:
    repo, base = upstream
    clone = author_series(tmp_path, repo, base)
    series = series_from_range(clone, base, "HEAD")
    evil = dataclasses.replace(
        series.patches[2],
        diff=series.patches[2].diff.replace("a/kernel/fork.c", "a/../../etc/fork.c")
        .replace("b/kernel/fork.c", "b/../../etc/fork.c"),
    )
    series = dataclasses.replace(series, patches=(*series.patches[:2], evil))
    result = apply_series(Trees(make_config(tmp_path, repo)), series)
    assert result.status is ApplyStatus.REJECTED and result.commits == ()
    assert {(p.patch, p.path, p.problem) for p in result.problems} == {
        (3, "../../etc/fork.c", "'..' in path")
    }


def test_url_tree_is_mirrored(tmp_path: Path, upstream: tuple[Path, str]) -> None:
    repo, base = upstream
    config = Config(
        bot=BotSection(cache_dir=str(tmp_path / "cache")),
        trees=(TreeSection(name="kvm", url=f"file://{repo}", branches=("master", "queue"),
                           default_branch="queue"),),
    )
    trees = Trees(config)
    tree = trees.get(trees.section("kvm"))
    assert tree.mirror.is_relative_to(tmp_path / "cache" / "trees")
    assert trees.branch_sha(tree, "queue") == git(repo, "rev-parse", "queue")
    new = commit(repo, {"kernel/new.c": "int n;\n"}, "new upstream commit")
    assert trees.branch_sha(trees.get(trees.section("kvm"), fetch=True), "master") == new


def test_fetch_keeps_kbots_own_refs(tmp_path: Path, upstream: tuple[Path, str]) -> None:
    repo, base = upstream
    clone = author_series(tmp_path, repo, base)
    trees = Trees(make_config(tmp_path, repo))
    result = apply_series(trees, series_from_range(clone, base, "HEAD"))
    assert result.ok
    git(repo, "branch", "-q", "-D", "queue")
    tree = trees.get(trees.section("up"), fetch=True)
    assert git(tree.mirror, "rev-parse", result.ref) == result.commits[-1].sha
    assert git(tree.mirror, "branch", "--list", "queue") == ""  # upstream's deletion pruned


def test_applying_the_same_series_again_makes_the_same_commits(
    tmp_path: Path, upstream: tuple[Path, str]
) -> None:
    """A job resumed after a crash (or a rerun) re-applies the series: it must get the same
    shas, or its stored boots and the shas in its reports would no longer match."""
    repo, base = upstream
    clone = author_series(tmp_path, repo, base)
    series = series_from_range(clone, base, "HEAD")
    first = apply_series(Trees(make_config(tmp_path, repo)), series)
    again = apply_series(Trees(make_config(tmp_path, repo)), series, keep_worktree=False)
    assert first.status is again.status is ApplyStatus.APPLIED
    assert [c.sha for c in first.commits] == [c.sha for c in again.commits]
    date = git(first.repo, "log", "-1", "--format=%ct %at", first.commits[0].sha).split()
    assert date[0] == date[1]  # committed at the mail's date
