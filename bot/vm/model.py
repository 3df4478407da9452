"""The values the vm stage hands to the rest of kbot: one `TestRun` per VM boot.

A test failure is a value here, never an exception: the verdict stage reads `TestRun.status`
(did the guest run the plan at all?) and each `TestResult.outcome`. A SKIP stays a SKIP with its
reason; a failure under a known emulator limit keeps its outcome but carries `known_limit`, so it
is shown and never counted as a regression.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


class Backend(enum.Enum):
    QEMU_KVM = "qemu-kvm"
    QEMU_TCG = "qemu-tcg"
    BOCHS = "bochs"


class Outcome(enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"
    TIMEOUT = "TIMEOUT"  # the test ran past its limit (killed in the guest, or the guest hung)
    CRASH = "CRASH"  # the guest kernel died (panic) while this test ran
    NOT_RUN = "NOT_RUN"  # the guest never got to it (an earlier hang or crash)


class RunStatus(enum.Enum):
    COMPLETED = "completed"  # init ran every test and reported DONE
    BOOT_FAILURE = "boot-failure"  # the kernel never reached init (panic, or silent past the limit)
    CRASHED = "crashed"  # init started, then the kernel died (panic, reboot) before DONE
    HANG = "hang"  # init started, then no DONE before the hard limit: emulator killed
    INFRA_ERROR = "infra-error"  # the emulator could not start or failed by itself

    @property
    def is_infrastructure(self) -> bool:
        """Could not test: a bisection skips it and a report says "could not test"."""
        return self in (RunStatus.HANG, RunStatus.INFRA_ERROR)


class SignatureKind(enum.Enum):
    WARNING = "WARNING"
    BUG = "BUG"
    NULL_DEREF = "NULL_DEREF"
    PAGE_FAULT = "PAGE_FAULT"
    GPF = "GPF"
    KASAN = "KASAN"
    UBSAN = "UBSAN"
    SOFT_LOCKUP = "SOFT_LOCKUP"
    HARD_LOCKUP = "HARD_LOCKUP"
    RCU_STALL = "RCU_STALL"
    HUNG_TASK = "HUNG_TASK"
    PANIC = "PANIC"


@dataclass(frozen=True)
class ConsoleSignature:
    """One kernel report on the console, normalized to a short syzbot-like title."""

    kind: SignatureKind
    title: str  # e.g. "WARNING in vmx_get_nested_state"
    function: str | None
    file: str | None  # source file of the report, when the kernel names it
    line: int | None
    during_test: str | None  # the test that was running when it was printed
    console_line: int  # 1-based line number in the console log
    report: tuple[str, ...] = ()  # the report's lines (bounded)

    @property
    def location(self) -> str | None:
        if self.file is None:
            return None
        return f"{self.file}:{self.line}" if self.line is not None else self.file


@dataclass(frozen=True)
class Assertion:
    """The selftest's `==== Test Assertion Failure ====` block."""

    file: str
    line: int
    expression: str
    message: str  # the formatted message under the backtrace, may be empty
    errno_text: str  # "errno=22 - Invalid argument"
    block: tuple[str, ...]  # the block as printed

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Subtest:
    """One KTAP/TAP result line printed by the test itself."""

    number: int
    name: str
    outcome: Outcome  # PASS, FAIL or SKIP
    directive: str = ""  # the text after '#', e.g. the skip reason


@dataclass(frozen=True)
class TestResult:
    __test__ = False  # not a pytest test class
    name: str
    repetition: int  # 1-based
    outcome: Outcome
    exit_code: int | None
    duration_s: float | None
    skip_reason: str | None = None
    assertion: Assertion | None = None
    subtests: tuple[Subtest, ...] = ()
    output: tuple[str, ...] = ()  # the test's stdout+stderr lines (bounded)
    known_limit: str | None = None  # why a failure here is an emulator limit, not the kernel's
    signatures: tuple[ConsoleSignature, ...] = ()  # kernel reports printed while it ran

    @property
    def counts_as_failure(self) -> bool:
        """A result the verdict stage may call a regression."""
        bad = self.outcome in (Outcome.FAIL, Outcome.TIMEOUT, Outcome.CRASH)
        return bad and self.known_limit is None


@dataclass(frozen=True)
class GuestInfo:
    """What init saw inside the guest before running the plan."""

    kernel_release: str = ""
    cpu_vendor: str = ""
    vmx: bool = False
    svm: bool = False
    nested: str = ""  # "vmx:Y", "svm:1", "" when neither kvm_intel nor kvm_amd is active
    kvm_device: bool = False


@dataclass(frozen=True)
class TestRun:
    """One boot of one kernel under one backend running one part of a plan."""
    __test__ = False  # not a pytest test class


    backend: Backend
    backend_reason: str  # why this backend (host probe, plan set, --backend)
    plan: str
    sets: tuple[str, ...]  # the plan's sets this boot ran
    kernel: Path
    status: RunStatus
    status_detail: str  # one line: why the status is what it is
    results: tuple[TestResult, ...]
    signatures: tuple[ConsoleSignature, ...]  # every kernel report, including during boot
    guest: GuestInfo
    command: tuple[str, ...]  # the exact emulator command line (reproducer)
    console_log: Path
    emulator_exit: int | None
    duration_s: float  # wall time of the emulator process
    boot_s: float | None  # guest uptime when init started
    console_truncated: bool = False

    def result(self, name: str, repetition: int = 1) -> TestResult:
        for r in self.results:
            if r.name == name and r.repetition == repetition:
                return r
        raise KeyError(f"{name} (repetition {repetition}) not in this run")

    @property
    def failures(self) -> tuple[TestResult, ...]:
        return tuple(r for r in self.results if r.counts_as_failure)

    @property
    def regressions_possible(self) -> bool:
        """True when the run found something a kernel change could be blamed for."""
        return bool(self.failures) or bool(self.signatures) or self.status in (
            RunStatus.BOOT_FAILURE,
            RunStatus.CRASHED,
        )


@dataclass(frozen=True)
class HostCaps:
    """What this machine can run (see bot.vm.host.probe)."""

    cpu_vendor: str  # "GenuineIntel", "AuthenticAMD", ...
    cpu_model: str
    vmx: bool  # the host CPU flags show vmx
    svm: bool
    kvm_usable: bool  # /dev/kvm can run a normal (VMX/SVM) guest
    kvm_detail: str  # why or why not, one line
    nested_vmx: bool  # kvm_intel nested=Y on the host
    nested_svm: bool
    qemu: str | None  # path of qemu-system-x86_64
    bochs: str | None
    xorriso: str | None
    cpus: int
    notes: tuple[str, ...] = field(default_factory=tuple)
