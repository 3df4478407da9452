"""Series assembly: the shared seed thread, the edge-case corpus (golden files), revisions."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot.intake.mail import parse_message
from bot.intake.mbox import iter_raw
from bot.intake.model import Message
from bot.intake.series import assemble, assemble_all, iter_series, latest, supersessions
from tests.intake.corpus_check import expected_of

CORPUS = Path(__file__).resolve().parent / "corpus"
CASES = sorted(p.stem for p in CORPUS.glob("*.mbox"))


def load(path: Path) -> list[Message]:
    return [parse_message(r) for r in iter_raw(path)]


def test_seed_thread(seed_mbox: Path) -> None:
    messages = load(seed_mbox)
    assert len(messages) == 6
    [series] = assemble(messages)
    assert series.version == 1 and series.total == 4 and series.complete
    assert series.cover is not None
    assert series.cover.message_id == "20210503150854.1144255-1-vkuznets@redhat.com"
    assert [p.index for p in series.patches] == [1, 2, 3, 4]
    # Paolo's reply (to 4/4) is not a patch, and its quoted Signed-off-by is not a trailer.
    paolo = "87de6570-750c-5ce1-17a2-36abe99813ac@redhat.com"
    assert paolo not in {p.message_id for p in series.patches}
    assert all(t.source != paolo for p in series.patches for t in p.trailers)
    # Files touched, as each patch's own diffstat lists them.
    raw_bodies = {m.msgid: m.body for m in messages}
    for p in series.patches:
        stat = re.findall(r"^ (\S+)\s+\|\s+\d+", raw_bodies[p.message_id], re.M)
        assert sorted(p.files) == sorted(stat), p.subject
    assert series.patches[0].files == ("arch/x86/kvm/vmx/nested.c",)
    assert set(series.files()) == {"arch/x86/include/uapi/asm/kvm.h", "arch/x86/kvm/vmx/nested.c"}
    first = series.patches[0]
    assert ("Fixes", 'f2c7ef3ba955 ("KVM: nSVM: cancel KVM_REQ_GET_NESTED_STATE_PAGES on nested '
            'vmexit")') in [(t.name, t.value) for t in first.trailers]
    assert first.author.email == "vkuznets@redhat.com"
    assert first.commit_message.startswith("When enlightened VMCS is in use")
    assert first.commit_message.endswith("Signed-off-by: Vitaly Kuznetsov <vkuznets@redhat.com>")
    assert first.diff.startswith("diff --git a/arch/x86/kvm/vmx/nested.c")
    assert "2.30.2" not in first.diff  # the signature is not part of the diff
    # Verified once with `git patch-id --stable` on these four mails (test_b4/test_patch_git
    # check the algorithm against git on every run).
    assert first.patch_id == "8b73a4300a951b5e1cb895cc22781b36934113d2"


@pytest.mark.parametrize("case", CASES)
def test_corpus_golden(case: str) -> None:
    expected = json.loads((CORPUS / f"{case}.expected.json").read_text())
    assert expected_of(CORPUS / f"{case}.mbox") == expected


def _one(case: str) -> list:  # type: ignore[type-arg]
    return assemble(load(CORPUS / f"{case}.mbox"))


def test_missing_patch() -> None:
    [s] = _one("missing-patch")
    assert not s.complete and s.missing == (2,)
    assert [p.index for p in s.patches] == [1, 3]


def test_out_of_order_is_sorted() -> None:
    [s] = _one("out-of-order")
    assert [p.message_id for p in s.patches] == [f"ooo-{i}@example.org" for i in (1, 2, 3)]


def test_partial_reroll_completes_v2_from_v1() -> None:
    series = _one("partial-reroll")
    v2 = next(s for s in series if s.version == 2)
    assert v2.complete
    assert [p.message_id for p in v2.patches] == [
        "prr-1@example.org", "prr-v2-2@example.org", "prr-3@example.org"]
    assert any("partial reroll" in n for n in v2.notes)
    assert {s.version for s in series} == {1, 2}


def test_v1_then_v2_supersedes_by_change_id() -> None:
    series = _one("v1-then-v2")
    sup = supersessions(series)
    assert len(sup) == 1 and sup[0].reason == "change-id"
    [newest] = latest(series)
    assert newest.version == 2 and newest.change_id == "20240301-nested-state-1a2b"


def test_supersede_by_title_and_author_without_change_id() -> None:
    from dataclasses import replace

    v1, v2 = sorted(_one("v1-then-v2"), key=lambda s: s.version)
    a, b = replace(v1, change_id=None), replace(v2, change_id=None)
    assert [x.reason for x in supersessions([a, b])] == ["title and author"]
    other = replace(b, title="Something else entirely")
    assert supersessions([a, other]) == []


def test_trailers_from_replies() -> None:
    [s] = _one("trailers-in-replies")
    by_index = {p.index: {(t.name, t.value, t.source) for t in p.trailers} for p in s.patches}
    review = ("Reviewed-by", "Grace Hopper <grace@example.org>", "trl-r1@example.org")
    for i in (1, 2, 3):  # a reply to the cover applies to every patch
        assert review in by_index[i]
    assert ("Tested-by", "Linus Torvalds <torvalds@example.org>", "trl-r2@example.org") \
        in by_index[2]
    # A reply to a reply still counts for the patch above it; a quoted trailer does not.
    assert ("Acked-by", "Paolo Bonzini <pbonzini@example.org>", "trl-r3@example.org") \
        in by_index[2]
    assert not any(t[0] == "Acked-by" and "quoted" in t[1] for t in by_index[2])
    assert not any(t[0] == "Tested-by" for t in by_index[1] | by_index[3])


def test_non_patch_mail_and_reply_with_diff_are_not_patches() -> None:
    a = assemble_all(load(CORPUS / "non-patch.mbox"))
    [s] = a.series
    assert [p.message_id for p in s.patches] == ["single-1@example.org"]
    assert any("announce@example.org" in i for i in a.ignored)


def test_html_junk_and_base64_patch() -> None:
    a = assemble_all(load(CORPUS / "html-junk.mbox"))
    [s] = a.series
    assert s.patches[0].message_id == "junk-1@example.org"
    assert s.patches[0].files == ("arch/x86/kvm/vmx/nested.c",)
    assert any("spam@example.org" in i for i in a.ignored)


def test_base_commit_footers() -> None:
    [s] = _one("base-commit")
    assert s.base_commit is not None and re.fullmatch(r"[0-9a-f]{40}", s.base_commit)
    assert s.prerequisite_patch_ids == ("ab" * 20,)
    assert s.change_id == "20240301-base-footer-9f9f"
    j = s.to_json()
    assert j["base_commit"] == s.base_commit and j["cover"]["message_id"] == "base-0@example.org"


def test_unthreaded_patches_join_their_cover() -> None:
    [s] = _one("unthreaded")
    assert s.cover is not None and s.complete and len(s.patches) == 3
    assert sum("not threaded" in n for n in s.notes) == 3


def test_resend_and_duplicate_are_dropped_with_a_note() -> None:
    a = assemble_all(load(CORPUS / "resend-duplicate.mbox"))
    [s] = a.series
    assert [p.message_id for p in s.patches] == ["dup-1@example.org", "dup-2@example.org"]
    assert any("duplicate of patch 2/2" in n for n in s.notes)
    assert any("seen twice" in i for i in a.ignored)


def test_broken_patch_counts_as_missing_with_a_note(seed_mbox: Path) -> None:
    from dataclasses import replace

    messages = load(seed_mbox)
    broken = [replace(m, body=m.body[: m.body.index("@@ -") + 60])
              if m.msgid.endswith("-3-vkuznets@redhat.com") else m for m in messages]
    [s] = assemble(broken)
    assert s.missing == (2,)
    assert any("diff is truncated" in n and "-3-vkuznets" in n for n in s.notes)


def _bench_generator() -> Callable[..., Iterator[str]]:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "intake.py"
    spec = importlib.util.spec_from_file_location("kbot_bench_intake", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generate: Callable[..., Iterator[str]] = module.generate
    return generate


def test_iter_series_streams_in_bounded_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    import bot.intake.series as series_mod

    generate = _bench_generator()
    messages = [parse_message(text.encode()) for text in generate(800, seed=7)]
    whole = {(s.key, tuple(p.message_id for p in s.patches), tuple(len(p.trailers)
              for p in s.patches)) for s in assemble(messages)}
    batches: list[int] = []
    real = series_mod.assemble

    def counting(msgs):  # type: ignore[no-untyped-def]
        msgs = list(msgs)
        batches.append(len(msgs))
        return real(msgs)

    monkeypatch.setattr(series_mod, "assemble", counting)
    streamed = {(s.key, tuple(p.message_id for p in s.patches), tuple(len(p.trailers)
                 for p in s.patches)) for s in iter_series(messages, flush_after=200)}
    assert len(whole) > 100
    assert streamed == whole
    assert len(batches) > 3 and max(batches) < len(messages) / 2


def _raw(msgid: str, subject: str, body: str, irt: str | None = None, minute: int = 0) -> Message:
    head = (f"From: Ada <ada@example.org>\nSubject: {subject}\nMessage-Id: <{msgid}>\n"
            f"Date: Fri, 01 Mar 2024 10:{minute:02d}:00 +0000\n")
    if irt:
        head += f"In-Reply-To: <{irt}>\nReferences: <{irt}>\n"
    return parse_message((head + "\n" + body).encode())


DIFF = ("Commit text.\n\nSigned-off-by: Ada <ada@example.org>\n---\n"
        "diff --git a/f{n}.c b/f{n}.c\n--- a/f{n}.c\n+++ b/f{n}.c\n@@ -1 +1 @@\n-old\n+new {n}\n")


def test_patches_without_version_take_the_covers() -> None:
    msgs = [_raw("c@x", "[PATCH v3 0/2] thing", "cover\n"),
            _raw("p1@x", "[PATCH 1/2] one", DIFF.format(n=1), "c@x", 1),
            _raw("p2@x", "[PATCH v3 2/2] two", DIFF.format(n=2), "c@x", 2)]
    [s] = assemble(msgs)
    assert s.version == 3 and s.complete and [p.message_id for p in s.patches] == ["p1@x", "p2@x"]
    assert s.patches[0].files == ("f1.c",)


def test_patch_id_bulk_path_equals_git_state_machine(seed_mbox: Path) -> None:
    from bot.intake.patch import patch_id, patch_id_exact

    diffs = [p.diff for case in CASES for s in assemble(load(CORPUS / f"{case}.mbox"))
             for p in s.patches]
    diffs += [p.diff for s in assemble(load(seed_mbox)) for p in s.patches]
    assert len(diffs) > 20
    for d in diffs:
        assert patch_id(d) == patch_id_exact(d) != ""
    # Whitespace does not count (git's isspace: space, tab, CR, LF), other changes do.
    d = diffs[0]
    assert patch_id(d.replace("+", "+ \t", 1)) == patch_id(d)
    assert patch_id(d.replace("\n+", "\n+x", 1)) != patch_id(d)


# --- grouping by thread first (series that fill in late, archive order is not send order) ---


def _mail(msgid: str, subject: str, body: str, *, refs: tuple[str, ...] = (),
          author: str = "Ada <ada@example.org>", minute: int = 0) -> Message:
    head = (f"From: {author}\nSubject: {subject}\nMessage-Id: <{msgid}>\n"
            f"Date: Fri, 01 Mar 2024 10:{minute:02d}:00 +0000\n")
    if refs:
        head += f"In-Reply-To: <{refs[-1]}>\nReferences: {' '.join(f'<{r}>' for r in refs)}\n"
    return parse_message((head + "\n" + body).encode())


def test_two_series_of_one_author_replying_to_different_missing_parents_stay_two() -> None:
    # Same author, version and total, within minutes, and patch 1 of both is the same change
    # (a shared prep patch): grouped by author alone, B's 1/2 was dropped as a duplicate of
    # A's and the two series became one.
    common = DIFF.format(n=0)
    msgs = [_mail("a1@x", "[PATCH 1/2] prep", common, refs=("missing-a@x",), minute=1),
            _mail("a2@x", "[PATCH 2/2] feature A", DIFF.format(n=1), refs=("missing-a@x",),
                  minute=2),
            _mail("b1@x", "[PATCH 1/2] prep", common, refs=("missing-b@x",), minute=3),
            _mail("b2@x", "[PATCH 2/2] feature B", DIFF.format(n=2), refs=("missing-b@x",),
                  minute=4)]
    a = assemble_all(msgs)
    got = sorted(tuple(p.message_id for p in s.patches) for s in a.series)
    assert got == [("a1@x", "a2@x"), ("b1@x", "b2@x")]
    assert all(s.complete and not s.notes for s in a.series)
    assert sorted(sorted(o) for o in a.owned) == [["a1@x", "a2@x"], ["b1@x", "b2@x"]]


def test_patches_of_a_missing_cover_are_one_series_that_the_cover_completes() -> None:
    patches = [_mail(f"p{i}@x", f"[PATCH {i}/3] part {i}", DIFF.format(n=i),
                     refs=("cover@x",), minute=i) for i in (1, 2, 3)]
    [before] = assemble(patches)
    assert before.complete and before.cover is None and before.key == "p1@x#v1"
    cover = _mail("cover@x", "[PATCH 0/3] the series", "cover letter\n")
    after = assemble_all([*patches, cover])
    [s] = after.series
    assert s.cover is not None and s.key == "cover@x#v1"
    assert after.owned == (frozenset({"cover@x", "p1@x", "p2@x", "p3@x"}),)


def test_cover_less_series_does_not_join_another_series_cover_by_author() -> None:
    # Ada's cover-less series B (1/2 starts its thread, 2/2 replies to it) was sent before her
    # series A with a cover: B's 1/2 used to fill A's empty slot 1 by author alone, A's own
    # 1/2 then "replaced" it, and B's 2/2 followed B's 1/2 into A: one series, patches lost.
    msgs = [_mail("b1@x", "[PATCH 1/2] B one", DIFF.format(n=1), minute=0),
            _mail("b2@x", "[PATCH 2/2] B two", DIFF.format(n=2), refs=("b1@x",), minute=1),
            _mail("ca@x", "[PATCH 0/2] series A", "cover A\n", minute=5),
            _mail("a1@x", "[PATCH 1/2] A one", DIFF.format(n=3), refs=("ca@x",), minute=6),
            _mail("a2@x", "[PATCH 2/2] A two", DIFF.format(n=4), refs=("ca@x",), minute=7)]
    a = assemble_all(msgs)
    got = sorted(tuple(p.message_id for p in s.patches) for s in a.series)
    assert got == [("a1@x", "a2@x"), ("b1@x", "b2@x")]
    assert all(s.complete and not s.notes for s in a.series)
