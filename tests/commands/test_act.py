"""Mail commands against a real store: each acted on once, recorded with what it did, answered
only when something is wrong (or help is asked), never answered when not obeyed.

The series and the command mail are stored as the watcher stores them (raw, with their thread
root); replies go through the real Reporter into the outbox. Servers are not needed here: the
end-to-end runs with real kbot processes, public-inbox and SMTP are in test_commands_world.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.utils import format_datetime
from pathlib import Path

import pytest

from bot import codec
from bot.commands.act import MAX_AGE_S, process, series_lineage
from bot.config import Config, parse_config
from bot.intake.mail import parse_message
from bot.intake.model import Series
from bot.intake.series import assemble, thread_root
from bot.pipeline.bisect_job import BisectRequest
from bot.report.adapt import series_info
from bot.report.deliver import Reporter
from bot.state import JobChange, Store
from tests.commands.keys import Key, make_key, sign, stub_dns
from tests.fixtures.public_inbox import series_mails

MAINTAINER = "Paolo Maintainer <paolo@example.org>"


def config(tmp: Path, *, enabled: bool = True, require_dkim: str = "",
           name: str = "kbot") -> Config:
    text = f"""schema = 1
inherit = false
[bot]
email = "kbot@example.net"
state_dir = "{tmp / 'state'}"
[[lists]]
name = "kvm"
address = "kvm@vger.kernel.org"
[[trees]]
name = "kvm"
path = "{tmp / 'no-such-tree'}"
[[trees]]
name = "next"
path = "{tmp / 'no-such-tree'}"
[[base_rules]]
tree = "kvm"
branch = "master"
lists = ["kvm"]
[commands]
enabled = {str(enabled).lower()}
allow = ["paolo@example.org", "@kernel.test"]
require_dkim = [{f'"{require_dkim}"' if require_dkim else ""}]
"""
    path = tmp / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return parse_config(text, path)


@dataclass
class World:
    config: Config
    store: Store
    series: Series
    series_id: int
    job_id: int
    n: int = 0

    def command(self, body: str, *, sender: str = MAINTAINER, reply_to: str = "",
                headers: str = "", date: datetime | None = None,
                sign_with: Key | None = None) -> str:
        """A reply to the series' cover (or `reply_to`) stored as the watcher stores it."""
        self.n += 1
        msgid = f"cmd-{self.n}@example.org"
        parent = reply_to or self.series.cover.message_id  # type: ignore[union-attr]
        raw = (f"From: {sender}\nTo: kvm@vger.kernel.org\n"
               f"Subject: Re: [PATCH 0/3] KVM: nVMX: series s1\n"
               f"Date: {format_datetime(date or datetime.now(UTC))}\nMessage-ID: <{msgid}>\n"
               f"In-Reply-To: <{parent}>\nReferences: <{self.series.cover.message_id}>"  # type: ignore[union-attr]
               f" <{parent}>\n{headers}\n{body}").encode()
        if sign_with is not None:
            raw = sign(raw, sign_with, sender.rpartition("@")[2].strip(">"))
        msg = parse_message(raw)
        self.store.add_message(msgid, "kvm", subject=msg.subject, from_addr=str(msg.sender),
                               raw=raw, thread=thread_root(msg))
        return msgid

    def run(self, **kw: object) -> object:
        return process(self.config, self.store, **kw)  # type: ignore[arg-type]

    def replies(self) -> list[object]:
        return [message_from_bytes(r.raw, policy=policy.default)
                for r in self.store.reports() if r.kind == "command-reply"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    cfg = config(tmp_path)
    with Store.in_state_dir(cfg.state_dir) as store:
        mails = series_mails("s1", 3)
        msgs = [parse_message(m) for m in mails]
        for raw, msg in zip(mails, msgs, strict=True):
            store.add_message(msg.msgid, "kvm", subject=msg.subject, from_addr=str(msg.sender),
                              raw=raw, thread=thread_root(msg))
        (series,) = assemble(msgs)
        own = [m.msgid for m in msgs]
        sid = store.save_series(None, key=series.key, list_name="kvm", title=series.title,
                                version=series.version, complete=series.complete,
                                data=series.to_json(), msgids=own)
        done = store.settle_series(sid, assembled=own, change=JobChange.CREATE,
                                   kind="test-series",
                                   detail={"key": series.key, "list": "kvm", "patches": ["x"]})
        assert done.job_id is not None
        store.set_job_status(done.job_id, "done")
        store.put_step(done.job_id, "boot:1", "vmtest", "ok", data={})
        yield World(cfg, store, series, sid, done.job_id)


def test_test_queues_the_series_again_once_fresh_and_says_whom_to_answer(world: World) -> None:
    cmd = world.command("Looks odd, again please.\n\n#kbot test tree=next\n")
    report = world.run()
    job = world.store.get_job(world.job_id)
    assert job is not None and job.status == "queued"
    assert job.detail["tree"] == "next" and job.detail["patches"] == ["x"]
    assert job.detail["answer"]["msgid"] == cmd
    assert job.detail["answer"]["sender"]["email"] == "paolo@example.org"
    assert world.store.steps(world.job_id) == []  # a fresh run, not the stored boots
    (row,) = world.store.command_rows()
    assert (row.state, row.job_id, row.series_id) == ("acted", world.job_id, world.series_id)
    assert report.jobs == (world.job_id,)  # type: ignore[attr-defined]
    # Read again (the next poll, a restart): nothing more happens.
    world.store.set_job_status(world.job_id, "done")
    again = world.run()
    assert again.recorded == () and again.mails == 0  # type: ignore[attr-defined]
    assert world.store.get_job(world.job_id).status == "done"  # type: ignore[union-attr]
    assert world.replies() == []


def test_test_while_the_job_runs_waits_for_it(world: World) -> None:
    world.store.set_job_status(world.job_id, "running")
    world.command("#kbot test\n")
    world.run()
    (row,) = world.store.command_rows()
    assert row.state == "seen" and "testing" in row.reason
    assert world.store.get_job(world.job_id).status == "running"  # type: ignore[union-attr]
    world.store.set_job_status(world.job_id, "done")
    world.run()
    (row,) = world.store.command_rows()
    assert row.state == "acted"
    job = world.store.get_job(world.job_id)
    assert job is not None and job.status == "queued" and "tree" not in job.detail


def test_invalid_holds_every_later_report_on_the_series(world: World) -> None:
    lineage = series_lineage(world.store.get_series(world.series_id))  # type: ignore[arg-type]
    queued, _ = world.store.add_report("queued-1@kbot", job_id=world.job_id, kind="series",
                                       dedup_key="k1", raw=b"x", lineage=lineage, version=1)
    cmd = world.command("This report is wrong.\n#kbot invalid\n")
    world.run()
    (row,) = world.store.command_rows()
    assert row.state == "acted" and row.lineage == lineage
    why = f"marked invalid by paolo@example.org in <{cmd}>"
    held = world.store.get_report(queued.msgid)
    assert held is not None and (held.status, held.last_error) == ("held", why)
    # A report made later (any revision: the lineage) is held too, never mailed.
    from bot.report.deliver import Mode, Prepared
    from bot.report.message import Recipients

    prep = Prepared("later@kbot", "regression", Mode.FULL, "k2", lineage, 2, "", "s",
                    Recipients((), ()), b"Message-ID: <later@kbot>\n\nx\n")
    later = Reporter(world.config, world.store).submit_prepared(prep)
    assert (later.status, later.last_error) == ("held", why)
    # Asking for a test of it now is refused, with the reason.
    world.command("#kbot test\n")
    world.run()
    assert world.store.command_rows()[-1].state == "rejected"
    (reply,) = world.replies()
    assert "marked invalid by paolo@example.org" in reply.get_content()  # type: ignore[attr-defined]


def test_lineage_is_the_reports_lineage(world: World, seed_mbox: Path) -> None:
    from bot.intake.mbox import iter_raw

    msgs = [parse_message(r) for r in iter_raw(seed_mbox.read_bytes())]
    for s in [*assemble(msgs), world.series]:
        row = world.store.get_series(world.series_id)
        assert row is not None
        from dataclasses import replace

        row = replace(row, title=s.title, data=s.to_json())
        assert series_lineage(row) == series_info(s).lineage
        with_id = replace(row, data={**row.data, "change_id": "20261102-abc"})
        assert series_lineage(with_id) == "20261102-abc"


def test_help_is_answered_once_to_the_sender_and_the_list(world: World) -> None:
    cmd = world.command("#kbot help\n")
    world.run()
    world.run()
    (reply,) = world.replies()
    assert reply["To"] == MAINTAINER and reply["Cc"] == "kvm@vger.kernel.org"  # type: ignore[index]
    assert reply["In-Reply-To"] == f"<{cmd}>"  # type: ignore[index]
    assert cmd in reply["References"]  # type: ignore[index]
    assert reply["Auto-Submitted"] == "auto-replied"  # type: ignore[index]
    text = reply.get_content()  # type: ignore[attr-defined]
    assert "\n  #kbot test [tree=NAME]\n" in text
    assert "\n  #kbot bisect good=REV bad=REV test=NAME [tree=NAME]\n" in text
    assert text.endswith("\n\n-- \nkbot\n")
    assert "Trees: kvm, next." in text
    assert max(len(ln) for ln in text.splitlines()) <= 72
    (row,) = world.store.command_rows()
    assert row.state == "acted" and row.reply_msgid


def test_malformed_from_an_allowed_sender_gets_one_short_reply(world: World) -> None:
    world.command("#kbot bisect good=v6.0 test=state_test\n#kbot test tree=nope\n"
                  "#kbot frobnicate\n")
    world.run()
    world.run()
    rows = world.store.command_rows()
    assert [r.state for r in rows] == ["rejected"] * 3
    assert len({r.reply_msgid for r in rows}) == 1
    (reply,) = world.replies()
    text = reply.get_content()  # type: ignore[attr-defined]
    assert "missing bad=" in text
    assert "kbot has no tree named 'nope' (it has: kvm, next)" in text
    assert "unknown command 'frobnicate'" in text
    assert world.store.get_job(world.job_id).status == "done"  # type: ignore[union-attr]


@pytest.mark.parametrize(("sender", "headers", "why"), [
    ("Mallory <mallory@example.org>", "", "not on commands.allow"),
    ("kbot <kbot@example.net>", "", "sent by kbot itself"),
    (MAINTAINER, "Auto-Submitted: auto-replied\n", "Auto-Submitted"),
])
def test_not_obeyed_is_recorded_and_never_answered(world: World, sender: str, headers: str,
                                                   why: str) -> None:
    world.command("#kbot test\n#kbot help\n#kbot nonsense\n", sender=sender, headers=headers)
    world.run()
    rows = world.store.command_rows()
    assert [r.state for r in rows] == ["ignored"] * 3
    assert all(why in r.reason for r in rows)
    assert world.replies() == []
    assert world.store.get_job(world.job_id).status == "done"  # type: ignore[union-attr]


def test_quoted_commands_and_commands_off_do_nothing(world: World, tmp_path: Path) -> None:
    world.command("On Monday you wrote:\n> #kbot test\n> #kbot invalid\n\nThanks.\n")
    off = config(tmp_path, enabled=False, name="off")
    world.command("#kbot test\n")
    assert process(off, world.store).recorded == ()
    assert world.store.command_rows() == []
    world.run()
    assert [r.line for r in world.store.command_rows()] == ["#kbot test"]


def test_old_mail_is_not_obeyed(world: World) -> None:
    world.command("#kbot test\n", date=datetime.now(UTC) - timedelta(days=30))
    world.run()
    (row,) = world.store.command_rows()
    assert row.state == "ignored" and "too old" in row.reason
    # Mail stored long ago and never read (commands were off) is not read at all.
    world.command("#kbot help\n")
    later = time.time() + MAX_AGE_S + 60
    assert process(world.config, world.store, clock=lambda: later).recorded == ()


def test_bisect_queues_a_job_answering_the_command(world: World) -> None:
    cmd = world.command("#kbot bisect good=v6.0 bad=abc123 test=state_test\n")
    report = world.run()
    (row,) = world.store.command_rows()
    assert row.state == "acted" and row.job_id is not None
    job = world.store.get_job(row.job_id)
    assert job is not None and (job.kind, job.status, job.series_id) == ("bisect", "queued",
                                                                         None)
    req = codec.load(BisectRequest, job.detail)
    assert req == BisectRequest(tree="kvm", good=("v6.0",), bad="abc123", test="state_test",
                                list_name="kvm", in_reply_to=cmd, requested_by=MAINTAINER)
    assert report.jobs == (row.job_id,)  # type: ignore[attr-defined]
    world.command("#kbot bisect good=v6.0 bad=abc123 test=no_such_test\n")
    world.run()
    assert "no test 'no_such_test'" in world.store.command_rows()[-1].reason


def test_test_outside_a_series_thread_is_rejected(world: World) -> None:
    world.command("#kbot test\n", reply_to="some-other-thread@example.org")
    # (its References: still name the cover: drop them to be outside)
    world.store.db.execute("DELETE FROM messages WHERE msgid = 'cmd-1@example.org'")
    raw = (f"From: {MAINTAINER}\nTo: kvm@vger.kernel.org\nSubject: Re: other\n"
           f"Date: {format_datetime(datetime.now(UTC))}\nMessage-ID: <cmd-9@example.org>\n"
           "In-Reply-To: <other@example.org>\n\n#kbot test\n").encode()
    world.store.add_message("cmd-9@example.org", "kvm", raw=raw, thread="other@example.org")
    world.run()
    (row,) = world.store.command_rows()
    assert row.state == "rejected" and "holds no patch series" in row.reason


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    return make_key(tmp_path_factory.mktemp("dkim"))


def test_dkim_required_domain(world: World, tmp_path: Path, key: Key) -> None:
    world.config = config(tmp_path, require_dkim="example.org", name="dkim")
    dns = stub_dns({"test._domainkey.example.org": key.txt})
    world.command("#kbot help\n")  # unsigned
    world.command("#kbot help\n", sign_with=key)
    world.run(dnsfunc=dns)
    rows = world.store.command_rows()
    assert [r.state for r in rows] == ["ignored", "acted"]
    assert "no DKIM signature of example.org" in rows[0].reason
    assert len(world.replies()) == 1


def test_a_mail_kbot_cannot_answer_does_not_stop_the_others(world: World) -> None:
    """A Message-ID no reply may name: the command is recorded, unanswered, and the next
    mail is still read."""
    raw = (f"From: {MAINTAINER}\nTo: kvm@vger.kernel.org\nSubject: Re: x\n"
           f"Date: {format_datetime(datetime.now(UTC))}\nMessage-ID: <no-at-sign>\n"
           f"In-Reply-To: <{world.series.cover.message_id}>\n\n"  # type: ignore[union-attr]
           "#kbot help\n").encode()
    world.store.add_message("no-at-sign", "kvm", raw=raw, thread="s1-v1-0@example.org")
    world.command("#kbot help\n")
    world.run()
    rows = {r.msgid: r for r in world.store.command_rows()}
    assert "not answered" in rows["no-at-sign"].reason and not rows["no-at-sign"].reply_msgid
    assert rows["cmd-1@example.org"].reply_msgid
    assert len(world.replies()) == 1
