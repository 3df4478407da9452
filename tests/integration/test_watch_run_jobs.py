"""`kbot watch --once --run-jobs`: one process watches, tests and reports. The real seed thread
targets a 5.12-era tree, so on another tree it ends as an apply-failure mail threaded under the
patch that does not apply — with no kernel build, since nothing applied."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from bot import proc
from bot.cli import main
from bot.config import CONFIG_DIR
from bot.intake.local_inbox import LocalInbox
from bot.state import Store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SEED_PATCH1 = "20210503150854.1144255-2-vkuznets@redhat.com"


def _tree(path: Path) -> None:
    path.mkdir()
    env = proc.clean_env({"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                          "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    (path / "arch/x86/kvm/vmx").mkdir(parents=True)
    (path / "arch/x86/kvm/vmx/nested.c").write_text("/* not the 5.12 file */\n")
    for argv in (["git", "init", "-q", "-b", "master"], ["git", "add", "-A"],
                 ["git", "commit", "-q", "-m", "base"]):
        proc.run(argv, cwd=path, env=env, timeout=60, check=True)


def test_watch_run_jobs_reports_an_apply_failure_once(
    local_inbox: LocalInbox, seed_mbox: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    local_inbox.deliver_mbox(seed_mbox, "kvm")
    _tree(tmp_path / "linux")
    cfg = tmp_path / "kbot.toml"
    cfg.write_text(f"""schema = 1
inherit = false
[bot]
cache_dir = "{tmp_path / 'cache'}"
[archive]
base_url = "{local_inbox.base_url}"
retries = 1
[[lists]]
name = "kvm"
address = "kvm@vger.kernel.org"
settle_s = 0
[[trees]]
name = "linux"
path = "{tmp_path / 'linux'}"
[build]
fragments = ["{CONFIG_DIR / 'kconfig' / 'kvm-nested.config'}"]
[report]
archive_url = "{local_inbox.list_url('kvm')}"
""")
    state = tmp_path / "state"
    argv = ["-c", str(cfg), "--state-dir", str(state), "watch", "--once", "--run-jobs"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "apply 1" in err  # the outcome table: job done, first failure is applying patch 1
    with Store.in_state_dir(state) as store:
        (job,) = store.jobs()
        assert job.status == "done"
        (report,) = store.reports()
        assert report.kind == "apply-failure" and report.status == "sent"
        mail = email.message_from_bytes(report.raw, policy=email.policy.default)
        assert mail["In-Reply-To"] == f"<{SEED_PATCH1}>"
        assert "vkuznets@redhat.com" in mail["To"]
        assert "kvm@vger.kernel.org" in mail["Cc"]
        assert "arch/x86/kvm/vmx/nested.c" in mail.get_content()
    # Again: nothing new recorded, nothing tested, nothing mailed twice.
    assert main(argv) == 0
    with Store.in_state_dir(state) as store:
        assert len(store.jobs()) == 1 and len(store.reports()) == 1
