"""Pipeline results -> report contexts, on a real git repository and built values: the first
patch that breaks the build gets a build-failure mail with its own added lines marked, and the
series table still covers every patch."""

from __future__ import annotations

from pathlib import Path

from bot.build.diagnostics import Diagnostic, Severity
from bot.build.kernel import BuildArtifacts, BuildResult, BuildStatus
from bot.config import load_config
from bot.intake.model import Patch, Person, Series
from bot.pipeline.report import _test_outcome, contexts
from bot.pipeline.series_job import CommitRuns, SeriesJobResult
from bot.report import context as rc
from bot.tree import git
from bot.tree.apply import AppliedPatch, ApplyResult, ApplyStatus
from bot.tree.edit import commit_edits
from bot.tree.trees import BaseRuleKind, ResolvedBase
from bot.vm.model import Outcome, TestResult

AUTHOR = Person("Dev Eloper", "dev@example.org")
GOOD = "int kvm_fn(void)\n{\n\treturn 0;\n}\n"
BROKEN = "int kvm_fn(void)\n{\n\tint x = ;\n\treturn 0;\n}\n"


def _build(sha: str, status: BuildStatus, diags: tuple[Diagnostic, ...] = ()) -> BuildResult:
    return BuildResult(status=status, rev=sha, tree_id="t", config_fingerprint="f", key="k",
                       duration_s=1.0, artifacts=BuildArtifacts(None, None, None, None),
                       diagnostics=diags, message="make bzImage failed",
                       failed_step="" if status is BuildStatus.PASS else "bzImage",
                       toolchain="gcc (Debian 12.2.0-14) 12.2.0; ld")


def _patch(i: int, title: str, diff: str) -> Patch:
    return Patch(index=i, total=2, message_id=f"p{i}@example.org",
                 subject=f"[PATCH {i}/2] {title}", title=title, author=AUTHOR, date=None,
                 commit_message=title, diff=diff, files=("arch/x86/kvm/x.c",), patch_id="0",
                 trailers=())


def test_build_failure_marks_the_patch_lines(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git.git(repo, "init", "-q")
    base = commit_edits(repo, _empty_commit(repo), {"arch/x86/kvm/x.c": GOOD}, "base")
    c1 = commit_edits(repo, base, {"README": "hi\n"}, "KVM: doc")
    c2 = commit_edits(repo, c1, {"arch/x86/kvm/x.c": BROKEN}, "KVM: break it")
    series = Series(version=1, title="KVM: two patches", prefixes=("PATCH",), total=2,
                    cover=None, missing=(),
                    patches=(_patch(1, "KVM: doc", "+hi\n"),
                             _patch(2, "KVM: break it", "+\tint x = ;\n")))
    resolved = ResolvedBase("linux", "master", base, BaseRuleKind.DEFAULT_BRANCH)
    applied = ApplyResult(ApplyStatus.APPLIED, "linux", resolved, repo,
                          (AppliedPatch(1, "KVM: doc", c1), AppliedPatch(2, "KVM: break it", c2)))
    err = Diagnostic("arch/x86/kvm/x.c", 3, 17, Severity.ERROR, "expected expression before ';'")
    commits = (CommitRuns(0, base, "base", _build(base, BuildStatus.PASS)),
               CommitRuns(1, c1, "KVM: doc", _build(c1, BuildStatus.PASS)),
               CommitRuns(2, c2, "KVM: break it", _build(c2, BuildStatus.FAIL, (err,))))
    result = SeriesJobResult(series, "kvm", applied, commits, None, "nested-state")

    ctxs = contexts(load_config(), result)
    kinds = [type(c) for c in ctxs]
    assert kinds == [rc.BuildFailureReport]  # nothing booted: no series table, no regression
    report = ctxs[0]
    assert isinstance(report, rc.BuildFailureReport)
    assert report.patch_index == 2
    assert report.target.msgid == "p2@example.org"
    assert report.base.chosen_by is rc.BaseChoice.GUESSED
    (error,) = report.errors
    assert str(error.diagnostic) == "arch/x86/kvm/x.c:3:17: expected expression before ';'"
    marked = [line.text for line in error.excerpt if line.added]
    assert marked == ["\tint x = ;"]
    assert report.compiler == "gcc (Debian 12.2.0-14) 12.2.0"
    assert "test-series p1@example.org --tree linux --list kvm" in report.reproduce.kbot_command


def _empty_commit(repo: Path) -> str:
    tree = git.git(repo, "mktree", input=b"").stdout.strip()
    return git.git(repo, "commit-tree", tree, input=b"empty\n").stdout.strip()


def test_plan_exclusions_are_skips_with_reason_and_a_stopped_guest_is_not_tested() -> None:
    excluded = TestResult("vmx_preemption_timer_test", 1, Outcome.NOT_RUN, None, None,
                          skip_reason="excluded on bochs", known_limit="hangs Bochs")
    out = _test_outcome("vmx_preemption_timer_test [bochs]", excluded)
    assert out.status is rc.TestStatus.SKIP
    assert out.reason == "excluded on bochs: hangs Bochs"
    stopped = TestResult("state_test", 1, Outcome.NOT_RUN, None, None)
    assert _test_outcome("state_test [bochs]", stopped).status is rc.TestStatus.ERROR
    limited = TestResult("svm_nested_soft_inject_test", 1, Outcome.FAIL, 254, 0.1,
                         known_limit="no NRIP save under TCG")
    assert _test_outcome("x [qemu-tcg]", limited).status is rc.TestStatus.SKIP
