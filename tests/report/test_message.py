"""Headers, recipients, the outbox and send-only-when-changed (no network, no SMTP)."""

from __future__ import annotations

import dataclasses
import json
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from bot.errors import InputError
from bot.report.context import Addr, BisectionReport, RegressionReport, SeriesInfo, to_json
from bot.report.deliver import Mode, Reporter, allowed
from bot.report.message import fold
from bot.report.outbox import MaildirOutbox, MboxOutbox, parse
from bot.state import Store
from tests.report.helpers import load_as, load_result, write_config


def _reporter(tmp_path: Path, report: str = "") -> Reporter:
    cfg = write_config(tmp_path, report)
    return Reporter(cfg, Store.in_state_dir(cfg.state_dir))


def _with_series(ctx: RegressionReport, **changes: Any) -> RegressionReport:
    return dataclasses.replace(ctx, series=dataclasses.replace(ctx.series, **changes))


def _with_target(ctx: RegressionReport, **changes: Any) -> RegressionReport:
    """`ctx` with its target patch (the one the mail replies to) changed."""
    patches = tuple(dataclasses.replace(p, **changes) if p.index == ctx.first_bad else p
                    for p in ctx.series.patches)
    return _with_series(ctx, patches=patches)


REG = load_as("regression", RegressionReport)


@pytest.mark.parametrize(
    ("ctx", "header", "what"),
    [
        (_with_target(REG, subject="[PATCH 2/3] x\r\nBcc: v@example.com"), "Subject", "CR, LF"),
        (_with_target(REG, subject="[PATCH 2/3] x\nBcc: victim@example.com"), "Subject", "LF"),
        (_with_target(REG, author=Addr("Evil\nBcc: v@example.com", "e@example.com")), "To", "LF"),
        (_with_series(REG, cc=(Addr("Nul\x00Name", "n@example.com"),)), "Cc", "NUL"),
        (_with_target(REG, msgid="x@y>\r\nBcc: <v@example.com"), "In-Reply-To", "CR, LF"),
        (_with_series(REG, cover_msgid="c@x\nBcc: v@example.com"), "References", "LF"),
    ],
)
def test_header_injection_refused(
    ctx: RegressionReport, header: str, what: str, tmp_path: Path
) -> None:
    rep = _reporter(tmp_path)
    with pytest.raises(InputError, match=f"into the {header} header: it contains {what}"):
        rep.submit(ctx)
    assert rep.store.reports() == []  # nothing half-made was stored or sent


def test_bad_addresses_refused(tmp_path: Path) -> None:
    rep = _reporter(tmp_path)
    with pytest.raises(InputError, match="not a plain address"):
        rep.prepare(_with_target(REG, author=Addr("x", "a b@example.com")))
    with pytest.raises(InputError, match="not a plain address"):
        rep.prepare(_with_series(REG, trailer_people=(Addr("", "a@b@example.com"),)))


def test_long_headers_folded_and_unicode_names(tmp_path: Path) -> None:
    long = "[PATCH 2/3] KVM: nVMX: " + " ".join(["a-rather-long-word"] * 12)
    ctx = _with_target(REG, subject=long, author=Addr("Radim Krčmář", "rkrcmar@example.com"))
    raw = _reporter(tmp_path).prepare(ctx).raw
    head = raw.split(b"\n\n", 1)[0].decode("ascii")  # header block is pure ASCII
    assert all(len(line) <= 78 for line in head.splitlines())
    msg = parse(raw)
    assert msg["Subject"] == f"Re: {long}"
    assert msg["To"].addresses[0].display_name == "Radim Krčmář"
    assert fold("Subject: " + "x" * 100) == "Subject: " + "x" * 100  # one token stays whole


def test_recipients_deduplicated(tmp_path: Path) -> None:
    ctx = _with_series(
        REG,
        cc=(Addr("", "KVM@vger.kernel.org"), Addr("Paolo", "pbonzini@redhat.com"),
            Addr("Ada", "ADA@example.org"), Addr("kbot", "kbot@kbot.example")),
        trailer_people=(Addr("Paolo Bonzini", "PBonzini@redhat.com"),),
    )
    msg = parse(_reporter(tmp_path).prepare(ctx).raw)
    to = [a for _, a in getaddresses([str(msg["To"])])]
    cc = [a.lower() for _, a in getaddresses([str(msg["Cc"])])]
    assert to == ["ada@example.org"]
    assert cc == ["kvm@vger.kernel.org", "pbonzini@redhat.com"]


