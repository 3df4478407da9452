"""Progress of a long build: a callback per output line, shown on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

ProgressFn = Callable[[str], None]


class StderrProgress:
    """Progress of a long build on stderr: one rewritten line on a terminal, a line every
    `every_s` seconds otherwise (CI logs)."""

    def __init__(self, label: str, every_s: float = 30.0) -> None:
        self.label = label
        self.every_s = every_s
        self.start = time.monotonic()
        self.last = 0.0
        self.count = 0
        self.tty = sys.stderr.isatty()

    def __call__(self, line: str) -> None:
        self.count += 1
        now = time.monotonic()
        if self.tty:
            if now - self.last < 0.2:
                return
            self.last = now
            text = f"[{self.label} {now - self.start:5.0f}s {self.count} lines] {line.strip()}"
            sys.stderr.write("\r" + text[:118].ljust(118))
            sys.stderr.flush()
        elif now - self.last >= self.every_s:
            self.last = now
            sys.stderr.write(f"[{self.label} {now - self.start:.0f}s] {line.strip()[:100]}\n")
            sys.stderr.flush()

    def done(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r" + " " * 118 + "\r")
        sys.stderr.write(f"[{self.label}] {text}\n")
        sys.stderr.flush()
