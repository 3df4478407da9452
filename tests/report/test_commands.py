"""kbot lines for reports are made from kbot's own parser (bot.report.commands)."""

from __future__ import annotations

import pytest

from bot.errors import InputError
from bot.report.commands import kbot_line, parse, parse_text

# What the hand-written saved results of old told readers to run: flags kbot never had.
OLD_LINES = [
    "kbot vmtest --backend bochs --test evmcs_test --series "
    "20210503150854.1144255-1-vkuznets@redhat.com --patch 4 --runs 5",
    "kbot build --series 20210503150854.1144255-1-vkuznets@redhat.com --patch 3",
    "kbot apply --series 20210503150854.1144255-1-vkuznets@redhat.com",
    "kbot bisect --tree linux-6.1 --good 0123456789ab --bad 9f8e7d6c5b4a --test evmcs_test "
    "--backend bochs",
]


@pytest.mark.parametrize("line", OLD_LINES)
def test_lines_kbot_does_not_understand_are_refused(line: str) -> None:
    with pytest.raises(InputError, match="does not parse with kbot's own parser"):
        parse_text(line)


def test_a_good_line_parses_and_keeps_its_argv() -> None:
    line = kbot_line("vmtest", "--kernel", "build/arch/x86/boot/bzImage", "--selftests",
                     "build/kselftest/kvm", "--backend", "qemu-tcg", step="test")
    assert line.text == ("kbot vmtest --kernel build/arch/x86/boot/bzImage --selftests "
                         "build/kselftest/kvm --backend qemu-tcg")
    assert parse(line.argv).backend == "qemu-tcg"
    url = kbot_line("test-series", "https://lore.kernel.org/kvm/a@b.example/", "--tree", ".")
    assert parse_text(url.text).source == "https://lore.kernel.org/kvm/a@b.example/"


def test_private_options_and_bad_lines_are_refused() -> None:
    with pytest.raises(InputError, match="-c names a file on kbot's machine"):
        kbot_line("-c", "/root/kbot.toml", "test-series", "x@y")
    with pytest.raises(InputError, match="--state-dir names a file"):
        kbot_line("--state-dir=/var/lib/kbot", "outbox", "list")
    with pytest.raises(InputError, match="invalid choice: 'nope'"):
        kbot_line("nope")
    with pytest.raises(InputError, match="unrecognized arguments: --runs 5"):
        kbot_line("vmtest", "--kernel", "k", "--selftests", "s", "--runs", "5")
    with pytest.raises(InputError, match="not a kbot command line"):
        parse(["b4", "am", "x@y"])


def test_continued_lines_parse_as_printed() -> None:
    printed = "kbot bisect --tree . --good a --bad \\\n      b --test state_test"
    assert parse_text(printed).bad == "b"
