"""`kbot jobs list|show|retry|cancel`: what the job runner did and is doing, and how to steer it.

A job's record is the store: its row (status, attempts, last error), its stored steps (apply,
each build, each boot, the verdict) and the reports it made. Nothing here runs a job: `retry`
and `cancel` change the row, and the runner (`kbot run-jobs`, `kbot serve`) acts on it.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bot.errors import EXIT_OK, UserError
from bot.state import JobRow, Store
from bot.table import columns

if TYPE_CHECKING:
    from bot.cli import Context

STATUSES = ("queued", "running", "done", "failed", "cancelled")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    jobs = sub.add_parser("jobs", help="jobs: list, show, retry, cancel")
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    jsub.required = True
    p = jsub.add_parser("list", help="every job with its state and outcome")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    p = jsub.add_parser("show", help="one job: series, steps, verdict, reports, artifacts")
    p.add_argument("job", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
    p = jsub.add_parser("retry", help="queue a job again (failed, done or cancelled)")
    p.add_argument("job", type=int)
    p.add_argument("--fresh", action="store_true",
                   help="forget its stored boots too: boot every commit again")
    p.set_defaults(func=cmd_retry)
    p = jsub.add_parser("cancel", help="stop a job: a running one stops at its next step")
    p.add_argument("job", type=int)
    p.set_defaults(func=cmd_cancel)


@dataclass(frozen=True)
class JobView:
    """A job as an operator reads it (and as `--json` prints it)."""

    id: int
    kind: str
    status: str
    attempts: int
    last_error: str
    series_id: int | None
    series: str
    list: str
    first_bad_patch: int | None
    boots: int
    reports: tuple[dict[str, str], ...]
    steps: tuple[dict[str, str], ...]
    artifacts: str
    created_at: float
    updated_at: float


def job_artifacts_dir(state_dir: Path, job_id: int) -> Path:
    """Where a job keeps its files (configs, logs, results, repro.sh)."""
    return state_dir / "jobs" / str(job_id)


def view(store: Store, job: JobRow, state_dir: Path) -> JobView:
    series = store.get_series(job.series_id) if job.series_id is not None else None
    steps = store.steps(job.id)
    first_bad = None
    for s in steps:
        if s.key == "verdict" and isinstance(s.data, dict):
            value = s.data.get("first_bad_patch")
            first_bad = int(value) if isinstance(value, int) else None
    reports = tuple({"msgid": r.msgid, "kind": r.kind, "status": r.status, "subject": r.subject}
                    for r in store.reports_for_job(job.id))
    folder = job_artifacts_dir(state_dir, job.id)
    return JobView(
        id=job.id, kind=job.kind, status=job.status, attempts=job.attempts,
        last_error=job.last_error, series_id=job.series_id,
        series=f"v{series.version} {series.title}" if series else "-",
        list=series.list if series else "-", first_bad_patch=first_bad,
        boots=sum(1 for s in steps if s.step == "vmtest"), reports=reports,
        steps=tuple({"key": s.key, "step": s.step, "status": s.status,
                     "commit": s.commit_sha[:12]} for s in steps),
        artifacts=str(folder) if folder.is_dir() else "",
        created_at=job.created_at, updated_at=job.updated_at,
    )


def _get(store: Store, job_id: int) -> JobRow:
    job = store.get_job(job_id)
    if job is None:
        raise UserError(f"no job {job_id} (see `kbot jobs list`)")
    return job


def _age(t: float) -> str:
    s = max(0.0, time.time() - t)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit}"
    return f"{s:.0f}s"


def cmd_list(args: argparse.Namespace, ctx: Context) -> int:
    store = ctx.store
    views = [view(store, j, ctx.config.state_dir) for j in store.jobs(args.status)]
    if args.json:
        print(json.dumps([vars(v) for v in views], indent=2))
        return EXIT_OK
    if not views:
        print("no jobs")
        return EXIT_OK
    rows = [("job", "status", "tries", "first bad", "boots", "reports", "updated", "series")]
    for v in views:
        bad = f"patch {v.first_bad_patch}" if v.first_bad_patch else "-"
        rows.append((str(v.id), v.status, str(v.attempts), bad, str(v.boots),
                     str(len(v.reports)), _age(v.updated_at), v.series))
    print("\n".join(columns(rows)))
    return EXIT_OK


def cmd_show(args: argparse.Namespace, ctx: Context) -> int:
    store = ctx.store
    v = view(store, _get(store, args.job), ctx.config.state_dir)
    if args.json:
        print(json.dumps(vars(v), indent=2))
        return EXIT_OK
    out: list[str] = [f"job {v.id} ({v.kind}): {v.status}, attempt(s) {v.attempts}",
                      f"series: {v.series} [list {v.list}, series id {v.series_id}]"]
    if v.last_error:
        out.append(f"last error: {v.last_error}")
    out.append("first bad patch: " + (str(v.first_bad_patch) if v.first_bad_patch else "none"))
    if v.steps:
        out.append("steps:")
        out += columns([(s["step"], s["status"], s["commit"] or "-", s["key"]) for s in v.steps],
                       indent="  ")
    if v.reports:
        out.append("reports:")
        out += columns([(r["status"], r["kind"], f"<{r['msgid']}>", r["subject"])
                        for r in v.reports], indent="  ")
    if v.artifacts:
        out.append(f"artifacts: {v.artifacts}")
    print("\n".join(out))
    return EXIT_OK


def cmd_retry(args: argparse.Namespace, ctx: Context) -> int:
    store = ctx.store
    job = _get(store, args.job)
    if job.status in ("queued", "running"):
        raise UserError(f"job {job.id} is {job.status} already")
    if args.fresh:
        store.clear_steps(job.id)
    store.set_job_state(job.id, "queued", last_error=f"retry asked ({job.status})",
                        reset_attempts=True)
    print(f"job {job.id} queued again" + (" (stored boots forgotten)" if args.fresh else ""))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, ctx: Context) -> int:
    store = ctx.store
    job = _get(store, args.job)
    if job.status in ("done", "failed", "cancelled"):
        raise UserError(f"job {job.id} is {job.status}: nothing to cancel")
    store.set_job_state(job.id, "cancelled", last_error="cancelled by an operator")
    when = "at its next step" if job.status == "running" else "now"
    print(f"job {job.id} cancelled ({when})")
    return EXIT_OK
