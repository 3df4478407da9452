"""The report tests' small real world: the fake kernel tree, series mailed to a real
public-inbox, a kbot config, and `kbot` run as a child with only the VM stage faked.

Like tests/faults/pipeline_world.py (whose pieces it reuses), with the series the reports
need: "regress" (patch 2/3 breaks two tests at once: one mail for that patch, listing both),
"clean" (nothing to say), "nobuild" (1/1 does not compile), "warn" (1/1 makes the kernel
WARN), "conflict" (1/1 does not apply to the base it names), and two local branches to
bisect: "series-regress" (its culprit is regress' patch 2, whose mail is in the archive)
and "bisect-skip" (the commit before the culprit does not build: inconclusive). The base
adds smm_test to the fake tree's selftests: the fake VM runs state_test and smm_test.

Used by tests/pipeline/test_report_world.py and by `python -m tests.report.record`, which
records the goldens' data from it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bot import proc
from bot.intake.local_inbox import LocalInbox
from tests.build.fake_kernel import FRAGMENT, commit, git, make_fake_kernel
from tests.faults.pipeline_world import AUTHOR, START, _mail

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 300.0
OWNER = "Kbot Owner <owner@example.org>"
FRAGMENT_NAME = "kvm-fake.config"

# name -> (commits made first and not mailed, commits mailed as the series)
Commits = tuple[tuple[str, dict[str, str]], ...]
SERIES: dict[str, tuple[Commits, Commits]] = {
    "regress": ((), (
        ("KVM: x86: Add a helper", {"arch/x86/kvm/helper.c": "int kvm_helper(void)\n{\n"
                                    "\treturn 1;\n}\n"}),
        ("KVM: nSVM: Rework nested state restore", {
            "arch/x86/kvm/svm_state.c":
                'const char kvm_svm_state[] = "KBOT_FAKE_FAIL:state_test";\n'
                'const char kvm_svm_smm[] = "KBOT_FAKE_FAIL:smm_test";\n'}),
        ("KVM: x86: Comment fix", {"arch/x86/kvm/comment.c": "/* a comment */\nint c;\n"}),
    )),
    "clean": ((), (
        ("KVM: VMX: Tidy up one", {"arch/x86/kvm/tidy1.c": "int tidy1;\n"}),
        ("KVM: VMX: Tidy up two", {"arch/x86/kvm/tidy2.c": "int tidy2;\n"}),
    )),
    "nobuild": ((), (
        ("KVM: x86: Use the new accessor", {
            "arch/x86/kvm/accessor.c": "int accessor(void)\n{\n\treturn undefined_thing;\n}\n"}),
    )),
    "warn": ((), (
        ("KVM: nSVM: Check the nested state harder", {
            "arch/x86/kvm/svm_warn.c":
                'const char kvm_svm_warn[] = "KBOT_FAKE_WARN:WARNING in svm_set_nested_state";\n'}),
    )),
    "conflict": ((
        ("KVM: x86: Return 2 from init (not on the base)", {
            "arch/x86/kvm/x86.c": "int kvm_x86_init(void)\n{\n\treturn 2;\n}\n"}),
    ), (
        ("KVM: x86: Return 3 from init", {
            "arch/x86/kvm/x86.c": "int kvm_x86_init(void)\n{\n\treturn 3;\n}\n"}),
    )),
}
# A branch to bisect whose first bad commit hides behind one that does not build.
SKIP_BRANCH: Commits = (
    ("KVM: x86: Start a rework", {"arch/x86/kvm/rework.c": "int rework(void)\n{\n"
                                  "\treturn not_yet;\n}\n"}),
    ("KVM: x86: Finish the rework", {
        "arch/x86/kvm/rework.c": 'const char kvm_rework[] = "KBOT_FAKE_FAIL:state_test";\n'}),
    ("KVM: x86: Tidy the rework", {"arch/x86/kvm/rework2.c": "int rework2;\n"}),
)


@dataclass(frozen=True)
class World:
    root: Path
    repo: Path
    base: str
    config: Path
    inbox_url: str  # the loopback archive's base URL
    mails: tuple[bytes, ...]


def series_mails(repo: Path, base: str) -> list[bytes]:
    """Each series as git format-patch would mail it, a cover then one mail per patch."""
    mails: list[bytes] = []
    when = START
    for name, (hidden, shown) in SERIES.items():
        git(repo, "checkout", "-q", "-B", f"series-{name}", base)
        for title, files in hidden:
            commit(repo, files, f"{title}\n\nSigned-off-by: {AUTHOR}")
        shas = [commit(repo, files, f"{title}\n\nWhy: {name}.\n\nSigned-off-by: {AUTHOR}")
                for title, files in shown]
        total = len(shas)
        cover = f"{name}-0@example.org"
        mails.append(_mail(cover, f"[PATCH 0/{total}] KVM: {name} series",
                           f"The {name} series.\n\nbase-commit: {base}\n", when, None))
        for i, sha in enumerate(shas, start=1):
            when += timedelta(minutes=1)
            title = git(repo, "log", "-1", "--format=%s", sha)
            message = git(repo, "log", "-1", "--format=%b", sha)
            diff = git(repo, "show", "--format=", "--no-color", sha)
            body = f"{message.strip()}\n---\n{diff}\n-- \n2.40.0\n"
            mails.append(_mail(f"{name}-{i}@example.org", f"[PATCH {i}/{total}] {title}",
                               body, when, cover))
        when += timedelta(hours=1)
    git(repo, "checkout", "-q", "-B", "bisect-skip", base)
    for title, files in SKIP_BRANCH:
        commit(repo, files, f"{title}\n\nSigned-off-by: {AUTHOR}")
    git(repo, "checkout", "-q", "master")
    return mails


def _with_smm_test(repo: Path) -> str:
    """The fake tree's selftests plus smm_test, the second test the fake VM runs."""
    makefile = (repo / "tools/testing/selftests/kvm/Makefile").read_text(encoding="utf-8")
    state = (repo / "tools/testing/selftests/kvm/x86_64/state_test.c").read_text(
        encoding="utf-8")
    return commit(repo, {
        "tools/testing/selftests/kvm/Makefile": makefile.replace(
            "TEST_GEN_PROGS_x86_64 += x86_64/broken_test\n",
            "TEST_GEN_PROGS_x86_64 += x86_64/broken_test\n"
            "TEST_GEN_PROGS_x86_64 += x86_64/smm_test\n"),
        "tools/testing/selftests/kvm/x86_64/smm_test.c": state,
    }, "KVM: selftests: Add smm_test")


