"""What the corpus pins for one mbox: every series (newest first) as `--json` shows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.intake.mail import parse_message
from bot.intake.mbox import iter_raw
from bot.intake.series import assemble_all, newest_first


def expected_of(path: Path) -> dict[str, Any]:
    problems: list[str] = []
    raws = iter_raw(path, on_problem=lambda p: problems.append(str(p)))
    messages = [parse_message(raw) for raw in raws]
    assembly = assemble_all(messages)
    return {
        "series": [s.to_json() for s in newest_first(assembly.series)],
        "ignored": list(assembly.ignored),
        "problems": problems,
    }
