"""Mail commands, acted on once: read from the mail the watcher stored, authorized, recorded
together with what they do, answered when something is wrong.

`process` runs after each poll of the lists (`kbot serve`'s after-poll hook, `kbot watch`,
`kbot commands run`). It reads each list's mail stored in the last MAX_AGE_S that it has not
read yet (replies in the watched threads), and for a mail with `#kbot` lines
(bot.commands.parse):

1. decides whether to obey it at all (bot.commands.auth: the allowlist, DKIM, no robots, not
   older than MAX_AGE_S when kbot first saw it, so that turning commands on never replays a
   backlog). Not obeyed: every command is recorded 'ignored' with the reason and logged;
   nothing is answered.
2. decides each command against the store: `test` finds the series of the thread (the mail
   it answers, its References:, the thread root) and queues its test job again, fresh, with
   the command to answer (and the tree, given `tree=`); `bisect` queues a bisection job whose
   report answers the command; `invalid` marks the series' lineage (all revisions; or the
   lineage of the kbot report it answers) so that no more mail about it is sent; `help` is
   answered. A command kbot cannot act on (malformed, unknown tree or test, no series in the
   thread, a series marked invalid) is 'rejected' and answered with what is wrong.
3. stores the short reply, if any (once: its dedup key names the mail and the commands), then
   records the mail's commands in the one transaction that also queues their jobs or marks
   the lineage (Store.record_commands): a crash did all of it or none, and a restart that
   reads the mail again finds its commands recorded and does nothing twice.

A `test` whose job is running now is recorded 'seen' and tried again at each pass until the
job has finished (one job per series: it is queued again then).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bot import codec, failpoints
from bot.commands.auth import Decision, DnsFunc, authorize, default_dnsfunc
from bot.commands.parse import Command, Malformed, Parsed, Verb, parse_body
from bot.commands.reply import Problem, build_reply
from bot.config import Config
from bot.errors import InputError, KbotError
from bot.intake.client import ArchiveClient
from bot.intake.mail import parse_message
from bot.intake.model import Message
from bot.pipeline.bisect_job import JOB_KIND as BISECT_KIND
from bot.pipeline.bisect_job import BisectRequest
from bot.report.context import Addr
from bot.report.deliver import Answer, Reporter
from bot.state import (
    CMD_ACTED,
    CMD_IGNORED,
    CMD_REJECTED,
    CMD_SEEN,
    CommandEffect,
    CommandRow,
    NewCommand,
    ReportRow,
    SeriesRow,
    Store,
    StoredMessage,
)

log = logging.getLogger(__name__)

TEST_KIND = "test-series"
# Mail older than this when kbot first stored it (by its Date:), or stored longer ago than
# this and never read for commands (commands were off), is not obeyed: turning commands on,
# or fetching an old thread, must not replay requests nobody is waiting for any more.
MAX_AGE_S = 3 * 86400.0
SCAN_BATCH = 200
CHAIN_ROUNDS = 3  # stored mail followed up the thread when References: is cut short
MAX_SHOWN_TESTS = 30


@dataclass(frozen=True)
class CommandsReport:
    """What one pass did."""

    mails: int  # mail read for the first time
    recorded: tuple[CommandRow, ...]  # commands recorded or changed by this pass
    replies: tuple[str, ...]  # Message-IDs of the replies stored

    @property
    def jobs(self) -> tuple[int, ...]:
        """Jobs this pass queued (new, or queued again)."""
        return tuple(r.job_id for r in self.recorded
                     if r.state == CMD_ACTED and r.job_id is not None)

    def count(self, state: str) -> int:
        return sum(1 for r in self.recorded if r.state == state)


def series_lineage(row: SeriesRow) -> str:
    """A series row's lineage, as bot.report.context.SeriesInfo.lineage makes it from the
    same series: its change-id, else its title folded (what ties revisions together)."""
    change_id = row.data.get("change_id")
    return str(change_id) if change_id else " ".join(row.title.lower().split())


def _describe(row: SeriesRow) -> str:
    return f'v{row.version} "{row.title}"'


class _Thread:
    """Where a command mail sits: the mails above it, nearest first, and what kbot has
    there (the series, its own reports)."""

    def __init__(self, store: Store, msg: Message, stored: StoredMessage) -> None:
        self.store = store
        chain = [msg.in_reply_to or "", *reversed(msg.references), stored.thread]
        ids = [m for m in dict.fromkeys(chain) if m and m != msg.msgid]
        # A reply whose References: are cut short: the thread of each mail above it.
        for _ in range(CHAIN_ROUNDS):
            more = [s.thread for m in ids if (s := store.get_message(m)) is not None
                    and s.thread and s.thread not in ids and s.thread != msg.msgid]
            if not more:
                break
            ids += list(dict.fromkeys(more))
        self.chain = tuple(ids)

    def series(self) -> SeriesRow | None:
        """The series the command is about: the one holding the nearest mail above it (of
        several revisions holding it, the newest)."""
        for mid in self.chain:
            rows = [r for i in self.store.series_holding([mid])
                    if (r := self.store.get_series(i)) is not None]
            if rows:
                return max(rows, key=lambda r: (r.version, r.id))
        return None

    def report(self) -> ReportRow | None:
        """The nearest kbot report above the command (not a reply to a command)."""
        for mid in self.chain:
            row = self.store.get_report(mid)
            if row is not None and row.lineage:
                return row
        return None


@dataclass
class _Pass:
    config: Config
    store: Store
    dnsfunc: DnsFunc
    now: float
    recorded: list[CommandRow] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    _reporter: Reporter | None = None
    _tests: tuple[str, ...] | None = None

    @property
    def reporter(self) -> Reporter:
        if self._reporter is None:
            self._reporter = Reporter(self.config, self.store)
        return self._reporter

    # -- what the config offers ---------------------------------------------------------

    @property
    def trees(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.config.trees)

    @property
    def tests(self) -> tuple[str, ...]:
        """The selftests of the test plan a bisection runs (empty: the plan does not load,
        and a bisect job will say so itself)."""
        if self._tests is None:
            from bot.vm.plan import load_plan

            try:
                plan = load_plan(self.config.vm.plan)
            except KbotError as exc:
                log.warning("commands: cannot read the test plan: %s", exc)
                self._tests = ()
            else:
                self._tests = tuple(dict.fromkeys(t.name for s in plan.sets for t in s.tests))
        return self._tests

    def default_tree(self, list_name: str) -> str:
        """The tree a bisection asked without tree= runs on: the list's own, else that of a
        base rule for the list (one that looks at nothing else), else the only tree."""
        for lst in self.config.lists:
            if lst.name == list_name and lst.tree:
                return lst.tree
        for rule in self.config.base_rules:
            if (not rule.lists or list_name in rule.lists) and not rule.subject_tags \
                    and not rule.files:
                return rule.tree
        return self.trees[0] if len(self.trees) == 1 else ""

    def tree_problem(self, name: str) -> str:
        if name in self.trees:
            return ""
        return f"kbot has no tree named {name!r} (it has: {', '.join(self.trees) or 'none'})"

    # -- one mail -----------------------------------------------------------------------

    def mail(self, stored: StoredMessage, waiting: frozenset[int] = frozenset()) -> bool:
        """Read one stored mail for commands (only the `waiting` ones of a mail read
        before). True when it held commands, which are recorded now."""
        if stored.raw is None:
            return False
        try:
            msg = parse_message(stored.raw, self.config.archive.max_message_bytes)
        except InputError as exc:
            log.debug("commands: <%s> does not parse: %s", stored.msgid, exc)
            return False
        parsed = [p for p in parse_body(msg.body) if not waiting or p.seq in waiting]
        if not parsed:
            return False
        sender = msg.sender.email
        if not waiting:
            decision = self.authorize(msg, stored)
            if not decision.allowed:
                log.warning("commands in <%s> from %s ignored: %s", msg.msgid,
                            sender or "(no sender)", decision.reason)
                self.record(msg, stored, [
                    NewCommand(p.seq, _verb(p), p.line, CMD_IGNORED, decision.reason)
                    for p in parsed])
                return True
        thread = _Thread(self.store, msg, stored)
        decided: list[NewCommand] = []
        seen_lines: dict[str, int] = {}
        for p in parsed:
            same = " ".join(p.line.lower().split())
            if same in seen_lines:
                decided.append(NewCommand(p.seq, _verb(p), p.line, CMD_IGNORED,
                                          f"the same as command {seen_lines[same]} of this mail"))
                continue
            seen_lines[same] = p.seq
            decided.append(self.decide(p, msg, stored, thread))
        decided = self.answer(msg, stored, decided, parsed)
        self.record(msg, stored, decided)
        return True

    def authorize(self, msg: Message, stored: StoredMessage) -> Decision:
        sent = msg.date.timestamp() if msg.date is not None else stored.seen_at
        if stored.seen_at - sent > MAX_AGE_S or self.now - stored.seen_at > MAX_AGE_S:
            return Decision(False, f"too old to obey: sent {msg.date or 'at an unknown time'}, "
                            f"over {MAX_AGE_S / 86400:.0f} days before kbot read it")
        return authorize(self.config.commands, msg, stored.raw or b"", self.config.bot.email,
                         self.dnsfunc)

    def decide(self, p: Parsed, msg: Message, stored: StoredMessage,
               thread: _Thread) -> NewCommand:
        if isinstance(p, Malformed):
            return NewCommand(p.seq, _verb(p), p.line, CMD_REJECTED, p.problem)
        if p.verb is Verb.HELP:
            return NewCommand(p.seq, p.verb.value, p.line, CMD_ACTED, "help sent")
        if p.verb is Verb.INVALID:
            return self.invalid(p, thread)
        if p.verb is Verb.TEST:
            return self.test(p, msg, thread)
        return self.bisect(p, msg, stored)

    def _rejected(self, p: Command, problem: str, **kw: Any) -> NewCommand:
        return NewCommand(p.seq, p.verb.value, p.line, CMD_REJECTED, problem, **kw)

    def invalid(self, p: Command, thread: _Thread) -> NewCommand:
        report = thread.report()
        series = thread.series()
        if report is not None:
            lineage, what = report.lineage, f"the series of kbot's report <{report.msgid}>"
            if series is not None and series_lineage(series) == lineage:
                what = _describe(series)
        elif series is not None:
            lineage, what = series_lineage(series), _describe(series)
        else:
            return self._rejected(p, "this thread holds no series or report of kbot's: "
                                  "reply to the report that is wrong")
        sid = series.id if series is not None else None
        known = self.store.invalid_lineage(lineage)
        if known is not None:
            return NewCommand(p.seq, p.verb.value, p.line, CMD_ACTED,
                              f"{what}: already {known.reason}", series_id=sid, lineage=lineage)
        return NewCommand(p.seq, p.verb.value, p.line, CMD_ACTED,
                          f"no more mail about {what} (all revisions)",
                          effect=CommandEffect.INVALIDATE, series_id=sid, lineage=lineage)

    def test(self, p: Command, msg: Message, thread: _Thread) -> NewCommand:
        series = thread.series()
        if series is None:
            return self._rejected(p, "this thread holds no patch series kbot knows: reply to "
                                  "the series (or to kbot's report on it)")
        if p.tree and (problem := self.tree_problem(p.tree)):
            return self._rejected(p, problem, series_id=series.id)
        lineage = series_lineage(series)
        if (known := self.store.invalid_lineage(lineage)) is not None:
            return self._rejected(p, f"{_describe(series)} was {known.reason}: kbot sends no "
                                  "more mail about it", series_id=series.id, lineage=lineage)
        answer = codec.dump(Answer(msg.msgid, tuple(msg.references),
                                   Addr(msg.sender.name, msg.sender.email)))
        extra: dict[str, Any] = {"answer": answer, **({"tree": p.tree} if p.tree else {})}
        where = f" on {p.tree}" if p.tree else ""
        job = self.store.job_for_series(series.id, TEST_KIND)
        common: dict[str, Any] = {"series_id": series.id, "lineage": lineage}
        if job is None:
            return NewCommand(p.seq, p.verb.value, p.line, CMD_ACTED,
                              f"{_describe(series)} queued for a test{where}",
                              effect=CommandEffect.NEW_JOB, job_kind=TEST_KIND,
                              detail={**_first_detail(series), **extra}, **common)
        if job.status == "running":
            return NewCommand(p.seq, p.verb.value, p.line, CMD_SEEN,
                              f"job {job.id} is testing {_describe(series)} now: it is "
                              "queued again when that run ends", job_id=job.id, **common)
        if job.status == "queued" and job.detail.get("answer"):
            asked = job.detail["answer"].get("msgid", "?")
            return NewCommand(p.seq, p.verb.value, p.line, CMD_ACTED,
                              f"job {job.id} is queued already, to answer <{asked}>",
                              job_id=job.id, **common)
        detail = {k: v for k, v in job.detail.items() if k not in ("answer", "tree")}
        return NewCommand(p.seq, p.verb.value, p.line, CMD_ACTED,
                          f"{_describe(series)} queued for a test again{where} (job {job.id})",
                          effect=CommandEffect.RETEST, job_id=job.id,
                          expect_status=job.status, detail={**detail, **extra}, **common)

    def bisect(self, p: Command, msg: Message, stored: StoredMessage) -> NewCommand:
        tree = p.tree or self.default_tree(stored.list)
        if not tree:
            return self._rejected(p, f"say which tree: tree=NAME (one of "
                                  f"{', '.join(self.trees) or 'none'})")
        if problem := self.tree_problem(tree):
            return self._rejected(p, problem)
        if self.tests and p.test not in self.tests:
            shown = ", ".join(self.tests[:MAX_SHOWN_TESTS])
            return self._rejected(p, f"kbot's test plan has no test {p.test!r} (it has: "
                                  f"{shown})")
        req = BisectRequest(tree=tree, good=p.good, bad=p.bad, test=p.test,
                            list_name=stored.list, in_reply_to=msg.msgid,
                            requested_by=str(msg.sender))
        return NewCommand(p.seq, p.verb.value, p.line, CMD_ACTED,
                          f"bisection of {p.test} on {tree} queued",
                          effect=CommandEffect.NEW_JOB, job_kind=BISECT_KIND,
                          detail=codec.dump(req))

    # -- answer and record --------------------------------------------------------------

    def answer(self, msg: Message, stored: StoredMessage, decided: list[NewCommand],
               parsed: Sequence[Parsed]) -> list[NewCommand]:
        """Store the one short reply this mail gets (what is wrong, or the help), if any,
        before its commands are recorded: a crash in between finds it by its dedup key."""
        lines = {p.seq: p.line for p in parsed}
        problems = [c for c in decided if c.state == CMD_REJECTED]
        helped = [c for c in decided if c.verb == Verb.HELP.value and c.state == CMD_ACTED]
        if not problems and not helped:
            return decided
        answered = problems + helped
        try:
            prep = build_reply(
                self.config, msg, stored.list,
                problems=[Problem(lines[c.seq], c.reason) for c in problems],
                help_asked=bool(helped), seqs=[c.seq for c in answered], trees=self.trees,
                tests=self.tests[:MAX_SHOWN_TESTS])
        except InputError as exc:
            # A sender address or Message-ID no mail may carry: the commands are recorded,
            # with why they got no answer (one bad mail must not stop the others).
            log.warning("commands in <%s>: no reply: %s", msg.msgid, exc)
            return [replace(c, reason=f"{c.reason} (not answered: {exc})")
                    if c in answered else c for c in decided]
        row = self.reporter.submit_prepared(prep, send_now=False)
        self.replies.append(row.msgid)
        seqs = {c.seq for c in answered}
        return [_with_reply(c, row.msgid) if c.seq in seqs else c for c in decided]

    def record(self, msg: Message, stored: StoredMessage,
               decided: Sequence[NewCommand]) -> None:
        rows = self.store.record_commands(msg.msgid, stored.list, msg.sender.email, decided,
                                          self.now)
        seqs = {c.seq for c in decided}
        for r in rows:
            if r.seq in seqs:
                self.recorded.append(r)
                if r.state in (CMD_ACTED, CMD_REJECTED):
                    log.info("command %d of <%s> from %s: %s: %s", r.seq, r.msgid, r.sender,
                             r.state, r.reason)
        failpoints.hit("commands:recorded")


def _verb(p: Parsed) -> str:
    return p.verb.value if isinstance(p, Command) else (p.verb or "?")


def _with_reply(c: NewCommand, msgid: str) -> NewCommand:
    return replace(c, reply_msgid=msgid)


def _first_detail(row: SeriesRow) -> dict[str, Any]:
    """A test job's detail for a series that has none yet, as the watcher writes it (what
    it tested: bot.intake.watcher._job_detail)."""
    patches = row.data.get("patches", [])
    return {"key": row.key, "list": row.list, "complete": row.complete,
            "missing": list(row.data.get("missing", [])),
            "patches": [f"{p.get('index')}:{p.get('patch_id')}" for p in patches]}


def process(config: Config, store: Store, *, dnsfunc: DnsFunc = default_dnsfunc,
            clock: Callable[[], float] = time.time) -> CommandsReport:
    """One pass over the stored mail (see the module docstring). Nothing when commands
    are off ([commands] enabled = false)."""
    if not config.commands.enabled:
        return CommandsReport(0, (), ())
    now = clock()
    run = _Pass(config, store, dnsfunc, now)
    # Commands waiting for their job first: it may have finished since.
    waiting: dict[str, set[int]] = {}
    for row in store.command_rows(state=CMD_SEEN):
        waiting.setdefault(row.msgid, set()).add(row.seq)
    for msgid, seqs in waiting.items():
        stored = store.get_message(msgid)
        if stored is not None:
            run.mail(stored, frozenset(seqs))
    mails = 0
    for lst in config.lists:
        while batch := store.command_candidates(lst.name, now - MAX_AGE_S, limit=SCAN_BATCH):
            quiet = [s.msgid for s in batch if not run.mail(s)]
            mails += len(batch)
            store.mark_command_scanned(quiet, now)
    # A scan older than any mail still read for commands is never looked at again.
    store.prune_command_scans(now - 2 * MAX_AGE_S)
    if run.replies:
        run.reporter.flush()
    return CommandsReport(mails, tuple(run.recorded), tuple(run.replies))


def after_poll(config: Config, store: Store, client: ArchiveClient) -> int:
    """`kbot serve`'s after-poll hook: how many jobs the commands queued (wakes the job
    thread)."""
    return len(process(config, store).jobs)
