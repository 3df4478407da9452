"""What a report says, as plain frozen values: the contract between the stages and the mails.

Every report kind has one context class (SeriesReport, RegressionReport, BuildFailureReport,
ApplyFailureReport, BisectionReport). A context holds *results*, never handles to run anything,
so a saved result (JSON, see `context_from_json`) renders the same mail again without rebuilding
or booting. The pipeline maps its own result values (ApplyResult, BuildResult, TestRun, Verdict,
Bisection) into these at the end of a job; nothing here imports those stages.

Field guide (what the lead fills in):

- SeriesInfo: one revision of a series as mailed. `lineage` ties revisions together (change-id,
  else the title) so "v3 fails the same way as v2" can be noticed. `list_address` is the list
  the series came from (it is Cc'd on every reply) and `archive_url` that list's archive
  (Closes:/Link: point there). `cc` holds the To:/Cc: people of the mails themselves;
  `trailer_people` those named in Reviewed-by:/Acked-by:/Cc: trailers.
- PatchInfo: one patch mail. Reports about one patch reply to its `msgid`; series-wide reports
  reply to the cover (or patch 1 when there is none).
- BaseInfo: the tree/branch/sha the series was applied to and `chosen_by` (footer: the series'
  base-commit footer; rule: a configured base rule; guessed: kbot's fallback).
- VmSetup: backend (qemu-kvm / qemu-tcg / bochs) and CPU vendor (VMX / SVM) the tests ran on.
- PatchOutcome: per patch, applied / built / new warnings / test outcomes (a SKIP keeps its
  reason: a skip is never a pass).
- Reproduce: everything a reader needs to redo the failing step on a fresh machine: the tree
  (its public URL, or what it is when kbot's copy is local), the base, the patches to apply
  and the archive they are in, the kernel config (base + the fragments' full text), the test
  and backend, the emulator command line kbot ran (its paths replaced), the `kbot` command
  lines (each one checked against kbot's own parser when it is made: bot.report.commands)
  and links to the job's files (repro.sh, .config, logs) when [report] artifacts_url is set.
  bot.report.repro turns it into the mail's steps and into repro.sh.

`fingerprint()` on each context names the *outcome* independent of revision and of line
numbers, so a new revision that fails the same way is recognised (report.unchanged).
"""

from __future__ import annotations

import enum
import hashlib
import shlex
import typing
from dataclasses import dataclass
from typing import Any

from bot import codec
from bot.errors import InputError

# ---------------------------------------------------------------------------------------------
# building blocks


@dataclass(frozen=True)
class Addr:
    """A person on a mail (display name may be empty)."""

    name: str
    email: str

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email


class BaseChoice(enum.Enum):
    FOOTER = "footer"  # the series' own `base-commit:` footer
    RULE = "rule"  # a configured base rule (list / subject tag / files)
    GUESSED = "guessed"  # kbot's fallback: the tree's default branch


class Backend(enum.Enum):
    QEMU_KVM = "qemu-kvm"
    QEMU_TCG = "qemu-tcg"
    BOCHS = "bochs"


class Vendor(enum.Enum):
    VMX = "VMX"
    SVM = "SVM"


