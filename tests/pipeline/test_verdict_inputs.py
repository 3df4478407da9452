"""How VM runs become per-test verdict inputs: skips stay skips, emulator limits never count,
a hung VM is 'could not test', and kernel splats become tests of their own."""

from __future__ import annotations

from pathlib import Path

from bot.bisect.model import Verdict
from bot.bisect.series import TestClass, classify_series
from bot.pipeline.series_job import CommitRuns, verdict_inputs
from bot.vm.model import (
    Backend,
    ConsoleSignature,
    GuestInfo,
    Outcome,
    RunStatus,
    SignatureKind,
    TestResult,
    TestRun,
)


def _run(backend: Backend, status: RunStatus, results: dict[str, Outcome], *,
         limits: dict[str, str] | None = None, splat: str = "") -> TestRun:
    sigs = ()
    if splat:
        sigs = (ConsoleSignature(SignatureKind.WARNING, splat, "f", "arch/x86/kvm/x.c", 1,
                                 None, 1),)
    return TestRun(
        backend=backend, backend_reason="test", plan="p", sets=("svm",), kernel=Path("/k"),
        status=status, status_detail="", guest=GuestInfo(), command=(), signatures=sigs,
        console_log=Path("/nonexistent"), emulator_exit=0, duration_s=1.0, boot_s=1.0,
        results=tuple(TestResult(name, 1, outcome, 0, 1.0,
                                 known_limit=(limits or {}).get(name))
                      for name, outcome in results.items()))


def _commit(i: int, *runs: TestRun) -> CommitRuns:
    return CommitRuns(i, f"{i:040x}", f"c{i}", None, runs)


def test_new_failure_skip_and_known_limit() -> None:
    tcg = Backend.QEMU_TCG
    ok = {"state_test": Outcome.PASS, "vmx_test": Outcome.SKIP, "soft": Outcome.FAIL}
    bad = {"state_test": Outcome.FAIL, "vmx_test": Outcome.SKIP, "soft": Outcome.FAIL}
    limits = {"soft": "no NRIP save"}
    commits = [
        _commit(0, _run(tcg, RunStatus.COMPLETED, ok, limits=limits)),
        _commit(1, _run(tcg, RunStatus.COMPLETED, ok, limits=limits)),
        _commit(2, _run(tcg, RunStatus.COMPLETED, bad, limits=limits)),
    ]
    runs = {r.test: r for r in verdict_inputs(commits)}
    assert runs["state_test [qemu-tcg]"].per_commit == (
        (Verdict.GOOD,), (Verdict.GOOD,), (Verdict.BAD,))
    # A skip is never a pass, and a known emulator limit is never a failure: tests that only
    # skipped have nothing to compare and stay out of the verdict.
    assert "vmx_test [qemu-tcg]" not in runs
    assert "soft [qemu-tcg]" not in runs
    verdict = classify_series(list(runs.values()))
    new = verdict.of_kind(TestClass.NEW)
    assert [t.test for t in new] == ["state_test [qemu-tcg]"]
    # One run each: the failure is not yet a regression; patch 2 and its parent run again.
    assert verdict.first_bad_patch is None and not verdict.regressed
    assert new[0].likely_patch == 2 and set(new[0].more_runs) >= {1, 2}
    # The job's next rounds: every boot of a commit counts, in the order made.
    commits[1] = _commit(1, *commits[1].runs, _run(tcg, RunStatus.COMPLETED, ok, limits=limits))
    commits[2] = _commit(2, *commits[2].runs, *[_run(tcg, RunStatus.COMPLETED, bad,
                                                     limits=limits)] * 2)
    runs = {r.test: r for r in verdict_inputs(commits)}
    assert runs["state_test [qemu-tcg]"].per_commit == (
        (Verdict.GOOD,), (Verdict.GOOD,) * 2, (Verdict.BAD,) * 3)
    verdict = classify_series(list(runs.values()))
    assert verdict.first_bad_patch == 2 and verdict.regressed
    (tv,) = verdict.of_kind(TestClass.NEW)
    assert tv.confidence >= 0.95 and tv.note == "first fails at patch 2 (3:3 at patch 2, 0:2 at " \
        "patch 1)"


def test_hung_vm_is_untested_not_failed_and_splats_are_tests() -> None:
    bochs = Backend.BOCHS
    res = {"evmcs_test": Outcome.PASS}
    commits = [
        _commit(0, _run(bochs, RunStatus.COMPLETED, res)),
        _commit(1, _run(bochs, RunStatus.HANG, {"evmcs_test": Outcome.TIMEOUT})),
        _commit(2, _run(bochs, RunStatus.COMPLETED, res,
                        splat="WARNING in vmx_get_nested_state")),
    ]
    runs = {r.test: r for r in verdict_inputs(commits)}
    assert runs["evmcs_test [bochs]"].per_commit[1] == (Verdict.SKIP,)
    assert runs["boot [bochs]"].per_commit == ((Verdict.GOOD,), (Verdict.SKIP,), (Verdict.GOOD,))
    splat = runs["kernel: WARNING in vmx_get_nested_state [bochs]"]
    assert splat.per_commit == ((Verdict.GOOD,), (Verdict.SKIP,), (Verdict.BAD,))
    verdict = classify_series(list(runs.values()))
    assert {t.test for t in verdict.of_kind(TestClass.NEW)} == {
        "kernel: WARNING in vmx_get_nested_state [bochs]"}
    (tv,) = verdict.unsure  # one run: not a regression yet, and patch 1 hid it: 1 or 2
    assert tv.candidates == (1, 2) and not verdict.regressed


def test_boot_failure_is_a_failure_of_the_patch() -> None:
    tcg = Backend.QEMU_TCG
    commits = [
        _commit(0, _run(tcg, RunStatus.COMPLETED, {"state_test": Outcome.PASS})),
        _commit(1, _run(tcg, RunStatus.BOOT_FAILURE, {"state_test": Outcome.NOT_RUN})),
    ]
    runs = {r.test: r for r in verdict_inputs(commits)}
    assert runs["boot [qemu-tcg]"].per_commit == ((Verdict.GOOD,), (Verdict.BAD,))
    assert runs["state_test [qemu-tcg]"].per_commit == ((Verdict.GOOD,), (Verdict.SKIP,))
