"""Message-IDs as maintainers paste them (bare, <bracketed>, lore URLs like b4 takes) wherever
kbot takes one, and one clear line when the archive cannot be reached."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main
from bot.intake.lore_url import MessageRef, parse_message_ref
from bot.pipeline.bisect_report import maintainers
from bot.report.context import Addr
from tests.build.fake_kernel import commit, make_fake_kernel

MSGID = "20210503150854.1144255-1-vkuznets@redhat.com"


@pytest.mark.parametrize(("text", "ref"), [
    (MSGID, MessageRef(MSGID)),
    (f"<{MSGID}>", MessageRef(MSGID)),
    (f"id:{MSGID}", MessageRef(MSGID)),
    (f"https://lore.kernel.org/kvm/{MSGID}/", MessageRef(MSGID, "kvm")),
    (f"https://lore.kernel.org/kvm/{MSGID}", MessageRef(MSGID, "kvm")),
    (f"https://lore.kernel.org/kvm/{MSGID}/T/#u", MessageRef(MSGID, "kvm")),
    (f"https://lore.kernel.org/kvm/{MSGID}/t/", MessageRef(MSGID, "kvm")),
    (f"https://lore.kernel.org/kvm/{MSGID}/t.mbox.gz", MessageRef(MSGID, "kvm")),
    (f"https://lore.kernel.org/linux-kernel/{MSGID}/raw", MessageRef(MSGID, "linux-kernel")),
    (f"https://lore.kernel.org/r/{MSGID}", MessageRef(MSGID)),
    (f"https://lore.kernel.org/all/{MSGID}/", MessageRef(MSGID)),
    (f"https://patch.msgid.link/{MSGID}", MessageRef(MSGID)),
    ("http://127.0.0.1:8080/kvm/a%2Fb@x.example/", MessageRef("a/b@x.example", "kvm")),
])
def test_message_refs(text: str, ref: MessageRef) -> None:
    assert parse_message_ref(text) == ref


@pytest.mark.parametrize("text", [
    "not a message id", "https://lore.kernel.org/kvm/", "https://lore.kernel.org/",
    "https://example.org/a/b/c@d.example/", "some/path@file.mbox",
])
def test_not_message_refs(text: str) -> None:
    assert parse_message_ref(text) is None


def test_an_unreachable_archive_is_one_line_naming_its_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that does not resolve: no retries (they would not help), one clear line."""
    waits: list[float] = []  # the client sleeps its backoff before each retry
    monkeypatch.setattr("bot.intake.client.time.sleep", waits.append)
    config = tmp_path / "kbot.toml"
    config.write_text('schema = 1\ninherit = false\n[archive]\n'
                      'base_url = "https://no-such-host.invalid"\nretries = 3\nbackoff_s = 5\n')
    code = main(["-c", str(config), "series", "show",
                 f"https://lore.kernel.org/kvm/{MSGID}/T/#u"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert err == ["kbot: error: the archive https://no-such-host.invalid is unreachable: "
                   "cannot resolve no-such-host.invalid (archive.base_url)"]
    assert waits == []  # not retried


@pytest.mark.integration
def test_lore_urls_fetch_from_the_configured_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kbot series show` with a lore URL: the thread comes from the configured archive (a
    real public-inbox here), from the list the URL names."""
    from bot.intake.local_inbox import LocalInbox
    from tests.report.world import make_world

    inbox = LocalInbox(tmp_path / "public-inbox", ("kvm",))
    inbox.start()
    try:
        world = make_world(tmp_path / "world", inbox)
        for ref in ("https://lore.kernel.org/kvm/regress-2@example.org/T/#u",
                    f"{inbox.base_url}/kvm/regress-0@example.org/t.mbox.gz",
                    "<regress-1@example.org>"):
            assert main(["-c", str(world.config), "series", "show", ref]) == 0, ref
            out = capsys.readouterr().out
            assert out.startswith("v1 KVM: regress series"), out
    finally:
        inbox.stop()


def test_get_maintainer_is_asked_about_the_culprits_files(tmp_path: Path) -> None:
    """scripts/get_maintainer.pl (when the tree has one) names who to Cc: people and lists."""
    repo = tmp_path / "linux"
    make_fake_kernel(repo)
    assert maintainers(repo, "HEAD") == ()  # the fake tree has none: nobody, no error
    script = ('#!/usr/bin/perl\n'
              'print "Paolo Bonzini <pbonzini\\@redhat.com>\\n";\n'
              'print "kvm\\@vger.kernel.org\\n";\n'
              'print "files: @ARGV\\n";\n')
    sha = commit(repo, {"scripts/get_maintainer.pl": script,
                        "arch/x86/kvm/x86.c": "int kvm_x86_init(void)\n{\n\treturn 7;\n}\n"},
                 "KVM: x86: Return 7")
    assert maintainers(repo, sha) == (Addr("Paolo Bonzini", "pbonzini@redhat.com"),
                                      Addr("", "kvm@vger.kernel.org"))
