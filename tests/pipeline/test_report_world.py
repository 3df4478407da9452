"""What the list gets, on a small real world (tests/report/world.py: the fake kernel tree,
series on a real public-inbox, real SMTP, real kbot child processes; only the VM is a fake):

- with the default config a clean series mails no one; a patch that breaks two tests gets
  one mail listing both; each job keeps its folder (repro.sh, .config, logs, results);
- series_summary = "author" mails a clean series' summary to its author alone;
- the regression's repro.sh, run on a fresh clone, fetches the patches from the archive,
  builds the kernel and the selftests and reproduces the failure (`kbot vmtest` with the
  fake VM); the clean series' one passes;
- `kbot bisect --report` threads its mail under the culprit's patch mail, found in the
  archive, or under the mail `--in-reply-to` names with a lore URL.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from bot import proc
from bot.intake.local_inbox import LocalInbox
from bot.state import Store
from tests.fixtures.smtp import SmtpSink, free_port
from tests.report.world import REPO_ROOT, World, make_world, run_kbot

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
LIST = "kvm@vger.kernel.org"


@dataclass(frozen=True)
class Run:
    world: World
    smtp: SmtpSink
    state: Path
    mails: tuple[EmailMessage, ...]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, SmtpSink]]:
    root = tmp_path_factory.mktemp("report-world")
    inbox = LocalInbox(root / "public-inbox", ("kvm",))
    smtp = SmtpSink(port=free_port())
    inbox.start()
    smtp.start()
    try:
        yield make_world(root / "world", inbox, smtp=(smtp.host, smtp.port)), smtp
    finally:
        smtp.stop()
        inbox.stop()


def _run_jobs(world: World, smtp: SmtpSink, state: Path, report: str = "") -> Run:
    text = world.config.read_text(encoding="utf-8")
    config = world.config.with_name(f"kbot-{state.name}.toml")
    config.write_text(text.replace("[report]\n", f"[report]\n{report}"), encoding="utf-8")
    w = World(world.root, world.repo, world.base, config, world.inbox_url, world.mails)
    smtp.received.clear()
    res = run_kbot(w, state, ["watch", "--once", "--run-jobs"])
    assert res.returncode == 0, res.describe()
    return Run(w, smtp, state, tuple(m.message for m in smtp.received))


@pytest.fixture(scope="module")
def default_run(served: tuple[World, SmtpSink],
                tmp_path_factory: pytest.TempPathFactory) -> Run:
    world, smtp = served
    return _run_jobs(world, smtp, tmp_path_factory.mktemp("default") / "state")


def _replying_to(mails: tuple[EmailMessage, ...], msgid: str) -> list[EmailMessage]:
    return [m for m in mails if str(m["In-Reply-To"] or "").strip("<>") == msgid]


def _job_folder(run: Run, series: str) -> Path:
    for folder in (run.state / "jobs").iterdir():
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        if results["series"]["title"] == f"KVM: {series} series":
            return folder
    raise AssertionError(f"no job folder for {series}")


def test_clean_series_mails_no_one_and_a_culprit_gets_one_mail(default_run: Run) -> None:
    mails = default_run.mails
    threads = {str(m["In-Reply-To"]).strip("<>") for m in mails}
    assert not any(t.startswith("clean-") for t in threads), threads  # nothing about it
    with Store.in_state_dir(default_run.state) as store:
        jobs = {j.id: j for j in store.jobs()}
        assert {j.status for j in jobs.values()} == {"done"}
        per_job = {j: [r.kind for r in store.reports_for_job(j)] for j in jobs}
    assert sorted(map(sorted, per_job.values())) == [
        [], ["apply-failure"], ["build-failure", "series"], ["regression", "series"],
        ["regression", "series"]]
    # Patch 2/3 breaks state_test and smm_test (and patch 3/3 still fails them): one mail,
    # to patch 2, naming both.
    (reg,) = _replying_to(mails, "regress-2@example.org")
    assert not _replying_to(mails, "regress-3@example.org")
    assert reg["X-Kbot-Report"] == "regression"
    body = reg.get_content()
    assert "state_test.fail (qemu-tcg)" in body and "smm_test.fail (qemu-tcg)" in body
    assert LIST in str(reg["Cc"])
    # The failing series' summary still goes to the list.
    (summary,) = _replying_to(mails, "regress-0@example.org")
    assert LIST in str(summary["Cc"])


def test_each_job_keeps_its_folder(default_run: Run) -> None:
    folder = _job_folder(default_run, "regress")
    names = {p.name for p in folder.iterdir()}
    assert {"repro.sh", ".config", "results.json", "reports.json", "build-c0.log",
            "build-c2.log", "console-c2-qemu-tcg-1.log"} <= names
    assert "CONFIG_KVM=y" in (folder / ".config").read_text()
    assert os.access(folder / "repro.sh", os.X_OK)
    kinds = [r["kind"] for r in json.loads((folder / "reports.json").read_text())]
    assert kinds == ["regression", "series"]


def test_author_mode_mails_a_clean_series_to_its_author_only(
    served: tuple[World, SmtpSink], tmp_path: Path
) -> None:
    world, smtp = served
    run = _run_jobs(world, smtp, tmp_path / "state", 'series_summary = "author"\n')
    (clean,) = _replying_to(run.mails, "clean-0@example.org")
    assert clean["Cc"] is None
    assert [a.addr_spec for a in clean["To"].addresses] == ["ada@example.org"]
    received = next(r for r in smtp.received if r.msgid == str(clean["Message-ID"]).strip("<>"))
    assert received.rcpt_tos == ("ada@example.org",)
    (failing,) = _replying_to(run.mails, "regress-0@example.org")
    assert LIST in str(failing["Cc"])


def _kbot_shim(folder: Path) -> dict[str, str]:
    """PATH with a `kbot` that is kbot with the fake VM (what a reader installs)."""
    folder.mkdir(exist_ok=True)
    shim = folder / "kbot"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tests.report.fake_vm "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBOT_")}
    env.update(PATH=f"{folder}:{env.get('PATH', '/usr/bin:/bin')}", PYTHONPATH=str(REPO_ROOT),
               KBOT_STATE_DIR=str(folder.parent / "kbot-state"),
               KBOT_CACHE_DIR=str(folder.parent / "kbot-cache"),
               KBOT_FAKE_VM_LOGS=str(folder.parent / "vm-logs"))
    return env


def _repro(run: Run, series: str, tmp: Path, *args: str) -> proc.ProcResult:
    script = tmp / "repro.sh"
    script.write_bytes((_job_folder(run, series) / "repro.sh").read_bytes())
    return proc.run(["bash", str(script), "--tree", str(run.world.repo), "--dir",
                     str(tmp / "linux"), *args], cwd=tmp, env=_kbot_shim(tmp / "bin"),
                    timeout=300)


def test_repro_sh_reproduces_the_regression_on_a_fresh_clone(
    default_run: Run, tmp_path: Path
) -> None:
    res = _repro(default_run, "regress", tmp_path)
    assert res.returncode == 1, res.describe()
    assert "as kbot saw: the test step fails" in res.stdout
    clone = tmp_path / "linux"
    log = proc.run(["git", "log", "--format=%s", "-3"], cwd=clone, timeout=30).stdout
    assert log.splitlines() == ["KVM: nSVM: Rework nested state restore",
                                "KVM: x86: Add a helper", "KVM: selftests: Add smm_test"]
    assert (clone / "build/arch/x86/boot/bzImage").is_file()
    assert os.access(clone / "build/kselftest/kvm/x86_64/state_test", os.X_OK)
    assert "+ kbot vmtest --kernel build/arch/x86/boot/bzImage" in res.stdout


def test_repro_sh_of_a_clean_series_passes(default_run: Run, tmp_path: Path) -> None:
    res = _repro(default_run, "clean", tmp_path)
    assert res.returncode == 0, res.describe()
    assert "as kbot saw: the test step passes" in res.stdout


def test_repro_sh_stops_where_asked_and_says_what_it_needs(
    default_run: Run, tmp_path: Path
) -> None:
    res = _repro(default_run, "nobuild", tmp_path, "--stop-after", "config")
    assert res.returncode == 0, res.describe()
    assert "stopped after the config step" in res.stdout
    assert (tmp_path / "linux/build/.config").is_file()
    again = _repro(default_run, "nobuild", tmp_path)  # the same clone, on to the build
    assert again.returncode == 1 and "as kbot saw: the build step fails" in again.stdout


def _bisect(run: Run, state: Path, *extra: str) -> proc.ProcResult:
    return run_kbot(run.world, state, ["bisect", "--tree", str(run.world.repo), "--good",
                                       run.world.base, "--bad", "series-regress", "--test",
                                       "state_test", "--report", *extra])


def test_bisection_report_threads_under_the_culprits_patch_mail(
    default_run: Run, tmp_path: Path
) -> None:
    smtp = default_run.smtp
    smtp.received.clear()
    res = _bisect(default_run, tmp_path / "state")
    assert res.returncode == 1, res.describe()  # 1: a culprit found
    assert "report queued in reply to <regress-2@example.org>" in res.stdout
    (mail,) = [r.message for r in smtp.received]
    assert mail["In-Reply-To"] == "<regress-2@example.org>"
    assert mail["References"].split() == ["<regress-0@example.org>", "<regress-2@example.org>"]
    culprit = proc.run(["git", "rev-parse", "series-regress~1"], cwd=default_run.world.repo,
                       timeout=30).stdout.strip()
    assert mail["Subject"] == f"[fake:series-regress] [KVM: nSVM] {culprit[:12]}: state_test.fail"
    assert LIST in str(mail["Cc"])
    body = mail.get_content()
    assert f'| Fixes: {culprit[:12]} ("KVM: nSVM: Rework nested state restore")' in body
    assert (tmp_path / "state" / "bisections" / f"{culprit[:12]}-state_test" / "repro.sh"
            ).is_file()
    # Asked to answer another mail, by its lore URL: the report replies there.
    smtp.received.clear()
    url = "https://lore.kernel.org/kvm/regress-0@example.org/T/#u"
    res = _bisect(default_run, tmp_path / "state2", "--in-reply-to", url)
    assert res.returncode == 1, res.describe()
    (mail,) = [r.message for r in smtp.received]
    assert mail["In-Reply-To"] == "<regress-0@example.org>"


def test_every_report_of_the_run_fits_its_columns_and_its_kbot_lines_parse(
    default_run: Run
) -> None:
    """Every report context the run recorded (series summaries included), rendered: prose
    <= 72 columns, commands <= 80, and each kbot line parses with kbot's own parser."""
    from bot.report.commands import parse_text
    from bot.report.context import context_from_json
    from bot.report.render import CODE, Identity, Renderer, column_problems

    renderer = Renderer(Identity("kbot", "kbot@example.org", "https://lore.kernel.org/kvm/",
                                 "Kbot Owner <owner@example.org>"))
    seen = 0
    for folder in (default_run.state / "jobs").iterdir():
        for data in json.loads((folder / "reports.json").read_text(encoding="utf-8")):
            renderer.render(context_from_json(data, str(folder)), "m@example.org")
            assert column_problems(renderer.last_lines) == [], folder
            lines = renderer.last_lines
            for i, (kind, line) in enumerate(lines):
                if kind == CODE and line.strip().startswith("kbot "):
                    text, j = line.strip(), i
                    while text.endswith("\\"):
                        j += 1
                        text = text[:-1] + " " + lines[j][1].strip()
                    parse_text(text)
                    seen += 1
    assert seen >= 10
