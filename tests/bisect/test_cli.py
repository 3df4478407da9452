"""`kbot bisect` argument checking and result rendering (no git needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.bisect.cli import format_result
from bot.bisect.core import Bisector
from bot.bisect.graph import CommitGraph, linear_history
from bot.bisect.model import Commit, Verdict
from bot.cli import main as kbot_main


@pytest.mark.parametrize(("extra", "message"), [
    (["--jobs", "0"], "--jobs 0"),
    (["--confidence", "1.0"], "--confidence 1.0"),
    (["--max-runs", "0"], "--max-runs 0"),
    (["--flaky", "--deterministic"], "exclude each other"),
])
def test_bad_arguments_are_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       extra: list[str], message: str) -> None:
    code = kbot_main(["bisect", "--tree", str(tmp_path), "--good", "a", "--bad", "b",
                      "--command", "true", *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_tree_and_not_a_repo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kbot_main(["bisect", "--tree", str(tmp_path / "nope"), "--good", "a", "--bad", "b",
                      "--command", "true"]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert kbot_main(["bisect", "--tree", str(tmp_path), "--good", "a", "--bad", "b",
                      "--command", "true"]) == 2
    assert "not a git repository" in capsys.readouterr().err


def test_test_or_command_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        kbot_main(["bisect", "--tree", ".", "--good", "a", "--bad", "b"])
    assert exc.value.code == 2
    assert "--test" in capsys.readouterr().err


def test_format_result_table() -> None:
    hist = [Commit(c.sha, c.subject, "A U Thor <a@example.org>", "2026-11-27T00:00:00+00:00",
                   c.parents) for c in linear_history(9)]
    graph = CommitGraph(hist[1:], hist[-1].sha)
    res = Bisector(lambda c: Verdict.BAD if int(c.sha[1:]) >= 5 else Verdict.GOOD).bisect(
        graph, [hist[0]])
    text = format_result(res)
    lines = text.splitlines()
    assert lines[0] == f"{hist[5].sha} is the first bad commit (confidence 1.000)"
    assert "Author: A U Thor <a@example.org>" in text and "    commit 5" in text
    header = next(line for line in lines if line.startswith("commit ") and "role" in line)
    assert header.split() == ["commit", "role", "runs", "fail", "pass", "skip", "verdict",
                              "subject"]
    rows = [line for line in lines if line.startswith("c0") and " is the first" not in line]
    assert len(rows) == len(res.tested) and rows[0].split()[:2] == ["c0000000", "endpoint-good"]
