"""`kbot ...` lines for reports, made from kbot's own CLI parser (bot.cli.build_parser).

A report that tells a reader to run `kbot vmtest --test X` when vmtest has no --test is worse
than none. So every kbot line a report or a repro.sh carries is built here as an argv and
parsed with the very parser `kbot` itself uses before it is accepted (tuxmake's idea: the
reproducer comes from the same option definitions as the CLI). A line that does not parse is
kbot's own bug: InputError, and nothing is mailed.

Lines are for a reader's machine: no `-c` (the reader has no copy of kbot's config file) and
no path of kbot's own; the paths they hold are relative to the reader's clone.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import shlex
from collections.abc import Sequence

from bot.errors import InputError
from bot.report.context import KbotLine

# Global options a public line must not carry: they name files on kbot's machine.
_PRIVATE = ("-c", "--config", "--state-dir")


@functools.lru_cache(maxsize=1)
def _parser() -> argparse.ArgumentParser:
    from bot.cli import build_parser  # late: bot.cli imports every stage's CLI, this one too

    return build_parser()


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """`kbot ARGV...` parsed with kbot's parser; InputError with argparse's own complaint."""
    args = list(argv)
    if not args or args[0] != "kbot":
        raise InputError(f"not a kbot command line: {shlex.join(args)!r}")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return _parser().parse_args(args[1:])
    except SystemExit:
        said = err.getvalue().strip().splitlines()
        raise InputError(f"`{shlex.join(args)}` does not parse with kbot's own parser: "
                         f"{said[-1] if said else 'help or version asked'}") from None


def kbot_line(*argv: str, why: str = "", step: str = "") -> KbotLine:
    """A KbotLine for `kbot ARGV...`, checked: it parses, and it names nothing private."""
    full = ("kbot", *argv)
    for opt in _PRIVATE:
        if opt in full or any(a.startswith(opt + "=") for a in full):
            raise InputError(f"`{shlex.join(full)}`: {opt} names a file on kbot's machine; "
                             "a report line must not")
    parse(full)
    return KbotLine(full, why, step)


def parse_text(line: str) -> argparse.Namespace:
    """A kbot line as printed (shell quoting, backslash-newline continuations) parsed."""
    return parse(shlex.split(line.replace("\\\n", " ")))
