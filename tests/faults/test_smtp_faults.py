"""Report delivery under every SMTP fault, and under SIGKILL at each delivery hook.

Each matrix case runs a real scripted SMTP server (tests/faults/smtp_faults.py) that misbehaves
once (or on every connection) at one stage, flushes repeatedly with the clock past every backoff
and the confirmation window, and judges: accepted by the server exactly once, or held/failed with
a reason and accepted zero times (held after an acceptance only if the real public-inbox archive
never showed it). The named tests below pin the cases from the delivery bug: a 250 to the final
dot followed by a 421 to QUIT, and a connection lost after the final dot with and without the
mail in the archive.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.report.deliver import Reporter
from bot.state import Store
from tests.faults.smtp_faults import (
    CONFIRM_WINDOW_S,
    CRASHES,
    Act,
    Crash,
    Fault,
    FaultClass,
    FaultLab,
    FaultySmtp,
    Scenario,
    Stage,
    distinct_faults,
    queue_report,
    report_config,
    run_crash,
    run_scenario,
    scenarios,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultLab]:
    """One public-inbox and certificate for the module; each case has its own store."""
    with FaultLab.open(tmp_path_factory.mktemp("smtp-faults")) as shared:
        yield shared


def test_matrix_covers_every_stage_and_reply_class() -> None:
    all_ = scenarios()
    assert distinct_faults(all_) >= 100
    stages = {s.fault.stage for s in all_}
    assert stages == set(Stage)
    for stage in (Stage.GREETING, Stage.HELLO, Stage.STARTTLS, Stage.AUTH, Stage.MAIL,
                  Stage.RCPT, Stage.DATA, Stage.DOT, Stage.QUIT):
        classes = {s.fault.fault_class for s in all_ if s.fault.stage is stage}
        wanted = {FaultClass.MISPLACED_2XX, FaultClass.TEMPORARY, FaultClass.PERMANENT,
                  FaultClass.DROP, FaultClass.RESET, FaultClass.STALL, FaultClass.NO_CODE}
        assert wanted <= classes, (stage, wanted - classes)


@pytest.mark.parametrize("sc", scenarios(), ids=lambda s: s.name)
def test_smtp_fault(lab: FaultLab, sc: Scenario) -> None:
    result = run_scenario(lab, sc)
    assert result.faults_injected >= 1
    assert result.ok, (result.violations, result.reason)
    assert result.duplicate_deliveries == 0 and result.lost == 0
    if result.status == "sent":
        assert result.accepted == 1
    if result.status in ("held", "failed"):
        assert result.reason


@pytest.mark.parametrize("crash", CRASHES, ids=lambda c: c.name)
def test_sigkill_at_each_hook_then_restart(lab: FaultLab, crash: Crash) -> None:
    result = run_crash(lab, crash)
    assert result.faults_injected == 1, result.violations  # the child died at the hook
    assert result.ok, (result.violations, result.reason)
    assert result.accepted == (0 if crash.stage == "data" else 1)


# -- the cases from the bug, step by step ------------------------------------------------------


def _reporter(lab: FaultLab, tmp: Path, server: FaultySmtp, clock: list[float]) -> Reporter:
    cfg = report_config(lab, tmp, server.port)
    return Reporter(cfg, Store.in_state_dir(cfg.state_dir), clock=lambda: clock[0])


def test_250_then_421_to_quit_is_one_delivery(lab: FaultLab, tmp_path: Path) -> None:
    """The server took the mail (250 to the final dot) and answered QUIT with 421: that is a
    delivery. kbot used to see smtplib raise on leaving `with` and resend, three times."""
    with FaultySmtp((Fault(Stage.QUIT, Act.REPLY_CLOSE, 421),), every=True) as server:
        clock = [1000.0]
        rep = _reporter(lab, tmp_path, server, clock)
        msgid = queue_report(rep.config)
        s = rep.flush()
        server.settle()
        assert (s.sent, s.retrying, s.failed) == (1, 0, 0)
        for _ in range(3):
            clock[0] += 10_000
            assert rep.flush().sent == 0
        server.settle()
        assert server.msgids() == [msgid]
        assert len(server.injected) == 1
    row = rep.store.get_report(msgid)
    assert row is not None and row.status == "sent" and row.attempts == 1


def test_drop_after_dot_found_in_archive_is_sent_not_resent(
    lab: FaultLab, tmp_path: Path
) -> None:
    taken = Fault(Stage.DOT, Act.DROP, accept=True)
    with FaultySmtp((taken,), archive=lab.inbox) as server:
        clock = [1000.0]
        rep = _reporter(lab, tmp_path, server, clock)
        msgid = queue_report(rep.config)
        s = rep.flush()
        server.settle()  # the list has archived it by now
        assert (s.sent, s.unconfirmed, s.retrying) == (0, 1, 0)
        row = rep.store.get_report(msgid)
        assert row is not None and row.status == "unconfirmed" and "final dot" in row.last_error
        clock[0] += 60
        s = rep.flush()
        assert (s.confirmed, s.sent, s.unconfirmed) == (1, 0, 0)
        clock[0] += 10_000
        rep.flush()
        server.settle()
        assert server.msgids() == [msgid] and server.connections == 1
    row = rep.store.get_report(msgid)
    assert row is not None and row.status == "sent" and "confirmed in the archive" in row.last_error


def test_drop_after_dot_not_in_archive_is_held_after_the_window(
    lab: FaultLab, tmp_path: Path
) -> None:
    """The server never took it (or took it and it never reached the list): kbot looks for it
    for confirm_window_s, never resends, then holds it with the reason for a person."""
    with FaultySmtp((Fault(Stage.DOT, Act.DROP),), archive=lab.inbox) as server:
        clock = [1000.0]
        rep = _reporter(lab, tmp_path, server, clock)
        msgid = queue_report(rep.config)
        assert rep.flush().unconfirmed == 1
        clock[0] = 1000.0 + CONFIRM_WINDOW_S - 1
        assert rep.flush().unconfirmed == 1
        row = rep.store.get_report(msgid)
        assert row is not None and row.status == "unconfirmed"
        clock[0] = 1000.0 + CONFIRM_WINDOW_S
        s = rep.flush()
        assert (s.held, s.sent, s.unconfirmed) == (1, 0, 0)
        clock[0] += 10_000
        assert rep.flush().sent == 0
        server.settle()
        assert server.msgids() == [] and server.connections == 1
    row = rep.store.get_report(msgid)
    assert row is not None and row.status == "held"
    assert "does not show it" in row.last_error and f"--resend {msgid}" in row.last_error
