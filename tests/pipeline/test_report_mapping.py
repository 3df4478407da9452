"""Pipeline results -> report contexts, on a real git repository and built values: the first
patch that breaks the build gets a build-failure mail with its own added lines marked, and the
series table still covers every patch."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.build.diagnostics import Diagnostic, Severity
from bot.build.kernel import BuildArtifacts, BuildResult, BuildStatus
from bot.config import load_config
from bot.intake.model import Patch, Person, Series
from bot.pipeline.report import _test_outcome, contexts
from bot.pipeline.series_job import CommitRuns, SeriesJobResult
from bot.report import context as rc
from bot.report.commands import parse
from bot.report.render import Identity, Renderer
from bot.tree import git
from bot.tree.apply import AppliedPatch, ApplyResult, ApplyStatus
from bot.tree.edit import commit_edits
from bot.tree.trees import BaseRuleKind, ResolvedBase
from bot.vm.model import Outcome, TestResult
from tests.report.helpers import recorded_job, world_config

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
    assert str(error.diagnostic) == "arch/x86/kvm/x.c:3:17: error: expected expression before ';'"
    marked = [line.text for line in error.excerpt if line.added]
    assert marked == ["\tint x = ;"]
    assert report.compiler == "gcc (Debian 12.2.0-14) 12.2.0"
    # Every kbot line parses with kbot's own parser (they are made through it) and names
    # nothing of kbot's machine; the build step's line rebuilds the failing commit.
    texts = [line.text for line in report.reproduce.kbot]
    assert texts == ["kbot build --tree . --rev HEAD",
                     "kbot test-series https://lore.kernel.org/kvm/p1@example.org/ --tree . "
                     "--list kvm"]
    for line in report.reproduce.kbot:
        parse(line.argv)
    assert report.reproduce.stop == "build"
    assert report.reproduce.patches == ("p1@example.org", "p2@example.org")
    assert [f.name for f in report.reproduce.fragments] == ["kvm-nested.config"]
    assert "CONFIG_KVM=y" in report.reproduce.fragments[0].text


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


@pytest.mark.parametrize(("policy", "clean", "failing"), [
    ("on-failure", [], ["regression", "series:list"]),
    ("always", ["series:list"], ["regression", "series:list"]),
    ("author", ["series:author"], ["regression", "series:list"]),
    ("never", [], ["regression"]),
])
def test_series_summary_policy(policy: str, clean: list[str], failing: list[str],
                               tmp_path: Path) -> None:
    """[report] series_summary on the recorded clean and regressing jobs: a clean series is
    mailed to no one by default; a failure always gets its mails."""
    cfg = world_config(tmp_path, f'series_summary = "{policy}"\n')

    def kinds(job: str) -> list[str]:
        return [f"series:{c.audience.value}" if isinstance(c, rc.SeriesReport) else
                c.kind.value for c in contexts(cfg, recorded_job(job), 1)]

    assert kinds("clean") == clean
    assert kinds("regress") == failing


def test_one_regression_report_per_culprit_patch(tmp_path: Path) -> None:
    ctxs = contexts(world_config(tmp_path), recorded_job("regress"), 1)
    (reg,) = [c for c in ctxs if isinstance(c, rc.RegressionReport)]
    assert reg.first_bad == 2
    assert reg.tests == ("state_test", "smm_test")  # the plan's order
    assert reg.reproduce.vm is not None and reg.reproduce.vm.tests == ("state_test", "smm_test")


def test_closes_and_links_point_to_the_lists_own_archive(tmp_path: Path) -> None:
    """Not [report] archive_url (a fallback for reports with no list): the archive of the
    list the series came from, <archive.base_url>/<list>/."""
    cfg = world_config(tmp_path, 'archive_url = "https://elsewhere.example/other/"\n')
    (reg,) = [c for c in contexts(cfg, recorded_job("regress"), 1)
              if isinstance(c, rc.RegressionReport)]
    assert reg.series.archive_url == "https://lore.kernel.org/kvm/"
    assert reg.reproduce.archive_url == "https://lore.kernel.org/kvm/"
    body = Renderer(Identity("kbot", "kbot@example.org", cfg.report.archive_url)).render(
        reg, "m1@example.org")
    assert "| Closes: https://lore.kernel.org/kvm/m1@example.org/" in body
    assert "url:     https://lore.kernel.org/kvm/regress-2@example.org/" in body
    assert "elsewhere.example" not in body
