"""Which lines of a mail are `#kbot` commands, and what each says or what is wrong with it."""

from __future__ import annotations

import pytest

from bot.commands.parse import (
    MAX_COMMANDS,
    Command,
    Malformed,
    Verb,
    command_lines,
    parse_body,
)


def test_commands_are_the_unquoted_lines_of_the_mail_itself() -> None:
    body = """On Mon, 2 Nov 2026, Ada Hacker wrote:
> #kbot test
>   #kbot bisect good=v6.0 bad=v6.1 test=state_test
> > #kbot invalid

Let us see again.

  #kbot test tree=next
#kbot: help
#kbotfoo test
#kbot's reports are fine

-- \nPaolo
#kbot invalid
"""
    assert [ln.text for ln in command_lines(body)] == ["#kbot test tree=next", "#kbot: help"]


@pytest.mark.parametrize("stop", ["-----Original Message-----", "diff --git a/x b/x",
                                  "-- ", "---------- Forwarded message ---------"])
def test_nothing_after_a_copy_of_another_mail_a_patch_or_a_signature(stop: str) -> None:
    body = f"#kbot help\n{stop}\n#kbot test\n"
    assert [p.line for p in parse_body(body)] == ["#kbot help"]


def test_kbot_report_signatures_hold_no_command() -> None:
    # What templates/_common.txt.j2 puts under every report.
    body = ("Hi,\n\nkbot tested ...\n\n-- \nkbot, a KVM patch-series regression bot.\n"
            "  #kbot test                                  test this series again\n"
            "  #kbot bisect good=REV bad=REV test=NAME     bisect a failure\n")
    assert parse_body(body) == []


def test_arguments() -> None:
    body = ("#kbot test\n#kbot test tree=kvm-next\n"
            "#kbot bisect good=v6.0 good=abc123 bad=HEAD~2 test=state_test tree=kvm\n"
            "#KBOT Invalid\n#kbot help\n")
    assert parse_body(body) == [
        Command(1, "#kbot test", Verb.TEST),
        Command(2, "#kbot test tree=kvm-next", Verb.TEST, tree="kvm-next"),
        Command(3, "#kbot bisect good=v6.0 good=abc123 bad=HEAD~2 test=state_test tree=kvm",
                Verb.BISECT, tree="kvm", good=("v6.0", "abc123"), bad="HEAD~2",
                test="state_test"),
        Command(4, "#KBOT Invalid", Verb.INVALID),
        Command(5, "#kbot help", Verb.HELP),
    ]


@pytest.mark.parametrize(("line", "problem"), [
    ("#kbot", "no command after #kbot"),
    ("#kbot tset", "unknown command 'tset' (kbot knows test, bisect, invalid, help)"),
    ("#kbot bisect good=v6.0 test=state_test", "missing bad=; usage: #kbot bisect"),
    ("#kbot bisect good=v6.0 bad=v6.1", "missing test=; usage"),
    ("#kbot test next", "'next' is not KEY=VALUE; usage: #kbot test [tree=NAME]"),
    ("#kbot test branch=queue", "unknown argument 'branch' (it takes tree)"),
    ("#kbot test tree=", "tree= has no value"),
    ("#kbot test tree=a tree=b", "tree= is given twice"),
    ("#kbot invalid because=wrong", "unknown argument 'because' (it takes no arguments)"),
    ("#kbot bisect good=--all bad=v6.1 test=x", "good='--all' is not a revision"),
    ("#kbot bisect good=v6.0..v6.1 bad=v6.1 test=x", "good='v6.0..v6.1' is not a revision"),
    ("#kbot bisect good=v6.0 bad=v6.1 test=a;rm", "test='a;rm' is not a name"),
])
def test_malformed_commands_say_what_is_wrong(line: str, problem: str) -> None:
    (got,) = parse_body(line + "\n")
    assert isinstance(got, Malformed), got
    assert problem in got.problem
    assert got.line == line


def test_a_mail_holds_at_most_so_many_commands() -> None:
    got = parse_body("#kbot help\n" * (MAX_COMMANDS + 2))
    assert [type(p) for p in got] == [Command] * MAX_COMMANDS + [Malformed] * 2
    assert isinstance(got[-1], Malformed) and "more than" in got[-1].problem
