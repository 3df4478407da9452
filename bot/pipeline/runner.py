"""Run the jobs the watcher recorded: each ready series through the pipeline to its reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.config import Config
from bot.errors import InfraError, KbotError
from bot.pipeline.report import contexts
from bot.pipeline.series_job import (
    Progress,
    SeriesJob,
    SeriesJobResult,
    stderr_progress,
)
from bot.pipeline.source import series_from_store
from bot.report.deliver import Reporter
from bot.state import JobRow, Store
from bot.table import columns
from bot.vm.model import Backend


@dataclass(frozen=True)
class JobOutcome:
    job_id: int
    title: str
    status: str  # done | error
    result: SeriesJobResult | None
    reports: tuple[str, ...]  # Message-IDs of the reports queued for this job
    error: str = ""


def report_result(config: Config, store: Store, result: SeriesJobResult,
                  job_id: int | None) -> tuple[str, ...]:
    """Queue the reports for one result (once each; see bot.report.deliver) and deliver."""
    reporter = Reporter(config, store)
    msgids = []
    for ctx in contexts(config, result):
        row = reporter.submit(ctx, job_id=job_id, send_now=False)
        if row is not None:
            msgids.append(row.msgid)
    reporter.flush()
    return tuple(msgids)


def run_job(config: Config, store: Store, job: JobRow, *, backend: Backend | None = None,
            progress: Progress = stderr_progress) -> JobOutcome:
    if job.series_id is None:
        raise InfraError(f"job {job.id} has no series")
    store.set_job_status(job.id, "running")
    title = f"job {job.id}"
    try:
        series, list_name = series_from_store(store, job.series_id)
        title = f"v{series.version} {series.title}"
        progress(f"job {job.id}: {title}")
        result = SeriesJob(config, store, job.id, backend=backend, progress=progress).run(
            series, list_name=list_name)
        msgids = report_result(config, store, result, job.id)
    except KbotError as exc:
        # Could not test (tree missing, build infrastructure, archive down): the job keeps
        # its error and the next job still runs; nothing stored is lost.
        store.set_job_status(job.id, "error")
        store.add_result(job.id, "job", "error", data={"error": str(exc)})
        progress(f"job {job.id}: could not test: {exc}")
        return JobOutcome(job.id, title, "error", None, (), str(exc))
    store.set_job_status(job.id, "done")
    return JobOutcome(job.id, title, "done", result, msgids)


def run_queued(config: Config, store: Store, *, backend: Backend | None = None,
               progress: Progress = stderr_progress) -> list[JobOutcome]:
    return [run_job(config, store, job, backend=backend, progress=progress)
            for job in store.jobs("queued") if job.kind == "test-series"]


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
