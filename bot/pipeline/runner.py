"""Run the jobs the watcher recorded: each ready series through the pipeline to its reports."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bot import codec, failpoints
from bot.config import Config
from bot.errors import InputError, KbotError, UserError
from bot.locks import try_locked
from bot.pipeline.bisect_job import JOB_KIND as BISECT_KIND
from bot.pipeline.bisect_job import run_bisect
from bot.pipeline.report import contexts
from bot.pipeline.series_job import (
    JobCancelled,
    JobInterrupted,
    Progress,
    SeriesJob,
    SeriesJobResult,
    stderr_progress,
)
from bot.pipeline.source import series_from_store
from bot.report.deliver import Answer, Reporter
from bot.state import JobRow, Store
from bot.table import columns
from bot.vm.model import Backend

# What `run-jobs` / `kbot serve` run; `kbot test-series` runs its own job at once.
JOB_KINDS = ("test-series", BISECT_KIND)
RUNNER_LOCK = "job-runner.lock"


@dataclass(frozen=True)
class JobOutcome:
    job_id: int
    title: str
    status: str  # done | retry (queued again, later) | failed | cancelled | interrupted
    result: SeriesJobResult | None
    reports: tuple[str, ...]  # Message-IDs of the reports queued for this job
    error: str = ""


def report_result(config: Config, store: Store, result: SeriesJobResult,
                  job_id: int | None, answer: Answer | None = None) -> tuple[str, ...]:
    """Queue the reports for one result (once each; see bot.report.deliver) and deliver.
    A test asked by mail (`answer`) is answered even when the series is clean."""
    reporter = Reporter(config, store)
    msgids = []
    for ctx in contexts(config, result, job_id,
                        series_summary="always" if answer is not None else None):
        row = reporter.submit(ctx, job_id=job_id, send_now=False, answer=answer)
        failpoints.hit("report:submitted")
        if row is not None:
            msgids.append(row.msgid)
    reporter.flush()
    return tuple(msgids)


def answer_of(detail: dict[str, Any]) -> Answer | None:
    """The mail command a job answers (bot.commands puts it in the detail), if any."""
    if not detail.get("answer"):
        return None
    try:
        answer: Answer = codec.load(Answer, detail["answer"], "job detail answer")
    except InputError as exc:
        raise UserError(f"job detail unreadable: {exc}") from exc
    return answer


def retry_delay(config: Config, attempts: int) -> float:
    """Backoff before attempt `attempts + 1`: doubling from retry_backoff_s, capped."""
    jobs = config.jobs
    return float(min(jobs.retry_backoff_s * 2 ** max(attempts - 1, 0), jobs.retry_max_backoff_s))


def run_job(config: Config, store: Store, job: JobRow, owner: str, *,
            backend: Backend | None = None, progress: Progress = stderr_progress,
            clock: Callable[[], float] = time.time,
            stop: threading.Event | None = None) -> JobOutcome:
    """Run one claimed job to its end: done, queued again for a retry, or failed.

    A job interrupted before (its runner died) starts again here and reuses what it stored:
    the series applies to the same commits, builds come from the artifact store and stored
    boots are not repeated, so its reports are the same reports (and are sent once)."""
    title = f"job {job.id}"

    def boundary() -> None:
        store.heartbeat_job(job.id, owner, clock())
        if stop is not None and stop.is_set():
            raise JobInterrupted(f"job {job.id}: stopping (kbot is shutting down)")

    result: SeriesJobResult | None = None
    try:
        if job.kind == BISECT_KIND:
            title = f"bisect {job.detail.get('test', '?')} on {job.detail.get('tree', '?')}"
            bisected = run_bisect(config, store, job.id, job.detail, progress=progress,
                                  boundary=boundary)
            msgids: tuple[str, ...] = ((bisected.report_msgid,) if bisected.report_msgid
                                       else ())
        else:
            if job.series_id is None:
                raise UserError(f"job {job.id} has no series")
            series, list_name = series_from_store(store, job.series_id)
            title = f"v{series.version} {series.title}"
            resumed = " (resumed)" if job.attempts > 1 else ""
            progress(f"job {job.id}: {title}{resumed}")
            # `#kbot test tree=NAME` (bot.commands) names the tree in the job's detail.
            result = SeriesJob(config, store, job.id, backend=backend, progress=progress,
                               boundary=boundary).run(series, list_name=list_name,
                                                      tree=job.detail.get("tree") or None)
            failpoints.hit("job:tested")
            msgids = report_result(config, store, result, job.id, answer_of(job.detail))
    except JobCancelled as exc:
        progress(f"job {job.id}: {exc}")
        return JobOutcome(job.id, title, "cancelled", None, (), str(exc))
    except JobInterrupted as exc:
        # Not the job's fault and not an attempt: back in the queue, resumed from its steps.
        store.release_job(job.id, owner, "interrupted by a shutdown; resumes at the next start")
        progress(str(exc))
        return JobOutcome(job.id, title, "interrupted", None, (), str(exc))
    except UserError as exc:
        # The job itself is wrong (its series no longer assembles, say): trying again will
        # not help. Kept, with its reason, for `kbot jobs show`.
        store.finish_job(job.id, owner, "failed", last_error=str(exc))
        progress(f"job {job.id}: failed: {exc}")
        return JobOutcome(job.id, title, "failed", None, (), str(exc))
    except KbotError as exc:
        # Could not test (tree missing, build infrastructure, archive down): retried later,
        # up to jobs.max_attempts; the next job still runs and nothing stored is lost.
        if job.attempts >= config.jobs.max_attempts:
            reason = f"gave up after {job.attempts} attempt(s): {exc}"
            store.finish_job(job.id, owner, "failed", last_error=reason)
            progress(f"job {job.id}: {reason}")
            return JobOutcome(job.id, title, "failed", None, (), reason)
        delay = retry_delay(config, job.attempts)
        store.finish_job(job.id, owner, "queued", last_error=str(exc),
                         next_attempt_at=clock() + delay)
        progress(f"job {job.id}: could not test (attempt {job.attempts} of "
                 f"{config.jobs.max_attempts}, next in {delay:.0f} s): {exc}")
        return JobOutcome(job.id, title, "retry", None, (), str(exc))
    if not store.finish_job(job.id, owner, "done"):
        # Cancelled while its reports were being made: they stand, the status stays.
        return JobOutcome(job.id, title, "cancelled", result, msgids)
    return JobOutcome(job.id, title, "done", result, msgids)


def runner_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_queued(config: Config, store: Store, *, backend: Backend | None = None,
               progress: Progress = stderr_progress, clock: Callable[[], float] = time.time,
               stop: threading.Event | None = None) -> list[JobOutcome]:
    """Run every due job, one after the other, until none is left (or `stop` is set).

    One runner per state dir (an flock): a second `run-jobs` returns at once instead of
    racing the first. Holding that lock, a job still marked running was left by a runner that
    died, so it is resumed first."""
    with try_locked(config.state_dir / RUNNER_LOCK) as held:
        if not held:
            progress(f"another kbot is running jobs ({config.state_dir / RUNNER_LOCK} is "
                     "locked): leaving them to it")
            return []
        orphans = store.release_orphans("interrupted: its runner stopped; resumed")
        if orphans:
            progress("resuming job(s) left running by an interrupted kbot: "
                     + ", ".join(map(str, orphans)))
        owner = runner_owner()
        outcomes: list[JobOutcome] = []
        while stop is None or not stop.is_set():
            due = store.due_jobs(clock(), JOB_KINDS)
            if not due:
                break
            job = store.claim_job(due[0].id, owner, now=clock())
            if job is None:
                continue
            outcomes.append(run_job(config, store, job, owner, backend=backend,
                                    progress=progress, clock=clock, stop=stop))
        return outcomes


def outcome_table(outcomes: Sequence[JobOutcome]) -> str:
    rows = [("job", "status", "first bad", "reports", "series")]
    for o in outcomes:
        bad = "-"
        if o.result is not None:
            if not o.result.apply.ok:
                bad = f"apply {o.result.apply.failed_index or '?'}"
            elif o.result.first_bad_patch is not None:
                bad = f"patch {o.result.first_bad_patch}"
            elif o.result.verdict is None:
                bad = "untested"
        rows.append((str(o.job_id), o.status, bad, str(len(o.reports)), o.title))
    return "\n".join(columns(rows))
