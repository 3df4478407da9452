"""A job's folder, <state_dir>/jobs/<job id>/ (bot.pipeline.jobs_cli.job_artifacts_dir):
what a maintainer needs to check a report without asking kbot's owner for anything.

    repro.sh              replays the failing step on a fresh machine (bot.report.repro)
    .config               the effective kernel config (of the failing patch, else the last)
    build-c<i>.log        each commit's build log (c0 = the base)
    console-c<i>-<backend>-<n>.log   each boot's serial console
    results.json          the job's SeriesJobResult (bot.codec: loads back into the type)
    reports.json          the report contexts it makes, every series summary included
                          (bot.report.context.to_json: renders the same mails again)

With [report] artifacts_url the reports link these files as
<artifacts_url>/jobs/<id>/<file>; publishing the folder (a web server, rsync) is the owner's.
tests/report/record.py copies results.json and reports.json of a real (fake-VM) pipeline run
into tests/ as the report goldens' data.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from bot import codec
from bot.config import Config
from bot.errors import KbotError
from bot.pipeline.jobs_cli import job_artifacts_dir
from bot.pipeline.report import contexts
from bot.pipeline.series_job import SeriesJobResult
from bot.report import repro
from bot.report.context import BisectionReport, ReportContext, SeriesReport, to_json

log = logging.getLogger(__name__)

RESULTS = "results.json"
REPORTS = "reports.json"
SCRIPT = "repro.sh"
BISECTIONS = "bisections"  # <state_dir>/bisections/<sha>-<test>/: report.json, repro.sh, log


def _failing_commit(result: SeriesJobResult, ctxs: list[ReportContext]) -> int:
    """The commit index the first report is about (its .config is the one to keep)."""
    for ctx in ctxs:
        target = ctx.target
        if target is not None:
            return target.index
    built = [c.index for c in result.commits if c.build is not None]
    return built[-1] if built else 0


def _copy(src: Path | None, dest: Path) -> None:
    if src is None:
        return
    try:
        shutil.copyfile(src, dest)
    except OSError as exc:  # a log kbot no longer has: the folder is still useful
        log.debug("not copied to the job folder: %s: %s", src, exc)


def write_job_artifacts(config: Config, job_id: int, result: SeriesJobResult) -> Path | None:
    """Write (or rewrite) the job's folder; None when it could not be written (logged: the
    job's reports still go out, their links then lead nowhere)."""
    folder = job_artifacts_dir(config.state_dir, job_id)
    staging = folder.with_name(f".{folder.name}.new")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        ctxs = contexts(config, result, job_id, series_summary="always")
        (staging / RESULTS).write_text(json.dumps(codec.dump(result), indent=1) + "\n",
                                       encoding="utf-8")
        (staging / REPORTS).write_text(json.dumps([to_json(c) for c in ctxs], indent=1) + "\n",
                                       encoding="utf-8")
        failing = _failing_commit(result, ctxs)
        for c in result.commits:
            if c.build is not None:
                _copy(c.build.artifacts.log, staging / f"build-c{c.index}.log")
                if c.index == failing:
                    _copy(c.build.artifacts.config, staging / ".config")
            for n, run in enumerate(c.runs, start=1):
                _copy(run.console_log,
                      staging / f"console-c{c.index}-{run.backend.value}-{n}.log")
        # The script replays the first report's step (apply, build or test), else the
        # summary's (the whole series and its tests).
        first = next((c for c in ctxs if not isinstance(c, SeriesReport)), None) or (
            ctxs[0] if ctxs else None)
        if first is not None:
            script = staging / SCRIPT
            series = result.series
            script.write_text(repro.script(
                first.reproduce, f"kbot job {job_id}: {first.kind.value} report on v"
                f"{series.version} \"{series.title}\""), encoding="utf-8")
            script.chmod(0o755)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except (OSError, KbotError) as exc:
        log.warning("job %s: could not write its folder %s: %s", job_id, folder, exc)
        shutil.rmtree(staging, ignore_errors=True)
        return None
    return folder


def write_bisection_artifacts(config: Config, report: BisectionReport) -> Path | None:
    """A bisection's folder, <state_dir>/bisections/<culprit (or bad) sha>-<test>/: its
    report context (report.json), the `git bisect replay` log and repro.sh."""
    at = report.culprit or report.bad
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in report.test)
    folder = config.state_dir / BISECTIONS / f"{at.sha[:12]}-{name}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.json").write_text(json.dumps(to_json(report), indent=1) + "\n",
                                            encoding="utf-8")
        (folder / "bisect.log").write_text(report.bisect_log, encoding="utf-8")
        script = folder / SCRIPT
        script.write_text(repro.script(report.reproduce, f"kbot bisection of {report.test} "
                                       f"on {report.tree}: {at.sha[:12]} {at.subject}"),
                          encoding="utf-8")
        script.chmod(0o755)
    except OSError as exc:
        log.warning("could not write the bisection's folder %s: %s", folder, exc)
        return None
    return folder
