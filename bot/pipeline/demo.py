"""`kbot demo`: kbot's main job end to end on this machine, with embedded defaults.

A real public-inbox on loopback stands in for lore and serves two threads: the shared seed
thread (a real 2021 kvm-list series, which does not apply to 6.1: an apply-failure report) and
a 3-patch series made here against Debian's linux-source-6.1 whose second patch breaks nested
SVM state restore. kbot watches the list, records both series, applies, builds each patch
incrementally, boots each kernel under QEMU TCG (nested SVM) and Bochs (nested VMX), names the
first bad patch and writes threaded reports to the outbox.
"""

from __future__ import annotations

import dataclasses
import email.utils
import os
from pathlib import Path

from bot.config import CONFIG_DIR, Config, load_config
from bot.errors import InfraError
from bot.intake.client import ArchiveClient
from bot.intake.local_inbox import serve_mbox
from bot.intake.watcher import watch_once
from bot.pipeline.runner import JobOutcome, run_queued
from bot.pipeline.series_job import Progress
from bot.state import Store
from bot.tree import git
from bot.tree.edit import Edit, commit_edits
from bot.tree.kernel_source import ensure_kernel_source

DEMO_CONFIG = CONFIG_DIR / "demo.toml"
# The real kvm-list thread (public list mail) ships with the project: see configs/demo/README.md.
SEED_THREAD = CONFIG_DIR / "demo" / "kvm-evmcs-v1-2021-05-03.mbox"
AUTHOR = "Demo Developer <developer@example.org>"
DATE = "Tue, 24 Nov 2026 10:00:00 +0000"
VMX_NESTED = "arch/x86/kvm/vmx/nested.c"
SVM_NESTED = "arch/x86/kvm/svm/nested.c"
EVMCS_FLAG = ("\t\t\t/* 'hv_evmcs_vmptr' can also be EVMPTR_MAP_PENDING here */\n"
              "\t\t\tif (vmx->nested.hv_evmcs_vmptr != EVMPTR_INVALID)\n"
              "\t\t\t\tkvm_state.flags |= KVM_STATE_NESTED_EVMCS;\n\n")
GET_NESTED = "static int vmx_get_nested_state(struct kvm_vcpu *vcpu,\n"
SVM_GET_NESTED = "static int svm_get_nested_state(struct kvm_vcpu *vcpu,\n"

# (subject, body, edits): the seed thread's bug class, in a series made against 6.1. Patch 3
# stops vmx_get_nested_state() from reporting KVM_STATE_NESTED_EVMCS, so a vCPU saved while
# it uses an enlightened VMCS cannot be restored: evmcs_test fails under Bochs (nested VMX)
# with "KVM_SET_NESTED_STATE failed ... Invalid argument". Patches 1, 2 and 4 are clean.
DEMO_PATCHES: tuple[tuple[str, str, dict[str, Edit]], ...] = (
    ("KVM: nVMX: Document what vmx_get_nested_state() reports",
     "Say which parts of the nested state userspace gets back, so that the\n"
     "eVMCS handling below reads as intended.",
     {VMX_NESTED: (GET_NESTED, "/*\n * Fill in KVM_GET_NESTED_STATE: the VMXON and "
                   "current VMCS12 pointers, the\n * VMCS12 (and shadow VMCS12) contents "
                   "and the flags that say how to\n * restore them.\n */\n" + GET_NESTED)}),
    ("KVM: nSVM: Document what svm_get_nested_state() reports",
     "The SVM side of the same documentation.",
     {SVM_NESTED: (SVM_GET_NESTED, "/* Fill in KVM_GET_NESTED_STATE: VMCB12 and the nested "
                   "flags. */\n" + SVM_GET_NESTED)}),
    ("KVM: nVMX: Don't report eVMCS in KVM_GET_NESTED_STATE",
     "The enlightened VMCS is found again from the Hyper-V VP assist page on\n"
     "the first VM-entry after a restore, so there is no need to tell\n"
     "userspace about it in the nested state flags.",
     {VMX_NESTED: (EVMCS_FLAG, "")}),
    ("KVM: x86: Fix a comment typo in the IOAPIC code",
     "Comment-only change.",
     {"arch/x86/kvm/ioapic.c": lambda text: text + "/* kbot demo: comment-only change */\n"}),
)
COVER = ("[PATCH 0/4] KVM: nVMX: nested state cleanups",
         "Small cleanups around KVM_GET_NESTED_STATE, for VMX and SVM.")