class TestStatus(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"  # could not test (infrastructure), never counted as pass or fail


class Verdict(enum.Enum):
    GOOD = "good"
    BAD = "bad"
    SKIP = "skip"


@dataclass(frozen=True)
class PatchInfo:
    index: int
    total: int
    msgid: str  # without angle brackets
    subject: str  # as mailed, decoded and unfolded, e.g. "[PATCH 2/4] KVM: nVMX: ..."
    author: Addr
    sha: str = ""  # the commit it became on the base, when applied


@dataclass(frozen=True)
class SeriesInfo:
    title: str
    version: int
    author: Addr
    patches: tuple[PatchInfo, ...]
    list_address: str = ""  # e.g. kvm@vger.kernel.org
    cover_msgid: str = ""
    cover_subject: str = ""
    cc: tuple[Addr, ...] = ()  # To:/Cc: of the series' mails
    trailer_people: tuple[Addr, ...] = ()  # Reviewed-by:, Acked-by:, Cc:, ... in trailers
    change_id: str = ""
    archive_url: str = ""  # the list's archive, ends with "/" (lore: .../<list>/)

    @property
    def lineage(self) -> str:
        """What stays the same across revisions of this series."""
        return self.change_id or " ".join(self.title.lower().split())

    @property
    def root_msgid(self) -> str:
        return self.cover_msgid or (self.patches[0].msgid if self.patches else "")

    @property
    def root_subject(self) -> str:
        return self.cover_subject or (self.patches[0].subject if self.patches else self.title)

    def patch(self, index: int) -> PatchInfo:
        for p in self.patches:
            if p.index == index:
                return p
        raise InputError(f"series {self.title!r} has no patch {index}")


@dataclass(frozen=True)
class BaseInfo:
    tree: str  # a name from the config's [[trees]] or a URL
    branch: str  # "" when the base is a bare commit (a base-commit footer)
    sha: str
    chosen_by: BaseChoice
    describe: str = ""  # e.g. v6.1.192 (git describe), for the reader

    @property
    def where(self) -> str:
        """"kvm queue" or "kvm" (no branch): the tree as a reader names it."""
        return f"{self.tree} {self.branch}" if self.branch else self.tree

    @property
    def label(self) -> str:
        """0-day's "kvm/queue" (or "kvm/9c7782f1bed6" for a bare commit)."""
        return f"{self.tree}/{self.branch or self.sha[:12]}"


@dataclass(frozen=True)
class VmSetup:
    backend: Backend
    vendor: Vendor
    cpu: str = ""  # e.g. "-cpu max" or "corei7_haswell_4770"
    nested: bool = True

    @property
    def describe(self) -> str:
        how = {
            Backend.QEMU_KVM: "QEMU with KVM (hardware speed)",
            Backend.QEMU_TCG: "QEMU TCG (emulated)",
            Backend.BOCHS: "Bochs (emulated VMX)",
        }[self.backend]
        cpu = f", cpu {self.cpu}" if self.cpu else ""
        return f"{how}, nested {self.vendor.value}{cpu}"


@dataclass(frozen=True)
class Diagnostic:
    """A compiler warning or error at file:line:col, as gcc prints it."""

    file: str
    line: int
    col: int
    message: str
    new: bool = True  # not present when building the base
    severity: str = "error"  # error | warning | "" (a message that is not the compiler's)

    def __str__(self) -> str:
        where = f"{self.file}:" + (f"{self.line}:" if self.line else "") + (
            f"{self.col}:" if self.col else "")
        what = f"{self.severity}: " if self.severity else ""
        return f"{where} {what}{self.message}"


@dataclass(frozen=True)
class TestOutcome:
    name: str
    status: TestStatus
    reason: str = ""  # why it skipped / could not run; the assertion for a failure


@dataclass(frozen=True)
class PatchOutcome:
    index: int
    applied: bool
    built: bool | None = None  # None: not attempted (an earlier step failed)
    new_warnings: tuple[Diagnostic, ...] = ()
    tests: tuple[TestOutcome, ...] = ()
    note: str = ""  # e.g. "could not test: VM hung at boot"

    def count(self, status: TestStatus) -> int:
        return sum(1 for t in self.tests if t.status is status)

    @property
    def passed(self) -> int:
        return self.count(TestStatus.PASS)

    @property
    def failed(self) -> int:
        return self.count(TestStatus.FAIL)

    @property
    def skipped(self) -> int:
        return self.count(TestStatus.SKIP)

    @property
    def errors(self) -> int:
        return self.count(TestStatus.ERROR)


@dataclass(frozen=True)
class ConfigFragment:
    name: str  # a file name (no folder: kbot's paths are not the reader's), kvm-nested.config
    text: str  # the whole fragment, never a shortened copy


@dataclass(frozen=True)
class KbotLine:
    """A `kbot ...` command line a reader can run. Made only through
    bot.report.commands.kbot_line, which parses it with kbot's own CLI parser."""

    argv: tuple[str, ...]  # starts with "kbot"
    why: str = ""  # what it does, one short line
    step: str = ""  # the repro step it does for the reader (apply | build | test), or ""

    @property
    def text(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class ReproVm:
    """The VM step: which selftests, on which backend, and the emulator line kbot ran."""

    backend: Backend
    vendor: Vendor
    tests: tuple[str, ...]  # selftest names (run in the guest as x86_64/<name>)
    emulator: tuple[str, ...] = ()  # argv as kbot ran it, kbot's own paths replaced


@dataclass(frozen=True)
class Reproduce:
    """How to redo the failing step on a fresh machine (see bot.report.repro)."""

    tree: str  # the tree's name in kbot's config
    base_sha: str
    tree_url: str = ""  # a public clone URL; "" when kbot's tree is a local one
    tree_note: str = ""  # for a local tree: what it is (never its path)
    archive_url: str = ""  # the list archive holding the patches, ends with "/"
    series_msgid: str = ""  # the thread b4 fetches (cover, else patch 1)
    patches: tuple[str, ...] = ()  # Message-IDs of the patches to apply, in order
    patches_total: int = 0  # patches in the series (`b4 shazam -P 1-N` when fewer apply)
    commit: str = ""  # a commit to check out instead of applying patches (bisection)
    base_config: str = "tinyconfig"
    fragments: tuple[ConfigFragment, ...] = ()
    arch: str = "x86_64"
    selftests: bool = True
    stop: str = "test"  # the step that failed (or the last one): apply | build | test
    expect: str = "fail"  # what kbot saw at that step: fail | pass
    vm: ReproVm | None = None
    kbot: tuple[KbotLine, ...] = ()
    script_url: str = ""  # <artifacts_url>/jobs/<id>/repro.sh ("" = not published)
    files_url: str = ""  # <artifacts_url>/jobs/<id>/ (.config, build and console logs)


@dataclass(frozen=True)
class RunCount:
    """0-day's fail:runs."""

    fails: int
    runs: int

    def __str__(self) -> str:
        return f"{self.fails}:{self.runs}"

    @property
    def percent(self) -> int:
        return round(100 * self.fails / self.runs) if self.runs else 0


@dataclass(frozen=True)
class Assertion:
    """Where a selftest's TEST_ASSERT fired, and what it said."""

    file: str
    line: int
    message: str


@dataclass(frozen=True)
class SourceLine:
    number: int
    text: str
    added: bool = False  # a line this patch added: marked `>>`


@dataclass(frozen=True)
class BuildError:
    diagnostic: Diagnostic
    excerpt: tuple[SourceLine, ...] = ()


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str
    author: Addr | None = None
    date: str = ""  # as git shows it, e.g. "Mon May 3 17:08:51 2021 +0200"


@dataclass(frozen=True)
class BisectStep:
    commit: Commit
    verdict: Verdict
    runs: RunCount  # fails:runs at this commit


# ---------------------------------------------------------------------------------------------
# the report kinds


@dataclass(frozen=True)
class SkipSummary:
    name: str
    reason: str
    patches: str  # e.g. "1-4" or "1, 3"


def _ranges(indexes: list[int]) -> str:
    out: list[str] = []
    for i in sorted(set(indexes)):
        if out and out[-1].split("-")[-1] == str(i - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ", ".join(out)


class Audience(enum.Enum):
    """Who a series summary goes to ([report] series_summary)."""

    LIST = "list"  # the author, the list and everyone on the thread
    AUTHOR = "author"  # the author only


class ReportKind(enum.Enum):
    SERIES = "series"
    REGRESSION = "regression"
    BUILD_FAILURE = "build-failure"
    APPLY_FAILURE = "apply-failure"
    BISECTION = "bisection"


def _digest(parts: typing.Iterable[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SeriesReport:
    """The per-patch table of one series revision (replies to the cover)."""

    series: SeriesInfo
    base: BaseInfo
    vms: tuple[VmSetup, ...]
    outcomes: tuple[PatchOutcome, ...]
    reproduce: Reproduce
    audience: Audience = Audience.LIST
    kind: typing.ClassVar[ReportKind] = ReportKind.SERIES

    @property
    def target(self) -> PatchInfo | None:
        return None

    @property
    def problems(self) -> tuple[str, ...]:
        out: list[str] = []
        for o in self.outcomes:
            if not o.applied:
                out.append(f"apply:{o.index}")
            elif o.built is False:
                out.append(f"build:{o.index}")
            out += [f"warning:{w.file}:{w.message}" for w in o.new_warnings]
            out += [f"test:{t.name}:{t.status.value}" for t in o.tests
                    if t.status in (TestStatus.FAIL, TestStatus.ERROR)]
        return tuple(sorted(set(out)))

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def skips(self) -> tuple[SkipSummary, ...]:
        """Each skipped test and reason once, with the patches it skipped on ("1-4", "2")."""
        where: dict[tuple[str, str], list[int]] = {}
        for o in self.outcomes:
            for t in o.tests:
                if t.status is TestStatus.SKIP:
                    where.setdefault((t.name, t.reason), []).append(o.index)
        return tuple(
            SkipSummary(name, reason, _ranges(idx)) for (name, reason), idx in where.items()
        )

    def fingerprint(self) -> str:
        return _digest([self.kind.value, *self.problems])


@dataclass(frozen=True)
class Failure:
    """One test that passes on the base and fails from the report's patch on."""

    test: str  # the selftest's name (state_test), "boot", or "kernel: <splat title>"
    vm: VmSetup
    on_patch: RunCount
    on_base: RunCount
    assertion: Assertion | None = None
    splat: str = ""  # the kernel's WARNING/BUG title when the kernel complained
    console: tuple[str, ...] = ()  # console excerpt, verbatim

    @property
    def symptom(self) -> str:
        if self.splat:
            return self.splat
        if self.assertion is not None:
            return self.assertion.message
        return f"{self.test} failed"

    @property
    def label(self) -> str:
        """0-day's name for the row: state_test.fail, dmesg.WARNING_in_x, boot.fail."""
        if self.test.startswith("kernel: "):
            return "dmesg." + "_".join(self.test.split("kernel: ", 1)[1].split())
        return f"{self.test}.fail"

    @property
    def what(self) -> str:
        """What goes wrong, as a clause: "state_test fails", "the kernel reports ..."."""
        if self.test.startswith("kernel: "):
            return f'the kernel reports "{self.test.split("kernel: ", 1)[1]}"'
        if self.test == "boot":
            return "the kernel does not boot"
        return f"{self.test} fails"


@dataclass(frozen=True)
class RegressionReport:
    """Every test that passes on the base and fails from one patch on: one mail per patch."""

    series: SeriesInfo
    base: BaseInfo
    first_bad: int  # patch index
    failures: tuple[Failure, ...]  # most important first (the plan's order)
    reproduce: Reproduce
    kind: typing.ClassVar[ReportKind] = ReportKind.REGRESSION

    @property
    def target(self) -> PatchInfo:
        return self.series.patch(self.first_bad)

    @property
    def tests(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.test for f in self.failures))

    @property
    def vms(self) -> tuple[VmSetup, ...]:
        return tuple(dict.fromkeys(f.vm for f in self.failures))

    def fingerprint(self) -> str:
        # No line numbers: a rebased revision moves them without changing the failure.
        parts = sorted(f"{f.test}|{f.vm.backend.value}|"
                       f"{f.assertion.file if f.assertion else ''}|{f.symptom}"
                       for f in self.failures)
        return _digest([self.kind.value, *parts])


@dataclass(frozen=True)
class BuildFailureReport:
    series: SeriesInfo
    base: BaseInfo
    patch_index: int
    errors: tuple[BuildError, ...]
    reproduce: Reproduce
    arch: str = "x86_64"
    compiler: str = ""  # e.g. gcc (Debian 12.2.0-14) 12.2.0
    kind: typing.ClassVar[ReportKind] = ReportKind.BUILD_FAILURE

    @property
    def target(self) -> PatchInfo:
        return self.series.patch(self.patch_index)

    def fingerprint(self) -> str:
        return _digest(
            [self.kind.value, *sorted({f"{e.diagnostic.file}:{e.diagnostic.message}"
                                       for e in self.errors})]
        )


@dataclass(frozen=True)
class ApplyFailureReport:
    series: SeriesInfo
    base: BaseInfo
    patch_index: int
    conflict_files: tuple[str, ...]
    git_message: str  # what `git am -3` said, verbatim
    reproduce: Reproduce
    kind: typing.ClassVar[ReportKind] = ReportKind.APPLY_FAILURE

    @property
    def target(self) -> PatchInfo:
        return self.series.patch(self.patch_index)

    def fingerprint(self) -> str:
        return _digest([self.kind.value, *sorted(self.conflict_files)])


@dataclass(frozen=True)
class BisectionReport:
    """The first bad commit of a range (or the candidates, when skips hide it)."""

    tree: str
    branch: str
    test: str
    good: Commit
    bad: Commit
    confidence: float  # product of the per-step confidences, 0..1
    steps: tuple[BisectStep, ...]
    bisect_log: str  # `git bisect log`, replayable with `git bisect replay`
    reproduce: Reproduce
    culprit: Commit | None = None  # None: inconclusive
    candidates: tuple[Commit, ...] = ()  # when inconclusive: any of these
    symptom: str = ""  # assertion message or WARNING/BUG title at the culprit
    vm: VmSetup | None = None
    console: tuple[str, ...] = ()
    series: SeriesInfo | None = None  # set when the range is a series under test
    reply_to_patch: int | None = None  # patch index to reply under (the culprit's patch)
    mail_to: tuple[Addr, ...] = ()  # who else hears of it (the tree's list), besides the author
    # Threading when the culprit's patch mail was found in the archive (or named with
    # --in-reply-to): the mail replied to, and its References: chain.
    in_reply_to: str = ""
    references: tuple[str, ...] = ()
    list_address: str = ""  # the list the report goes to (Cc), e.g. kvm@vger.kernel.org
    archive_url: str = ""  # that list's archive: Closes: points there
    committer: Addr | None = None  # who committed the culprit (Cc)
    maintainers: tuple[Addr, ...] = ()  # scripts/get_maintainer.pl on the culprit (Cc)
    platform: str = ""  # where it ran, one phrase: "qemu-tcg (SVM)"
    kind: typing.ClassVar[ReportKind] = ReportKind.BISECTION

    @property
    def target(self) -> PatchInfo | None:
        if self.series is not None and self.reply_to_patch is not None:
            return self.series.patch(self.reply_to_patch)
        return None

    @property
    def conclusive(self) -> bool:
        return self.culprit is not None

    @property
    def fixes_line(self) -> str:
        if self.culprit is None:
            return ""
        return f'Fixes: {self.culprit.sha[:12]} ("{self.culprit.subject}")'

    @property
    def subsystem(self) -> str:
        """The culprit's subject prefix ("KVM: nSVM"), as 0-day puts it in its subjects."""
        if self.culprit is None or ": " not in self.culprit.subject:
            return ""
        return self.culprit.subject.rsplit(": ", 1)[0]

    def fingerprint(self) -> str:
        who = self.culprit.sha if self.culprit else ",".join(c.sha for c in self.candidates)
        return _digest([self.kind.value, self.test, who])


ReportContext = (
    SeriesReport | RegressionReport | BuildFailureReport | ApplyFailureReport | BisectionReport
)
CONTEXT_TYPES: dict[ReportKind, type[Any]] = {
    ReportKind.SERIES: SeriesReport,
    ReportKind.REGRESSION: RegressionReport,
    ReportKind.BUILD_FAILURE: BuildFailureReport,
    ReportKind.APPLY_FAILURE: ApplyFailureReport,
    ReportKind.BISECTION: BisectionReport,
}

# ---------------------------------------------------------------------------------------------
# saved results: JSON <-> contexts

def to_json(value: Any) -> Any:
    """A context (or any value in one) as JSON-able data, tagged with its "kind"; the inverse
    of `context_from_json`."""
    out = codec.dump(value)
    kind = getattr(type(value), "kind", None)
    if isinstance(out, dict) and isinstance(kind, ReportKind):
        out = {"kind": kind.value, **out}
    return out


def context_from_json(data: Any, where: str = "result") -> ReportContext:
    """A saved result (`to_json` of a context, with its "kind") back into its context."""
    if not isinstance(data, dict) or "kind" not in data:
        raise InputError(f"{where}: expected an object with a \"kind\" field")
    try:
        kind = ReportKind(data["kind"])
    except ValueError:
        known = ", ".join(k.value for k in ReportKind)
        raise InputError(f"{where}: unknown report kind {data['kind']!r} ({known})") from None
    ctx: ReportContext = codec.load_dataclass(CONTEXT_TYPES[kind], data, where,
                                              ignore=("kind",))
    return ctx


__all__ = [
    "Addr", "Assertion", "Audience", "BaseChoice", "BaseInfo", "BisectStep", "BisectionReport",
    "Backend", "BuildError", "BuildFailureReport", "ApplyFailureReport", "Commit",
    "ConfigFragment", "Diagnostic", "Failure", "KbotLine", "PatchInfo", "PatchOutcome",
    "RegressionReport", "ReportContext", "ReportKind", "ReproVm", "Reproduce", "RunCount",
    "SeriesInfo", "SeriesReport", "SourceLine", "TestOutcome", "TestStatus", "VmSetup",
    "Vendor", "Verdict", "context_from_json", "to_json",
]
