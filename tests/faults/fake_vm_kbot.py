"""`python -m tests.faults.fake_vm_kbot KBOT-ARGS...`: the real kbot CLI, with the VM stage
replaced by a fast, deterministic fake, for fault suites that kill and restart kbot many times.

Everything else is real: the watcher and the archive, git am, the kernel builder (on the fake
kernel tree of tests/build/fake_kernel.py, in the bwrap sandbox), the store, the reports and
SMTP. The fake boot reads the built bzImage (the fake tree's object files, concatenated): a test
named NAME fails when the image holds the bytes `KBOT_FAKE_FAIL:NAME` (a C string a patch
adds), and passes otherwise. `KBOT_FAKE_VM_S` makes each boot take that long, so a test can
kill kbot in the middle of one.

A flaky test: `KBOT_FAKE_VM_FLAKY=NAME=P[,NAME=P...]` makes NAME also fail with probability P
on every kernel, the base included; the draws are `flaky_fails(seed, boot, NAME, P)` with
`KBOT_FAKE_VM_SEED` and `boot` = "TREE:N", the kernel's git tree id and which boot of that
tree this is in this process (1, 2, ...): a run is repeatable whatever order concurrent boots
start in, and a test can compute in advance what each boot will say.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bot import cli
from bot.bisect import kernel_eval
from bot.executor import tasks
from bot.pipeline import series_job
from bot.vm.model import (
    Backend,
    GuestInfo,
    HostCaps,
    Outcome,
    RunStatus,
    TestResult,
    TestRun,
)
from bot.vm.plan import TestPlan
from bot.vm.runner import RunOptions

TESTS = ("state_test", "smm_test")
FAIL_MARK = b"KBOT_FAKE_FAIL:"
_boots: collections.Counter[str] = collections.Counter()
_boots_lock = threading.Lock()


def flaky_fails(seed: int, boot: str, name: str, p: float) -> bool:
    """Whether the flaky `name` fails at boot `boot` (a hash: no state, no order)."""
    digest = hashlib.sha256(f"{seed}:{boot}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < p


def flaky_rates() -> dict[str, float]:
    spec = os.environ.get("KBOT_FAKE_VM_FLAKY", "")
    rates = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        name, _, p = item.partition("=")
        rates[name] = float(p)
    return rates


def fake_host() -> HostCaps:
    return HostCaps("AuthenticAMD", "fake", vmx=False, svm=True, kvm_usable=False,
                    kvm_detail="fake host", nested_vmx=False, nested_svm=False,
                    qemu="/usr/bin/qemu-system-x86_64", bochs=None, xorriso=None, cpus=2)


def boot_id(kernel: Path) -> str:
    """"TREE:N": the N-th boot in this process of the kernel built from git tree TREE (the
    artifact store's result.json beside the image names the tree)."""
    try:
        tree = str(json.loads((kernel.parent / "result.json").read_text())["tree_id"])
    except (OSError, ValueError, KeyError):
        tree = kernel.parent.name
    with _boots_lock:
        _boots[tree] += 1
        return f"{tree}:{_boots[tree]}"


def _log_boot(kernel: Path, backend: Backend | None, started: float, ended: float) -> None:
    """One line per fake emulator run in $KBOT_FAKE_VM_LOGS/boots.jsonl: the ground truth the
    overlap tests compare with (when each boot ran, in which process)."""
    logs = os.environ.get("KBOT_FAKE_VM_LOGS")
    if not logs:
        return
    Path(logs).mkdir(parents=True, exist_ok=True)
    line = json.dumps({"kernel": str(kernel), "backend": backend.value if backend else "auto",
                       "pid": os.getpid(), "started": started, "ended": ended})
    with (Path(logs) / "boots.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")  # one write of a short line: whole lines across processes


def fake_run_plan(
    kernel: Path, selftests: Path, plan: TestPlan, backend: Backend | None,
    host: HostCaps | None, *, options: RunOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[TestRun]:
    image = kernel.read_bytes()
    delay = float(os.environ.get("KBOT_FAKE_VM_S", "0") or 0)
    started = time.time()
    if delay:
        time.sleep(delay)
    _log_boot(kernel, backend, started, time.time())
    if backend is Backend.BOCHS:
        # One fake run stands for the whole plan, as one QEMU TCG boot. The executor splits a
        # plan into one call per emulator (bot/executor/base.py routes): on this fake host the
        # VMX set's part goes to Bochs; it takes its time but reports nothing, so a split
        # boot says exactly what one unsplit call said.
        return []
    boot = boot_id(kernel)
    seed = int(os.environ.get("KBOT_FAKE_VM_SEED", "0") or 0)
    flaky = flaky_rates()

    def fails(name: str) -> bool:
        marked = FAIL_MARK + name.encode() in image
        return marked or (name in flaky and flaky_fails(seed, boot, name, flaky[name]))

    results = tuple(
        TestResult(name, 1, Outcome.FAIL if fails(name) else Outcome.PASS,
                   1 if fails(name) else 0, 0.01, output=(f"# {name}: fake run",))
        for name in TESTS
    )
    logs = Path(os.environ.get("KBOT_FAKE_VM_LOGS") or kernel.parent)
    logs.mkdir(parents=True, exist_ok=True)
    console = logs / f"console-{kernel.parent.name}.log"
    console.write_text("".join(f"{r.name}: {r.outcome.value}\n" for r in results),
                       encoding="utf-8")
    return [TestRun(
        Backend.QEMU_TCG, "fake VM for fault tests", plan.name, ("svm",), kernel,
        RunStatus.COMPLETED, "fake boot: every test ran", results, (),
        GuestInfo("6.1.0-fake", "AuthenticAMD", vmx=False, svm=True, nested="svm:1",
                  kvm_device=True),
        ("fake-vm", str(kernel)), console, 0, 0.01, 0.0,
    )]


def main(argv: list[str]) -> int:
    series_job.run_plan = fake_run_plan  # type: ignore[assignment]
    series_job.probe = fake_host
    kernel_eval.run_plan = fake_run_plan  # type: ignore[assignment]
    kernel_eval.probe = fake_host
    # `kbot worker` runs boots through the executor's task bodies (bot/executor/tasks.py).
    tasks.run_plan = fake_run_plan
    tasks.probe = fake_host
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
