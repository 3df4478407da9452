"""`#kbot` command lines out of a mail body, and each line into a Command or a Malformed.

What counts as a command (syzbot's `#syz` rules, which kernel people know):

- a line of the mail's own text that starts with `#kbot` (after optional whitespace), then
  a space and the command: `#kbot test`, `#kbot bisect good=v6.1 bad=HEAD test=state_test`;
- not quoted text: lines starting with `>` are someone else's words, and so is everything
  after a quoted-reply header that quotes without `>` (`-----Original Message-----`);
- not the signature (after the `-- ` line), not a patch (from `diff --git` on), so kbot's
  own reports, which list the commands in their signature, are never read as commands;
- `#kbotfoo` or `#kbot's` are not commands (the word must end).

A mail may carry several commands, one per line (syzbot takes several too); each is acted
on in order and recorded on its own. At most MAX_COMMANDS per mail: a long list is more
likely a paste than a request.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

PREFIX = "#kbot"
MAX_COMMANDS = 10
MAX_LINE = 300  # a longer command line is refused, not read
_COMMAND = re.compile(r"^[ \t]*#kbot(?=[ \t:]|$)(.*)$", re.I)
# Where the mail's own text ends: the signature, a patch, an unquoted copy of an earlier mail.
_END = re.compile(
    r"^(?:-- ?$|diff --git |-{3,} ?(?:Original Message|Forwarded message) ?-{3,}\s*$"
    r"|_{30,}\s*$)", re.I)
# A revision as git takes it (a sha, a tag, a branch, HEAD~3): no spaces, no option, no range.
_REV = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./~^@{}+-]{0,199}$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}$")


class Verb(enum.Enum):
    TEST = "test"
    BISECT = "bisect"
    INVALID = "invalid"
    HELP = "help"


# What each command takes: required keys, optional keys, keys that may repeat.
_SYNTAX: dict[Verb, tuple[frozenset[str], frozenset[str], frozenset[str]]] = {
    Verb.TEST: (frozenset(), frozenset({"tree"}), frozenset()),
    Verb.BISECT: (frozenset({"good", "bad", "test"}), frozenset({"tree"}), frozenset({"good"})),
    Verb.INVALID: (frozenset(), frozenset(), frozenset()),
    Verb.HELP: (frozenset(), frozenset(), frozenset()),
}
USAGE: dict[Verb, str] = {
    Verb.TEST: "#kbot test [tree=NAME]",
    Verb.BISECT: "#kbot bisect good=REV bad=REV test=NAME [tree=NAME]",
    Verb.INVALID: "#kbot invalid",
    Verb.HELP: "#kbot help",
}


@dataclass(frozen=True)
class Line:
    """One `#kbot` line of a mail: its place among the mail's commands and its text."""

    seq: int  # 1, 2, ... in the mail
    text: str  # stripped


@dataclass(frozen=True)
class Command:
    seq: int
    line: str
    verb: Verb
    tree: str = ""
    good: tuple[str, ...] = ()
    bad: str = ""
    test: str = ""


@dataclass(frozen=True)
class Malformed:
    """A `#kbot` line kbot cannot obey as written, and what is wrong with it."""

    seq: int
    line: str
    verb: str  # the command word as written ("" when there is none)
    problem: str


Parsed = Command | Malformed


def command_lines(body: str) -> list[Line]:
    """The `#kbot` lines of a mail's own text (see the module docstring), in order."""
    out: list[Line] = []
    for raw in body.splitlines():
        if _END.match(raw):
            break
        if _COMMAND.match(raw):  # so not a quoted line: `> #kbot` starts with `>`
            out.append(Line(len(out) + 1, raw.strip()))
    return out


def parse_line(line: Line) -> Parsed:
    """One `#kbot ...` line into a Command, or a Malformed saying what is wrong."""
    text = line.text
    if len(text) > MAX_LINE:
        return Malformed(line.seq, text[:MAX_LINE] + "...", "",
                         f"the line is over {MAX_LINE} characters")
    m = _COMMAND.match(text)
    rest = (m.group(1) if m else "").lstrip(" \t:").split()
    if not rest:
        return Malformed(line.seq, text, "", "no command after #kbot")
    word, args = rest[0], rest[1:]
    try:
        verb = Verb(word.lower())
    except ValueError:
        known = ", ".join(v.value for v in Verb)
        return Malformed(line.seq, text, word, f"unknown command {word!r} (kbot knows {known})")
    required, optional, repeatable = _SYNTAX[verb]
    values: dict[str, list[str]] = {}
    for arg in args:
        key, eq, value = arg.partition("=")
        key = key.lower()
        if not eq:
            return _bad(line, verb, f"{arg!r} is not KEY=VALUE")
        if key not in required | optional:
            takes = ", ".join(sorted(required | optional)) or "no arguments"
            return _bad(line, verb, f"unknown argument {key!r} (it takes {takes})")
        if not value:
            return _bad(line, verb, f"{key}= has no value")
        if key in values and key not in repeatable:
            return _bad(line, verb, f"{key}= is given twice")
        check = _REV if key in ("good", "bad") else _NAME
        if not check.match(value) or ".." in value:
            what = "a revision (a sha, tag or branch)" if check is _REV else "a name"
            return _bad(line, verb, f"{key}={value!r} is not {what}")
        values.setdefault(key, []).append(value)
    missing = sorted(required - values.keys())
    if missing:
        return _bad(line, verb, "missing " + ", ".join(f"{k}=" for k in missing))
    return Command(line.seq, text, verb, tree=_one(values, "tree"),
                   good=tuple(values.get("good", ())), bad=_one(values, "bad"),
                   test=_one(values, "test"))


def parse_body(body: str) -> list[Parsed]:
    """Every command of a mail, parsed; past MAX_COMMANDS each extra line is Malformed."""
    out: list[Parsed] = []
    for line in command_lines(body):
        if line.seq > MAX_COMMANDS:
            out.append(Malformed(line.seq, line.text[:MAX_LINE], "",
                                 f"more than {MAX_COMMANDS} commands in one mail"))
        else:
            out.append(parse_line(line))
    return out


def _bad(line: Line, verb: Verb, problem: str) -> Malformed:
    return Malformed(line.seq, line.text, verb.value,
                     f"{problem}; usage: {USAGE[verb]}")


def _one(values: dict[str, list[str]], key: str) -> str:
    got = values.get(key)
    return got[0] if got else ""
