"""`kbot commands list|run`: the mail commands kbot read, with what it did about each."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

from bot.errors import EXIT_OK
from bot.state import CMD_ACTED, CMD_IGNORED, CMD_REJECTED, CMD_SEEN
from bot.table import columns

if TYPE_CHECKING:
    from bot.cli import Context

STATES = (CMD_SEEN, CMD_ACTED, CMD_IGNORED, CMD_REJECTED)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "commands", help="`#kbot` mail commands: what kbot read and did (for review)",
        description="Mail commands (`#kbot test`, `#kbot bisect ...`, `#kbot invalid`, "
        "`#kbot help`) read from replies in the watched threads, each with its state: seen "
        "(waiting for its job), acted, ignored (not obeyed, never answered: sender not "
        "allowed, DKIM, a robot) or rejected (answered with what is wrong).")
    csub = p.add_subparsers(dest="commands_command", metavar="ACTION")
    csub.required = True
    lp = csub.add_parser("list", help="every command with its state, reason, job and reply")
    lp.add_argument("--state", choices=STATES)
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=cmd_list)
    rp = csub.add_parser("run", help="read the stored mail for commands now (as a poll does)")
    rp.set_defaults(func=cmd_run)


def cmd_list(args: argparse.Namespace, ctx: Context) -> int:
    rows = ctx.store.command_rows(state=args.state, limit=100_000)
    if args.json:
        print(json.dumps([vars(r) for r in rows], indent=2))
        return EXIT_OK
    if not rows:
        print("no mail commands recorded")
        return EXIT_OK
    table = [("when", "state", "from", "command", "job", "reason", "mail")]
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.created_at))
        job = str(r.job_id) if r.job_id is not None else "-"
        reason = r.reason + (f" (reply <{r.reply_msgid}>)" if r.reply_msgid else "")
        table.append((when, r.state, r.sender, r.line, job, reason, f"<{r.msgid}>"))
    print("\n".join(columns(table)))
    return EXIT_OK


def cmd_run(args: argparse.Namespace, ctx: Context) -> int:
    from bot.commands.act import process  # the pipeline's modules: only when asked

    report = process(ctx.config, ctx.store)
    if not ctx.config.commands.enabled:
        print("commands are off ([commands] enabled = false): nothing read")
        return EXIT_OK
    print(f"{report.mails} mail(s) read, {len(report.recorded)} command(s): "
          + ", ".join(f"{report.count(s)} {s}" for s in STATES)
          + f"; {len(report.jobs)} job(s) queued, {len(report.replies)} reply(ies)")
    return EXIT_OK
