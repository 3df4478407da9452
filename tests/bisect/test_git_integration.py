"""Integration: a real git history with merges where a tiny C program regresses at one commit,
bisected through an evaluator that builds it with gcc (via bot.proc) in scratch worktrees."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import proc
from bot.bisect.core import BisectOptions, Bisector
from bot.bisect.evaluators import WorktreePool
from bot.bisect.gitgraph import load_range
from bot.bisect.model import Commit, Mode, Outcome, Status, Verdict
from bot.build.sandbox import Sandbox
from bot.cli import main as kbot_main
from bot.errors import UserError

pytestmark = pytest.mark.integration

PROG = """#include <stdio.h>
#include "value.h"
/* {note} */
int main(void) {{ return VALUE == 42 ? 0 : 1; }}
"""


def git(repo: Path, *args: str) -> str:
    res = proc.run(["git", "-C", str(repo), *args], timeout=60, env=proc.clean_env({
        "GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.org",
        "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.org",
    }))
    assert res.ok, res.describe()
    return res.stdout.strip()


def commit(repo: Path, msg: str, **files: str) -> str:
    for name, text in files.items():
        (repo / name.replace("_", ".")).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", msg)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture()
def c_repo(tmp_path: Path) -> dict[str, str]:
    """main:  c0 - c1 - c2 ----------- c3 - c4 - M - c5 - c6
    side:               \\- s1 - s2 - s3 - s4 -/
    s2 makes the program fail; s3 breaks the build and s4 repairs it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    shas = {"repo": str(repo)}
    shas["c0"] = commit(repo, "c0: initial", prog_c=PROG.format(note="v0"),
                        value_h="#define VALUE 42\n", notes_txt="0\n")
    shas["c1"] = commit(repo, "c1: notes", notes_txt="1\n")
    shas["c2"] = commit(repo, "c2: comment", prog_c=PROG.format(note="v2"))
    git(repo, "checkout", "-q", "-b", "side")
    shas["s1"] = commit(repo, "s1: reword value", value_h="/* the answer */\n#define VALUE 42\n")
    shas["s2"] = commit(repo, "s2: compute value differently",
                        value_h="/* the answer */\n#define VALUE (40 + 1)\n")
    shas["s3"] = commit(repo, "s3: half-done refactor", prog_c="int main(void) { return\n")
    shas["s4"] = commit(repo, "s4: finish refactor", prog_c=PROG.format(note="v4"))
    git(repo, "checkout", "-q", "main")
    shas["c3"] = commit(repo, "c3: notes", notes_txt="3\n")
    shas["c4"] = commit(repo, "c4: notes", notes_txt="4\n")
    git(repo, "merge", "-q", "--no-ff", "-m", "Merge branch 'side'", "side")
    shas["M"] = git(repo, "rev-parse", "HEAD")
    shas["c5"] = commit(repo, "c5: notes", notes_txt="5\n")
    shas["c6"] = commit(repo, "c6: notes", notes_txt="6\n")
    return shas


class GccEvaluator:
    """Build prog.c with gcc in a worktree: a compile error is SKIP, a non-zero exit is BAD."""

    def __init__(self, pool: WorktreePool) -> None:
        self.pool = pool
        self.built: list[str] = []

    def __call__(self, c: Commit) -> Outcome:
        with self.pool.checkout(c.sha) as wt:
            cc = proc.run(["gcc", "-o", "prog", "prog.c"], cwd=wt, timeout=60,
                          env=proc.clean_env(), sandbox=Sandbox(writable=(wt,)))
            self.built.append(c.sha)
            if not cc.ok:
                return Outcome(Verdict.SKIP, "build failed: " + cc.describe())
            run = proc.run([str(wt / "prog")], cwd=wt, timeout=10, env=proc.clean_env())
        return Outcome(Verdict.GOOD if run.ok else Verdict.BAD,
                       "" if run.ok else f"exit {run.returncode}")


