"""Every report kind rendered from a saved result, compared with its golden mail."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.errors import InputError
from bot.report.adapt import series_info
from bot.report.context import (
    Assertion,
    Backend,
    BaseChoice,
    BaseInfo,
    ConfigFragment,
    RegressionReport,
    Reproduce,
    RunCount,
    SeriesReport,
    Vendor,
    VmSetup,
    context_from_json,
    to_json,
)
from bot.report.deliver import Mode, Reporter
from bot.report.outbox import parse
from bot.report.render import WIDTH, Identity, Renderer, marked_lines
from bot.state import Store
from tests.report.helpers import (
    FIXED_MSGID,
    GOLDEN,
    RESULTS,
    load_as,
    load_result,
    result_names,
    seed_series,
    write_config,
)

DATE = datetime(2026, 11, 27, 23, 0, 0, tzinfo=UTC)
UPDATE = os.environ.get("KBOT_UPDATE_GOLDEN") == "1"


def _check_golden(name: str, raw: bytes) -> None:
    path = GOLDEN / f"{name}.eml"
    if UPDATE:
        path.write_bytes(raw)
    assert path.is_file(), f"no golden file {path}; rerun with KBOT_UPDATE_GOLDEN=1 and review it"
    assert raw.decode() == path.read_text(), f"{name} differs from {path}"


def _reporter(tmp_path: Path) -> Reporter:
    cfg = write_config(tmp_path)
    return Reporter(cfg, Store.in_state_dir(cfg.state_dir))


def _columns_ok(renderer: Renderer, body: str) -> None:
    """Prose is at most 72 columns; only quoted material (logs, commands, tags) may be wider."""
    verbatim = {line for v, line in marked_lines(renderer.last_marked) if v}
    for line in body.splitlines():
        if len(line) > WIDTH:
            assert line in verbatim, f"prose line over {WIDTH} columns: {line!r}"


def test_every_kind_has_a_saved_result() -> None:
    kinds = {json.loads((RESULTS / f"{n}.json").read_text())["kind"] for n in result_names()}
    assert kinds == {"series", "regression", "build-failure", "apply-failure", "bisection"}


@pytest.mark.parametrize("name", result_names())
def test_golden(name: str, tmp_path: Path) -> None:
    ctx = load_result(name)
    rep = _reporter(tmp_path)
    prep = rep.prepare(ctx, msgid=FIXED_MSGID, date=DATE, mode=Mode.FULL)
    _check_golden(name, prep.raw)
    msg = parse(prep.raw)
    assert msg.get_content_type() == "text/plain"
    assert not msg.is_multipart()
    body = msg.get_content()
    assert "<html" not in body.lower()
    _columns_ok(rep.renderer, body)
    # Every report ends with how to reproduce it, and the exact kbot command line.
    tail = body[body.index("Reproduce:"):]
    assert ctx.reproduce.kbot_command in tail
    assert "-- \n" in tail
    if name not in ("apply-failure", "bisection-inconclusive"):
        assert "| Reported-by: kbot <kbot@kbot.example>" in body
        assert f"| Closes: https://lore.kernel.org/kvm/{FIXED_MSGID}/" in body
        assert "not just a new version of the same patch/commit" in " ".join(body.split())


def test_saved_results_round_trip() -> None:
    for name in result_names():
        data = json.loads((RESULTS / f"{name}.json").read_text())
        assert to_json(context_from_json(data, name)) == data


def test_bad_saved_results_are_named() -> None:
    data = json.loads((RESULTS / "regression.json").read_text())
    with pytest.raises(InputError, match="unknown report kind 'nope'"):
        context_from_json({**data, "kind": "nope"})
    broken = dict(data)
    del broken["test"]
    with pytest.raises(InputError, match="missing field 'test'"):
        context_from_json(broken, "r.json")
    with pytest.raises(InputError, match=r"r.json.vm.backend: 'kvm' is not one of"):
        context_from_json({**data, "vm": {**data["vm"], "backend": "kvm"}}, "r.json")


def test_strict_undefined(tmp_path: Path) -> None:
    (tmp_path / "regression.txt.j2").write_text("Hi {{ r.no_such_field }}\n")
    renderer = Renderer(Identity("kbot", "kbot@x.example", "https://a/"), tmp_path)
    with pytest.raises(InputError, match="no_such_field"):
        renderer.render(load_result("regression"), "m@x.example")


def test_specific_content() -> None:
    """What each kind must say, beyond matching its golden file."""
    r = Renderer(Identity("kbot", "kbot@kbot.example", "https://lore.kernel.org/kvm/"))
    build = r.render(load_result("build-failure"), FIXED_MSGID)
    assert ">> arch/x86/kvm/vmx/nested.c:2011:22: error:" in build
    assert ">>  2011  \tif (vmx->nested.hv_evmcs_gpa != evmcs_gpa) {" in build
    assert "    2010  " in build  # context line, not marked
    assert "   arch/x86/kvm/vmx/nested.c:1932:13: warning" in build  # old: not marked
    apply = r.render(load_result("apply-failure"), FIXED_MSGID)
    assert "CONFLICT (content): Merge conflict in arch/x86/include/uapi/asm/kvm.h" in apply
    assert "--base" in apply and "guessed by kbot" in apply
    bis = r.render(load_result("bisection"), FIXED_MSGID)
    assert ('| Fixes: 5e4d3c2b1a0f ("KVM: nVMX: Don\'t report KVM_STATE_NESTED_EVMCS when'
            " eVMCS is not mapped\")") in bis
    assert "git bisect bad 5e4d3c2b1a0f9e8d7c6b5a4938271605f4e3d2c1" in bis
    assert "confidence: 97%" in bis
    inc = r.render(load_result("bisection-inconclusive"), FIXED_MSGID)
    assert "Bisection is inconclusive: the first bad commit could be any of:" in inc
    assert "Fixes:" not in inc
    series = r.render(load_result("series"), FIXED_MSGID)
    assert "  4/4  yes      yes               0     6     1     1" in series
    assert "vmx_preemption_timer_test on patch 1-4: hangs under Bochs" in series
    assert "QEMU TCG (emulated), nested SVM" in series and "Bochs (emulated VMX)" in series
    reg = r.render(load_result("regression"), FIXED_MSGID)
    assert "0:5           100%        5:5  evmcs_test.fail" in reg
    assert "x86_64/evmcs_test.c:240" in reg
    splat = r.render(load_result("regression-splat"), FIXED_MSGID)
    assert "The kernel complained:\n    WARNING: CPU: 0 PID: 91" in splat


def test_seed_thread_regression(seed_mbox: Path, tmp_path: Path) -> None:
    """The shared real kvm thread: a regression on its patch 4, threaded and addressed."""
    info = series_info(seed_series(seed_mbox), list_address="kvm@vger.kernel.org")
    assert [p.index for p in info.patches] == [1, 2, 3, 4]
    ctx = RegressionReport(
        series=info,
        base=BaseInfo("linux-6.1", "master", "4" * 40, BaseChoice.GUESSED, "v6.1.192"),
        vm=VmSetup(Backend.BOCHS, Vendor.VMX, "corei7_haswell_4770"),
        first_bad=4,
        test="evmcs_test",
        on_patch=RunCount(3, 3),
        on_base=RunCount(0, 3),
        reproduce=Reproduce(
            "kbot test-series 20210503150854.1144255-1-vkuznets@redhat.com --backend bochs",
            fragments=(ConfigFragment("kconfig/kvm-nested.config", "CONFIG_KVM=y\n"
                                      "CONFIG_KVM_INTEL=y\nCONFIG_HYPERV=y"),),
        ),
        assertion=Assertion("x86_64/evmcs_test.c", 240,
                            "KVM_SET_NESTED_STATE failed, rc: -1 errno: 22 (Invalid argument)"),
    )
    rep = _reporter(tmp_path)
    prep = rep.prepare(ctx, msgid=FIXED_MSGID, date=DATE, mode=Mode.FULL)
    _check_golden("seed-regression", prep.raw)
    msg = parse(prep.raw)
    assert msg["In-Reply-To"] == "<20210503150854.1144255-5-vkuznets@redhat.com>"
    assert msg["References"].split() == ["<20210503150854.1144255-1-vkuznets@redhat.com>",
                                         "<20210503150854.1144255-5-vkuznets@redhat.com>"]
    assert msg["Subject"] == ("Re: [PATCH 4/4] KVM: nVMX: Map enlightened VMCS upon restore"
                              " when possible")
    assert [a.addr_spec for a in msg["To"].addresses] == ["vkuznets@redhat.com"]
    cc = [a.addr_spec for a in msg["Cc"].addresses]
    assert cc == ["kvm@vger.kernel.org", "pbonzini@redhat.com", "seanjc@google.com",
                  "wanpengli@tencent.com", "jmattson@google.com", "mlevitsk@redhat.com",
                  "linux-kernel@vger.kernel.org"]
    _columns_ok(rep.renderer, msg.get_content())
    assert "b4 am -o kbot-repro/ '20210503150854.1144255-5-vkuznets@redhat.com'" in (
        msg.get_content())
    # A series-wide result for the same thread replies to the cover.
    series_ctx = dataclasses.replace(load_as("series", SeriesReport), series=info)
    s = parse(rep.prepare(series_ctx, msgid=FIXED_MSGID, date=DATE, mode=Mode.FULL).raw)
    assert s["In-Reply-To"] == "<20210503150854.1144255-1-vkuznets@redhat.com>"
    assert s["Subject"].startswith("Re: [PATCH 0/4] KVM: nVMX: Fix migration")
