"""Fast tier: the console parsers on real console logs recorded from kbot's own runs
(tests/vm/logs/, see README there for where each came from)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.vm import parse
from bot.vm.image import GuestTest
from bot.vm.model import Outcome, RunStatus, SignatureKind

LOGS = Path(__file__).parent / "logs"


def _log(name: str) -> parse.ConsoleParse:
    return parse.parse_console((LOGS / name).read_text(encoding="utf-8"))


def _qemu_clean(rc: int | None) -> bool:
    return rc == 0


def _bochs_clean(rc: int | None) -> bool:
    return rc in (0, 1)


def _no_limits(name: str) -> str | None:
    return None


def _expected(p: parse.ConsoleParse) -> list[GuestTest]:
    return [GuestTest(t.name, int(t.timeout_s or 60), 1) for t in p.tests]


def test_qemu_log_pass_skip_and_assertion() -> None:
    p = _log("qemu-tcg-svm.log")
    assert p.init_seen and p.done and p.boot_s is not None and p.boot_s > 0
    assert p.guest is not None and p.guest.svm and not p.guest.vmx
    assert p.guest.cpu_vendor == "AuthenticAMD" and p.guest.kvm_device
    assert p.guest.nested == "kvm_amd:1"
    assert p.signatures == ()
    limits = {"svm_nested_soft_inject_test": "TCG lacks NRIP save"}
    results = {r.name: r for r in parse.results(p, _expected(p), False, limits.get)}
    assert results["state_test"].outcome is Outcome.PASS
    assert results["state_test"].duration_s is not None
    for name in ("vmx_set_nested_state_test", "evmcs_test"):
        skip = results[name]
        assert skip.outcome is Outcome.SKIP and skip.exit_code == 4
        assert skip.skip_reason == "Requirement not met: kvm_cpu_has(X86_FEATURE_VMX)"
        assert not skip.counts_as_failure
    soft = results["svm_nested_soft_inject_test"]
    assert soft.outcome is Outcome.FAIL and soft.exit_code == 254
    assert soft.known_limit == "TCG lacks NRIP save" and not soft.counts_as_failure
    a = soft.assertion
    assert a is not None
    assert (a.file, a.line) == ("x86_64/svm_nested_soft_inject_test.c", 202)
    assert a.expression == "kvm_cpu_has(X86_FEATURE_NRIPS)"
    assert a.message == "KVM with nSVM is supposed to unconditionally advertise nRIP Save"
    assert a.errno_text.startswith("errno=11")
    # the same failure without a known limit counts
    plain = {r.name: r for r in parse.results(p, _expected(p), False, _no_limits)}
    assert plain["svm_nested_soft_inject_test"].counts_as_failure
    status, _ = parse.classify(p, False, 0, _qemu_clean)
    assert status is RunStatus.COMPLETED


def test_bochs_log_vmx_passes() -> None:
    p = _log("bochs-vmx.log")
    assert p.guest is not None and p.guest.vmx and p.guest.cpu_vendor == "GenuineIntel"
    assert p.guest.nested == "kvm_intel:Y"
    results = parse.results(p, _expected(p), False, _no_limits)
    assert [(r.name, r.outcome) for r in results] == [
        ("vmx_set_nested_state_test", Outcome.PASS),
        ("evmcs_test", Outcome.PASS),
        ("state_test", Outcome.PASS),
    ]
    assert p.signatures == ()
    # Bochs ends a clean ACPI power-off with exit status 1
    assert parse.classify(p, False, 1, _bochs_clean)[0] is RunStatus.COMPLETED


def test_bochs_log_warning_during_a_passing_test() -> None:
    p = _log("bochs-warning.log")
    warns = [s for s in p.signatures if s.kind is SignatureKind.WARNING]
    assert len(warns) == 1
    w = warns[0]
    assert w.title == "WARNING in vmx_set_nested_state"
    # printed as ../src/arch/... by an O= build: reported relative to the tree
    assert "../src/arch/x86/kvm/vmx/nested.c:6613" in w.report[0]
    assert (w.file, w.line) == ("arch/x86/kvm/vmx/nested.c", 6613)
    assert w.location == f"arch/x86/kvm/vmx/nested.c:{w.line}"
    assert w.report[0].startswith("WARNING: CPU: 0 PID: ")
    assert any(line.startswith("RIP: 0010:vmx_set_nested_state") for line in w.report)
    results = {r.name: r for r in parse.results(p, _expected(p), False, _no_limits)}
    assert w.during_test == "vmx_set_nested_state_test"
    during = results["vmx_set_nested_state_test"]
    assert during.outcome is Outcome.PASS and during.signatures == (w,)
    evmcs = results["evmcs_test"]
    assert evmcs.outcome is Outcome.FAIL and evmcs.assertion is not None
    assert "Invalid argument" in evmcs.assertion.errno_text
    assert evmcs.assertion.location == "include/kvm_util_base.h:516"
    assert evmcs.assertion.message == (
        "KVM_SET_NESTED_STATE failed, rc: -1 errno: 22 (Invalid argument)")
    assert results["state_test"].outcome is Outcome.PASS and not results["state_test"].signatures


def test_qemu_log_svm_regression() -> None:
    p = _log("qemu-tcg-svm-regression.log")
    results = {r.name: r for r in parse.results(p, _expected(p), False, _no_limits)}
    st = results["state_test"]
    assert st.outcome is Outcome.FAIL and st.exit_code == 254 and st.assertion is not None
    assert st.assertion.message.startswith("KVM_SET_NESTED_STATE failed")
    assert results["hyperv_svm_test"].outcome is Outcome.PASS
    assert p.done and p.signatures == ()


def test_panic_before_init_is_a_boot_failure() -> None:
    p = _log("qemu-panic-no-init.log")
    assert not p.init_seen and p.tests == ()
    assert [s.kind for s in p.signatures] == [SignatureKind.PANIC]
    assert p.signatures[0].title == "kernel panic: No working init found"
    status, detail = parse.classify(p, False, 0, _qemu_clean)
    assert status is RunStatus.BOOT_FAILURE and "No working init found" in detail
    assert not status.is_infrastructure


def test_truncated_log_mid_test() -> None:
    p = _log("qemu-truncated.log")
    assert p.init_seen and not p.done
    running = p.in_progress
    assert running is not None and running.name == "svm_nested_soft_inject_test"
    expected = [*_expected(p), GuestTest("nested_exceptions_test", 60, 1)]
    results = {r.name: r for r in parse.results(p, expected, False, _no_limits)}
    assert results["state_test"].outcome is Outcome.PASS
    # the guest died (no hang kill): the running test is a crash, later ones never ran
    assert results["svm_nested_soft_inject_test"].outcome is Outcome.CRASH
    assert results["svm_nested_soft_inject_test"].exit_code is None
    assert results["nested_exceptions_test"].outcome is Outcome.NOT_RUN
    status, detail = parse.classify(p, False, 0, _qemu_clean)
    assert status is RunStatus.CRASHED and "svm_nested_soft_inject_test" in detail
    # the same log with the emulator killed at the limit: a hang, and the test a TIMEOUT
    killed = {r.name: r for r in parse.results(p, expected, True, _no_limits)}
    assert killed["svm_nested_soft_inject_test"].outcome is Outcome.TIMEOUT
    assert parse.classify(p, True, None, _qemu_clean)[0] is RunStatus.HANG


def test_bochs_hang_log() -> None:
    p = _log("bochs-hang.log")
    assert p.init_seen and not p.done
    assert p.in_progress is not None and p.in_progress.name == "vmx_preemption_timer_test"
    status, _ = parse.classify(p, True, None, _bochs_clean)
    assert status is RunStatus.HANG and status.is_infrastructure
    results = {r.name: r for r in parse.results(p, _expected(p), True, _no_limits)}
    assert results["state_test"].outcome is Outcome.PASS
    assert results["vmx_preemption_timer_test"].outcome is Outcome.TIMEOUT


@pytest.mark.parametrize("name", sorted(p.name for p in LOGS.glob("*.log")))
def test_every_recorded_log_parses_with_consistent_markers(name: str) -> None:
    p = _log(name)
    for t in p.tests:
        assert t.start is not None
        if t.rc is not None:
            assert t.end is not None and t.end >= t.start
    if p.done:
        assert p.in_progress is None and all(t.rc is not None for t in p.tests)


def test_no_console_and_a_failing_emulator_is_infrastructure() -> None:
    p = parse.parse_console("")
    status, detail = parse.classify(p, False, 2, _qemu_clean)
    assert status is RunStatus.INFRA_ERROR and "exited 2" in detail
    # killed before init printed anything: the kernel never got there
    assert parse.classify(p, True, None, _qemu_clean)[0] is RunStatus.BOOT_FAILURE


def test_repetitions_are_separate_results() -> None:
    text = "\n".join([
        "[ 1.0] kbot: INIT uptime=1.0 release=6.1 vendor=AuthenticAMD vmx=0 svm=1 "
        "nested=kvm_amd:1 kvm=1",
        "[ 1.1] kbot: BEGIN test=state_test rep=1 timeout=5 uptime=1.1",
        "[ 1.2] kbot: END test=state_test rep=1 rc=0 uptime=1.2 start=1.1",
        "[ 1.3] kbot: BEGIN test=state_test rep=2 timeout=5 uptime=1.3",
        "[ 6.4] kbot: END test=state_test rep=2 rc=137 uptime=6.4 start=1.3",
        "[ 6.5] kbot: DONE uptime=6.5",
    ])
    p = parse.parse_console(text)
    res = parse.results(p, [GuestTest("state_test", 5, 3)], False, _no_limits)
    assert [(r.repetition, r.outcome) for r in res] == [
        (1, Outcome.PASS), (2, Outcome.TIMEOUT), (3, Outcome.NOT_RUN)]
    assert res[1].duration_s == 5.1 and res[1].counts_as_failure
