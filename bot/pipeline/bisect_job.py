"""A bisection as a job: asked for by mail (`#kbot bisect good=.. bad=.. test=..`) or queued by
an operator, run by the same job runner as series jobs, answered with a bisection report.

Every evaluation is stored as a step (`eval:<sha>:<n>`, the n-th run of that commit) before the
search goes on. The Bisector is deterministic given its outcomes, so a job resumed after a
crash replays the stored outcomes in the same order and only runs what was not run yet: no
commit is built or booted twice for the same question, and the report is the same report.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path

from bot import codec, failpoints
from bot.bisect.core import BisectOptions, Bisector, Evaluator
from bot.bisect.gitgraph import load_range
from bot.bisect.kernel_eval import KernelEvaluator, kernel_evaluator
from bot.bisect.model import BisectResult, Commit, Outcome
from bot.bisect.record import bisect_step_data
from bot.config import Config
from bot.errors import InputError, UserError
from bot.pipeline.bisect_report import bisection_context, verdict_ok
from bot.report.context import Addr
from bot.report.deliver import Answer, Reporter
from bot.state import Store
from bot.tree.trees import Trees

JOB_KIND = "bisect"


@dataclass(frozen=True)
class BisectRequest:
    """What a bisection job is asked (its jobs.detail)."""

    tree: str  # a [[trees]] name
    good: tuple[str, ...]
    bad: str
    test: str
    set_name: str = ""  # the plan's set (vmx / svm); "" lets the host decide
    list_name: str = ""
    in_reply_to: str = ""  # the mail that asked: the report answers it
    requested_by: str = ""


def request_of(detail: object) -> BisectRequest:
    try:
        req: BisectRequest = codec.load(BisectRequest, detail, "bisect job")
    except InputError as exc:
        raise UserError(f"bisect job detail unreadable: {exc}") from exc
    return req


@dataclass(frozen=True)
class BisectJobResult:
    request: BisectRequest
    result: BisectResult
    report_msgid: str = ""


class StoredEvaluator:
    """Wraps an evaluator: each outcome is stored as a job step before the search sees it,
    and a resumed job gets the stored outcomes back in order instead of running again."""

    def __init__(self, store: Store, job_id: int, inner: Evaluator,
                 boundary: Callable[[], None] | None = None) -> None:
        self.store = store
        self.job_id = job_id
        self.inner = inner
        self.boundary = boundary
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}
        self._stored = {row.key: row.data for row in store.steps(job_id, "eval")}
        self.replayed = 0
        # K-ary rounds evaluate in worker threads; an SQLite connection stays in its thread.
        self._owner = threading.get_ident()
        self._local = threading.local()
        self._opened: list[Store] = []

    def _db(self) -> Store:
        if threading.get_ident() == self._owner:
            return self.store
        db: Store | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = Store(self.store.path)
            with self._lock:
                self._opened.append(db)
        return db

    def close(self) -> None:
        for db in self._opened:
            db.close()

    def __call__(self, commit: Commit) -> Outcome:
        with self._lock:
            n = self._calls[commit.sha] = self._calls.get(commit.sha, 0) + 1
            key = f"eval:{commit.sha}:{n}"
            stored = self._stored.get(key)
        if stored is not None:
            self.replayed += 1
            outcome: Outcome = codec.load(Outcome, stored, key)
            return outcome
        if self.boundary is not None and threading.get_ident() == self._owner:
            # The runner's check (heartbeat, shutdown) uses the job thread's store: K-ary
            # rounds check once per round, from the thread that runs the search.
            self.boundary()
        got = self.inner(commit)
        outcome = got if isinstance(got, Outcome) else Outcome(got)
        # Stored before the search sees it: a crash after this point replays it.
        self._db().put_step(self.job_id, key, "eval", outcome.verdict.value,
                            commit_sha=commit.sha, data=codec.dump(outcome))
        failpoints.hit("bisect:eval")
        return outcome


def run_bisect(config: Config, store: Store, job_id: int, detail: object, *,
               progress: Callable[[str], None],
               boundary: Callable[[], None] | None = None) -> BisectJobResult:
    req = request_of(detail)
    trees = Trees(config)
    tree = trees.get(trees.section(req.tree), fetch=True)  # the range may be newer
    repo: Path = tree.mirror
    rng = load_range(repo, list(req.good), req.bad)
    progress(f"job {job_id}: bisecting {req.test} on {req.tree}: {len(rng.graph)} candidate "
             f"commit(s) between {', '.join(g.short for g in rng.goods)} and {rng.bad.short}")
    inner = kernel_evaluator(config, repo, req.test, req.set_name or None)
    evaluator = StoredEvaluator(store, job_id, inner, boundary)
    options = BisectOptions(confidence=config.bisect.confidence, max_runs=config.bisect.max_runs,
                            jobs=max(1, config.bisect.jobs))
    try:
        result = Bisector(evaluator, options).bisect(rng.graph, rng.goods)
    finally:
        evaluator.close()
    if evaluator.replayed:
        progress(f"job {job_id}: {evaluator.replayed} stored run(s) reused (resumed)")
    store.put_step(job_id, "bisect", "bisect", result.status.value,
                   data=bisect_step_data(result, rng.graph, options))
    progress(f"job {job_id}: {result.status.value}: {result.message}")
    msgid = ""
    if verdict_ok(result):
        ctx = bisection_context(
            config, repo, result, req.test, bad_rev=req.bad,
            evaluator=inner if isinstance(inner, KernelEvaluator) else None,
            in_reply_to=req.in_reply_to or None, list_name=req.list_name or None,
            set_name=req.set_name or None)
        # Asked by mail (`#kbot bisect`): the report answers that mail and Cc's its sender.
        name, email = parseaddr(req.requested_by)
        answer = (Answer(req.in_reply_to, ctx.references, Addr(name, email))
                  if req.in_reply_to and "@" in email else None)
        row = Reporter(config, store).submit(ctx, job_id=job_id, answer=answer)
        msgid = row.msgid if row is not None else ""
    return BisectJobResult(req, result, msgid)
