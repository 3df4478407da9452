"""Console log -> per-test results: kbot's init markers, the tests' TAP/KTAP lines, the
selftest assertion block, and the kernel's own reports (bot.vm.console).

`parse_console` is pure (text in, values out) so the fast tier can run it on recorded logs;
`classify` turns what the console showed plus how the emulator ended into a RunStatus.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bot.vm.console import ConsoleScanner, strip_console
from bot.vm.image import GuestTest
from bot.vm.model import (
    Assertion,
    ConsoleSignature,
    GuestInfo,
    Outcome,
    RunStatus,
    SignatureKind,
    Subtest,
    TestResult,
)

MAX_OUTPUT_LINES = 400
KSFT_PASS, KSFT_FAIL, KSFT_SKIP = 0, 1, 4
RC_KILLED = 137  # busybox `timeout -s KILL` in the guest

_MARK = re.compile(r"^kbot: (INIT|BEGIN|OUT|END|DONE)(?: (.*))?$")
_KV = re.compile(r"(\w+)=(\S*)")
# Test numbers and line numbers of at most 18 / 9 ASCII digits: longer is no real one, and
# int() raises ValueError on numbers of over 4300 digits (a guest prints what it likes).
_TAP = re.compile(r"^\s*(not ok|ok) ([0-9]{1,18})(?: -)? ?(.*?)(?:\s+#\s*(.*))?$")
_SKIP_TAP = re.compile(r"^\s*1\.\.0\s*#\s*SKIP\s*(.*)$", re.IGNORECASE)
_SKIP_KVM = re.compile(r"^(.*), skipping test$")
_ASSERT_HEAD = "==== Test Assertion Failure ===="
_ASSERT_LOC = re.compile(r"^\s+(\S+?):([0-9]{1,9}): (.*)$")
_ASSERT_ERRNO = re.compile(r"^\s+pid=\d+ tid=\d+ (errno=\d+ - .*)$")
_BACKTRACE = re.compile(r"^\s+\d+\t|addr2line|^\s+\(stack trace empty\)")


@dataclass
class _RawTest:
    name: str
    repetition: int
    timeout_s: float | None
    start: float | None
    end: float | None = None
    rc: int | None = None
    output: list[str] = field(default_factory=list)
    signatures: list[ConsoleSignature] = field(default_factory=list)


@dataclass(frozen=True)
class ConsoleParse:
    """Everything one console log says, before it is matched against the plan."""

    guest: GuestInfo | None  # None: init never reported (the kernel did not reach it)
    boot_s: float | None
    done: bool
    tests: tuple[_RawTest, ...]
    signatures: tuple[ConsoleSignature, ...]
    lines: int

    @property
    def init_seen(self) -> bool:
        return self.guest is not None

    @property
    def panicked(self) -> bool:
        return any(s.kind is SignatureKind.PANIC for s in self.signatures)

    @property
    def in_progress(self) -> _RawTest | None:
        """The test that BEGAN and never ENDed."""
        if self.tests and self.tests[-1].rc is None:
            return self.tests[-1]
        return None


def _float(value: str | None) -> float | None:
    """A number from a marker; None for none, and for nan/inf (`uptime=nan` would make every
    duration computed from it nan)."""
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse_console(text: str) -> ConsoleParse:
    scanner = ConsoleScanner()
    guest: GuestInfo | None = None
    boot_s: float | None = None
    done = False
    tests: list[_RawTest] = []
    current: _RawTest | None = None
    lines = text.splitlines()
    for lineno, raw in enumerate(lines, 1):
        stripped = strip_console(raw)
        m = _MARK.match(stripped)
        if m is None:
            before = len(scanner.signatures)
            scanner.feed(lineno, raw, current.name if current else None)
            if current is not None and len(scanner.signatures) > before:
                current.signatures.extend(scanner.signatures[before:])
            continue
        kind, rest = m.group(1), m.group(2) or ""
        if kind == "OUT":
            if current is not None and len(current.output) < MAX_OUTPUT_LINES:
                current.output.append(rest)
            continue
        scanner.feed(lineno, raw, current.name if current else None)  # closes an open report
        kv = dict(_KV.findall(rest))
        if kind == "INIT":
            boot_s = _float(kv.get("uptime"))
            nested = kv.get("nested", "none")
            guest = GuestInfo(
                kernel_release=kv.get("release", ""),
                cpu_vendor=kv.get("vendor", ""),
                vmx=kv.get("vmx") == "1",
                svm=kv.get("svm") == "1",
                nested="" if nested == "none" else nested,
                kvm_device=kv.get("kvm") == "1",
            )
        elif kind == "BEGIN":
            current = _RawTest(
                name=kv.get("test", "?"),
                repetition=_int(kv.get("rep")) or 1,
                timeout_s=_float(kv.get("timeout")),
                start=_float(kv.get("uptime")),
            )
            tests.append(current)
        elif kind == "END":
            if current is not None and current.name == kv.get("test"):
                current.rc = _int(kv.get("rc"))
                current.end = _float(kv.get("uptime"))
                if current.rc is None:
                    current.rc = -1  # END without a readable rc: the runner in the guest broke
            current = None
        elif kind == "DONE":
            done = True
    signatures = scanner.finish()
    if current is not None:
        # A report still open at the end of the log happened during the unfinished test.
        for sig in signatures:
            if sig.during_test == current.name and sig not in current.signatures:
                current.signatures.append(sig)
    return ConsoleParse(guest, boot_s, done, tuple(tests), tuple(signatures), len(lines))


def parse_assertion(output: Sequence[str]) -> Assertion | None:
    """The first `==== Test Assertion Failure ====` block in a test's output."""
    for i, line in enumerate(output):
        if _ASSERT_HEAD not in line:
            continue
        block = [line]
        loc = _ASSERT_LOC.match(output[i + 1]) if i + 1 < len(output) else None
        if loc is None:
            continue
        block.append(output[i + 1])
        errno_text = ""
        j = i + 2
        if j < len(output) and (m := _ASSERT_ERRNO.match(output[j])):
            errno_text = m.group(1)
            block.append(output[j])
            j += 1
        message = ""
        while j < len(output):
            cur = output[j]
            if _BACKTRACE.search(cur):
                block.append(cur)
                j += 1
                continue
            if cur.startswith("  ") and not _TAP.match(cur):
                message = cur.strip()
                block.append(cur)
            break
        return Assertion(
            file=loc.group(1), line=int(loc.group(2)), expression=loc.group(3).strip(),
            message=message, errno_text=errno_text, block=tuple(block),
        )
    return None