def make_world(root: Path, inbox: LocalInbox, *, smtp: tuple[str, int] | None = None,
               report: str = "") -> World:
    """The tree, the mail in the (started) archive and a config; `report` adds [report]
    lines. Without `smtp` reports go to the outbox."""
    repo = root / "linux"
    make_fake_kernel(repo)
    base = _with_smm_test(repo)
    mails = series_mails(repo, base)
    inbox.deliver_many(mails, "kvm")
    frag = root / FRAGMENT_NAME
    frag.write_text(FRAGMENT, encoding="utf-8")
    delivery = "outbox"
    smtp_section = ""
    if smtp is not None:
        delivery = "smtp"
        smtp_section = (f'[report.smtp]\nhost = "{smtp[0]}"\nport = {smtp[1]}\n'
                        'security = "none"\n')
    config = root / "kbot.toml"
    config.write_text(f"""schema = 1
inherit = false
[bot]
name = "kbot"
email = "kbot@example.org"
owner = "{OWNER}"
cache_dir = "{root / 'cache'}"
[archive]
base_url = "{inbox.base_url}"
retries = 1
backoff_s = 0.05
timeout_s = 10
[[lists]]
name = "kvm"
address = "{inbox.address('kvm')}"
files = ["arch/x86/kvm/*"]
settle_s = 0
poll_s = 1
[[trees]]
name = "fake"
path = "{repo}"
branches = ["master"]
default_branch = "master"
[[base_rules]]
tree = "fake"
branch = "master"
lists = ["kvm"]
[build]
fragments = ["{frag}"]
[vm]
backend = "qemu-tcg"
max_rounds = 3
[report]
delivery = "{delivery}"
retry_backoff_s = 0.01
retry_max_backoff_s = 0.01
{report}
{smtp_section}""", encoding="utf-8")
    return World(root, repo, base, config, inbox.base_url, tuple(mails))


def run_kbot(world: World, state_dir: Path, args: Sequence[str], *,
             cwd: Path = REPO_ROOT) -> proc.ProcResult:
    """`kbot -c CONFIG --state-dir STATE ARGS` as a child, its VM stage faked."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBOT_")}
    env["KBOT_FAKE_VM_LOGS"] = str(state_dir.parent / "fake-vm-logs")
    env["PYTHONPATH"] = str(REPO_ROOT)
    return proc.run(
        [sys.executable, "-m", "tests.report.fake_vm", "-c", str(world.config),
         "--state-dir", str(state_dir), *args],
        cwd=cwd, env=env, timeout=CHILD_TIMEOUT_S,
    )
