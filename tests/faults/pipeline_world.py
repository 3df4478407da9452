"""A small, real world for killing kbot's pipeline at every step and checking it recovers.

- a git tree (the fake kernel of tests/build/fake_kernel.py: real make, real gcc, seconds),
- three series mailed to a real public-inbox list, made from real commits on that tree:
  "regress" (3 patches; patch 2 makes the fake `state_test` fail), "clean" (2 patches) and
  "nobuild" (1 patch that does not compile),
- a kbot config: that list, that tree, reports by SMTP to a real loopback server,
- `run_kbot(...)`: the real `kbot` CLI as a child process (tests/faults/fake_vm_kbot.py: only
  the VM stage is a fake), with failpoints (bot/failpoints.py) set or not,
- `check(...)`: the invariants after any sequence of kills and restarts: every ready series has
  one job, every job finished, every report the clean run makes was delivered exactly once
  (or is held with a reason), no other report exists, no stored mail is lost.

Reusable outside pytest: bench/faults.py runs `run_pipeline_scenarios`.
"""

from __future__ import annotations

import collections
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

from bot import proc
from bot.intake.local_inbox import LocalInbox
from bot.state import Store
from tests.build.fake_kernel import FRAGMENT, commit, git, make_fake_kernel
from tests.fixtures.smtp import SmtpSink, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 300.0
AUTHOR = "Ada Hacker <ada@example.org>"
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

# name -> commits (title, files); the fail mark is read by tests/faults/fake_vm_kbot.py
SERIES: dict[str, tuple[tuple[str, dict[str, str]], ...]] = {
    "regress": (
        ("KVM: x86: Add a helper", {"arch/x86/kvm/helper.c": "int kvm_helper(void)\n{\n"
                                    "\treturn 1;\n}\n"}),
        ("KVM: nSVM: Rework nested state restore", {
            "arch/x86/kvm/svm_state.c":
                'const char kvm_svm_state[] = "KBOT_FAKE_FAIL:state_test";\n'}),
        ("KVM: x86: Comment fix", {"arch/x86/kvm/comment.c": "/* a comment */\nint c;\n"}),
    ),
    "clean": (
        ("KVM: VMX: Tidy up one", {"arch/x86/kvm/tidy1.c": "int tidy1;\n"}),
        ("KVM: VMX: Tidy up two", {"arch/x86/kvm/tidy2.c": "int tidy2;\n"}),
    ),
    "nobuild": (
        ("KVM: x86: Use the new accessor", {
            "arch/x86/kvm/accessor.c": "int accessor(void)\n{\n\treturn undefined_thing;\n}\n"}),
    ),
}


@dataclass(frozen=True)
class World:
    root: Path
    repo: Path
    base: str
    config: Path
    cache_dir: Path
    mails: tuple[bytes, ...]


def _mail(msgid: str, subject: str, body: str, when: datetime, reply_to: str | None) -> bytes:
    head = [f"From: {AUTHOR}", "To: kvm@example.org", f"Subject: {subject}",
            f"Date: {format_datetime(when)}", f"Message-ID: <{msgid}>"]
    if reply_to:
        head += [f"In-Reply-To: <{reply_to}>", f"References: <{reply_to}>"]
    head += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=UTF-8"]
    return ("\n".join(head) + "\n\n" + body).encode()


def series_mails(repo: Path, base: str) -> list[bytes]:
    """Each series as git format-patch would mail it: a cover, then one mail per commit."""
    mails: list[bytes] = []
    when = START
    for name, commits in SERIES.items():
        git(repo, "checkout", "-q", "-B", f"series-{name}", base)
        shas = [commit(repo, files, f"{title}\n\nWhy: {name}.\n\nSigned-off-by: {AUTHOR}")
                for title, files in commits]
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
            mails.append(_mail(f"{name}-{i}@example.org", f"[PATCH {i}/{total}] {title}", body,
                               when, cover))
        when += timedelta(hours=1)
    git(repo, "checkout", "-q", "master")
    return mails


