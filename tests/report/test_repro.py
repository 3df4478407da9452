"""repro.sh (bot.report.repro) from every recorded report: a real script (bash -n,
shellcheck when installed), whose --dry-run prints the same steps the mail shows and whose
every kbot line parses. tests/pipeline/test_report_world.py runs one for real."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bot import proc
from bot.report import repro
from bot.report.commands import parse_text
from bot.report.context import ReportContext
from bot.vm.plan import parse_plan
from tests.report.helpers import load_result, result_names


def _script(tmp: Path, ctx: ReportContext) -> Path:
    path = tmp / "repro.sh"
    path.write_text(repro.script(ctx.reproduce, f"test: {ctx.kind.value}"))
    path.chmod(0o755)
    return path


def _run(script: Path, *args: str, cwd: Path) -> proc.ProcResult:
    return proc.run(["bash", str(script), *args], cwd=cwd, timeout=60)


@pytest.mark.parametrize("name", result_names())
def test_repro_sh_is_a_real_script(name: str, tmp_path: Path) -> None:
    ctx = load_result(name)
    script = _script(tmp_path, ctx)
    syntax = proc.run(["bash", "-n", str(script)], timeout=30)
    assert syntax.returncode == 0, syntax.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (Debian: shellcheck)")
    check = proc.run(["shellcheck", "-s", "bash", str(script)], timeout=60)
    assert check.returncode == 0, check.stdout


@pytest.mark.parametrize("name", result_names())
def test_dry_run_prints_the_mails_steps(name: str, tmp_path: Path) -> None:
    ctx = load_result(name)
    r = ctx.reproduce
    res = _run(_script(tmp_path, ctx), "--dry-run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    printed = [line[2:] for line in res.stdout.splitlines() if line.startswith("+ ")]
    assert printed
    assert res.stdout.rstrip().endswith("dry run: nothing was run")
    assert f"git checkout -q -B kbot-repro {r.base_sha}" in printed
    for m in r.patches:
        assert f"am_from_archive {m}" in printed
    kbot = [p for p in printed if p.startswith("kbot ")]
    mail = repro.mail_text(r)
    for line in kbot:
        parse_text(line)
        assert line.split()[:2] == ["kbot", "vmtest"]
    if r.stop == "test" and r.vm is not None:
        assert len(kbot) == 1 and kbot[0].replace(" ", "") in mail.replace(" \\\n", "") \
            .replace(" ", "")
    if r.stop == "build":
        assert printed[-1].startswith("make O=build ARCH=x86_64 -j")
        assert printed[-1].endswith(" bzImage")
    if r.stop == "apply":
        assert printed[-1].startswith("am_from_archive ")
    # Nothing ran: no clone, no files.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repro.sh"]


def test_options_are_checked(tmp_path: Path) -> None:
    script = _script(tmp_path, load_result("regression"))
    res = _run(script, "--stop-after", "nope", cwd=tmp_path)
    assert res.returncode == 2 and "no step nope" in res.stderr
    res = _run(script, "--frobnicate", cwd=tmp_path)
    assert res.returncode == 2 and "unknown option --frobnicate" in res.stderr
    res = _run(script, "--help", cwd=tmp_path)
    assert res.returncode == 0 and "Usage: repro.sh" in res.stdout
    # kbot's tree is a local one: without --tree the script says what to give it.
    res = _run(script, cwd=tmp_path)
    assert res.returncode == 3 and "give --tree URL|PATH" in res.stderr


def test_the_test_plan_is_a_plan_kbot_reads() -> None:
    vm = load_result("regression").reproduce.vm
    assert vm is not None
    plan = parse_plan(repro.plan_toml(vm), Path("kbot-repro-plan.toml"))
    assert [t.name for s in plan.sets for t in s.tests] == ["state_test", "smm_test"]
    assert [s.requires.value for s in plan.sets] == ["svm"]


def test_the_emulator_line_loses_kbot_paths() -> None:
    argv = ("/usr/bin/qemu-system-x86_64", "-accel", "tcg", "-serial",
            "file:/root/.local/share/kbot/vm/run-1/console.log", "-kernel",
            "/root/.cache/kbot/build/store/ab/bzImage", "-initrd",
            "/root/.cache/kbot/vm/images/123.cpio.gz", "-append", "console=ttyS0 rdinit=/init")
    out = repro.sanitize_emulator(argv, "/root/.cache/kbot/build/store/ab/bzImage")
    assert out == ("qemu-system-x86_64", "-accel", "tcg", "-serial", "file:console.log",
                   "-kernel", "build/arch/x86/boot/bzImage", "-initrd", "123.cpio.gz",
                   "-append", "console=ttyS0 rdinit=/init")
