"""Typed values of a bisection: verdicts, commits, tested commits, results, progress.

These are the values the pipeline and the reports read; they carry no behaviour beyond small
derived properties, so that a result can be stored, rendered or compared without the search.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Verdict(enum.Enum):
    """What one run of the test said about one commit.

    SKIP means "could not test" (apply failure, unrelated build break, boot failure, hang): it is
    never evidence that the commit is good or bad.
    """

    GOOD = "good"
    BAD = "bad"
    SKIP = "skip"


@dataclass(frozen=True)
class Outcome:
    """One evaluator run: the verdict and a short reason (why it was skipped, the failing line)."""

    verdict: Verdict
    note: str = ""


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str = ""
    author: str = ""  # "Name <email>"
    date: str = ""  # author date, ISO 8601
    parents: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        return self.sha[:12]

    def describe(self) -> str:
        return f"{self.short} (\"{self.subject}\")" if self.subject else self.short


class Mode(enum.Enum):
    DETERMINISTIC = "deterministic"  # one run per commit decides it, like `git bisect run`
    FLAKY = "flaky"  # Bayesian: a bad commit fails with unknown probability


class Status(enum.Enum):
    FOUND = "found"  # culprit named with confidence >= the target
    LOW_CONFIDENCE = "low-confidence"  # run budget spent; culprit is the most likely one
    INCONCLUSIVE = "inconclusive"  # skips around the culprit: it is one of `candidates`
    WRONG_ENDPOINT = "wrong-endpoint"  # the good end fails or the bad end passes
    UNTESTABLE_ENDPOINT = "untestable-endpoint"  # an endpoint could not be tested at all


class Role(enum.Enum):
    ENDPOINT_GOOD = "endpoint-good"
    ENDPOINT_BAD = "endpoint-bad"
    SEARCH = "search"
    CONFIRM = "confirm"  # a rerun of the first bad commit or its parent before naming it


@dataclass(frozen=True)
class TestedCommit:
    """Every run made on one commit, in the order made, and what they add up to."""

    commit: Commit
    outcomes: tuple[Outcome, ...]
    role: Role = Role.SEARCH

    @property
    def runs(self) -> int:
        return len(self.outcomes)

    @property
    def fails(self) -> int:
        return sum(1 for o in self.outcomes if o.verdict is Verdict.BAD)

    @property
    def passes(self) -> int:
        return sum(1 for o in self.outcomes if o.verdict is Verdict.GOOD)

    @property
    def skips(self) -> int:
        return sum(1 for o in self.outcomes if o.verdict is Verdict.SKIP)

    @property
    def verdict(self) -> Verdict:
        """Any failure makes a commit BAD (the bug shows there); only passes make it GOOD."""
        if self.fails:
            return Verdict.BAD
        if self.passes:
            return Verdict.GOOD
        return Verdict.SKIP


@dataclass(frozen=True)
class Progress:
    """What a person watching wants to know after each step."""

    candidates_left: int
    steps_done: int  # evaluator runs so far (endpoint checks included)
    rounds_done: int
    est_steps_left: int
    confidence: float  # best culprit's probability so far (1.0 / 0.0 in deterministic mode)


@dataclass(frozen=True)
class BisectResult:
    status: Status
    mode: Mode
    good: tuple[Commit, ...]
    bad: Commit
    culprit: Commit | None  # None unless FOUND / LOW_CONFIDENCE
    confidence: float  # posterior probability of the culprit (1.0 when deterministic and found)
    candidates: tuple[Commit, ...]  # INCONCLUSIVE: the first bad commit is one of these
    tested: tuple[TestedCommit, ...]  # in first-tested order, endpoints first
    runs: int  # evaluator runs, endpoint checks included
    rounds: int  # rounds of (up to) `jobs` parallel runs
    jobs: int
    message: str  # one line a person reads first
    replay_log: str  # `git bisect replay` accepts it
    candidates_at_start: int = 0
    search_runs: int = 0  # runs spent searching (not on endpoint checks or confirmation)
    notes: tuple[str, ...] = field(default=())

    @property
    def found(self) -> bool:
        return self.status in (Status.FOUND, Status.LOW_CONFIDENCE)