def test_unchanged_revision(tmp_path: Path) -> None:
    """v2 failing like v1: brief note by default, nothing with `never`, full with `always`."""
    v1 = REG
    v2 = _with_series(REG, version=2)
    rep = _reporter(tmp_path)
    first = rep.submit(v1)
    assert first is not None and first.kind == "regression" and first.status == "sent"
    # The same result again is the same report, not a second one.
    again = rep.submit(v1)
    assert again is not None and again.msgid == first.msgid
    assert len(rep.store.reports()) == 1
    brief = rep.submit(v2)
    assert brief is not None and brief.kind == "regression-brief"
    body = parse(brief.raw).get_content()
    assert "v2 of \"KVM: regress series\" fails the same way as v1" in " ".join(body.split())
    assert f"https://lore.kernel.org/kvm/{first.msgid}/" in body
    assert "Reproduce:" in body
    # A different failure on v3 is news: a full report.
    v3 = dataclasses.replace(_with_series(REG, version=3), failures=REG.failures[:1])
    full = rep.submit(v3)
    assert full is not None and full.kind == "regression"

    never = _reporter(tmp_path / "n", '\nunchanged = "never"\n')
    assert never.submit(v1) is not None
    assert never.submit(v2) is None
    assert len(never.store.reports()) == 1
    always = _reporter(tmp_path / "a", '\nunchanged = "always"\n')
    assert always.submit(v1) is not None
    row = always.submit(v2)
    assert row is not None and row.kind == "regression"
    assert always.decide(v2)[0] is Mode.FULL


def test_low_confidence_bisection_held(tmp_path: Path) -> None:
    bis = load_as("bisection", BisectionReport)
    rep = _reporter(tmp_path)
    row = rep.submit(dataclasses.replace(bis, confidence=0.5))
    assert row is not None and row.status == "held"
    assert "confidence 0.50" in row.last_error
    assert rep.outbox.has(row.msgid)


def test_allowlist_matching() -> None:
    assert allowed("Dev@Example.org", ("dev@example.org",))
    assert allowed("a@lists.example.org", ("@lists.example.org",))
    assert allowed("kbot-test+1@example.org", ("kbot-test+*@example.org",))
    assert not allowed("kvm@vger.kernel.org", ("@example.org", "dev@example.org"))


@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_outbox_is_idempotent_and_listed(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rep = _reporter(tmp_path, f'\noutbox_format = "{fmt}"\n')
    # A body line starting with "From " must survive mbox.
    ctx = dataclasses.replace(REG, failures=(dataclasses.replace(
        REG.failures[0], console=("From the guest: boom", ">From quoted")),))
    row = rep.submit(ctx)
    assert row is not None and row.status == "sent"
    rep.outbox.put(row.raw)  # a retry after a crash: still one copy
    assert rep.outbox.msgids() == [row.msgid]
    stored = rep.outbox.get(row.msgid)
    assert stored is not None
    assert parse(stored).get_content() == parse(row.raw).get_content()
    assert isinstance(rep.outbox, MboxOutbox if fmt == "mbox" else MaildirOutbox)

    cfg_path = str(tmp_path / "kbot.toml")
    assert main(["-c", cfg_path, "outbox", "list"]) == 0
    out = capsys.readouterr().out
    assert row.msgid in out and "sent" in out and "Re: [PATCH 2/3]" in out
    assert main(["-c", cfg_path, "outbox", "show", f"<{row.msgid}>"]) == 0
    assert "In-Reply-To: <regress-2@example.org>" in capsys.readouterr().out
    assert main(["-c", cfg_path, "outbox", "show", "nope@x"]) == 2


def test_cli_render_and_submit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(tmp_path)
    cfg_path = str(tmp_path / "kbot.toml")
    saved = tmp_path / "apply-failure.json"  # a saved result, as `kbot report` reads one
    saved.write_text(json.dumps(to_json(load_result("apply-failure"))))
    result = str(saved)
    assert main(["-c", cfg_path, "report", "render", result]) == 0
    assert "- arch/x86/kvm/x86.c" in capsys.readouterr().out
    assert main(["-c", cfg_path, "report", "submit", result]) == 0
    assert main(["-c", cfg_path, "report", "submit", result]) == 0  # once only
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0] == out[1]
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "regression"}')
    assert main(["-c", cfg_path, "report", "render", str(bad)]) == 2
    assert "missing field" in capsys.readouterr().err


def test_series_info_lineage() -> None:
    s: SeriesInfo = REG.series
    assert s.lineage == "kvm: regress series"
    assert dataclasses.replace(s, change_id="20210503-evmcs-abc").lineage == "20210503-evmcs-abc"


def test_unchanged_passing_series_says_so(tmp_path: Path) -> None:
    from bot.report.context import SeriesReport, TestStatus

    s1 = load_as("series", SeriesReport)
    ok = tuple(
        dataclasses.replace(o, new_warnings=(), tests=tuple(
            t for t in o.tests if t.status is not TestStatus.FAIL))
        for o in s1.outcomes
    )
    v1 = dataclasses.replace(s1, outcomes=ok)
    assert v1.ok
    v2 = dataclasses.replace(v1, series=dataclasses.replace(v1.series, version=2))
    rep = _reporter(tmp_path)
    first = rep.submit(v1)
    brief = rep.submit(v2)
    assert first is not None and brief is not None and brief.kind == "series-brief"
    body = " ".join(parse(brief.raw).get_content().split())
    assert "shows no new problems, as v1 did" in body
    assert "Reported-by" not in body  # nothing to fix, no tags


def test_non_ascii_address_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="only ASCII addresses"):
        _reporter(tmp_path).prepare(_with_target(REG, author=Addr("x", "jörg@example.com")))
