"""`kbot bisect`: first bad commit of a range, with live progress on stderr and a table on stdout.

    kbot bisect --tree PATH --good REV --bad REV --test NAME [--jobs K] [--confidence P]
                [--max-runs N] [--flaky] [--log FILE] [--report [--in-reply-to MSGID]]
    kbot bisect --tree PATH --good REV --bad REV --command 'CMD ARGS'   (like `git bisect run`)

--test builds each commit with the build stage and runs one KVM selftest in a VM with the vm
stage; --command runs a command in a checkout of each commit instead (exit 0 good, 125 skip,
1..127 bad).

A bad endpoint that passes is run again (up to 6 runs, stopping at its first failure) before
kbot says it is not bad. Without --flaky or --deterministic the search starts like `git bisect
run` and reruns its answer's first bad commit and parents twice before naming it; a failure seen
only some of the time (at the bad endpoint, or on those reruns) switches it to the flaky search
by itself, which the output says.
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from bot.bisect.core import BisectOptions, Bisector, Evaluator, Hooks
from bot.bisect.evaluators import CommandEvaluator, WorktreePool
from bot.bisect.gitgraph import load_range
from bot.bisect.model import BisectResult, Commit, Mode, Outcome, Progress, Status
from bot.errors import EXIT_FAILURE_FOUND, EXIT_INFRA_ERROR, EXIT_USER_ERROR, UserError
from bot.table import columns

if TYPE_CHECKING:
    from bot.cli import Context

EXIT_BY_STATUS = {
    Status.FOUND: EXIT_FAILURE_FOUND,
    Status.LOW_CONFIDENCE: EXIT_FAILURE_FOUND,
    Status.INCONCLUSIVE: EXIT_FAILURE_FOUND,
    Status.WRONG_ENDPOINT: EXIT_USER_ERROR,
    Status.UNTESTABLE_ENDPOINT: EXIT_INFRA_ERROR,
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bisect", help="find the first bad commit of a range",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", required=True, type=Path, help="git repository")
    p.add_argument("--good", required=True, action="append", metavar="REV",
                   help="a commit that passes (repeatable)")
    p.add_argument("--bad", required=True, metavar="REV", help="a commit that fails")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--test", metavar="NAME", help="KVM selftest to run (e.g. state_test)")
    what.add_argument("--command", metavar="CMD",
                      help="command run in a checkout of each commit, `git bisect run` style")
    p.add_argument("--set", default=None, metavar="SET",
                   help="--test: the plan's set to run it in (state_test is in vmx and svm; "
                        "default: the set this host runs fastest)")
    p.add_argument("--jobs", type=int, default=None, metavar="K",
                   help="commits tested at once per round (default: config bisect.jobs)")
    p.add_argument("--confidence", type=float, default=None, metavar="P",
                   help="stop when the culprit's probability reaches P (flaky mode; default "
                        "config bisect.confidence)")
    p.add_argument("--max-runs", type=int, default=None, metavar="N",
                   help="run budget (default: config bisect.max_runs)")
    p.add_argument("--flaky", action="store_true",
                   help="the test may fail only some of the time: Bayesian search from the start "
                        "(otherwise it switches when the results show flakiness)")
    p.add_argument("--deterministic", action="store_true",
                   help="never switch to the flaky search and do not rerun the answer (as "
                        "`git bisect run`); contradictions end the bisection")
    p.add_argument("--endpoint-runs", type=int, default=1, metavar="N",
                   help="runs at each endpoint before searching (default 1)")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                   help="--command: time limit per run (default 3600)")
    p.add_argument("--log", type=Path, default=None, metavar="FILE",
                   help="also write the `git bisect replay` log here")
    p.add_argument("--report", action="store_true",
                   help="--test: queue a bisection report (threaded under the culprit's patch "
                        "mail when the list archive has it; Cc its committer and maintainers)")
    p.add_argument("--in-reply-to", metavar="MSGID", default=None,
                   help="--report: reply to this mail (a Message-ID or lore URL) instead")
    p.add_argument("--list", default=None, metavar="NAME",
                   help="--report: the list to search and Cc (default: every configured list)")
    p.set_defaults(func=cmd_bisect)


def _check_args(args: argparse.Namespace, jobs: int, confidence: float, max_runs: int) -> None:
    if not 1 <= jobs <= 64:
        raise UserError(f"--jobs {jobs}: must be between 1 and 64")
    if not 0.5 <= confidence < 1.0:
        raise UserError(f"--confidence {confidence}: must be in [0.5, 1.0)")
    if not 1 <= max_runs <= 10_000:
        raise UserError(f"--max-runs {max_runs}: must be between 1 and 10000")
    if not 1 <= args.endpoint_runs <= 100:
        raise UserError(f"--endpoint-runs {args.endpoint_runs}: must be between 1 and 100")
    if args.flaky and args.deterministic:
        raise UserError("--flaky and --deterministic exclude each other")
    if args.report and args.test is None:
        raise UserError("--report needs --test: a --command bisection names no test to report")
    if (args.in_reply_to or args.list) and not args.report:
        raise UserError("--in-reply-to and --list go with --report")
    if not args.tree.is_dir():
        raise UserError(f"--tree {args.tree}: no such directory")


class TerminalProgress(Hooks):
    """One line per run on stderr; on a terminal the status line is redrawn in place."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def _status(self, p: Progress) -> str:
        conf = f", confidence {p.confidence:.2f}" if 0.0 < p.confidence < 1.0 else ""
        return (f"candidates left {p.candidates_left}, steps done {p.steps_done}, "
                f"est. steps left {p.est_steps_left}{conf}")

    def on_round(self, commits: Sequence[Commit], progress: Progress) -> None:
        names = " ".join(c.short for c in commits)
        self._line(f"round {progress.rounds_done}: testing {names}")

    def on_run(self, commit: Commit, outcome: Outcome, progress: Progress) -> None:
        note = f" ({outcome.note})" if outcome.note else ""
        self._line(f"{commit.short} {outcome.verdict.value}{note} | {self._status(progress)}")

    def on_mode(self, mode: Mode, reason: str) -> None:
        self._line(f"switching to {mode.value} search: {reason}")

    def _line(self, text: str) -> None:
        prefix = "\r\x1b[K" if self.tty else ""
        self.stream.write(f"{prefix}kbot bisect: {text}\n")
        self.stream.flush()


