"""Property tests: the console scanner and the TAP/KTAP parser never crash on what a guest
prints. A patched kernel under test writes whatever it likes to the serial console: escape
sequences, NULs, half lines, numbers of any size in kbot's markers, TAP lines and kernel
reports. Parsing gives values (bounded, finite), never an exception.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.vm.console import MAX_REPORT_LINES, ConsoleScanner, scan, source_path, strip_console
from bot.vm.image import GuestTest
from bot.vm.model import Outcome, RunStatus
from bot.vm.parse import (
    MAX_OUTPUT_LINES,
    classify,
    parse_assertion,
    parse_console,
    parse_subtests,
    results,
    skip_reason,
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_NUM = st.one_of(
    st.integers(-5, 300).map(str),
    st.integers(0, 10**40).map(str),
    st.sampled_from(["", "-0", "nan", "inf", "-inf", "1e999", "0x1f", "9" * 5000, "1.5",
                     "\u0663", "\uff11", "12abc", "+7", "1_000"]),
)
_NAME = st.sampled_from(["state_test", "smm_test", "a", "", "?", "x y", "\x1b[0m", "é", "te=st",
                         "{", "{func}", "}}"])
# Escapes and control bytes around a line; most lines have none (so markers still parse).
_ESC = st.one_of(st.just(""), st.just(""), st.sampled_from([
    "\x1b[31m", "\x1b[0m", "\x1b]0;t\x07", "\r", "\x00", "\x08", "\t", "\u202e", "\ufeff",
    "\udcff", "\x7f", "\x1bc", "\x9b2J"]))
_TS = st.sampled_from(["", "[    1.234567] ", "[ 99999999999.0] ", "[    1.2] [T1] ", "[",
                       "[ nan] "])


@st.composite
def marker(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["INIT", "BEGIN", "OUT", "END", "DONE", "BOGUS"]))
    keys = draw(st.lists(st.sampled_from(["test", "rep", "timeout", "uptime", "rc", "release",
                                          "vendor", "vmx", "svm", "nested", "kvm"]), max_size=6))
    kv = " ".join(f"{k}={draw(_NAME) if k == 'test' else draw(_NUM)}" for k in keys)
    return f"kbot: {kind} {kv}".rstrip()


@st.composite
def tap_line(draw: st.DrawFn) -> str:
    indent = draw(st.sampled_from(["", "  ", "    ", "\t", "# "]))
    status = draw(st.sampled_from(["ok", "not ok", "ok", "ok -", "notok", "OK"]))
    directive = draw(st.sampled_from(["", " # SKIP", " # SKIP reason", " # TODO", " #skip x",
                                      " # XFAIL", " #", " # SKIP " + "x" * 300]))
    head = draw(st.sampled_from(["", "1..0 # SKIP no kvm", "TAP version 13", "KTAP version 1",
                                 "1..4", "1..-1", "1.." + "9" * 5000]))
    if head and draw(st.booleans()):
        return indent + head
    return f"{indent}{status} {draw(_NUM)} {draw(st.sampled_from(['- ', '']))}{draw(_NAME)}" \
        f"{directive}"


@st.composite
def kernel_line(draw: st.DrawFn) -> str:
    num = draw(_NUM)
    return draw(st.sampled_from([
        f"WARNING: CPU: {num} PID: {num} at arch/x86/kvm/vmx/nested.c:{num} "
        f"vmx_get_nested_state+0x{num}/0x10",
        f"WARNING: CPU: 0 PID: 1 at ../src/arch/x86/kvm/x86.c:{num}",
        f"kernel BUG at arch/x86/kvm/svm/nested.c:{num}!",
        "BUG: kernel NULL pointer dereference, address: 0000000000000008",
        "BUG: unable to handle page fault for address: ffff",
        "general protection fault, probably for non-canonical address",
        f"BUG: KASAN: use-after-free in {draw(_NAME)}+0x1/0x2",
        f"Read of size {num} at addr ffff",
        f"UBSAN: shift-out-of-bounds in arch/x86/kvm/x86.c:{num}:{num}",
        f"watchdog: BUG: soft lockup - CPU#{num} stuck for 22s!",
        "Watchdog detected hard LOCKUP on cpu 0",
        "rcu: INFO: rcu_preempt self-detected stall on CPU",
        f"INFO: task state_test:{num} blocked for more than {num} seconds.",
        f"BUG: sleeping function called from invalid context at kernel/x.c:{num}",
        "BUG: " + draw(_NAME) + " at x:" + num,
        "Kernel panic - not syncing: " + draw(st.text(max_size=30) | _NAME),
        f"RIP: 0010:{draw(_NAME)}+0x{num}/0x2d0",
        f" {draw(_NAME)}.isra.0+0x1/0x2",
        " ? __schedule+0x1/0x2",
        "---[ end trace 0000000000000000 ]---",
        "---[ end Kernel panic - not syncing: x ]---",
        "==== Test Assertion Failure ====",
        f"  x86_64/state_test.c:{num}: {draw(st.text(max_size=20))}",
        f"  pid={num} tid={num} errno={num} - Invalid argument",
        f"     1\t0x0000000000401234: main at state_test.c:{num}",
        "  (stack trace empty)",
        "  want 1 got 2",
        "x86_64/state_test.c, skipping test",
    ]))


@st.composite
def console_text(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 40))):
        body = draw(st.one_of(marker(), marker().map(lambda m: m.replace("kbot: ", "kbot: OUT ")),
                              tap_line().map(lambda t: "kbot: OUT " + t), kernel_line(),
                              st.text(max_size=60)))
        lines.append(draw(_TS) + draw(_ESC) + body + draw(_ESC))
    eol = draw(st.sampled_from(["\n", "\r\n", "\r", "\n\n"]))
    return eol.join(lines) + draw(st.sampled_from(["", eol]))


@st.composite
def plans(draw: st.DrawFn) -> tuple[GuestTest, ...]:
    names = draw(st.lists(_NAME, max_size=4, unique=True))
    return tuple(GuestTest(n, draw(st.integers(0, 600)), draw(st.integers(0, 3))) for n in names)


def _finite_or_none(value: float | None) -> bool:
    return value is None or math.isfinite(value)


@FAST
@given(st.text(max_size=2000) | console_text(), plans(), st.booleans(),
       st.one_of(st.none(), st.integers()))
@example("kbot: INIT uptime=nan\nkbot: BEGIN test=a uptime=inf\nkbot: END test=a rc=0 uptime=1",
         (GuestTest("a", 10, 1),), False, 0)  # found: nan/inf uptimes made durations nan
def test_console_parse_results_and_classify_never_crash(
    text: str, expected: tuple[GuestTest, ...], killed: bool, exit_code: int | None
) -> None:
    parsed = parse_console(text)
    assert parsed.lines == len(text.splitlines())
    assert _finite_or_none(parsed.boot_s)
    for t in parsed.tests:
        assert len(t.output) <= MAX_OUTPUT_LINES
        assert _finite_or_none(t.timeout_s) and _finite_or_none(t.start) and _finite_or_none(t.end)
    out = results(parsed, expected, killed, lambda name: "emulator limit" if "a" in name else None)
    assert len(out) == sum(spec.repetitions for spec in expected)
    for r in out:
        assert _finite_or_none(r.duration_s)
        if r.outcome is Outcome.SKIP:
            assert r.skip_reason
    status, detail = classify(parsed, killed, exit_code, lambda code: code == 0)
    assert isinstance(status, RunStatus) and "\n" not in detail


@FAST
@given(st.lists(st.one_of(tap_line(), kernel_line(), st.text(max_size=80)), max_size=30))
@example(["ok " + "9" * 5000 + " - x"])  # found: int() ValueError over 4300 digits
@example(["==== Test Assertion Failure ====", "  x.c:" + "1" * 5000 + ": y"])
def test_tap_helpers_on_test_output(output: list[str]) -> None:
    for st_ in parse_subtests(output):
        assert st_.outcome in (Outcome.PASS, Outcome.FAIL, Outcome.SKIP)
    skip_reason(output)
    assertion = parse_assertion(output)
    if assertion is not None:
        assert assertion.block and assertion.file


@FAST
@given(st.lists(st.one_of(kernel_line(), st.text(max_size=80)).flatmap(
    lambda line: st.tuples(_TS, _ESC).map(lambda p: p[0] + p[1] + line)), max_size=60))
@example(["kernel BUG at x.c:" + "7" * 5000 + "!"])  # found: int() ValueError
@example(["Kernel panic - not syncing: {"])  # found: str.format() on a title with a brace
@example(["BUG: x{y} at a.c:1"])
def test_console_scanner_on_kernel_output(lines: list[str]) -> None:
    scanner = ConsoleScanner()
    for i, line in enumerate(lines, 1):
        scanner.feed(i, line, "state_test" if i % 2 else None)
    signatures = scanner.finish()
    assert [s.title for s in signatures] == [s.title for s in scan(lines)]
    for sig in signatures:
        assert 1 <= sig.console_line <= len(lines)
        assert sig.title and "\n" not in sig.title and len(sig.report) <= MAX_REPORT_LINES
    for line in lines:
        strip_console(line)
        source_path(line)
