"""`kbot test-series`, `kbot run-jobs` and `kbot demo`: the whole pipeline from the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bot.errors import EXIT_FAILURE_FOUND, EXIT_OK, UserError
from bot.table import columns
from bot.vm.model import Backend

BACKENDS = ("auto", "qemu-kvm", "qemu-tcg", "bochs")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "test-series",
        help="apply, build and VM-test one series patch by patch, then report",
        description="Apply SOURCE (an mbox/eml file or a Message-ID fetched from the archive) "
        "to its base, build every patch incrementally, boot each kernel and run the test plan, "
        "classify each test against the base and queue the reports. Exit 1 when a patch "
        "regresses a test.")
    p.add_argument("source", help="mbox / maildir / .eml / t.mbox.gz file, or a Message-ID "
                   "or lore URL (https://lore.kernel.org/<list>/<msgid>/)")
    p.add_argument("--tree", help="tree name from the config, or a path to a git repository")
    p.add_argument("--list", help="the list the series came from (filters, Cc, base rules)")
    p.add_argument("--backend", choices=BACKENDS, default=None)
    p.add_argument("--plan", help="test plan name (configs/testplans) or .toml path")
    p.add_argument("--no-report", action="store_true", help="do not queue reports")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.set_defaults(func=cmd_test_series)

    r = sub.add_parser("run-jobs", help="test every series the watcher recorded and report")
    r.add_argument("--backend", choices=BACKENDS, default=None)
    r.set_defaults(func=cmd_run_jobs)

    d = sub.add_parser(
        "demo",
        help="the main job end to end on this machine (loopback public-inbox, linux 6.1)",
        description="Serve the real kvm-list seed thread (eVMCS nested-state migration, 2021) "
        "and a generated 4-patch series against linux 6.1 whose patch 3 makes "
        "KVM_GET_NESTED_STATE lose the eVMCS flag from a loopback public-inbox; watch it, "
        "test every series (build + QEMU TCG + Bochs) and write the reports to the outbox. "
        "The first run pays one cold kernel build.")
    d.set_defaults(func=cmd_demo)


def _backend(value: str | None, ctx: Any) -> Backend | None:
    name = value or ctx.config.vm.backend
    return None if name == "auto" else Backend(name)


def cmd_test_series(args: argparse.Namespace, ctx: Any) -> int:
    from bot.intake.cli import _fetch_ref, _looks_like_msgid
    from bot.pipeline.report import patch_outcomes
    from bot.pipeline.runner import report_result
    from bot.pipeline.series_job import SeriesJob
    from bot.pipeline.source import series_from_source
    from bot.vm.plan import load_plan

    source: str | bytes = args.source
    if not Path(args.source).exists():
        if not _looks_like_msgid(args.source):
            raise UserError(f"{args.source}: no such file, and not a Message-ID or lore URL")
        source = _fetch_ref(args.source, ctx, args.list)
        if args.list is None:  # a lore URL names the list: its Cc and rules, when configured
            from bot.intake.lore_url import parse_message_ref

            ref = parse_message_ref(args.source)
            if ref is not None and ref.list_name in {lst.name for lst in ctx.config.lists}:
                args.list = ref.list_name
    series = series_from_source(source, max_bytes=ctx.config.archive.max_message_bytes)
    store = ctx.store
    sid = store.upsert_series(series.key, args.list or "", title=series.title,
                              version=series.version, complete=series.complete,
                              data=series.to_json())
    job_id = store.add_job(sid, "test-series-cli")
    plan = load_plan(args.plan) if args.plan else None
    result = SeriesJob(ctx.config, store, job_id, backend=_backend(args.backend, ctx),
                       plan=plan).run(series, tree=args.tree, list_name=args.list)
    msgids: tuple[str, ...] = ()
    if not args.no_report:
        msgids = report_result(ctx.config, store, result, job_id)
    store.set_job_status(job_id, "done")
    if args.json:
        v = result.verdict
        print(json.dumps({
            "series": series.title, "version": series.version,
            "apply": result.apply.status.value, "failed_patch": result.apply.failed_index,
            "first_bad_patch": result.first_bad_patch, "reports": list(msgids),
            "tests": [] if v is None else [
                {"test": t.test, "kind": t.kind.value, "base": t.base.describe(),
                 "patches": [p.describe() for p in t.patches],
                 "first_bad_patch": t.first_bad_patch, "confidence": t.confidence}
                for t in v.tests],
        }, indent=2))
    else:
        print(_series_table(result, patch_outcomes(result)))
        for m in msgids:
            print(f"report queued: <{m}>  (kbot outbox show '{m}')")
    regressed = (not result.apply.ok) or result.first_bad_patch is not None or any(
        c.build is not None and not c.build.ok for c in result.commits)
    return EXIT_FAILURE_FOUND if regressed else EXIT_OK


def _series_table(result: Any, outcomes: Any) -> str:
    rows = [("patch", "applied", "built", "new warn", "pass", "fail", "skip", "subject")]
    titles = {p.index: p.title for p in result.series.patches}
    for o in outcomes:
        rows.append((str(o.index), "yes" if o.applied else "NO",
                     "-" if o.built is None else ("yes" if o.built else "NO"),
                     str(len(o.new_warnings)), str(o.passed), str(o.failed), str(o.skipped),
                     titles.get(o.index, "")))
    lines = columns(rows)
    lines.append(f"base: {result.apply.base.describe()}")
    if result.verdict is not None:
        for t in result.verdict.tests:
            if t.kind.value != "pass":
                where = f" first bad patch {t.first_bad_patch}" if t.first_bad_patch else ""
                if t.first_bad_patch:
                    where += f" ({t.confidence:.2f})"
                unsure = f" [unsure: {t.note}]" if t.unsure else ""
                lines.append(f"{t.kind.value:>12}: {t.test}{where} "
                             f"(base {t.base.describe()}, patches "
                             + " ".join(p.describe() for p in t.patches) + ")" + unsure)
        first = result.verdict.first_bad_patch
        lines.append(f"first bad patch: {first}" if first else "no new failure")
    return "\n".join(lines)


def cmd_run_jobs(args: argparse.Namespace, ctx: Any) -> int:
    from bot.pipeline.runner import outcome_table, run_queued

    outcomes = run_queued(ctx.config, ctx.store, backend=_backend(args.backend, ctx))
    print(outcome_table(outcomes) if outcomes else "no queued jobs")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, ctx: Any) -> int:
    from bot.pipeline.demo import BAD_PATCH, run_demo
    from bot.pipeline.runner import outcome_table
    from bot.pipeline.series_job import stderr_progress
    from bot.state import Store

    config, outcomes = run_demo(ctx.config.state_dir, stderr_progress)
    print(outcome_table(outcomes) if outcomes else "no new series this time")
    outbox = config.state_dir / "outbox"
    with Store.in_state_dir(config.state_dir) as store:
        rows = store.reports()
        if config.report.delivery == "outbox":
            print(f"\n{len(rows)} report(s), written to the outbox {outbox} and not mailed "
                  "to anyone (report.delivery = outbox):")
        else:
            print(f"\n{len(rows)} report(s), delivered by SMTP via "
                  f"{config.report.smtp.host}:{config.report.smtp.port}:")
        for r in rows:
            print(f"  {r.status:<7} {r.kind:<14} <{r.msgid}>\n  {'':<23}{r.subject}")
        regression = next((r for r in rows if r.kind == "regression"
                           and f"[PATCH {BAD_PATCH}/" in r.subject), None)
        if regression is not None:
            print(f"\n--- the regression report answering patch {BAD_PATCH} "
                  f"({regression.msgid}) ---\n")
            print(regression.raw.decode("utf-8", errors="replace"))
    print(f"\nMore: kbot --state-dir {config.state_dir} outbox list")
    return EXIT_OK
