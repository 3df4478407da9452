"""bot.codec: typed results survive a JSON round trip; bad data is a named InputError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot import codec
from bot.build.diagnostics import Diagnostic, Severity
from bot.errors import InputError
from bot.vm.model import (
    Assertion,
    Backend,
    ConsoleSignature,
    GuestInfo,
    Outcome,
    RunStatus,
    SignatureKind,
    Subtest,
    TestResult,
    TestRun,
)


def _run() -> TestRun:
    sig = ConsoleSignature(SignatureKind.WARNING, "WARNING in vmx_get_nested_state",
                           "vmx_get_nested_state", "arch/x86/kvm/vmx/nested.c", 6400,
                           "evmcs_test", 412, ("WARNING: CPU: 0 PID: 1", "Call Trace:"))
    failed = TestResult(
        "evmcs_test", 1, Outcome.FAIL, 254, 3.5,
        assertion=Assertion("x86_64/evmcs_test.c", 216, "!r", "KVM_SET_NESTED_STATE failed",
                            "errno=22 - Invalid argument", ("==== Test Assertion Failure ====",)),
        subtests=(Subtest(1, "restore", Outcome.FAIL, ""),), output=("line",),
        signatures=(sig,))
    skipped = TestResult("vmx_pmu_caps_test", 1, Outcome.SKIP, 4, 0.1, skip_reason="no PMU")
    return TestRun(
        Backend.BOCHS, "plan set vmx", "nested-state", ("vmx",), Path("/c/bzImage"),
        RunStatus.COMPLETED, "all tests ran", (failed, skipped), (sig,),
        GuestInfo("6.1.0", "GenuineIntel", True, False, "vmx:Y", True),
        ("bochs", "-q"), Path("/s/console.log"), 1, 13.2, 1.5)


def test_test_run_round_trips_through_json_text() -> None:
    run = _run()
    text = json.dumps(codec.dump(run))
    assert codec.load(TestRun, json.loads(text)) == run


def test_dict_and_optional_fields_round_trip() -> None:
    d = Diagnostic("a.c", 3, 1, Severity.WARNING, "unused", "-Wunused", "a.o")
    data = codec.dump({"a.o": (d,)})
    assert codec.load(dict[str, tuple[Diagnostic, ...]], data) == {"a.o": (d,)}
    assert codec.load(int | None, None) is None


@pytest.mark.parametrize(("mutate", "where"), [
    (lambda d: d.update(status="exploded"), "run.status: 'exploded' is not one of"),
    (lambda d: d.pop("backend"), "run: missing field 'backend'"),
    (lambda d: d.update(extra=1), "run: unknown field 'extra'"),
    (lambda d: d["results"][0].update(repetition="1"), "run.results[0].repetition: expected int"),
    (lambda d: d.update(sets="vmx"), "run.sets: expected a list"),
])
def test_bad_data_names_where(mutate, where) -> None:  # type: ignore[no-untyped-def]
    data = codec.dump(_run())
    mutate(data)
    with pytest.raises(InputError) as info:
        codec.load(TestRun, data, "run")
    assert where in str(info.value)
