"""Real tier: linux-source-6.1, the shared base build, and a 3-patch series made with
`git format-patch` (clean / adds a warning / breaks the build), parsed by intake, applied with
`git am -3` and built incrementally in the reused build slot."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from bot import proc
from bot.build.diagnostics import Severity
from bot.build.kernel import BuildResult, BuildStatus, KernelBuilder
from bot.build.series import build_commits
from bot.config import load_config
from bot.intake.cli import load_messages
from bot.intake.series import assemble
from bot.tree import git
from bot.tree.apply import ApplyStatus, apply_series
from bot.tree.kernel_source import KernelSource
from bot.tree.trees import BaseRuleKind, Trees

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(1800)]

NESTED = "arch/x86/kvm/vmx/nested.c"
SVM_NESTED = "arch/x86/kvm/svm/nested.c"
EPTP_HEAD = (
    "static bool nested_vmx_check_eptp(struct kvm_vcpu *vcpu, u64 new_eptp)\n{\n"
    "\tstruct vcpu_vmx *vmx = to_vmx(vcpu);\n"
)
MT_COMMENT = "\t/* Check for memory type validity */\n"
VMRUN_HEAD = (
    "int nested_svm_vmrun(struct kvm_vcpu *vcpu)\n{\n\tstruct vcpu_svm *svm = to_svm(vcpu);\n"
)
WARN_LINE = 2688  # the line `int kbot_unused;` lands on in 6.1.192's nested.c


def format_patch(repo: Path, base: str, tip: str, out: Path) -> Path:
    res = git.git(repo, "format-patch", "--stdout", "--thread", "--cover-letter",
                  f"--base={base}", f"{base}..{tip}")
    out.write_text(res.stdout)
    return out


def test_base_build(base_build: BuildResult, kernel_source: KernelSource) -> None:
    assert base_build.status is BuildStatus.PASS
    assert base_build.artifacts.bzimage is not None
    assert base_build.artifacts.bzimage.stat().st_size > 1_000_000
    assert base_build.config_dropped == ()
    for test in ("x86_64/state_test", "x86_64/evmcs_test", "x86_64/vmx_set_nested_state_test"):
        assert test in base_build.selftests
    # 6.1.192's broken stable backport: recorded, not fatal.
    assert {"dirty_log_test", "steal_time"} <= set(base_build.missing_selftests)
    assert base_build.errors == ()
    assert base_build.artifacts.selftests_dir is not None
    info = proc.run(["file", base_build.artifacts.selftests_dir / "x86_64/state_test"],
                    timeout=30, check=True)
    assert "statically linked" in info.stdout


def test_series_apply_and_incremental_builds(
    tmp_path: Path,
    kernel_source: KernelSource,
    kernel_builder: KernelBuilder,
    kernel_commit: Callable[..., str],
    base_build: BuildResult,
) -> None:
    base = kernel_source.base_sha
    c1 = kernel_commit({NESTED: (MT_COMMENT, MT_COMMENT.replace("validity", "validity (kbot)"))},
                       "KVM: nVMX: clean comment change", base)
    c2 = kernel_commit({NESTED: (EPTP_HEAD, EPTP_HEAD + "\tint kbot_unused;\n")},
                       "KVM: nVMX: add an unused variable", c1)
    c3 = kernel_commit({SVM_NESTED: (VMRUN_HEAD, VMRUN_HEAD + "\treturn kbot_undefined;\n")},
                       "KVM: nSVM: break the build", c2)
    mbox = format_patch(kernel_source.path, base, c3, tmp_path / "series.mbox")
    (series,) = assemble(load_messages(str(mbox), max_bytes=16 << 20, problems=[]))
    assert [p.index for p in series.patches] == [1, 2, 3] and series.base_commit == base

    trees = Trees(load_config())
    applied = apply_series(trees, series, tree="linux-6.1")
    assert applied.status is ApplyStatus.APPLIED, applied.summary()
    assert applied.base.rule is BaseRuleKind.BASE_COMMIT and applied.base.sha == base
    repo = applied.repo
    assert [git.tree_id(repo, c.sha) for c in applied.commits] == [
        git.tree_id(repo, c) for c in (c1, c2, c3)
    ]

    results = build_commits(kernel_builder, repo, applied.shas, progress=lambda s: None)
    r0, r1, r2, r3 = results
    assert r0.cached and r0.key == base_build.key  # the base is never built twice
    assert [r.status for r in results] == [BuildStatus.PASS] * 3 + [BuildStatus.FAIL]
    assert r1.new_warnings == ()
    (w,) = r2.new_warnings
    assert (w.file, w.line, w.flag) == (NESTED, WARN_LINE, "-Wunused-variable")
    assert "kbot_unused" in w.message
    assert r3.new_warnings == ()
    errors = [e for e in r3.errors if e.file == SVM_NESTED]
    assert errors and errors[0].severity is Severity.ERROR and "kbot_undefined" in errors[0].message
    assert f"{SVM_NESTED}:{errors[0].line}:" in r3.message
    # Incremental: each step recompiled a handful of objects, not the kernel.
    for r, obj in ((r1, "arch/x86/kvm/vmx/nested.o"), (r2, "arch/x86/kvm/vmx/nested.o"),
                   (r3, "arch/x86/kvm/svm/nested.o")):
        if r.cached:
            continue  # an earlier run of this test built it: served from the store
        assert r.artifacts.log is not None
        cc = [ln.split()[-1] for ln in r.artifacts.log.read_text().splitlines()
              if ln.startswith("  CC ")]
        assert obj in cc and len(cc) < 15, cc
    # Asking again is served from the artifact store.
    again = kernel_builder.build(repo, applied.shas[2], progress=lambda s: None)
    assert again.cached and again.new_warnings == r2.new_warnings


def test_patch_that_does_not_apply_gives_the_conflict(
    tmp_path: Path, kernel_source: KernelSource, kernel_commit: Callable[..., str]
) -> None:
    base = kernel_source.base_sha
    other = kernel_commit({NESTED: (MT_COMMENT, "\t/* memory type, other tree */\n")},
                          "KVM: nVMX: someone else's change", base)
    mine = kernel_commit({NESTED: ("\t/* memory type, other tree */\n",
                                   "\t/* memory type, my series */\n")},
                         "KVM: nVMX: my change on their tree", other)
    mbox = format_patch(kernel_source.path, other, mine, tmp_path / "conflict.mbox")
    (series,) = assemble(load_messages(str(mbox), max_bytes=16 << 20, problems=[]))
    series = dataclasses.replace(series, base_commit=None)  # make it guess: master
    result = apply_series(Trees(load_config()), series, tree="linux-6.1")
    assert result.status is ApplyStatus.CONFLICT
    assert result.base.rule is BaseRuleKind.DEFAULT_BRANCH and result.base.sha == base
    assert (result.failed_index, result.conflicts) == (1, (NESTED,))
    assert result.commits == () and result.git_message


def test_seed_thread_names_the_file_that_does_not_apply(
    seed_mbox: Path, kernel_source: KernelSource
) -> None:
    """The real 5.12-era eVMCS series on 6.1: no blobs for a 3-way merge, so the plain
    check names the file and hunk."""
    (series,) = assemble(load_messages(str(seed_mbox), max_bytes=16 << 20, problems=[]))
    result = apply_series(Trees(load_config()), series, tree="linux-6.1")
    assert result.status is ApplyStatus.CONFLICT and result.failed_index == 1
    assert result.conflicts == (NESTED,)
    assert f"error: patch failed: {NESTED}:" in result.git_message
