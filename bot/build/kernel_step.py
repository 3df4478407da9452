"""The kernel step: `make bzImage` in the slot's reused O=, its output scanned for diagnostics
(per translation unit, so that an incremental build replaces only the units it rebuilt)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bot import proc
from bot.build.diagnostics import LogScan, LogScanner
from bot.build.progress import ProgressFn
from bot.build.steps import StepRunner

ARCH = "x86_64"
BZIMAGE = "arch/x86/boot/bzImage"  # under O=


@dataclass(frozen=True)
class KernelStepResult:
    result: proc.ProcResult
    scan: LogScan


def kernel_step(
    steps: StepRunner, src: Path, out: Path, common: Sequence[str], jobs: int,
    on_line: ProgressFn,
) -> KernelStepResult:
    on_line(f"make bzImage -j{jobs}")
    scanner = LogScanner(src, out)

    def feed(line: str) -> None:
        scanner.feed(line)
        on_line(line)

    res = steps.make([f"O={out}", *common, f"-j{jobs}", "-Otarget", "bzImage"], cwd=src,
                     on_line=feed)
    return KernelStepResult(res, scanner.result())
