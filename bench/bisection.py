"""Bisection benchmark: test runs of kbot's searches against log bounds and `git bisect run`.

    .venv/bin/python bench/bisection.py [--trials 1000] [--culprits 10] [--seed 1]

1. deterministic: evaluations for n = 16, 1,000 and 100,000 candidates (real linear git
   histories written with `git fast-import`), against ceil(log2 n) and against the test
   invocations of `git bisect run` on the same repository and culprit; plus a merge-heavy DAG;
2. K = 4 workers: rounds against ceil(log5 n);
3. flaky: seeded trials with a bad commit failing 70% and 50% of runs: how often the culprit is
   right, the mean runs, and calibration of the reported confidence;
4. auto: the default mode (no --flaky): what confirming a deterministic answer costs when the
   test is sound, and how often a flaky regression is still found;
5. series: the series verdict's reruns (bot.bisect.series through the job's round loop, with
   vm.max_rounds = 3): boots per series and how often the verdict is right, unsure or wrong
   for deterministic and flaky regressions, and for a test that fails 30% of runs anyway.
Figures are printed as tables; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import collections
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bot.bisect.core import BisectOptions, Bisector  # noqa: E402
from bot.bisect.gitgraph import load_range  # noqa: E402
from bot.bisect.graph import CommitGraph, linear_history  # noqa: E402
from bot.bisect.model import Commit, Mode, Status, Verdict  # noqa: E402
from bot.bisect.series import (  # noqa: E402
    TestClass,
    TestRuns,
    TestVerdict,
    classify_series,
    rerun_plan,
)
from bot.bisect.synth import descendants_of, git_bisect_run, make_repo  # noqa: E402


def log(msg: str) -> None:
    print(f"bench/bisection: {msg}", file=sys.stderr, flush=True)


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(r, widths, strict=True)))


def deterministic(scratch: Path, culprits: int, rng: random.Random) -> None:
    rows: list[list[str]] = []
    for n in (16, 1000, 100_000):
        t0 = time.monotonic()
        repo = scratch / f"linear-{n}"
        parents: list[tuple[int, ...]] = [()] + [(i - 1,) for i in range(1, n + 1)]
        shas = make_repo(repo, parents, culprit=n)
        rng_range = load_range(repo, [shas[0]], shas[-1])
        index = {sha: i for i, sha in enumerate(shas)}
        log(f"n={n}: repository written and read in {time.monotonic() - t0:.1f}s")
        ours: list[int] = []
        gits: list[int] = []
        agree = 0
        for _ in range(culprits):
            culprit = rng.randint(1, n)
            calls = [0]

            def ev(c: Commit, culprit: int = culprit, calls: list[int] = calls,
                   index: dict[str, int] = index) -> Verdict:
                calls[0] += 1
                return Verdict.BAD if index[c.sha] >= culprit else Verdict.GOOD

            res = Bisector(ev, BisectOptions(mode=Mode.DETERMINISTIC,
                                             check_endpoints=False)).bisect(
                rng_range.graph, rng_range.goods)
            # Commit i has i + 1 commits in its history: good iff that is <= culprit.
            git = git_bisect_run(repo, shas[0], shas[-1], scratch / "count",
                                 test=f'test "$(git rev-list --count HEAD)" -le {culprit}')
            agree += (res.culprit is not None and res.culprit.sha == shas[culprit]
                      and git.first_bad == shas[culprit])
            ours.append(calls[0])
            gits.append(git.invocations)
        rows.append([f"{n:,}", "linear", str(culprits), str(math.ceil(math.log2(n))),
                     f"{sum(ours) / len(ours):.1f}", str(max(ours)),
                     f"{sum(gits) / len(gits):.1f}", str(max(gits)), f"{agree}/{culprits}"])
    # A merge-heavy history: a mainline merging short topic branches, like kernel history.
    n_dag = 1000
    parents = [()]
    while len(parents) < n_dag:
        base = len(parents) - 1
        branch = rng.randint(1, 6)
        prev = base - rng.randint(0, min(base, 5))
        for _ in range(branch):
            parents.append((prev,))
            prev = len(parents) - 1
        parents.append((base, prev))
    ours, gits, agree = [], [], 0
    for k in range(max(3, culprits // 2)):
        culprit = rng.randint(1, len(parents) - 1)
        repo = scratch / f"dag-{k}"
        shas = make_repo(repo, parents, culprit)
        rr = load_range(repo, [shas[0]], shas[-1])
        bad = {shas[i] for i in descendants_of(parents, culprit)}
        calls = [0]

        def evd(c: Commit, bad: set[str] = bad, calls: list[int] = calls) -> Verdict:
            calls[0] += 1
            return Verdict.BAD if c.sha in bad else Verdict.GOOD

        res = Bisector(evd, BisectOptions(mode=Mode.DETERMINISTIC, check_endpoints=False)
                       ).bisect(rr.graph, rr.goods)
        git = git_bisect_run(repo, shas[0], shas[-1], scratch / "count")
        agree += (res.culprit is not None and res.culprit.sha == shas[culprit] == git.first_bad)
        ours.append(calls[0])
        gits.append(git.invocations)
    rows.append([f"{len(parents):,}", "merges", str(len(ours)),
                 str(math.ceil(math.log2(len(parents)))), f"{sum(ours) / len(ours):.1f}",
                 str(max(ours)), f"{sum(gits) / len(gits):.1f}", str(max(gits)),
                 f"{agree}/{len(ours)}"])
    table("deterministic search (--deterministic): test runs to the first bad commit (no "
          "endpoint checks, as `git bisect run`)",
          ["n", "history", "culprits", "ceil(log2 n)", "kbot mean", "kbot max", "git mean",
           "git max", "same culprit"], rows)


def parallel(culprits: int, rng: random.Random) -> None:
    rows = []
    for n in (16, 1000, 100_000):
        hist = linear_history(n + 1)
        graph = CommitGraph(hist[1:], hist[-1].sha)
        for jobs in (1, 4):
            rounds: list[int] = []
            runs: list[int] = []
            right = 0
            for _ in range(culprits):
                culprit = rng.randint(1, n)

                def ev(c: Commit, culprit: int = culprit) -> Verdict:
                    return Verdict.BAD if int(c.sha[1:]) >= culprit else Verdict.GOOD

                res = Bisector(ev, BisectOptions(mode=Mode.DETERMINISTIC, jobs=jobs,
                                                 check_endpoints=False)).bisect(graph, [hist[0]])
                right += res.culprit == hist[culprit]
                rounds.append(res.rounds)
                runs.append(res.search_runs)
            rows.append([f"{n:,}", str(jobs), str(math.ceil(math.log2(n))),
                         str(math.ceil(math.log(n, 5) - 1e-9)),
                         f"{sum(rounds) / len(rounds):.1f}", str(max(rounds)),
                         f"{sum(runs) / len(runs):.1f}", f"{right}/{culprits}"])
    table("parallel rounds (deterministic, K commits tested per round)",
          ["n", "K", "ceil(log2 n)", "ceil(log5 n)", "rounds mean", "rounds max", "runs mean",
           "right"], rows)


@dataclass
class FlakyRow:
    q: float
    eps: float
    trials: int = 0
    right: int = 0
    search_runs: int = 0
    total_runs: int = 0
    said95: int = 0
    right95: int = 0
    wrong_endpoint: int = 0
    seconds: float = 0.0


BINS = ((0.0, 0.5), (0.5, 0.8), (0.8, 0.95), (0.95, 0.99), (0.99, 1.01))


def flaky(trials: int, n: int, rng: random.Random) -> None:
    hist = linear_history(n + 1)
    graph = CommitGraph(hist[1:], hist[-1].sha)
    det = math.ceil(math.log2(n))
    rows = []
    calib: dict[tuple[float, float], list[tuple[float, bool]]] = {}
    for q, eps in ((0.7, 0.0), (0.5, 0.0), (0.7, 0.01)):
        row = FlakyRow(q, eps)
        t0 = time.monotonic()
        points: list[tuple[float, bool]] = []
        for t in range(trials):
            culprit = rng.randint(1, n)
            r = random.Random(rng.random())

            def ev(c: Commit, culprit: int = culprit, r: random.Random = r, q: float = q,
                   eps: float = eps) -> Verdict:
                p = q if int(c.sha[1:]) >= culprit else eps
                return Verdict.BAD if r.random() < p else Verdict.GOOD

            res = Bisector(ev, BisectOptions(mode=Mode.FLAKY, max_runs=64)).bisect(
                graph, [hist[0]])
            row.trials += 1
            if res.status in (Status.WRONG_ENDPOINT, Status.UNTESTABLE_ENDPOINT):
                row.wrong_endpoint += 1
                points.append((0.0, False))
                continue
            ok = res.culprit == hist[culprit]
            row.right += ok
            row.search_runs += res.search_runs
            row.total_runs += res.runs
            points.append((res.confidence, ok))
            if res.confidence >= 0.95:
                row.said95 += 1
                row.right95 += ok
            if (t + 1) % 100 == 0:
                log(f"flaky q={q} eps={eps}: {t + 1}/{trials} trials")
        row.seconds = time.monotonic() - t0
        calib[(q, eps)] = points
        tested = row.trials - row.wrong_endpoint
        rows.append([
            f"{q:.0%}", f"{eps:.0%}", str(row.trials), f"{row.right / row.trials:.1%}",
            f"{row.search_runs / max(tested, 1):.1f}", f"{row.total_runs / max(tested, 1):.1f}",
            str(det), f"{row.search_runs / max(tested, 1) / det:.2f}x",
            f"{row.said95 / row.trials:.1%}",
            f"{row.right95 / max(row.said95, 1):.1%}", str(row.wrong_endpoint),
            f"{row.seconds / row.trials * 1000:.0f}"])
    table(f"flaky search: n = {n:,} candidates, culprit uniform, confidence target 0.95, "
          "budget 64 runs",
          ["bad fails", "good fails", "trials", "culprit right", "search runs", "all runs",
           "det. runs", "runs ratio", "said >=0.95", "right when >=0.95", "wrong endpoint",
           "ms/trial"], rows)
    crow = []
    for (q, eps), points in calib.items():
        for lo, hi in BINS:
            sel = [(c, ok) for c, ok in points if lo <= c < hi]
            if not sel:
                continue
            crow.append([f"{q:.0%}", f"{eps:.0%}", f"[{lo:.2f}, {min(hi, 1.0):.2f}]",
                         str(len(sel)), f"{sum(c for c, _ in sel) / len(sel):.3f}",
                         f"{sum(ok for _, ok in sel) / len(sel):.3f}"])
    table("calibration: reported confidence against how often that culprit was right",
          ["bad fails", "good fails", "reported in", "trials", "mean reported", "right"], crow)


def auto_mode(trials: int, n: int, rng: random.Random) -> None:
    """The default mode on sound and on flaky tests: endpoint checks, the search, and the
    confirmation reruns of a deterministic answer (switching to the flaky search on doubt)."""
    hist = linear_history(n + 1)
    graph = CommitGraph(hist[1:], hist[-1].sha)
    rows = []
    for q in (1.0, 0.9, 0.7, 0.5):
        right = said = right_said = switched = wrong_end = runs = confirm = 0
        for _ in range(trials):
            culprit = rng.randint(1, n)
            r = random.Random(rng.random())

            def ev(c: Commit, culprit: int = culprit, r: random.Random = r,
                   q: float = q) -> Verdict:
                return Verdict.BAD if int(c.sha[1:]) >= culprit and r.random() < q \
                    else Verdict.GOOD

            res = Bisector(ev, BisectOptions(max_runs=64)).bisect(graph, [hist[0]])
            if res.status in (Status.WRONG_ENDPOINT, Status.UNTESTABLE_ENDPOINT):
                wrong_end += 1
                continue
            ok = res.culprit == hist[culprit]
            right += ok
            runs += res.runs
            confirm += res.runs - res.search_runs - 2  # less the two endpoint runs
            switched += res.mode is Mode.FLAKY
            if res.status is Status.FOUND:
                said += 1
                right_said += ok
        tested = max(trials - wrong_end, 1)
        rows.append([f"{q:.0%}", str(trials), f"{right / trials:.1%}",
                     f"{switched / tested:.1%}", f"{runs / tested:.1f}",
                     f"{confirm / tested:.1f}", f"{said / trials:.1%}",
                     f"{right_said / max(said, 1):.1%}", str(wrong_end)])
    table(f"auto mode (no --flaky): n = {n:,} candidates, culprit uniform, budget 64 runs; "
          "'other runs' = runs not spent searching or on the first endpoint runs "
          "(confirmation, bad-endpoint reruns)",
          ["bad fails", "trials", "culprit right", "switched to flaky", "all runs",
           "other runs", "named (found)", "right when named", "wrong endpoint"], rows)


def series_rounds(rates: list[float], rounds: int, rng: random.Random,
                  reruns: int) -> tuple[TestVerdict, int, int]:
    """SeriesJob._test's loop for one test: verdict, boots, rounds used."""
    per: list[list[Verdict]] = [[] for _ in rates]
    todo: tuple[int, ...] = tuple(range(len(rates)))
    boots = 0
    for round_no in range(1, rounds + 1):
        for i in todo:
            per[i].append(Verdict.BAD if rng.random() < rates[i] else Verdict.GOOD)
            boots += 1
        sv = classify_series([TestRuns("t", tuple(tuple(p) for p in per))])
        if not sv.unsure:
            break
        todo = rerun_plan(sv, range(len(rates)), min(reruns, len(rates)))
        if round_no == rounds or not todo:
            break
        reruns -= len(todo)
    return sv.tests[0], boots, round_no


