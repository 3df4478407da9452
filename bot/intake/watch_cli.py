"""`kbot watch [--once] [--list NAME]`: poll the configured lists and record ready series."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from bot.errors import EXIT_OK, UserError
from bot.intake.client import ArchiveClient
from bot.intake.watcher import WatchReport, watch_forever, watch_once
from bot.table import columns

if TYPE_CHECKING:
    from bot.cli import Context


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "watch",
        help="watch the configured mailing lists and record each ready patch series as a job",
        description=(
            "Poll each configured list on the archive ([archive] base_url): new.atom, rt: "
            "searches and a delivery-order sweep; fetch the threads of new patches, assemble "
            "series, apply the list's filters and record each ready series once as a job."
        ),
    )
    p.add_argument("--once", action="store_true", help="poll once, print a summary and exit")
    p.add_argument(
        "--list", dest="lists", action="append", metavar="NAME",
        help="only this list (repeatable; default: every [[lists]] entry)",
    )
    p.add_argument(
        "--run-jobs", action="store_true",
        help="after each poll, test every recorded series and queue its reports (one process "
        "that watches, tests and reports; without it, `kbot run-jobs` does the testing)",
    )
    p.set_defaults(func=run_watch)


def _read_commands(ctx: Context) -> None:
    # `#kbot` mail commands in what this poll stored (bot.commands), before jobs run.
    from bot.commands.act import process

    if ctx.config.commands.enabled:
        report = process(ctx.config, ctx.store)
        if report.recorded:
            print(f"commands: {len(report.recorded)} read, {len(report.jobs)} job(s) queued, "
                  f"{len(report.replies)} reply(ies)", file=sys.stderr)


def _run_jobs(ctx: Context) -> None:
    # Imported here: the pipeline pulls in every stage, which `watch` alone does not need.
    from bot.pipeline.runner import outcome_table, run_queued

    outcomes = run_queued(ctx.config, ctx.store)
    if outcomes:
        print(outcome_table(outcomes), file=sys.stderr)


def print_report(report: WatchReport, out: TextIO) -> None:
    """A short table per list: what came in and which series were recorded."""
    for lst in report.lists:
        sources = ", ".join(f"{n} {s.value}" for s, n in lst.new_messages.items() if n)
        print(
            f"{lst.list_name}: {lst.new_total} new message(s)"
            + (f" ({sources})" if sources else "")
            + f", {lst.threads_fetched} thread(s) fetched, {len(lst.skipped)} skipped",
            file=out,
        )
        rows: list[tuple[str, str, str, str]] = []
        for rec in lst.recorded:
            state = "recorded" if rec.complete else f"recorded, missing {list(rec.missing)}"
            rows.append((f"job {rec.job_id}", f"v{rec.version}", f"{rec.patches}/{rec.total}",
                         f"{rec.title} [{state}]"))
        for rec in lst.requeued:
            rows.append((f"job {rec.job_id}", f"v{rec.version}", f"{rec.patches}/{rec.total}",
                         f"{rec.title} [requeued: its patches changed]"))
        for w in lst.waiting:
            rows.append(("waiting", "", "", f"{w.title} [missing {list(w.missing)}, "
                                            f"{w.waited_s:.0f}s]"))
        for f in lst.filtered:
            rows.append(("filtered", "", "", f"{f.title} [{f.reason}]"))
        for s in lst.superseded:
            rows.append(("superseded", "", "", f"{s.older} [{s.reason}]"))
        for sk in lst.skipped:
            rows.append(("skipped", "", "", f"<{sk.msgid}>: {sk.error}"))
        for err in lst.errors:
            rows.append(("error", "", "", err))
        if rows:
            for line in columns(rows, indent="  "):
                print(line, file=out)


def run_watch(args: argparse.Namespace, ctx: Context) -> int:
    config = ctx.config
    if not config.lists:
        raise UserError(f"{config.source}: no [[lists]] to watch")
    names = args.lists
    if names:
        for name in names:
            config.list_named(name)  # ConfigError naming the list when it is not there
    with ArchiveClient(config.archive) as client:
        if args.once:
            report = watch_once(config, ctx.store, client, lists=names)
            print_report(report, sys.stdout)
            _read_commands(ctx)
            if args.run_jobs:
                _run_jobs(ctx)
            return EXIT_OK
        print(
            f"kbot: watching {', '.join(names or [lst.name for lst in config.lists])} on "
            f"{client.base_url} (Ctrl-C stops)",
            file=sys.stderr,
        )

        def after_poll(report: WatchReport) -> None:
            print_report(report, sys.stderr)
            _read_commands(ctx)
            if args.run_jobs:
                _run_jobs(ctx)

        watch_forever(
            config, ctx.store, client, lists=names,
            on_report=after_poll,
        )
    return EXIT_OK
