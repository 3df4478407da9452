"""How every step of one build runs, and what a failed step means.

A step (make, merge_config.sh) runs in the build's sandbox (bot/build/sandbox.py) with the
build's clean environment, appending to its bounded log, within what is left of the build's
one time limit. A step that fails is the patch's fault (FAIL) unless it died of something
around it (ERROR: a timeout, a signal, the disk, memory, the sandbox's limits).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot import proc
from bot.build.diagnostics import Diagnostic, Severity
from bot.build.progress import ProgressFn
from bot.build.result import BuildStatus
from bot.build.sandbox import Sandbox
from bot.errors import ProcTimeout

CAPTURE_LIMIT = 256 * 1024  # of a step's output in memory (the log has all of it, bounded)


class Deadline:
    """The whole build's time limit, shared by its steps."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise ProcTimeout("build time limit reached")
        return left


@dataclass(frozen=True)
class StepRunner:
    """Runs the steps of one build: in `sandbox`, with `env`, logging to `log`."""

    env: Mapping[str, str]
    log: Path
    deadline: Deadline
    sandbox: Sandbox
    log_limit: int

    def run(
        self, argv: Sequence[str], *, cwd: Path, on_line: ProgressFn | None = None
    ) -> proc.ProcResult:
        """One build step in the sandbox. Raises SandboxStartError (an InfraError: the build
        is an ERROR) when the sandbox did not start: the step never ran."""
        return proc.run(
            argv, cwd=cwd, env=self.env, log_path=self.log, on_line=on_line,
            timeout=self.deadline.left(), sandbox=self.sandbox, capture_limit=CAPTURE_LIMIT,
            log_limit=self.log_limit,
        )

    def make(
        self, args: Sequence[str], *, cwd: Path, on_line: ProgressFn | None = None
    ) -> proc.ProcResult:
        return self.run(["make", *args], cwd=cwd, on_line=on_line)


class StepFailed(Exception):
    def __init__(self, status: BuildStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# Output that means make died of something around it, not of the patch: the disk, the
# machine's memory, or the sandbox's limits (address space: gcc's "out of memory"/"virtual
# memory exhausted", or cc1 killed by a signal when it cannot even map its heap; processes:
# fork's EAGAIN; file size: SIGXFSZ).
_INFRA_MARKERS = (
    "No space left on device", "Cannot allocate memory", "signal terminated program",
    "virtual memory exhausted", "out of memory allocating", "Resource temporarily unavailable",
    "File size limit exceeded",
)


def hit_limit(res: proc.ProcResult) -> bool:
    """Killed by a signal (bwrap reports that as 128 + the signal; make itself exits 0-2) or
    stopped by a resource: not a verdict on the patch."""
    text = res.stdout + res.stderr
    return res.returncode < 0 or res.returncode > 128 or any(m in text for m in _INFRA_MARKERS)


def classify(
    step: str, res: proc.ProcResult, diags: Sequence[Diagnostic]
) -> tuple[BuildStatus, str]:
    """A failed step: the patch's fault (FAIL) unless it died of something around it (ERROR:
    a timeout, a signal, the disk, memory, the sandbox's limits)."""
    if res.timed_out:
        return BuildStatus.ERROR, f"{step}: timed out after {res.duration_s:.0f}s"
    if hit_limit(res):
        return BuildStatus.ERROR, f"{step}: {res.describe()}"
    errors = [d for d in diags if d.severity is Severity.ERROR]
    if errors:
        return BuildStatus.FAIL, f"{errors[0]}" + (
            f" (+{len(errors) - 1} more errors)" if len(errors) > 1 else ""
        )
    return BuildStatus.FAIL, f"{step}: {res.describe()}"
