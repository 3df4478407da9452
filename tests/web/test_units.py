"""The web app's safe parts on their own: artifact paths, log tails, SVG text, report URLs,
and the bisection view of a stored result (fast tier: no server, no browser)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bot import codec
from bot.bisect.core import BisectOptions, Bisector
from bot.bisect.graph import CommitGraph
from bot.bisect.model import Commit, Mode, Outcome, Verdict
from bot.bisect.record import bisect_step_data, load_bisection
from bot.web import files, urls
from bot.web.bisect_view import bisection_view
from bot.web.svg import Bar, LinePoint, SparkPoint, bar_chart, commit_line, sparkline


def test_safe_join_stays_inside_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "jobs" / "1"
    (root / "logs").mkdir(parents=True)
    (root / "logs" / "build.log").write_text("ok\n")
    (root / ".config").write_text("CONFIG_KVM=y\n")
    secret = tmp_path / "kbot.sqlite3"
    secret.write_text("secret")
    (root / "out").symlink_to(secret)
    (root / "up").symlink_to(tmp_path)
    assert files.safe_join(root, "logs/build.log") == (root / "logs" / "build.log").resolve()
    assert files.safe_join(root, ".config") == (root / ".config").resolve()
    for bad in ("../../kbot.sqlite3", "../1/.config", "logs/../../../kbot.sqlite3", "/etc/passwd",
                "out", "up/kbot.sqlite3", "logs", "", "logs//build.log", "./.config",
                "logs\\..\\x", "a\x00b", "missing.txt"):
        assert files.safe_join(root, bad) is None, bad


def test_tail_is_bounded_and_control_characters_are_inert(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    body = b"".join(b"line %06d\r\n" % i for i in range(20000))
    log.write_bytes(body + b"\x1b[31mred\x1b[0m \x07bell \x9b \xff end\n")
    tail = files.read_tail(log, limit=4096)
    assert tail.truncated and tail.size == log.stat().st_size and tail.shown == 4096
    assert len("\n".join(tail.lines).encode()) <= 4096 * 3  # decoded symbols, still bounded
    assert tail.lines[0].startswith("line ")  # the cut first line was dropped, not half shown
    assert tail.lines[-1] == "\u241b[31mred\u241b[0m \u2407bell \ufffd \ufffd end"
    assert not any(ch in line for line in tail.lines for ch in "\x1b\x07\r\x00")
    small = tmp_path / "small.log"
    small.write_text("a\nb\n")
    assert files.read_tail(small) == files.Tail(("a", "b"), 4, 4, False)
    os.symlink(small, tmp_path / "link.log")
    assert not files.regular_file(tmp_path / "link.log")


def test_svg_text_is_escaped() -> None:
    evil = "<script>alert(1)</script>\"'&"
    for svg in (sparkline([SparkPoint(0.5, "pass", evil), SparkPoint(None, "none", evil)],
                          label=evil),
                bar_chart([Bar(evil, 0.7, evil, True)], target=0.95, label=evil),
                commit_line([LinePoint(evil, "fail", evil, evil),
                             LinePoint("", "none", "", evil, gap=3)], label=evil)):
        text = str(svg)
        assert "<script" not in text and "&lt;script&gt;" in text
        assert text.startswith("<svg") and text.endswith("</svg>")


def test_report_urls() -> None:
    assert urls.series_url("", 7) == ""
    assert urls.job_url("", 7) == ""
    assert urls.series_url("https://kbot.example.org/", 7) == "https://kbot.example.org/series/7"
    assert urls.bisect_url("https://kbot.example.org/ci", 3) == "https://kbot.example.org/ci/bisect/3"
    assert urls.job_url("http://127.0.0.1:8080", 12) == "http://127.0.0.1:8080/jobs/12"
    assert urls.artifact_path(1, "a b/<x>&.txt") == "/jobs/1/files/a%20b/%3Cx%3E%26.txt"


def _line_graph(n: int) -> list[Commit]:
    out: list[Commit] = []
    parent: tuple[str, ...] = ()
    for i in range(n):
        sha = f"{i + 1:040x}"
        out.append(Commit(sha, f"commit {i + 1}", parents=parent))
        parent = (sha,)
    return out


def test_bisection_view_from_stored_step_data() -> None:
    commits = _line_graph(16)
    good = Commit("f" * 40, "good")
    commits[0] = Commit(commits[0].sha, commits[0].subject, parents=(good.sha,))
    graph = CommitGraph(commits, commits[-1].sha)
    culprit = commits[10].sha
    bad = {c.sha for c in commits[10:]}

    def evaluate(c: Commit) -> Outcome:
        return Outcome(Verdict.BAD if c.sha in bad else Verdict.GOOD)

    options = BisectOptions(mode=Mode.DETERMINISTIC)
    result = Bisector(evaluate, options).bisect(graph, [good])
    assert result.culprit is not None and result.culprit.sha == culprit
    data = bisect_step_data(result, graph, options)
    stored = load_bisection(json.loads(json.dumps(data)))  # as the store hands it back
    view = bisection_view(stored)
    # deterministic and found: all the weight on the culprit
    assert [b.highlight for b in view.bars].count(True) == 1
    assert view.top[0].commit.sha == culprit and view.top[0].probability == 1.0
    tested = {t.commit.sha for t in result.tested}
    dots = [p for p in view.line if not p.gap]
    assert {p.label for p in dots} >= {commits[-1].short, good.short}
    drawn = (tested | {culprit, commits[-1].sha}) & {c.sha for c in commits}
    assert len(dots) == len(drawn) + 1  # and the good endpoint, left of the range
    assert sum(p.gap for p in view.line) == len(commits) - len(drawn)  # the rest, folded
    # A bare BisectResult (no range stored): the tested commits alone, no posterior.
    bare = bisection_view(load_bisection(codec.dump(result)))
    assert [p.label for p in bare.line] == [t.commit.short for t in result.tested]
    assert bare.bars == () and bare.top[0].commit.sha == culprit
