"""Mail commands end to end, on real parts: replies delivered to a real public-inbox list, real
`kbot watch --once --run-jobs` processes (only the VM stage faked: tests/faults/fake_vm_kbot.py)
that poll it, read the commands, build the fake kernel tree's commits in the sandbox, bisect,
and mail through a real SMTP server; killed with SIGKILL at failpoints and started again.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest

from bot import proc
from bot.intake.local_inbox import LocalInbox
from bot.state import Store
from tests.build.fake_kernel import commit
from tests.faults.pipeline_world import REPO_ROOT, World, make_world, run_kbot
from tests.fixtures.smtp import Received, SmtpSink, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
CULPRIT = 5  # of 8 commits on top of the world's base, the one that breaks state_test
MAINTAINER = "Paolo Maintainer <paolo@example.org>"
WATCH = ["watch", "--once", "--run-jobs"]


class Lab:
    def __init__(self, world: World, inbox: LocalInbox, smtp: SmtpSink, shas: list[str],
                 state: Path) -> None:
        self.world, self.inbox, self.smtp, self.shas, self.state = world, inbox, smtp, shas, state
        self.n = 0

    def reply(self, body: str, *, parent: str, refs: tuple[str, ...] = (),
              sender: str = MAINTAINER, subject: str = "Re: [PATCH 0/3] KVM: regress series",
              ) -> str:
        """Mail a reply to `parent` on the list; its Message-ID."""
        self.n += 1
        msgid = f"reply-{self.n}@example.org"
        chain = " ".join(f"<{m}>" for m in dict.fromkeys((*refs, parent)))
        raw = (f"From: {sender}\nTo: kvm@vger.kernel.org\nSubject: {subject}\n"
               f"Date: {format_datetime(datetime.now(UTC))}\nMessage-ID: <{msgid}>\n"
               f"In-Reply-To: <{parent}>\nReferences: {chain}\n"
               "Content-Type: text/plain; charset=UTF-8\n\n" + body).encode()
        self.inbox.deliver(raw, "kvm")
        return msgid

    def kbot(self, args: list[str] = WATCH, failpoints: str = "") -> str:
        res = run_kbot(self.world, self.state, args, failpoints=failpoints)
        if failpoints:
            assert res.returncode == -9, res.describe()
        else:
            assert res.returncode in (0, 1), res.describe()
        return res.stderr

    def mails(self, kind: str | None = None) -> list[Received]:
        return [r for r in self.smtp.received
                if kind is None or r.message["X-Kbot-Report"] == kind]

    def answering(self, msgid: str) -> list[Received]:
        return [r for r in self.smtp.received
                if str(r.message["In-Reply-To"]).strip("<> ") == msgid]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    inbox = LocalInbox(tmp_path / "public-inbox", ("kvm",))
    smtp = SmtpSink(port=free_port())
    inbox.start()
    smtp.start()
    try:
        w = make_world(tmp_path / "world", inbox, smtp)
        with w.config.open("a", encoding="utf-8") as fh:
            fh.write('[commands]\nenabled = true\nallow = ["paolo@example.org"]\n')
        shas = []
        for i in range(1, 9):
            files = {f"arch/x86/kvm/step{i}.c": f"int step{i};\n"}
            if i == CULPRIT:
                files["arch/x86/kvm/bad.c"] = 'const char bad[] = "KBOT_FAKE_FAIL:state_test";\n'
            shas.append(commit(w.repo, files, f"KVM: x86: step {i}"))
        yield Lab(w, inbox, smtp, shas, tmp_path / "state")
    finally:
        smtp.stop()
        inbox.stop()


def bisect_line(lab: Lab, *, bad: bool = True) -> str:
    return (f"#kbot bisect good={lab.world.base} "
            + (f"bad={lab.shas[-1][:12]} " if bad else "") + "test=state_test")


def test_bisect_reply_is_answered_once_others_are_not(lab: Lab) -> None:
    cmd = lab.reply(f"state_test fails on master now; please find out why.\n\n"
                    f"{bisect_line(lab)}\n\nThanks,\nPaolo\n", parent="regress-0@example.org")
    forged = lab.reply(f"{bisect_line(lab)}\n", parent="regress-0@example.org",
                       sender="Mallory <mallory@example.org>")
    quoted = lab.reply(f"On Monday Paolo wrote:\n> {bisect_line(lab)}\n\nNo need.\n",
                       parent=cmd, refs=("regress-0@example.org",))
    wrong = lab.reply(f"{bisect_line(lab, bad=False)}\n", parent="regress-0@example.org")
    lab.kbot()

    (report,) = lab.mails("bisection")
    msg = report.message
    assert str(msg["In-Reply-To"]).strip("<>") == cmd
    assert f"<{cmd}>" in str(msg["References"])
    assert lab.shas[CULPRIT - 1][:12] in str(msg["Subject"])
    assert lab.shas[CULPRIT - 1][:12] in msg.get_content()
    assert "paolo@example.org" in report.rcpt_tos
    (reply,) = lab.mails("command-reply")
    assert str(reply.message["In-Reply-To"]).strip("<>") == wrong
    assert "missing bad=" in reply.message.get_content()
    assert reply.rcpt_tos == ("paolo@example.org", "kvm@vger.kernel.org")
    assert lab.answering(forged) == [] and lab.answering(quoted) == []
    with Store.in_state_dir(lab.state) as store:
        rows = {r.msgid: r for r in store.command_rows()}
        bisections = [j for j in store.jobs() if j.kind == "bisect"]
    assert set(rows) == {cmd, forged, wrong}  # a quoted command is no command
    assert (rows[cmd].state, rows[forged].state, rows[wrong].state) == (
        "acted", "ignored", "rejected")
    assert "mallory@example.org is not on commands.allow" in rows[forged].reason
    assert [j.id for j in bisections] == [rows[cmd].job_id]
    # The next poll: nothing is done or mailed again.
    before = len(lab.smtp.received)
    lab.kbot()
    assert len(lab.smtp.received) == before


def test_killed_after_the_command_and_mid_bisection_runs_and_mails_once(lab: Lab) -> None:
    cmd = lab.reply(f"{bisect_line(lab)}\n", parent="regress-0@example.org")
    lab.kbot(failpoints="commands:recorded@1")  # the command and its job stored, then -9
    with Store.in_state_dir(lab.state) as store:
        (row,) = store.command_rows()
        assert row.state == "acted" and row.job_id is not None
        assert store.get_job(row.job_id).status == "queued"  # type: ignore[union-attr]
    assert lab.mails("bisection") == []
    lab.kbot(failpoints="bisect:eval@2")  # -9 in the middle of the bisection
    with Store.in_state_dir(lab.state) as store:
        assert len(store.steps(row.job_id, "eval")) == 2
    out = lab.kbot()
    assert "2 stored run(s) reused (resumed)" in out
    with Store.in_state_dir(lab.state) as store:
        assert [r.msgid for r in store.command_rows()] == [cmd]
        assert [j.id for j in store.jobs() if j.kind == "bisect"] == [row.job_id]
        evals = [s.key for s in store.steps(row.job_id, "eval")]
        assert store.get_job(row.job_id).status == "done"  # type: ignore[union-attr]
    assert max(collections.Counter(evals).values()) == 1
    (report,) = lab.mails("bisection")
    assert str(report.message["In-Reply-To"]).strip("<>") == cmd
    assert lab.answering(cmd) == [report]


def _v2(raw: bytes) -> bytes:
    """A second revision of a world mail: new Message-IDs, v2 markers, sent now."""
    raw = raw.replace(b"nobuild-", b"nobuild-v2-").replace(b"[PATCH ", b"[PATCH v2 ")
    return re.sub(rb"(?m)^Date: .*$", f"Date: {format_datetime(datetime.now(UTC))}".encode(),
                  raw)


def test_retest_answers_the_command_and_invalid_holds_later_reports(lab: Lab) -> None:
    lab.kbot()
    first = {str(r.message["Subject"]): r for r in lab.mails()}
    regression = first["Re: [PATCH 2/3] KVM: nSVM: Rework nested state restore"]
    build_failure = first["Re: [PATCH 1/1] KVM: x86: Use the new accessor"]
    with Store.in_state_dir(lab.state) as store:
        (series,) = [s for s in store.all_series() if s.title == "KVM: regress series"]
        job = store.job_for_series(series.id, "test-series")
        assert job is not None and job.status == "done"
    # A second tree (a clone): `tree=other` tests the series there.
    other = lab.world.root / "other"
    proc.run(["git", "clone", "-q", str(lab.world.repo), str(other)], timeout=120, check=True)
    with lab.world.config.open("a", encoding="utf-8") as fh:
        fh.write(f'[[trees]]\nname = "other"\npath = "{other}"\n')
    test = lab.reply("Is that still so?\n\n#kbot test tree=other\n", parent=regression.msgid,
                     refs=("regress-0@example.org", "regress-2@example.org"),
                     subject="Re: [PATCH 2/3] KVM: nSVM: Rework nested state restore")
    invalid = lab.reply("The tree is wrong, not the patch.\n#kbot invalid\n",
                        parent=build_failure.msgid,
                        refs=("nobuild-0@example.org", "nobuild-1@example.org"),
                        subject="Re: [PATCH 1/1] KVM: x86: Use the new accessor")
    v2 = [_v2(m) for m in lab.world.mails if b"nobuild-" in m]
    lab.inbox.deliver_many(v2, "kvm")
    sent = len(lab.smtp.received)
    lab.kbot()
    new = lab.smtp.received[sent:]
    # The retest: the same result, reported again, every report answering the command.
    answers = lab.answering(test)
    assert answers and all(a in new for a in answers)
    assert {a.message["X-Kbot-Report"] for a in answers} == {"regression", "series"}
    assert all("paolo@example.org" in a.rcpt_tos for a in answers)
    # The invalid series' next revision was tested, and nothing about it was mailed.
    assert [str(r.message["Subject"]) for r in new if "v2" in str(r.message["Subject"])] == []
    assert len(new) == len(answers)
    with Store.in_state_dir(lab.state) as store:
        held = [r for r in store.reports() if r.version == 2]
        rows = {r.msgid: r for r in store.command_rows()}
        retested = store.get_job(job.id)
    assert held and all(r.status == "held" for r in held)
    assert all(r.last_error == f"marked invalid by paolo@example.org in <{invalid}>"
               for r in held)
    assert rows[test].state == "acted" and rows[test].job_id == job.id
    assert rows[invalid].state == "acted" and rows[invalid].lineage == "kvm: nobuild series"
    assert retested is not None and retested.status == "done"
    assert retested.updated_at > job.updated_at and retested.attempts == 1
    with Store.in_state_dir(lab.state) as store:
        (applied,) = [s for s in store.steps(job.id) if s.key == "apply"]
    assert applied.data["base"].startswith("other "), applied.data
    listed = run_kbot(lab.world, lab.state, ["commands", "list"])
    assert "#kbot invalid" in listed.stdout and f"<{invalid}>" in listed.stdout
    # Once: the next poll neither tests nor mails again.
    after = len(lab.smtp.received)
    lab.kbot()
    assert len(lab.smtp.received) == after
    with Store.in_state_dir(lab.state) as store:
        assert store.get_job(job.id).updated_at == retested.updated_at  # type: ignore[union-attr]


def _wait(what: str, check: Callable[[], bool], timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_kbot_serve_reads_commands_after_each_poll(lab: Lab) -> None:
    """The service's intake thread runs the command pass after its polls (the after-poll
    hook) and wakes the job thread: the bisection is run and answered without a restart."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBOT_")}
    env["KBOT_FAKE_VM_LOGS"] = str(lab.state.parent / "vm-logs")
    log = lab.state.parent / "serve.log"
    bg = proc.start_background(
        [sys.executable, "-m", "tests.faults.fake_vm_kbot", "-c", str(lab.world.config),
         "--state-dir", str(lab.state), "serve"],
        cwd=REPO_ROOT, env=env, log_path=log, max_lifetime_s=400, ready_timeout=60,
        ready=lambda: log.is_file() and "serving kvm" in log.read_text(errors="replace"))
    try:
        _wait("the series reports", lambda: len(lab.mails()) >= 4)
        cmd = lab.reply(f"{bisect_line(lab)}\n", parent="regress-0@example.org")
        _wait("the bisection report", lambda: bool(lab.mails("bisection")))
        time.sleep(2.0)  # a few more polls: nothing more may come
        bg.signal(signal.SIGTERM)
        _wait("kbot serve to stop", lambda: not bg.alive(), 120)
    finally:
        code = bg.stop()
    assert code == 0, log.read_text(errors="replace")[-3000:]
    (report,) = lab.mails("bisection")
    assert str(report.message["In-Reply-To"]).strip("<>") == cmd
    assert lab.answering(cmd) == [report]
