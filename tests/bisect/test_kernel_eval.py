"""The kernel evaluator's mapping from build results and VM runs to verdicts (values only; the
real build + VM chain is in test_kernel_real.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.bisect.kernel_eval import one_test_plan, verdict_of_build, verdict_of_run
from bot.bisect.model import Verdict
from bot.build.kernel import BuildArtifacts, BuildResult, BuildStatus
from bot.errors import UserError
from bot.vm import model as vm
from bot.vm.model import Assertion, Backend, GuestInfo, HostCaps, Outcome, RunStatus
from bot.vm.plan import load_plan


def host(kvm: bool = False) -> HostCaps:
    return HostCaps("AuthenticAMD", "test cpu", vmx=False, svm=kvm, kvm_usable=kvm,
                    kvm_detail="no /dev/kvm" if not kvm else "ok", nested_vmx=False,
                    nested_svm=kvm, qemu="/usr/bin/qemu-system-x86_64", bochs="/usr/bin/bochs",
                    xorriso="/usr/bin/xorriso", cpus=2)


def build(status: BuildStatus = BuildStatus.PASS, selftests: tuple[str, ...] = ("state_test",),
          message: str = "") -> BuildResult:
    return BuildResult(status=status, rev="a" * 40, tree_id="t", config_fingerprint="f",
                       key="k", duration_s=1.0,
                       artifacts=BuildArtifacts(Path("/b/bzImage"), Path("/b/kselftest"), None,
                                                None),
                       selftests=selftests, message=message, failed_step="bzImage")


def run(status: RunStatus = RunStatus.COMPLETED, *results: vm.TestResult) -> vm.TestRun:
    return vm.TestRun(backend=Backend.QEMU_TCG, backend_reason="r", plan="p", sets=("svm",),
                   kernel=Path("/b/bzImage"), status=status, status_detail="detail",
                   results=tuple(results), signatures=(), guest=GuestInfo(), command=("qemu",),
                   console_log=Path("/c"), emulator_exit=0, duration_s=1.0, boot_s=1.0)


def result(outcome: Outcome, known_limit: str | None = None) -> vm.TestResult:
    assertion = Assertion("x86_64/state_test.c", 42, "!ret", "", "errno=22 - Invalid argument",
                          ()) if outcome is Outcome.FAIL else None
    return vm.TestResult("state_test", 1, outcome, 0 if outcome is Outcome.PASS else 254, 1.0,
                      assertion=assertion, known_limit=known_limit)


def test_test_outcomes_map_to_verdicts() -> None:
    assert verdict_of_run(run(RunStatus.COMPLETED, result(Outcome.PASS)), "state_test").verdict \
        is Verdict.GOOD
    bad = verdict_of_run(run(RunStatus.COMPLETED, result(Outcome.FAIL)), "state_test")
    assert bad.verdict is Verdict.BAD and "x86_64/state_test.c:42" in bad.note
    crash = verdict_of_run(run(RunStatus.CRASHED, result(Outcome.CRASH)), "state_test")
    assert crash.verdict is Verdict.BAD


@pytest.mark.parametrize("outcome", [Outcome.SKIP, Outcome.NOT_RUN, Outcome.TIMEOUT])
def test_untestable_outcomes_are_skips(outcome: Outcome) -> None:
    v = verdict_of_run(run(RunStatus.COMPLETED, result(outcome)), "state_test")
    assert v.verdict is Verdict.SKIP


def test_emulator_limit_failure_is_a_skip() -> None:
    v = verdict_of_run(run(RunStatus.COMPLETED, result(Outcome.FAIL, "no NRIP save")),
                       "state_test")
    assert v.verdict is Verdict.SKIP and "NRIP" in v.note


@pytest.mark.parametrize("status", [RunStatus.BOOT_FAILURE, RunStatus.HANG,
                                    RunStatus.INFRA_ERROR])
def test_boot_failure_and_hang_are_skips(status: RunStatus) -> None:
    v = verdict_of_run(run(status), "state_test")
    assert v.verdict is Verdict.SKIP and status.value in v.note


def test_missing_result_is_a_skip() -> None:
    v = verdict_of_run(run(RunStatus.COMPLETED), "state_test")
    assert v.verdict is Verdict.SKIP


def test_build_breaks_are_skips() -> None:
    assert verdict_of_build(build(), "state_test") is None
    assert verdict_of_build(build(selftests=("x86_64/state_test",)), "state_test") is None
    fail = verdict_of_build(build(BuildStatus.FAIL, message="x86.c:1: error: boom"),
                            "state_test")
    assert fail is not None and fail.verdict is Verdict.SKIP and "boom" in fail.note
    err = verdict_of_build(build(BuildStatus.ERROR, message="timed out"), "state_test")
    assert err is not None and err.verdict is Verdict.SKIP
    missing = verdict_of_build(build(selftests=("smm_test",)), "state_test")
    assert missing is not None and "not built" in missing.note


def test_one_test_plan_picks_fastest_set() -> None:
    plan = load_plan("nested-state")
    # state_test is in both sets: without KVM, QEMU TCG (svm) beats Bochs (vmx).
    c = one_test_plan(plan, "state_test", host(), None)
    assert c.set_name == "svm" and c.backend is Backend.QEMU_TCG
    assert [t.name for s in c.plan.sets for t in s.tests] == ["state_test"]
    v = one_test_plan(plan, "state_test", host(), None, set_name="vmx")
    assert v.backend is Backend.BOCHS
    assert one_test_plan(plan, "evmcs_test", host(), None).set_name == "vmx"
    with pytest.raises(UserError, match="not in plan"):
        one_test_plan(plan, "no_such_test", host(), None)
    with pytest.raises(UserError, match="excluded on bochs"):
        one_test_plan(plan, "vmx_preemption_timer_test", host(), None)
