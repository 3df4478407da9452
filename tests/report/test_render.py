"""Every report kind rendered from the contexts a real pipeline run recorded
(`python -m tests.report.record`), compared with its golden mail, held to the columns kernel
mail uses, and every kbot line in it parsed with kbot's own parser."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from bot.config import load_config
from bot.errors import ConfigError, InputError
from bot.report.commands import parse_text
from bot.report.context import (
    BisectionReport,
    BuildFailureReport,
    SeriesReport,
    context_from_json,
    to_json,
)
from bot.report.deliver import Mode
from bot.report.outbox import parse
from bot.report.render import (
    CODE,
    LOG,
    PROSE,
    QUOTE,
    Identity,
    Renderer,
    column_problems,
)
from tests.report.helpers import (
    DATE,
    FIXED_MSGID,
    GOLDEN,
    RECORDED,
    golden_reporter,
    load_as,
    load_result,
    recorded_index,
    render_golden,
    result_names,
    seed_regression,
)

UPDATE = os.environ.get("KBOT_UPDATE_GOLDEN") == "1"
# kbot's own paths must never reach a mail: its state, caches, the recorder's folder.
LOCAL_PATH = re.compile(r"(?<![\w.])/(?:tmp|root|home|var|kbot-record|work)/")


def _check_golden(name: str, raw: bytes) -> None:
    path = GOLDEN / f"{name}.eml"
    if UPDATE:
        path.write_bytes(raw)
    assert path.is_file(), f"no golden file {path}: run `python -m tests.report.record`"
    assert raw.decode() == path.read_text(), (
        f"{name} differs from {path}: review, then `python -m tests.report.record` "
        "(or KBOT_UPDATE_GOLDEN=1 to re-render from the recorded data)")


def kbot_lines(lines: list[tuple[str, str]]) -> list[str]:
    """Every `kbot ...` command line of a rendered body (its code blocks), continuations
    joined."""
    out = []
    for i, (kind, line) in enumerate(lines):
        if kind == CODE and line.strip().startswith("kbot "):
            text = line.strip()
            j = i
            while text.endswith("\\") and j + 1 < len(lines):
                j += 1
                text = text[:-1] + " " + lines[j][1].strip()
            out.append(text)
    return out


def test_every_kind_is_recorded() -> None:
    kinds = {kind for _, kind in recorded_index().values()}
    assert kinds == {"series", "regression", "build-failure", "apply-failure", "bisection"}


@pytest.mark.parametrize("name", result_names())
def test_golden(name: str, tmp_path: Path) -> None:
    ctx = load_result(name)
    rep = golden_reporter(tmp_path)
    raw = rep.prepare(ctx, msgid=FIXED_MSGID, date=DATE, mode=Mode.FULL).raw
    _check_golden(name, raw)
    msg = parse(raw)
    assert msg.get_content_type() == "text/plain"
    assert not msg.is_multipart()
    body = msg.get_content()
    assert "<html" not in body.lower()
    # Prose <= 72 columns, commands and tables <= 80, quoted logs and files free.
    assert column_problems(rep.renderer.last_lines) == []
    assert {k for k, _ in rep.renderer.last_lines} >= {PROSE, CODE}
    # No path of kbot's machine, no -c of kbot's config, in public mail.
    assert LOCAL_PATH.search(body) is None, LOCAL_PATH.search(body)
    # Every kbot line parses with kbot's own parser; there is at least one.
    lines = kbot_lines(rep.renderer.last_lines)
    assert lines, "no kbot line in the report"
    for line in lines:
        parse_text(line)
        assert " -c " not in f" {line} "
    # The reproduce section goes all the way and the signature says how to answer.
    tail = body[body.index("Reproduce:"):]
    assert "git checkout -B kbot-repro" in tail
    if ctx.reproduce.stop != "apply":
        for step in ("make O=build ARCH=x86_64 tinyconfig", "merge_config.sh",
                     "CONFIG_KVM=y", 'make O=build ARCH=x86_64 -j"$(nproc)" bzImage'):
            assert step in tail, step
    if ctx.reproduce.stop == "test":
        assert "headers_install" in tail and "kbot vmtest" in tail
    assert "-- \nkbot, a KVM patch-series regression and bisection bot, run by" in tail
    for command in ("#kbot test", "#kbot bisect good=REV bad=REV test=NAME", "#kbot invalid",
                    "#kbot help"):
        assert command in tail
    if ctx.kind.value != "apply-failure" and name != "series-clean" and (
            not isinstance(ctx, BisectionReport) or ctx.culprit is not None):
        assert "| Reported-by: kbot <kbot@example.org>" in body
        assert f"| Closes: https://lore.kernel.org/kvm/{FIXED_MSGID}/" in body


def test_goldens_are_what_the_recorded_data_renders(tmp_path: Path) -> None:
    """No golden without recorded data, no recorded report without its golden."""
    goldens = {p.stem for p in GOLDEN.glob("*.eml")} - {"seed-regression"}
    assert goldens == set(result_names())
    for name in result_names():
        assert render_golden(load_result(name), tmp_path / name) == (
            GOLDEN / f"{name}.eml").read_bytes()


def test_recorded_contexts_round_trip() -> None:
    for path, kind in recorded_index().values():
        data = json.loads((RECORDED / path).read_text())
        for d in data if isinstance(data, list) else [data]:
            assert to_json(context_from_json(d, path)) == d, (path, kind)


def test_bad_saved_results_are_named() -> None:
    data = to_json(load_result("regression"))
    with pytest.raises(InputError, match="unknown report kind 'nope'"):
        context_from_json({**data, "kind": "nope"})
    broken = dict(data)
    del broken["failures"]
    with pytest.raises(InputError, match="missing field 'failures'"):
        context_from_json(broken, "r.json")
    bad_vm = json.loads(json.dumps(data))
    bad_vm["failures"][0]["vm"]["backend"] = "kvm"
    with pytest.raises(InputError, match=r"r.json.failures\[0\].vm.backend: 'kvm' is not one"):
        context_from_json(bad_vm, "r.json")


def test_strict_undefined(tmp_path: Path) -> None:
    (tmp_path / "regression.txt.j2").write_text("Hi {{ r.no_such_field }}\n")
    renderer = Renderer(Identity("kbot", "kbot@x.example", "https://a/"), tmp_path)
    with pytest.raises(InputError, match="no_such_field"):
        renderer.render(load_result("regression"), "m@x.example")


def test_column_rule_can_fail() -> None:
    """The column check the goldens pass is not vacuous."""
    url = "https://lore.kernel.org/kvm/" + "x" * 70 + "@example.org/"
    assert column_problems([(PROSE, "word " * 15)])  # 75 columns of prose
    assert column_problems([(CODE, "make " * 17)])  # 85 columns of a command
    assert not column_problems([(CODE, "make " * 15)])
    assert not column_problems([(LOG, "x" * 300), (QUOTE, "y" * 200)])
    assert not column_problems([(CODE, f"| Closes: {url}")])  # one URL may run over
    assert column_problems([(CODE, f"{url} {url}")])


def test_specific_content() -> None:
    """What each kind must say, beyond matching its golden file."""
    r = Renderer(Identity("kbot", "kbot@example.org", "https://lore.kernel.org/kvm/"))
    ctx = load_as("build-failure", BuildFailureReport)
    build = r.render(ctx, FIXED_MSGID)
    assert ">> arch/x86/kvm/accessor.c:3:16: error: " in build
    assert ">>     3  \treturn undefined_thing;" in build
    assert f"[auto build test ERROR on fake/{ctx.base.sha[:12]}]" in build
    assert "kbot build --tree . --rev HEAD" in build
    apply = r.render(load_result("apply-failure"), FIXED_MSGID)
    assert "- arch/x86/kvm/x86.c" in apply
    assert "make O=build ARCH=x86_64 -j" not in apply  # the steps stop at the failing one
    bis = r.render(load_result("bisection"), FIXED_MSGID)
    assert '| Fixes: ' in bis and '("KVM: nSVM: Rework nested state restore")' in bis
    assert "# first bad commit: [" in bis
    assert "confidence: 100%" in bis
    inc = r.render(load_result("bisection-inconclusive"), FIXED_MSGID)
    assert "Bisection is inconclusive: the first bad commit could be any of:" in inc
    assert "KVM: x86: Start a rework" in inc and "Fixes:" not in inc
    series = r.render(load_result("series"), FIXED_MSGID)
    assert "  2/3  yes      yes               0     0     2     0               0" in series
    assert "FAIL state_test [qemu-tcg]" in series
    clean = r.render(load_result("series-clean"), FIXED_MSGID)
    assert "It found no new problems." in clean and "Reported-by" not in clean
    reg = r.render(load_result("regression"), FIXED_MSGID)
    # One mail for the culprit patch, every test it broke in it.
    assert "state_test fails and smm_test fails" in " ".join(reg.split())
    assert "0:3           100%        3:3  state_test.fail (qemu-tcg)" in reg or (
        "state_test.fail (qemu-tcg)" in reg and "smm_test.fail (qemu-tcg)" in reg)
    assert "tests = [{ name = \"state_test\" }, { name = \"smm_test\" }]" in reg
    splat = r.render(load_result("regression-splat"), FIXED_MSGID)
    assert 'the kernel reports "WARNING in svm_set_nested_state"' in " ".join(splat.split())
    assert "WARNING: CPU: 0 PID: 91 at arch/x86/kvm/svm/nested.c:1234" in splat


def test_seed_thread_regression(seed_mbox: Path, tmp_path: Path) -> None:
    """The shared real kvm thread: a regression on its patch 4, threaded and addressed."""
    ctx = seed_regression(seed_mbox)
    info = ctx.series
    assert [p.index for p in info.patches] == [1, 2, 3, 4]
    rep = golden_reporter(tmp_path)
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
    assert column_problems(rep.renderer.last_lines) == []
    body = msg.get_content()
    assert "b4 shazam 20210503150854.1144255-1-vkuznets@redhat.com" in body
    assert ("https://lore.kernel.org/kvm/20210503150854.1144255-4-vkuznets@redhat.com/raw"
            in body)
    # A series-wide result for the same thread replies to the cover.
    series_ctx = dataclasses.replace(load_as("series", SeriesReport), series=info)
    s = parse(rep.prepare(series_ctx, msgid=FIXED_MSGID, date=DATE,
                          mode=Mode.FULL).raw)
    assert s["In-Reply-To"] == "<20210503150854.1144255-1-vkuznets@redhat.com>"
    assert s["Subject"].startswith("Re: [PATCH 0/4] KVM: nVMX: Fix migration")


@pytest.mark.parametrize(("lines", "problem"), [
    ('[report]\nseries_summary = "sometimes"\n', "report.series_summary"),
    ('[report]\nartifacts_url = "ftp://x.example/"\n', "report.artifacts_url"),
    ('[bot]\nowner = "Jane <jane"\n', "bot.owner"),
])
def test_report_settings_are_checked(lines: str, problem: str, tmp_path: Path) -> None:
    path = tmp_path / "kbot.toml"
    path.write_text("schema = 1\n" + lines)
    with pytest.raises(ConfigError, match=problem):
        load_config(path)


def test_report_settings_defaults_and_values(tmp_path: Path) -> None:
    path = tmp_path / "kbot.toml"
    path.write_text('schema = 1\n[bot]\nowner = "Jane Doe <jane@example.org>"\n[report]\n'
                    'series_summary = "author"\nartifacts_url = "https://k.example/kbot"\n')
    cfg = load_config(path)
    assert (cfg.bot.owner, cfg.report.series_summary, cfg.report.artifacts_url) == (
        "Jane Doe <jane@example.org>", "author", "https://k.example/kbot")
    default = load_config()
    assert (default.report.series_summary, default.report.artifacts_url) == ("on-failure", "")