def series(trials: int, rng: random.Random) -> None:
    rows = []
    cases: list[tuple[str, float, float]] = [
        ("deterministic regression", 0.0, 1.0), ("flaky regression", 0.0, 0.8),
        ("flaky regression", 0.0, 0.5), ("flaky anyway (base too)", 0.3, 0.3)]
    for n in (1, 3, 5, 10):
        for label, before, after in cases:
            named_right = named_wrong = unsure = flaky = other = 0
            boots: list[int] = []
            rounds_used: collections.Counter[int] = collections.Counter()
            for _ in range(trials):
                culprit = rng.randint(1, n)
                rates = [before] * culprit + [after] * (n + 1 - culprit)
                v, b, used = series_rounds(rates, 3, random.Random(rng.random()), 12)
                boots.append(b)
                rounds_used[used] += 1
                regression = before != after
                if v.first_bad_patch is not None:
                    if regression and v.first_bad_patch == culprit:
                        named_right += 1
                    else:
                        named_wrong += 1
                elif v.unsure:
                    unsure += 1
                elif v.kind is TestClass.FLAKY:
                    flaky += 1
                else:
                    other += 1
            rows.append([str(n), label, f"{after:.0%}", f"{before:.0%}", str(trials),
                         f"{sum(boots) / trials:.2f}", str(max(boots)), str(n + 1),
                         " ".join(f"{k}:{rounds_used[k]}" for k in sorted(rounds_used)),
                         f"{named_right / trials:.1%}", f"{named_wrong / trials:.1%}",
                         f"{unsure / trials:.1%}", f"{flaky / trials:.1%}",
                         f"{other / trials:.1%}"])
    table("series verdict: one test over a series of n patches, culprit uniform, vm.max_rounds "
          "3, confidence target 0.95 ('named wrong' = a regression mail that should not be)",
          ["n", "case", "fails after", "fails before", "trials", "boots mean", "boots max",
           "one round", "rounds used", "named right", "named wrong", "unsure", "flaky",
           "other"], rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=1000, help="flaky trials per failure rate")
    ap.add_argument("--flaky-n", type=int, default=1000, help="candidates in the flaky trials")
    ap.add_argument("--culprits", type=int, default=10, help="culprits per deterministic size")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--series-trials", type=int, default=2000,
                    help="series-verdict trials per case")
    ap.add_argument("--only", action="append",
                    choices=("deterministic", "parallel", "flaky", "auto", "series"),
                    help="run only these parts (repeatable; default: all)")
    args = ap.parse_args()
    parts = set(args.only or ("deterministic", "parallel", "flaky", "auto", "series"))
    rng = random.Random(args.seed)
    print(f"bench/bisection.py --trials {args.trials} --flaky-n {args.flaky_n} "
          f"--culprits {args.culprits} --series-trials {args.series_trials} --seed {args.seed}")
    if "deterministic" in parts:
        with tempfile.TemporaryDirectory(prefix="kbot-bench-bisect-", dir="/var/tmp") as tmp:
            deterministic(Path(tmp), args.culprits, rng)
    if "parallel" in parts:
        parallel(args.culprits, rng)
    if "flaky" in parts:
        flaky(args.trials, args.flaky_n, rng)
    if "auto" in parts:
        auto_mode(max(args.trials // 2, 1), args.flaky_n, rng)
    if "series" in parts:
        series(args.series_trials, rng)
    return 0


if __name__ == "__main__":
    sys.exit(main())
