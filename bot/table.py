"""Plain-text tables for the terminal: one layout for every command that prints one."""

from __future__ import annotations

from collections.abc import Sequence


def columns(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Rows as aligned lines: every column but the last padded to its widest cell, two spaces
    apart; the last one (a subject, a note) runs free. Trailing spaces are dropped."""
    if not rows:
        return []
    n = len(rows[0]) - 1
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    return [
        (indent + "  ".join([*(r[i].ljust(widths[i]) for i in range(n)), r[n]])).rstrip()
        for r in rows
    ]
