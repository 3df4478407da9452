"""iter_mail / iter_raw: mbox, mboxrd, maildir, .eml, t.mbox.gz; broken input as recorded skips."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest

from bot.errors import InputError
from bot.intake.mail import parse_message
from bot.intake.mbox import ParseProblem, RawMail, iter_mail, iter_raw


def msg(n: int, body: str = "hello\n") -> str:
    return (f"From: a@example.org\nSubject: m{n}\nMessage-Id: <m{n}@example.org>\n\n{body}")


def mbox(*messages: str) -> bytes:
    return "".join(f"From mboxrd@z Thu Jan  1 00:00:00 1970\n{m}\n" for m in messages).encode()


def ids(source: Path | bytes) -> list[str]:
    return [parse_message(r).msgid for r in iter_raw(source)]


def test_mbox_and_mboxrd_unquoting(tmp_path: Path) -> None:
    path = tmp_path / "t.mbox"
    path.write_bytes(mbox(msg(1, ">From the start\n>>From deeper\n"), msg(2)))
    items = list(iter_mail(path))
    assert all(isinstance(i, RawMail) for i in items)
    first = parse_message(items[0].data)  # type: ignore[union-attr]
    assert first.body == "From the start\n>From deeper\n"
    assert ids(path) == ["m1@example.org", "m2@example.org"]


def test_gzip_bytes_and_file(tmp_path: Path) -> None:
    data = gzip.compress(mbox(msg(1), msg(2), msg(3)))
    assert ids(data) == ["m1@example.org", "m2@example.org", "m3@example.org"]
    path = tmp_path / "t.mbox.gz"
    path.write_bytes(data)
    assert len(ids(path)) == 3


def test_single_eml_and_maildir(tmp_path: Path) -> None:
    eml = tmp_path / "one.eml"
    eml.write_text(msg(7))
    assert ids(eml) == ["m7@example.org"]
    md = tmp_path / "md"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    (md / "new" / "2").write_text(msg(2))
    (md / "cur" / "1").write_text(msg(1))
    assert ids(md) == ["m1@example.org", "m2@example.org"]


def test_directory_that_is_not_a_maildir(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a maildir"):
        list(iter_mail(tmp_path))


def test_truncated_mbox_keeps_the_good_messages(tmp_path: Path) -> None:
    data = mbox(msg(1), msg(2))[:-3]  # cut inside the last line of message 2
    problems: list[ParseProblem] = []
    got = [parse_message(r).msgid for r in iter_raw(data, on_problem=problems.append)]
    assert got == ["m1@example.org"]
    assert len(problems) == 1
    assert "truncated" in problems[0].reason and problems[0].msgid == "m2@example.org"


def test_truncated_gzip(tmp_path: Path) -> None:
    bodies = (hashlib.sha256(str(i).encode()).hexdigest() * 60 + "\n" for i in range(500))
    data = gzip.compress(mbox(*(msg(i, b) for i, b in enumerate(bodies))))
    problems: list[ParseProblem] = []
    got = list(iter_raw(data[: len(data) // 2], on_problem=problems.append))
    assert 0 < len(got) < 500
    assert problems and "compressed stream is broken or truncated" in problems[0].reason


def test_gzip_bomb_stops_at_limit() -> None:
    data = gzip.compress(mbox(msg(1, "y" * 3_000_000 + "\n")))
    problems: list[ParseProblem] = []
    got = list(iter_raw(data, max_inflated=1_000_000, on_problem=problems.append))
    assert got == []
    assert "inflates past the 1000000-byte limit" in problems[0].reason


def test_oversize_message_is_skipped_and_named(tmp_path: Path) -> None:
    big = msg(2, "z" * (50 * 1024 * 1024) + "\n")
    path = tmp_path / "big.mbox"
    path.write_bytes(mbox(msg(1), big, msg(3)))
    problems: list[ParseProblem] = []
    got = [parse_message(r).msgid for r in iter_raw(path, on_problem=problems.append)]
    assert got == ["m1@example.org", "m3@example.org"]
    assert problems[0].msgid == "m2@example.org"
    assert "over the 16777216-byte message limit" in problems[0].reason


def test_junk_before_first_from_line() -> None:
    problems: list[ParseProblem] = []
    got = list(iter_raw(b"garbage\n\n" + mbox(msg(1)), on_problem=problems.append))
    assert len(got) == 1
    assert "before the first From line" in problems[0].reason


def test_missing_file() -> None:
    with pytest.raises(InputError, match="no such file"):
        list(iter_raw("/nonexistent/x.mbox"))


@pytest.mark.parametrize("chunk", [5, 7, 64, 1000])
def test_split_does_not_depend_on_read_size(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import bot.intake.mbox as mbox_mod

    bodies = [f"line {i}\n" * (i % 13) + (">From quoted\n" if i % 3 == 0 else "") + "\n" * (i % 2)
              for i in range(60)]
    data = mbox(*(msg(i, b or "x\n") for i, b in enumerate(bodies)))
    whole = list(iter_raw(data))
    monkeypatch.setattr(mbox_mod, "_READ_CHUNK", chunk)
    assert list(iter_raw(data)) == whole
    assert len(whole) == 60
    body = parse_message(whole[3]).body
    assert "\nFrom quoted\n" in body and ">From" not in body
