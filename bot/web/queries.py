"""What each page shows, as typed values built from the store (read only).

The series page's matrix is rebuilt from the job's stored steps the same way the job judged
them: every stored boot (TestRun) goes through bot.pipeline.series_job.verdict_inputs, one
boot per slot, so each cell knows which boot failed (its console link) and the per-commit
counts add up to the `fail:runs` the verdict and the report used.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot import codec
from bot.bisect.model import Verdict
from bot.bisect.series import RunCounts
from bot.errors import InputError
from bot.pipeline.jobs_cli import job_artifacts_dir
from bot.pipeline.series_job import CommitRuns, verdict_inputs
from bot.state import WEB_OUTCOMES, JobRow, ReportRow, SeriesRow, StepRow, Store, WebSeriesRow
from bot.vm.model import TestRun
from bot.web import files, urls
from bot.web.svg import SparkPoint

PAGE_SIZE = 50
MAX_WARNINGS_SHOWN = 20


def age(t: float, now: float | None = None) -> str:
    s = max(0.0, (now if now is not None else time.time()) - t)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit}"
    return f"{s:.0f}s"


def when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "-"


# -- series list ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SeriesFilter:
    list: str = ""
    state: str = ""
    outcome: str = ""
    page: int = 1


@dataclass(frozen=True)
class SeriesList:
    rows: tuple[WebSeriesRow, ...]
    total: int
    filter: SeriesFilter
    lists: tuple[str, ...]
    states: tuple[str, ...]
    outcomes: tuple[str, ...]
    pages: int


def series_list(store: Store, flt: SeriesFilter) -> SeriesList:
    lists, states = store.web_facets()
    rows, total = store.web_series_page(
        list_name=flt.list or None, state=flt.state or None, outcome=flt.outcome or None,
        limit=PAGE_SIZE, offset=(flt.page - 1) * PAGE_SIZE)
    pages = max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)
    return SeriesList(tuple(rows), total, flt, lists, states, WEB_OUTCOMES, pages)


# -- series page ---------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildView:
    status: str  # pass | fail | error
    message: str
    cached: bool
    seconds: float
    failed_step: str
    new_warnings: tuple[str, ...]
    warnings: int
    errors: tuple[str, ...]
    log_url: str  # "" when the build recorded no log file
    config_url: str


@dataclass(frozen=True)
class Cell:
    state: str  # pass | fail | flaky | skip | none
    label: str  # fail:runs, "skip" or "-"
    title: str
    link: str  # the console of the boot that shows it ("" when not booted)
    fails: int
    passes: int
    skips: int


@dataclass(frozen=True)
class PatchRow:
    index: int  # 0 = the base
    sha: str
    title: str
    applied: bool
    build: BuildView | None
    cells: tuple[Cell, ...]
    first_bad: bool
    boots: int


@dataclass(frozen=True)
class TestColumn:
    key: str
    kind: str  # the verdict's class: pass | new | pre-existing | fixed | flaky | untested
    first_bad_patch: int | None
    confidence: float
    note: str
    history: str  # link to the test's history


@dataclass(frozen=True)
class ApplyView:
    status: str
    summary: str
    base: str
    failed_index: int | None
    conflicts: tuple[str, ...]
    git_message: str


@dataclass(frozen=True)
class ReportView:
    msgid: str
    kind: str
    status: str
    subject: str
    created: str
    last_error: str


@dataclass(frozen=True)
class SeriesPage:
    series: SeriesRow
    author: str
    job: JobRow | None
    apply: ApplyView | None
    patches: tuple[PatchRow, ...]
    tests: tuple[TestColumn, ...]
    first_bad_patch: int | None
    verdict: str  # regressed | ok | "" (no verdict yet)
    reports: tuple[ReportView, ...]
    boots: int
    problems: tuple[str, ...]  # stored steps this kbot could not read


def _build_view(job_id: int, data: Any) -> BuildView:
    d = data if isinstance(data, dict) else {}
    art = d.get("artifacts") or {}
    diags = [x for x in d.get("diagnostics") or [] if isinstance(x, dict)]
    sha = str(d.get("rev", ""))

    def line(x: dict[str, Any]) -> str:
        flag = f" [{x.get('flag')}]" if x.get("flag") else ""
        return (f"{x.get('file', '?')}:{x.get('line', '?')}: {x.get('severity', '?')}: "
                f"{x.get('message', '')}{flag}")

    new = tuple(line(x) for x in (d.get("new_warnings") or []) if isinstance(x, dict))
    return BuildView(
        status=str(d.get("status", "?")), message=str(d.get("message", "")),
        cached=bool(d.get("cached")), seconds=float(d.get("build_seconds") or 0.0),
        failed_step=str(d.get("failed_step", "")), new_warnings=new,
        warnings=sum(1 for x in diags if x.get("severity") == "warning"),
        errors=tuple(line(x) for x in diags if x.get("severity") == "error")[:MAX_WARNINGS_SHOWN],
        log_url=f"/jobs/{job_id}/build/{sha}/log" if art.get("log") else "",
        config_url=f"/jobs/{job_id}/build/{sha}/config" if art.get("config") else "",
    )


def load_runs(step: StepRow) -> tuple[TestRun, ...]:
    runs: tuple[TestRun, ...] = codec.load(tuple[TestRun, ...], step.data, step.key)
    return runs


def _cell(job_id: int, boots: Sequence[tuple[str, int, tuple[Verdict, ...]]], test: str,
          built: bool) -> Cell:
    verdicts = [v for _, _, vs in boots for v in vs]
    c = RunCounts.of(verdicts)
    link = ""
    if boots:
        key, run, _ = next((b for b in boots if Verdict.BAD in b[2]), boots[0])
        link = urls.console_path(job_id, key, run)
    if c.fails and c.passes:
        state = "flaky"
    elif c.fails:
        state = "fail"
    elif c.passes:
        state = "pass"
    elif c.skips:
        state = "skip"
    else:
        state = "none"
    label = c.describe() if c.tested else ("skip" if c.skips else "-")
    title = (f"{test}: {c.fails} failed, {c.passes} passed, {c.skips} could not test "
             f"in {len(boots)} boot(s)") if boots else (
        f"{test}: not booted" + ("" if built else " (not built)"))
    return Cell(state, label, title, link, c.fails, c.passes, c.skips)


def series_page(store: Store, series_id: int) -> SeriesPage | None:
    series = store.get_series(series_id)
    if series is None:
        return None
    job = store.job_for_series(series_id, "test-series")
    patches_data = [p for p in series.data.get("patches") or [] if isinstance(p, dict)]
    author = str((patches_data[0] if patches_data else {}).get("author", ""))
    reports = tuple(ReportView(r.msgid, r.kind, r.status, r.subject, when(r.created_at),
                               r.last_error)
                    for r in (store.reports_for_job(job.id) if job else []))
    problems: list[str] = []
    steps = store.steps(job.id) if job else []
    apply_step = next((s for s in steps if s.key == "apply"), None)
    verdict_step = next((s for s in steps if s.key == "verdict"), None)
    apply: ApplyView | None = None
    commits: list[tuple[int, str, str]] = []
    if apply_step is not None and isinstance(apply_step.data, dict):
        a = apply_step.data
        apply = ApplyView(apply_step.status, str(a.get("summary", "")), str(a.get("base", "")),
                          a.get("failed_index") if isinstance(a.get("failed_index"), int)
                          else None, tuple(str(c) for c in a.get("conflicts") or []),
                          str(a.get("git_message", "")))
        commits.append((0, apply_step.commit_sha, "base: " + apply.base))
        commits += [(int(c["index"]), str(c["sha"]), str(c["title"]))
                     for c in a.get("commits") or [] if isinstance(c, dict)]
    job_id = job.id if job else 0
    builds = {s.commit_sha: _build_view(job_id, s.data) for s in steps if s.step == "build"}
    # One slot per boot (a TestRun of a stored vmtest step): its commit, step key, run index.
    slots: list[tuple[int, str, int]] = []
    slot_runs: list[CommitRuns] = []
    index_of = {sha: i for i, sha, _ in commits}
    for s in steps:
        if s.step != "vmtest" or s.commit_sha not in index_of:
            continue
        try:
            runs = load_runs(s)
        except InputError as exc:
            problems.append(f"{s.key}: {exc}")
            continue
        for k, run in enumerate(runs):
            slot_runs.append(CommitRuns(len(slots), s.commit_sha, "", None, (run,)))
            slots.append((index_of[s.commit_sha], s.key, k))
    per_test = verdict_inputs(slot_runs) if slot_runs else []
    verdicts: dict[str, dict[str, Any]] = {}
    first_bad: int | None = None
    verdict = ""
    if verdict_step is not None and isinstance(verdict_step.data, dict):
        verdict = verdict_step.status
        fb = verdict_step.data.get("first_bad_patch")
        first_bad = fb if isinstance(fb, int) else None
        verdicts = {str(t.get("test")): t for t in verdict_step.data.get("tests") or []
                    if isinstance(t, dict)}
    keys = sorted({t.test for t in per_test} | set(verdicts),
                  key=lambda k: (not k.startswith("boot "), k.startswith("kernel: "), k))
    tests = tuple(TestColumn(
        k, str(verdicts.get(k, {}).get("kind", "")),
        verdicts.get(k, {}).get("first_bad_patch") if isinstance(
            verdicts.get(k, {}).get("first_bad_patch"), int) else None,
        float(verdicts.get(k, {}).get("confidence") or 0.0),
        str(verdicts.get(k, {}).get("note", "")), urls.test_path(k)) for k in keys)
    # cells[(commit index, test)] = [(step key, run index, that boot's verdicts)]
    cells: dict[tuple[int, str], list[tuple[str, int, tuple[Verdict, ...]]]] = {}
    for tr in per_test:
        for slot, vs in enumerate(tr.per_commit):
            if vs:
                ci, key, run_index = slots[slot]
                cells.setdefault((ci, tr.test), []).append((key, run_index, vs))
    boots_at: dict[int, int] = {}
    for ci, _, _ in slots:
        boots_at[ci] = boots_at.get(ci, 0) + 1
    rows: list[PatchRow] = []
    for ci, sha, title in commits:
        b = builds.get(sha)
        rows.append(PatchRow(ci, sha, title, True, b,
                             tuple(_cell(job_id, cells.get((ci, k), []), k,
                                         b is not None and b.status == "pass") for k in keys),
                             ci == first_bad, boots_at.get(ci, 0)))
    applied = len(commits) - 1 if commits else 0
    for p in patches_data:
        idx = int(p.get("index") or 0)
        if idx > applied:
            subject = str(p.get("subject", ""))
            rows.append(PatchRow(idx, "", subject, False, None,
                                 tuple(Cell("none", "-", f"{k}: patch not applied", "", 0, 0, 0)
                                       for k in keys), False, 0))
    return SeriesPage(series, author, job, apply, tuple(rows), tests, first_bad, verdict,
                      reports, len(slots), tuple(problems))


# -- one boot's console, build files -------------------------------------------------------

@dataclass(frozen=True)
class BootView:
    job_id: int
    key: str
    run_index: int
    commit: str
    run: TestRun
    series_id: int | None
    console: Path | None  # the console log to show: the boot's own, else the job's copy
    console_note: str  # where it comes from, when not the boot's own file


def _kept_console(store: Store, job_id: int, step: StepRow, run: TestRun, run_index: int,
                  state_dir: Path) -> Path | None:
    """The job folder's copy of a boot's console (bot/pipeline/artifacts.py names it
    console-c<commit index>-<backend>-<n>.log, n counting the commit's boots from 1 in the
    order they were stored), for when the VM run folder was pruned."""
    apply = store.web_step(job_id, "apply")
    if apply is None or not isinstance(apply.data, dict):
        return None
    index = {apply.commit_sha: 0} | {str(c.get("sha")): int(c.get("index") or 0)
                                     for c in apply.data.get("commits") or []
                                     if isinstance(c, dict)}
    if step.commit_sha not in index:
        return None
    n = run_index + 1
    for s in store.steps(job_id, "vmtest"):
        if s.key == step.key:
            break
        if s.commit_sha == step.commit_sha and isinstance(s.data, list):
            n += len(s.data)
    path = (job_artifacts_dir(state_dir, job_id)
            / f"console-c{index[step.commit_sha]}-{run.backend.value}-{n}.log")
    return path if files.regular_file(path) else None


def boot(store: Store, job_id: int, key: str, run_index: int,
         state_dir: Path) -> BootView | None:
    job = store.get_job(job_id)
    step = store.web_step(job_id, key) if job is not None else None
    if job is None or step is None or step.step != "vmtest":
        return None
    runs = load_runs(step)
    if not 0 <= run_index < len(runs):
        return None
    run = runs[run_index]
    console: Path | None = run.console_log
    note = ""
    if not files.regular_file(run.console_log):
        console = _kept_console(store, job_id, step, run, run_index, state_dir)
        note = f"the copy kept in the job's folder ({console.name})" if console else ""
    return BootView(job_id, key, run_index, step.commit_sha, run, job.series_id, console, note)


def build_file(store: Store, job_id: int, sha: str, which: str) -> Path | None:
    """The build log or .config a stored build of `sha` in this job recorded (None: none)."""
    step = store.web_step(job_id, f"build:{sha}")
    if step is None or not isinstance(step.data, dict) or which not in ("log", "config"):
        return None
    value = (step.data.get("artifacts") or {}).get(which)
    return Path(value) if isinstance(value, str) and value else None


# -- jobs ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobLine:
    job: JobRow
    title: str  # the series (or the bisection's test and range)
    link: str  # its page
    heartbeat_age: str  # running: since the runner last renewed its lease


@dataclass(frozen=True)
class JobsStatus:
    counts: tuple[tuple[str, int], ...]
    running: tuple[JobLine, ...]
    queued: tuple[JobLine, ...]
    failed: tuple[JobLine, ...]
    recent: tuple[JobLine, ...]
    bisections: tuple[JobLine, ...]
    now: float


def job_link(job: JobRow) -> str:
    if job.kind == "bisect":
        return urls.bisect_path(job.id)
    if job.series_id is not None:
        return urls.series_path(job.series_id)
    return urls.job_path(job.id)


def job_title(store: Store, job: JobRow, cache: dict[int, str] | None = None) -> str:
    if job.kind == "bisect":
        d = job.detail
        return (f"bisect {d.get('test', '?')} in {d.get('tree', '?')}: "
                f"{str(d.get('good', '?'))[:12]}..{str(d.get('bad', '?'))[:12]}")
    if job.series_id is None:
        return job.kind
    if cache is not None and job.series_id in cache:
        return cache[job.series_id]
    s = store.get_series(job.series_id)
    title = f"v{s.version} {s.title}" if s else f"series {job.series_id}"
    if cache is not None:
        cache[job.series_id] = title
    return title


def jobs_status(store: Store, now: float | None = None) -> JobsStatus:
    now = now if now is not None else time.time()
    cache: dict[int, str] = {}

    def lines(rows: Sequence[JobRow]) -> tuple[JobLine, ...]:
        return tuple(JobLine(j, job_title(store, j, cache), job_link(j),
                             age(j.heartbeat_at, now) if j.heartbeat_at else "-") for j in rows)

    return JobsStatus(
        counts=tuple(sorted(store.web_job_counts().items())),
        running=lines(store.web_jobs(["running"])),
        queued=lines(store.web_jobs(["queued"], limit=50)),
        failed=lines(store.web_jobs(["failed", "error", "cancelled"], limit=50)),
        recent=lines(store.web_jobs(["done"], limit=30)),
        bisections=lines(store.web_jobs([], kind="bisect", limit=30)),
        now=now,
    )


@dataclass(frozen=True)
class StepLine:
    key: str
    step: str
    status: str
    commit: str
    created: str
    link: str  # a page for it ("" when none)


@dataclass(frozen=True)
class JobPage:
    job: JobRow
    title: str
    link: str
    steps: tuple[StepLine, ...]
    reports: tuple[ReportRow, ...]
    artifacts_dir: Path
    has_artifacts: bool


def job_page(store: Store, job_id: int, state_dir: Path) -> JobPage | None:
    job = store.get_job(job_id)
    if job is None:
        return None
    lines = []
    for s in store.steps(job.id):
        link = ""
        if s.step == "vmtest":
            link = urls.console_path(job.id, s.key, 0)
        elif s.step == "build" and isinstance(s.data, dict) and (s.data.get("artifacts") or
                                                                  {}).get("log"):
            link = f"/jobs/{job.id}/build/{s.commit_sha}/log"
        elif s.key == "bisect":
            link = urls.bisect_path(job.id)
        lines.append(StepLine(s.key, s.step, s.status, s.commit_sha[:12], when(s.created_at),
                              link))
    folder = job_artifacts_dir(state_dir, job.id)
    return JobPage(job, job_title(store, job), job_link(job), tuple(lines),
                   tuple(store.reports_for_job(job.id)), folder, folder.is_dir())


# -- a test's history ----------------------------------------------------------------------

@dataclass(frozen=True)
class HistoryPoint:
    job_id: int
    series_id: int | None
    series: str
    when: str
    kind: str
    base: str
    patches: tuple[str, ...]
    fails: int
    runs: int
    mixed: int  # commits where it both passed and failed
    first_bad_patch: int | None
    note: str

    @property
    def pass_rate(self) -> float | None:
        return (self.runs - self.fails) / self.runs if self.runs else None


@dataclass(frozen=True)
class TestHistory:
    test: str
    points: tuple[HistoryPoint, ...]
    spark: tuple[SparkPoint, ...]
    runs: int
    fails: int
    flaky_jobs: int  # jobs (of the last RECENT) where it was flaky or mixed at some commit
    recent: int


RECENT = 20


def _counts(text: str) -> tuple[int, int]:
    """'f:r' (RunCounts.describe) as (fails, runs); '-' is (0, 0)."""
    f, sep, r = text.partition(":")
    if not sep:
        return 0, 0
    try:
        return int(f), int(r)
    except ValueError:
        return 0, 0


def test_history(store: Store, test: str) -> TestHistory:
    cache: dict[int, str] = {}
    points: list[HistoryPoint] = []
    for p in store.web_test_history(test):
        v = p.verdict
        cols = [str(v.get("base", "-"))] + [str(x) for x in v.get("patches") or []]
        counts = [_counts(c) for c in cols]
        title = "-"
        if p.series_id is not None:
            if p.series_id not in cache:
                s = store.get_series(p.series_id)
                cache[p.series_id] = f"v{s.version} {s.title}" if s else str(p.series_id)
            title = cache[p.series_id]
        fb = v.get("first_bad_patch")
        points.append(HistoryPoint(
            p.job_id, p.series_id, title, when(p.created_at), str(v.get("kind", "")), cols[0],
            tuple(cols[1:]), sum(f for f, _ in counts), sum(r for _, r in counts),
            sum(1 for f, r in counts if 0 < f < r), fb if isinstance(fb, int) else None,
            str(v.get("note", ""))))
    spark = tuple(SparkPoint(
        p.pass_rate,
        "flaky" if p.kind == "flaky" or p.mixed else
        "none" if p.pass_rate is None else "pass" if p.fails == 0 else "fail",
        f"job {p.job_id} ({p.series}), {p.when}: {p.kind}, "
        + (f"{p.runs - p.fails} of {p.runs} runs passed" if p.runs else "not run"))
        for p in points)
    recent = points[-RECENT:]
    return TestHistory(test, tuple(points), spark, sum(p.runs for p in points),
                       sum(p.fails for p in points),
                       sum(1 for p in recent if p.kind == "flaky" or p.mixed), len(recent))
