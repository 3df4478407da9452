"""`kbot outbox list|show|flush` and `kbot report render|submit` (from a saved result)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.errors import EXIT_INFRA_ERROR, EXIT_OK, InputError
from bot.report.context import ReportContext, context_from_json
from bot.report.deliver import Mode, Reporter

if TYPE_CHECKING:
    from bot.cli import Context


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    outbox = sub.add_parser("outbox", help="reports kbot made: list, show, deliver")
    osub = outbox.add_subparsers(dest="outbox_command", metavar="ACTION")
    osub.required = True
    p = osub.add_parser("list", help="every report with its delivery state")
    p.add_argument("--status", choices=("queued", "sending", "unconfirmed", "sent", "held",
                                           "failed"))
    p.set_defaults(func=cmd_list)
    p = osub.add_parser("show", help="print one report as mailed")
    p.add_argument("msgid")
    p.set_defaults(func=cmd_show)
    p = osub.add_parser("flush", help="deliver queued reports now (SMTP when configured)")
    p.add_argument("--resend", action="append", default=[], metavar="MSGID",
                   help="send a held or failed report (after checking it never arrived)")
    p.set_defaults(func=cmd_flush)

    report = sub.add_parser("report", help="render or submit a report from a saved result")
    rsub = report.add_subparsers(dest="report_command", metavar="ACTION")
    rsub.required = True
    p = rsub.add_parser("render", help="print the mail a saved result (JSON) makes; stores nothing")
    p.add_argument("result", type=Path)
    p.add_argument("--msgid", default="kbot-preview@localhost")
    p.set_defaults(func=cmd_render)
    p = rsub.add_parser("submit", help="store and deliver the report for a saved result, once")
    p.add_argument("result", type=Path)
    p.set_defaults(func=cmd_submit)


def load_result(path: Path) -> ReportContext:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON: {exc}") from exc
    return context_from_json(data, str(path))


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_list(args: argparse.Namespace, ctx: Context) -> int:
    rows = ctx.store.reports(args.status)
    if not rows:
        print("no reports")
        return EXIT_OK
    print(f"{'status':<8} {'kind':<20} {'tries':>5}  {'created':<16}  message-id / subject")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.created_at))
        print(f"{r.status:<8} {r.kind:<20} {r.attempts:>5}  {when:<16}  <{r.msgid}>")
        print(f"{'':<55}{_clip(r.subject, 70)}")
        if r.last_error:
            print(f"{'':<55}note: {_clip(r.last_error, 200)}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace, ctx: Context) -> int:
    msgid = args.msgid.strip().removeprefix("<").removesuffix(">")
    row = ctx.store.get_report(msgid)
    if row is None:
        raise InputError(f"no report with Message-ID <{msgid}> (see `kbot outbox list`)")
    sys.stdout.write(row.raw.decode("utf-8", "replace"))
    return EXIT_OK


def cmd_flush(args: argparse.Namespace, ctx: Context) -> int:
    reporter = Reporter(ctx.config, ctx.store)
    s = reporter.flush(resend=tuple(m.strip("<>") for m in args.resend))
    if s.busy:
        print("kbot: another kbot process is delivering reports; try later", file=sys.stderr)
        return EXIT_INFRA_ERROR
    print(f"sent {s.sent}, held {s.held}, retrying later {s.retrying}, failed {s.failed}"
          f" (reconciled after a stop: {s.reconciled})")
    return EXIT_INFRA_ERROR if s.failed else EXIT_OK


def cmd_render(args: argparse.Namespace, ctx: Context) -> int:
    result = load_result(args.result)
    reporter = Reporter(ctx.config, ctx.store)
    prep = reporter.prepare(result, msgid=args.msgid, date=datetime.now().astimezone(),
                            mode=Mode.FULL)
    sys.stdout.write(prep.raw.decode("utf-8", "replace"))
    return EXIT_OK


def cmd_submit(args: argparse.Namespace, ctx: Context) -> int:
    result = load_result(args.result)
    row = Reporter(ctx.config, ctx.store).submit(result)
    if row is None:
        print("not reported: an earlier revision failed the same way (report.unchanged)")
        return EXIT_OK
    print(f"<{row.msgid}> {row.status}" + (f": {row.last_error}" if row.last_error else ""))
    return EXIT_OK
