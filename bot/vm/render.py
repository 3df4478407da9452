"""TestRuns for people (a table on the terminal) and for machines (JSON)."""

from __future__ import annotations

import dataclasses
import enum
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot.vm.model import Outcome, TestRun


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def run_to_json(run: TestRun) -> dict[str, Any]:
    out: dict[str, Any] = _plain(run)
    out["reproducer"] = shlex.join(run.command)
    out["infrastructure_problem"] = run.status.is_infrastructure
    for r, obj in zip(run.results, out["results"], strict=True):
        obj["counts_as_failure"] = r.counts_as_failure
    return out


def runs_to_json(runs: Sequence[TestRun]) -> dict[str, Any]:
    return {"runs": [run_to_json(r) for r in runs]}


def _note(r: Any) -> str:
    if r.outcome is Outcome.SKIP:
        return f"skip: {r.skip_reason}"
    parts: list[str] = []
    if r.assertion is not None:
        parts.append(f"{r.assertion.location}: {r.assertion.message or r.assertion.expression}")
    if r.known_limit:
        parts.append(f"known limit: {r.known_limit}")
    elif r.skip_reason:
        parts.append(r.skip_reason)
    parts.extend(s.title for s in r.signatures)
    return "; ".join(parts)


def table(runs: Sequence[TestRun]) -> str:
    """A plain-text table, one block per boot."""
    lines: list[str] = []
    for run in runs:
        lines.append(f"== {run.backend.value} ({', '.join(run.sets)}): {run.status.value} — "
                     f"{run.status_detail}")
        lines.append(f"   why {run.backend.value}: {run.backend_reason}")
        guest = run.guest
        if guest.kernel_release:
            lines.append(f"   guest: {guest.kernel_release} {guest.cpu_vendor} "
                         f"nested={guest.nested or 'none'}  boot {run.boot_s}s, "
                         f"total {run.duration_s}s")
        width = max([len(r.name) for r in run.results] + [4])
        lines.append(f"   {'TEST':<{width}}  {'RESULT':<8} {'TIME':>7}  NOTE")
        for r in run.results:
            name = r.name if r.repetition == 1 else f"{r.name}#{r.repetition}"
            t = f"{r.duration_s:.2f}s" if r.duration_s is not None else "-"
            lines.append(f"   {name:<{width}}  {r.outcome.value:<8} {t:>7}  {_note(r)}")
        for s in run.signatures:
            where = f" at {s.location}" if s.location else ""
            during = f" (during {s.during_test})" if s.during_test else ""
            lines.append(f"   kernel: {s.title}{where}{during}")
        lines.append(f"   console: {run.console_log}")
        lines.append(f"   reproduce: {shlex.join(run.command)}")
        lines.append("")
    return "\n".join(lines)