def format_result(res: BisectResult) -> str:
    """The result a person reads: verdict, culprit, then every tested commit as a table."""
    out = [res.message, ""]
    if res.culprit is not None:
        c = res.culprit
        out += [f"commit {c.sha}", f"Author: {c.author}", f"Date:   {c.date}", "",
                f"    {c.subject}", ""]
    if res.candidates:
        out.append("the first bad commit could be any of:")
        out += [f"  {c.sha} {c.subject}" for c in res.candidates]
        out.append("")
    est = math.ceil(math.log2(res.candidates_at_start)) if res.candidates_at_start > 1 else 0
    out.append(f"mode {res.mode.value}, {res.candidates_at_start} candidates "
               f"(log2: {est}), {res.runs} runs ({res.search_runs} searching) in {res.rounds} "
               f"rounds of up to {res.jobs}, confidence {res.confidence:.3f}")
    out += [f"note: {n}" for n in res.notes]
    out.append("")
    rows = [("commit", "role", "runs", "fail", "pass", "skip", "verdict", "subject")]
    for t in res.tested:
        rows.append((t.commit.short, t.role.value, str(t.runs), str(t.fails), str(t.passes),
                     str(t.skips), t.verdict.value, t.commit.subject[:60]))
    out += columns(rows)
    return "\n".join(out) + "\n"


def _kernel_evaluator(args: argparse.Namespace, ctx: Context, repo: Path) -> Evaluator:
    from bot.bisect.kernel_eval import kernel_evaluator

    return kernel_evaluator(ctx.config, repo, args.test, args.set, verbose=args.verbose)


def cmd_bisect(args: argparse.Namespace, ctx: Context) -> int:
    cfg = ctx.config.bisect
    jobs = args.jobs if args.jobs is not None else cfg.jobs
    confidence = args.confidence if args.confidence is not None else cfg.confidence
    max_runs = args.max_runs if args.max_runs is not None else cfg.max_runs
    _check_args(args, jobs, confidence, max_runs)
    repo = args.tree.resolve()
    rng = load_range(repo, args.good, args.bad)
    mode = Mode.FLAKY if args.flaky else Mode.DETERMINISTIC if args.deterministic else None
    options = BisectOptions(mode=mode, jobs=jobs, confidence=confidence, max_runs=max_runs,
                            endpoint_runs=args.endpoint_runs)
    print(f"kbot bisect: {len(rng.graph)} candidate commits between "
          f"{', '.join(g.short for g in rng.goods)} and {rng.bad.short}", file=sys.stderr)
    pool: WorktreePool | None = None
    try:
        if args.command is not None:
            argv = shlex.split(args.command)
            if not argv:
                raise UserError("--command is empty")
            # A fresh folder per run: two bisections of one repository never share checkouts.
            scratch_root = ctx.config.cache_dir / "bisect"
            scratch_root.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=f"{repo.name}-", dir=scratch_root))
            pool = WorktreePool(repo, scratch, jobs)
            evaluator: Evaluator = CommandEvaluator(pool, argv, args.timeout)
        else:
            evaluator = _kernel_evaluator(args, ctx, repo)
        res = Bisector(evaluator, options, TerminalProgress(sys.stderr)).bisect(
            rng.graph, rng.goods)
    finally:
        if pool is not None:
            pool.close()
            shutil.rmtree(pool.scratch, ignore_errors=True)
    sys.stdout.write(format_result(res))
    sys.stdout.write("\n" + res.replay_log)
    if args.log is not None:
        args.log.write_text(res.replay_log, encoding="utf-8")
    if args.report:
        _report(args, ctx, repo, res, evaluator)
    return EXIT_BY_STATUS[res.status]


def _report(args: argparse.Namespace, ctx: Context, repo: Path, res: BisectResult,
            evaluator: Evaluator) -> None:
    """Queue the bisection report (bot.pipeline.bisect_report); say where it went."""
    from bot.bisect.kernel_eval import KernelEvaluator
    from bot.pipeline.bisect_report import bisection_context, verdict_ok
    from bot.report.deliver import Reporter

    if not verdict_ok(res):
        print(f"kbot bisect: no report: {res.message}", file=sys.stderr)
        return
    report = bisection_context(
        ctx.config, repo, res, args.test, bad_rev=args.bad,
        evaluator=evaluator if isinstance(evaluator, KernelEvaluator) else None,
        in_reply_to=args.in_reply_to, list_name=args.list, set_name=args.set)
    from bot.pipeline.artifacts import write_bisection_artifacts

    folder = write_bisection_artifacts(ctx.config, report)
    if folder is not None:
        print(f"kbot bisect: report, repro.sh and log in {folder}", file=sys.stderr)
    row = Reporter(ctx.config, ctx.store).submit(report)
    if row is None:
        print("kbot bisect: not reported: an earlier report said the same", file=sys.stderr)
        return
    where = f" in reply to <{report.in_reply_to}>" if report.in_reply_to else ""
    print(f"report queued{where}: <{row.msgid}> {row.status}"
          + (f" ({row.last_error})" if row.last_error else "")
          + f"  (kbot outbox show '{row.msgid}')")