@pytest.mark.parametrize("jobs", [1, 2])
def test_gcc_regression_through_merge(c_repo: dict[str, str], tmp_path: Path, jobs: int) -> None:
    repo = Path(c_repo["repo"])
    rng = load_range(repo, [c_repo["c0"]], c_repo["c6"])
    assert len(rng.graph) == 11 and not rng.graph.is_linear
    pool = WorktreePool(repo, tmp_path / "wt", jobs)
    try:
        ev = GccEvaluator(pool)
        res = Bisector(ev, BisectOptions(jobs=jobs)).bisect(rng.graph, rng.goods)
    finally:
        pool.close()
    assert res.status is Status.FOUND, res.message
    assert res.culprit is not None and res.culprit.sha == c_repo["s2"]
    assert res.culprit.subject == "s2: compute value differently"
    assert res.culprit.author == "Dev <dev@example.org>" and res.culprit.date.startswith("20")
    assert res.search_runs <= 5
    assert len(ev.built) == res.runs

    # git itself replays the log to the same first bad commit.
    log = tmp_path / "bisect.log"
    log.write_text(res.replay_log)
    out = proc.run(["git", "-C", str(repo), "bisect", "replay", str(log)], timeout=60)
    proc.run(["git", "-C", str(repo), "bisect", "reset", "-q"], timeout=60)
    assert out.ok, out.describe()
    assert f"{c_repo['s2']} is the first bad commit" in out.stdout


def test_wrong_good_endpoint_real_build(c_repo: dict[str, str], tmp_path: Path) -> None:
    """"Good" s2 is the culprit itself: the endpoint check says so before any search."""
    repo = Path(c_repo["repo"])
    rng = load_range(repo, [c_repo["s2"]], c_repo["s4"])
    pool = WorktreePool(repo, tmp_path / "wt", 1)
    try:
        res = Bisector(GccEvaluator(pool), BisectOptions()).bisect(rng.graph, rng.goods)
    finally:
        pool.close()
    # s2 already fails, so the good endpoint is wrong: a clear answer naming it.
    assert res.status is Status.WRONG_ENDPOINT
    assert c_repo["s2"][:12] in res.message and "good endpoint" in res.message


