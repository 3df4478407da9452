"""Subject markers: versions, counters, prefixes kept, replies, folding."""

from __future__ import annotations

import pytest

from bot.intake.subject import parse_subject


@pytest.mark.parametrize(
    ("subject", "prefixes", "version", "index", "total", "reply", "title"),
    [
        ("[PATCH] KVM: x86: foo", ("PATCH",), 1, None, None, False, "KVM: x86: foo"),
        ("[PATCH v3 2/7] KVM: x86: foo", ("PATCH",), 3, 2, 7, False, "KVM: x86: foo"),
        ("[RFC PATCH v2 0/4] KVM: bar", ("RFC", "PATCH"), 2, 0, 4, False, "KVM: bar"),
        ("[PATCH 5.10 1/2] KVM: stable fix", ("PATCH", "5.10"), 1, 1, 2, False, "KVM: stable fix"),
        ("[PATCH kvm-unit-tests] x86: test", ("PATCH", "kvm-unit-tests"), 1, None, None, False,
         "x86: test"),
        ("Re: [PATCH v2 3/5] KVM: a", ("PATCH",), 2, 3, 5, True, "KVM: a"),
        ("RE: Fwd: [PATCH 1/1] b", ("PATCH",), 1, 1, 1, True, "b"),
        ("Aw: [PATCH] c", ("PATCH",), 1, None, None, True, "c"),
        ("  [PATCH   v4   03/12]    KVM:   spaced  ", ("PATCH",), 4, 3, 12, False, "KVM: spaced"),
        ("[PATCH v2\n 1/3] KVM: folded\n subject", ("PATCH",), 2, 1, 3, False,
         "KVM: folded subject"),
        ("[PATCHv2 1/2] glued", ("PATCH",), 2, 1, 2, False, "glued"),
        ("[RFC][PATCH 2/3] two brackets", ("RFC", "PATCH"), 1, 2, 3, False, "two brackets"),
        ("[PATCH RESEND v2 net-next 1/3] x", ("PATCH", "RESEND", "net-next"), 2, 1, 3, False, "x"),
        ("[PATCH v2,1/3] comma", ("PATCH",), 2, 1, 3, False, "comma"),
        ("KVM Forum call for papers", (), 1, None, None, False, "KVM Forum call for papers"),
        ("[PATCH] fw: load the firmware", ("PATCH",), 1, None, None, False,
         "fw: load the firmware"),
    ],
)
def test_parse_subject(subject: str, prefixes: tuple[str, ...], version: int,
                       index: int | None, total: int | None, reply: bool, title: str) -> None:
    info = parse_subject(subject)
    assert info.prefixes == prefixes
    assert info.version == version
    assert (info.index, info.total) == (index, total)
    assert info.is_reply is reply
    assert info.title == title


def test_prefixes_allow_filtering() -> None:
    assert "kvm-unit-tests" in parse_subject("[kvm-unit-tests PATCH v2 1/2] x").prefixes
    assert parse_subject("[RFC PATCH 0/2] y").is_patch_marker
    assert not parse_subject("[ANNOUNCE] KVM Forum").is_patch_marker