BAD_PATCH = 3  # what the demo's e2e test expects kbot to name
BAD_TEST = "evmcs_test [bochs]"


def _mail(subject: str, body: str, msgid: str, reply_to: str | None, date: str) -> bytes:
    head = [f"From: {AUTHOR}", "To: kvm@vger.kernel.org", f"Subject: {subject}",
            f"Date: {date}", f"Message-ID: <{msgid}>"]
    if reply_to:
        head += [f"In-Reply-To: <{reply_to}>", f"References: <{reply_to}>"]
    head += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=UTF-8"]
    return ("\n".join(head) + "\n\n" + body).encode()


def demo_series_mbox(repo: Path, base: str) -> bytes:
    """The demo series as mail, made with `git format-patch` from commits on `base` (fixed
    dates, so the commits and Message-IDs are the same on every run)."""
    parent = base
    shas = []
    for subject, body, edits in DEMO_PATCHES:
        parent = commit_edits(repo, parent, edits,
                              f"{subject}\n\n{body}\n\nSigned-off-by: {AUTHOR}\n",
                              ref="refs/kbot/demo/series", author_date="1795514400 +0000")
        shas.append(parent)
    cover_id = f"kbot-demo-0-{shas[-1][:12]}@example.org"
    total = len(shas)
    date = email.utils.parsedate_to_datetime(DATE)
    mails = [_mail(COVER[0], COVER[1] + f"\n\nbase-commit: {base}\n", cover_id, None, DATE)]
    for i, sha in enumerate(shas, 1):
        patch = git.git_out(repo, "format-patch", "--stdout", "-1", "--no-signature",
                            f"--subject-prefix=PATCH {i}/{total}", sha)
        _, _, rest = patch.partition("\n\n")  # keep git's body: message, ---, diffstat, diff
        when = email.utils.format_datetime(date.replace(minute=i))
        mails.append(_mail(f"[PATCH {i}/{total}] {DEMO_PATCHES[i - 1][0]}", rest,
                           f"kbot-demo-{i}-{sha[:12]}@example.org", cover_id, when))
    return b"".join(b"From kbot-demo Mon Sep 17 00:00:00 2001\n" + m.rstrip(b"\n") + b"\n\n"
                    for m in mails)


def run_demo(state_dir: Path, progress: Progress,
             config_path: Path = DEMO_CONFIG) -> tuple[Config, list[JobOutcome]]:
    config = load_config(config_path)
    config = dataclasses.replace(config, bot=dataclasses.replace(config.bot,
                                                                 state_dir=str(state_dir)))
    progress("importing Debian's linux-source-6.1 into the cache (once)")
    src = ensure_kernel_source(config.cache_dir)
    demo_dir = state_dir / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    series_mbox = demo_dir / "demo-series.mbox"
    series_mbox.write_bytes(demo_series_mbox(src.path, src.base_sha))
    if not SEED_THREAD.is_file():
        raise InfraError(f"demo data missing: {SEED_THREAD} (a broken install of kbot?)")
    mboxes = [series_mbox, SEED_THREAD]
    inbox_root = demo_dir / f"inbox-{os.getpid()}"
    progress(f"serving {len(mboxes)} thread(s) from a loopback public-inbox")
    inbox = serve_mbox(inbox_root, mboxes, "kvm")
    try:
        config = dataclasses.replace(
            config,
            archive=dataclasses.replace(config.archive, base_url=inbox.base_url),
            report=dataclasses.replace(config.report, archive_url=inbox.list_url("kvm")),
        )
        with Store.in_state_dir(state_dir) as store, ArchiveClient(config.archive) as client:
            report = watch_once(config, store, client)
            for rec in report.recorded:
                progress(f"watch: recorded job {rec.job_id}: v{rec.version} {rec.title} "
                         f"({rec.patches}/{rec.total} patches)")
            if not report.recorded:
                progress("watch: nothing new (already recorded by an earlier run)")
            outcomes = run_queued(config, store, progress=progress)
    finally:
        inbox.stop()
    return config, outcomes