def test_skip_next_to_culprit_real_build(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    good = commit(repo, "good", prog_c=PROG.format(note="a"), value_h="#define VALUE 42\n")
    broken = commit(repo, "broken build", prog_c="int main(void) {\n")
    culprit = commit(repo, "regress", prog_c=PROG.format(note="b"), value_h="#define VALUE 1\n")
    bad = commit(repo, "later", prog_c=PROG.format(note="c"))
    rng = load_range(repo, [good], bad)
    pool = WorktreePool(repo, tmp_path / "wt", 1)
    try:
        res = Bisector(GccEvaluator(pool)).bisect(rng.graph, rng.goods)
    finally:
        pool.close()
    assert res.status is Status.INCONCLUSIVE
    assert {c.sha for c in res.candidates} == {broken, culprit}
    skipped = [t for t in res.tested if t.commit.sha == broken]
    assert skipped and "build failed" in skipped[0].outcomes[0].note


def test_load_range_rejects_bad_input(c_repo: dict[str, str], tmp_path: Path) -> None:
    repo = Path(c_repo["repo"])
    with pytest.raises(UserError, match="is not a commit"):
        load_range(repo, ["no-such-rev"], c_repo["c6"])
    with pytest.raises(UserError, match="not an ancestor"):
        load_range(repo, [c_repo["s1"]], c_repo["c4"])
    with pytest.raises(UserError, match="not a git repository"):
        load_range(tmp_path, [c_repo["c0"]], c_repo["c6"])


def test_cli_bisect_with_command(c_repo: dict[str, str], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    repo = c_repo["repo"]
    script = tmp_path / "t.sh"
    script.write_text("gcc -o prog prog.c || exit 125\nexec ./prog\n")
    code = kbot_main(["bisect", "--tree", repo, "--good", c_repo["c0"], "--bad", c_repo["c6"],
                      "--command", f"sh {script}", "--jobs", "2",
                      "--log", str(tmp_path / "bisect.log")])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"{c_repo['s2']} is the first bad commit" in out
    assert "s2: compute value differently" in out and "Dev <dev@example.org>" in out
    assert "candidates left" in err and "round 1: testing" in err
    assert (tmp_path / "bisect.log").read_text().startswith("git bisect start")
    code = kbot_main(["bisect", "--tree", repo, "--good", c_repo["c6"], "--bad", c_repo["c0"],
                      "--command", f"sh {script}"])
    assert code == 2
    assert "not an ancestor" in capsys.readouterr().err


def test_flaky_result_replays_in_git(c_repo: dict[str, str], tmp_path: Path) -> None:
    """A flaky test (seeded): the log marks commits by what the culprit implies, so git
    arrives at the same first bad commit even though bad commits passed some runs."""
    import random

    repo = Path(c_repo["repo"])
    rng = load_range(repo, [c_repo["c0"]], c_repo["c6"])
    culprit = rng.graph.index[c_repo["s2"]]
    r = random.Random(8)

    def ev(c: Commit) -> Verdict:
        bad = culprit in rng.graph.ancestors(rng.graph.index[c.sha]) if c.sha in \
            rng.graph.index else False
        return Verdict.BAD if bad and r.random() < 0.6 else Verdict.GOOD

    res = Bisector(ev, BisectOptions(mode=Mode.FLAKY)).bisect(rng.graph, rng.goods)
    assert res.status is Status.FOUND and res.culprit is not None
    assert res.culprit.sha == c_repo["s2"]
    assert any(t.fails and t.passes for t in res.tested) or res.runs > len(res.tested)
    log = tmp_path / "bisect.log"
    log.write_text(res.replay_log)
    out = proc.run(["git", "-C", str(repo), "bisect", "replay", str(log)], timeout=60)
    proc.run(["git", "-C", str(repo), "bisect", "reset", "-q"], timeout=60)
    assert f"{c_repo['s2']} is the first bad commit" in out.stdout, out.stdout + out.stderr


def _flaky_script(tmp_path: Path, passes_at: str) -> Path:
    """A `git bisect run` script for a flaky regression: at a commit where the program fails,
    run number n (counted across the whole bisection, in a file outside the worktrees) still
    passes when n is in `passes_at` (a space-separated list): a scripted, repeatable flake."""
    count = tmp_path / "count"
    count.write_text("0\n")
    script = tmp_path / "flaky.sh"
    script.write_text(
        "gcc -o prog prog.c || exit 125\n"
        f"n=$(( $(cat {count}) + 1 )); echo $n > {count}\n"
        "./prog && exit 0\n"
        f"for p in {passes_at}; do [ $n -eq $p ] && exit 0; done\n"
        "exit 1\n")
    return script


def test_cli_bad_endpoint_that_passes_then_fails_is_bisected_as_flaky(
        c_repo: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run 2 (the bad endpoint's first) passes: kbot runs it again instead of calling the
    endpoint wrong, sees it fail, says it switches to the flaky search and finds s2."""
    script = _flaky_script(tmp_path, "2 9 14")
    code = kbot_main(["bisect", "--tree", c_repo["repo"], "--good", c_repo["c0"],
                      "--bad", c_repo["c6"], "--command", f"sh {script}"])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert "switching to flaky search: the bad endpoint both passes and fails" in err
    assert out.startswith(f"{c_repo['s2']} is the first bad commit (confidence 0.9")
    assert "mode flaky" in out
    assert "note: switched to the flaky search after 3 runs: bad endpoint failed 1 of 2 runs" \
        in out
    bad_row = next(line for line in out.splitlines() if "endpoint-bad" in line)
    assert bad_row.split()[2:5] == ["2", "1", "1"]  # runs, fail, pass


def test_cli_flaky_regression_without_flaky_flag(
        c_repo: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The bad endpoint fails at once, so the search starts as `git bisect run` would; a lucky
    pass of s4 (run 3) misleads it to the merge, and the confirmation reruns of that answer
    catch it (s4, a parent, fails): kbot switches to the flaky search by itself and names s2.
    git replays the log to the same commit."""
    script = _flaky_script(tmp_path, "3")
    log = tmp_path / "bisect.log"
    code = kbot_main(["bisect", "--tree", c_repo["repo"], "--good", c_repo["c0"],
                      "--bad", c_repo["c6"], "--command", f"sh {script}", "--log", str(log)])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    s4 = c_repo["s4"][:12]
    assert (f"switching to flaky search: {s4} (\"s4: finish refactor\"), a parent of the first "
            "bad commit, fails on a rerun (1 of 2 runs)") in err
    assert out.startswith(f"{c_repo['s2']} is the first bad commit (confidence 0.9")
    assert "mode flaky" in out and "note: switched to the flaky search after 8 runs" in out
    repo = Path(c_repo["repo"])
    replay = proc.run(["git", "-C", str(repo), "bisect", "replay", str(log)], timeout=60)
    proc.run(["git", "-C", str(repo), "bisect", "reset", "-q"], timeout=60)
    assert f"{c_repo['s2']} is the first bad commit" in replay.stdout, replay.describe()