def parse_subtests(output: Sequence[str]) -> tuple[Subtest, ...]:
    subtests: list[Subtest] = []
    for line in output:
        m = _TAP.match(line)
        if m is None:
            continue
        directive = (m.group(4) or "").strip()
        if m.group(1) == "not ok":
            outcome = Outcome.FAIL
        elif directive.upper().startswith("SKIP"):
            outcome = Outcome.SKIP
        else:
            outcome = Outcome.PASS
        subtests.append(Subtest(int(m.group(2)), m.group(3).strip(), outcome, directive))
    return tuple(subtests)


def skip_reason(output: Sequence[str]) -> str:
    for line in output:
        if m := _SKIP_TAP.match(line):
            return m.group(1).strip().lstrip("- ").strip() or "skipped"
        if m := _SKIP_KVM.match(line.strip()):
            return m.group(1).strip()
    for st in parse_subtests(output):
        if st.outcome is Outcome.SKIP:
            return re.sub(r"^SKIP\s*", "", st.directive, flags=re.IGNORECASE) or "skipped"
    return "exit code 4 (KSFT_SKIP), no reason printed"


def _outcome(raw: _RawTest, spec_timeout: float) -> Outcome:
    if raw.rc == KSFT_PASS:
        return Outcome.PASS
    if raw.rc == KSFT_SKIP:
        return Outcome.SKIP
    if raw.rc == RC_KILLED and raw.start is not None and raw.end is not None and (
        raw.end - raw.start >= spec_timeout - 1.0
    ):
        return Outcome.TIMEOUT
    return Outcome.FAIL


def results(
    parsed: ConsoleParse,
    expected: Sequence[GuestTest],
    killed: bool,
    known_limit: Callable[[str], str | None],
) -> tuple[TestResult, ...]:
    """One TestResult per expected (test, repetition), in plan order.

    `killed`: the host killed the emulator at the hard limit, so a test left running hung.
    `known_limit(name)`: the reason a failure of `name` on this backend is the emulator's.
    """
    by_key = {(t.name, t.repetition): t for t in parsed.tests}
    out: list[TestResult] = []
    for spec in expected:
        for rep in range(1, spec.repetitions + 1):
            raw = by_key.get((spec.name, rep))
            if raw is None:
                out.append(TestResult(spec.name, rep, Outcome.NOT_RUN, None, None))
                continue
            if raw.rc is None:
                outcome = Outcome.TIMEOUT if killed else Outcome.CRASH
                duration = None
            else:
                outcome = _outcome(raw, float(spec.timeout_s))
                duration = (round(raw.end - raw.start, 2)
                            if raw.end is not None and raw.start is not None else None)
            limit = known_limit(spec.name)
            out.append(TestResult(
                name=spec.name,
                repetition=rep,
                outcome=outcome,
                exit_code=raw.rc,
                duration_s=duration,
                skip_reason=skip_reason(raw.output) if outcome is Outcome.SKIP else None,
                assertion=parse_assertion(raw.output),
                subtests=parse_subtests(raw.output),
                output=tuple(raw.output),
                known_limit=limit if outcome in (Outcome.FAIL, Outcome.TIMEOUT) else None,
                signatures=tuple(raw.signatures),
            ))
    return tuple(out)


def classify(parsed: ConsoleParse, killed: bool, emulator_exit: int | None,
             clean_exit: Callable[[int | None], bool]) -> tuple[RunStatus, str]:
    """The run's status and a one-line reason, from the console and how the emulator ended."""
    if not parsed.init_seen:
        if killed:
            return (RunStatus.BOOT_FAILURE,
                    "the kernel never reached init in time (emulator killed)")
        panic = next((s.title for s in parsed.signatures if s.kind is SignatureKind.PANIC), None)
        if panic:
            return RunStatus.BOOT_FAILURE, f"the kernel never reached init: {panic}"
        if parsed.lines == 0 and not clean_exit(emulator_exit):
            return RunStatus.INFRA_ERROR, f"emulator exited {emulator_exit} with no console output"
        return (RunStatus.BOOT_FAILURE,
                f"the kernel never reached init (emulator exit {emulator_exit})")
    if parsed.done:
        return RunStatus.COMPLETED, "init ran the plan and reported DONE"
    running = parsed.in_progress
    where = f" during {running.name}" if running else ""
    if killed:
        return RunStatus.HANG, f"the guest stopped making progress{where}: emulator killed"
    if parsed.panicked:
        panic = next(s.title for s in parsed.signatures if s.kind is SignatureKind.PANIC)
        return RunStatus.CRASHED, f"{panic}{where}"
    return (RunStatus.CRASHED,
            f"the guest stopped without DONE{where} (emulator exit {emulator_exit})")