def make_world(root: Path, inbox: LocalInbox, smtp: SmtpSink) -> World:
    """The tree, the mail in the (started) archive, and a config; `root` must be empty."""
    repo = root / "linux"
    base = make_fake_kernel(repo)
    mails = series_mails(repo, base)
    inbox.deliver_many(mails, "kvm")
    frag = root / "kvm.config"
    frag.write_text(FRAGMENT, encoding="utf-8")
    cache = root / "cache"
    config = root / "kbot.toml"
    config.write_text(f"""schema = 1
inherit = false
[bot]
name = "kbot"
email = "kbot@example.org"
cache_dir = "{cache}"
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
max_rounds = 2
[jobs]
retry_backoff_s = 0.01
retry_max_backoff_s = 0.01
[report]
delivery = "smtp"
archive_url = "{inbox.list_url('kvm')}"
retry_backoff_s = 0.01
retry_max_backoff_s = 0.01
[report.smtp]
host = "{smtp.host}"
port = {smtp.port}
security = "none"
""", encoding="utf-8")
    return World(root, repo, base, config, cache, tuple(mails))


def run_kbot(world: World, state_dir: Path, args: Sequence[str], *, failpoints: str = "",
             vm_seconds: float = 0.0, log: Path | None = None,
             fake_vm_env: dict[str, str] | None = None) -> proc.ProcResult:
    """`kbot -c CONFIG --state-dir STATE ARGS` as a child; a failpoint ends it with SIGKILL.
    `fake_vm_env`: more KBOT_FAKE_VM_* knobs (tests/faults/fake_vm_kbot.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBOT_")}
    env.update(fake_vm_env or {})
    env["KBOT_FAKE_VM_S"] = str(vm_seconds)
    env["KBOT_FAKE_VM_LOGS"] = str(state_dir.parent / "fake-vm-logs")
    if failpoints:
        env["KBOT_FAILPOINTS"] = failpoints
    return proc.run(
        [sys.executable, "-m", "tests.faults.fake_vm_kbot", "-c", str(world.config),
         "--state-dir", str(state_dir), *args],
        cwd=REPO_ROOT, env=env, timeout=CHILD_TIMEOUT_S, log_path=log,
    )


@dataclass(frozen=True)
class Check:
    """What a store and the SMTP server say after a run (see `check`)."""

    series_lost: int  # ready series without a job
    duplicate_jobs: int  # jobs beyond one per series
    unfinished_jobs: int  # jobs not done (queued, running, failed)
    reports_lost: int  # reports of the clean run that were neither delivered nor held
    duplicate_deliveries: int  # deliveries beyond one per report
    extra_reports: int  # reports the clean run does not make
    held: int  # held with a reason (allowed: never delivered, never lost)
    messages_lost: int

    @property
    def ok(self) -> bool:
        return not (self.series_lost or self.duplicate_jobs or self.unfinished_jobs
                    or self.reports_lost or self.duplicate_deliveries or self.extra_reports
                    or self.messages_lost)


def report_subjects(smtp_msgs: Sequence[bytes]) -> list[str]:
    from email import message_from_bytes, policy

    return [str(message_from_bytes(raw, policy=policy.default)["Subject"]) for raw in smtp_msgs]


def check(world: World, state_dir: Path, delivered: Sequence[bytes],
          expected_subjects: Sequence[str], expected_series: int) -> Check:
    from email import message_from_bytes, policy

    with Store.in_state_dir(state_dir) as store:
        jobs = [j for j in store.jobs() if j.kind == "test-series"]
        per_series = collections.Counter(j.series_id for j in jobs)
        reports = store.reports()
        stored_ids = {m.msgid for m in store.messages("kvm")}
    msgids = collections.Counter(
        str(message_from_bytes(raw, policy=policy.default)["Message-ID"]).strip("<> ")
        for raw in delivered)
    subjects = collections.Counter(report_subjects(delivered))
    held = [r for r in reports if r.status == "held" and r.last_error]
    held_subjects = collections.Counter(r.subject for r in held)
    want = collections.Counter(expected_subjects)
    lost = sum(max(0, n - subjects[s] - held_subjects[s]) for s, n in want.items())
    extra = sum(max(0, n - want[s]) for s, n in (subjects + held_subjects).items())
    sent_ids = {
        str(message_from_bytes(raw, policy=policy.default)["Message-ID"]).strip("<> ")
        for raw in world.mails}
    return Check(
        series_lost=max(0, expected_series - len(per_series)),
        duplicate_jobs=sum(n - 1 for n in per_series.values()),
        unfinished_jobs=sum(1 for j in jobs if j.status != "done"),
        reports_lost=lost,
        duplicate_deliveries=sum(n - 1 for n in msgids.values())
        + sum(max(0, n - want[s]) for s, n in subjects.items() if s in want),
        extra_reports=extra,
        held=len(held),
        messages_lost=len(sent_ids - stored_ids),
    )


# -- scenarios in bulk (bench/faults.py) ---------------------------------------------------

# Each failpoint and the hits at which to kill kbot (bot/failpoints.py names).
KILL_POINTS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("apply:done", (1, 2, 3)),
    ("build:before", (1, 3, 5)),
    ("build:after", (2, 4, 7)),
    ("boot:before", (1, 3)),
    ("boot:after", (1, 2, 4, 6)),
    ("job:tested", (1, 2, 3)),
    ("report:submitted", (1, 2)),
)


@dataclass(frozen=True)
class ScenarioResult:
    fault_class: str
    faults: int
    series_lost: int
    duplicate_jobs: int
    reports_lost: int
    duplicate_reports: int
    held: int
    ok: bool


def kill_and_restart(world: World, state_dir: Path, smtp: SmtpSink, point: str, hit: int,
                     expected: Sequence[str], expected_series: int) -> ScenarioResult:
    """SIGKILL `kbot watch --once --run-jobs` at `point@hit`, then run it again healthy."""
    smtp.received.clear()
    first = run_kbot(world, state_dir, ["watch", "--once", "--run-jobs"],
                     failpoints=f"{point}@{hit}")
    killed = first.returncode == -9
    second = run_kbot(world, state_dir, ["watch", "--once", "--run-jobs"])
    if second.returncode not in (0, 1):
        raise AssertionError(f"restart after {point}@{hit} failed: {second.describe()}")
    result = check(world, state_dir, [r.raw for r in smtp.received], expected, expected_series)
    return ScenarioResult(f"kill -9 at {point}", int(killed), result.series_lost,
                          result.duplicate_jobs + result.unfinished_jobs, result.reports_lost,
                          result.duplicate_deliveries + result.extra_reports, result.held,
                          result.ok)


def run_pipeline_scenarios(points: Sequence[tuple[str, Sequence[int]]] = KILL_POINTS
                           ) -> list[ScenarioResult]:
    """Every (failpoint, hit) of `points` against one world: a fresh state dir each time."""
    root = Path(tempfile.mkdtemp(prefix="kbot-pipeline-faults-"))
    inbox = LocalInbox(root / "public-inbox", ("kvm",))
    smtp = SmtpSink(port=free_port())
    inbox.start()
    smtp.start()
    try:
        world = make_world(root / "world", inbox, smtp)
        clean = run_kbot(world, root / "clean-state", ["watch", "--once", "--run-jobs"])
        if clean.returncode not in (0, 1):
            raise AssertionError(f"clean run failed: {clean.describe()}")
        expected = report_subjects([r.raw for r in smtp.received])
        with Store.in_state_dir(root / "clean-state") as store:
            expected_series = len([j for j in store.jobs() if j.kind == "test-series"])
        results = []
        for n, (point, hits) in enumerate(points):
            for hit in hits:
                state = root / f"state-{n}-{hit}"
                results.append(kill_and_restart(world, state, smtp, point, hit, expected,
                                                expected_series))
        return results
    finally:
        smtp.stop()
        inbox.stop()
        shutil.rmtree(root, ignore_errors=True)
