"""Real tier: `kbot bisect --test state_test` over 16 commits under arch/x86/kvm/ on
linux-source-6.1, one of which breaks nested SVM state; each step is a real incremental build
(bot.build) and a real QEMU TCG boot running state_test (bot.vm)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.bisect.core import CONFIRM_RUNS
from bot.build.kernel import BuildResult
from bot.cli import main as kbot_main
from bot.tree.kernel_source import KernelSource

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(2400)]

# Small files that are always built with KVM: a comment there is a cheap recompile + relink.
HARMLESS = ("arch/x86/kvm/irq.c", "arch/x86/kvm/mtrr.c", "arch/x86/kvm/pmu.c",
            "arch/x86/kvm/i8259.c", "arch/x86/kvm/irq_comm.c", "arch/x86/kvm/ioapic.c")
SVM_NESTED = "arch/x86/kvm/svm/nested.c"
FLAGS_CHECK = "\tif (kvm_state->flags & ~(KVM_STATE_NESTED_GUEST_MODE |\n"
# Drops GUEST_MODE from the accepted flags: KVM_SET_NESTED_STATE now refuses every state saved
# while L2 runs (EINVAL), which state_test does at each of its L2 sync points.
BROKEN_CHECK = "\tif (kvm_state->flags & ~(KVM_STATE_NESTED_GIF_SET |\n"
N_COMMITS = 16
CULPRIT = 11  # 1-based position in the range


def _comment(i: int) -> Callable[[str], str]:
    return lambda text: text + f"/* kbot bisect fixture {i} */\n"


def test_bisect_state_test_regression(
    kernel_source: KernelSource,
    kernel_commit: Callable[..., str],
    base_build: BuildResult,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    base = kernel_source.base_sha
    parent = base
    shas: list[str] = []
    for i in range(1, N_COMMITS + 1):
        if i == CULPRIT:
            sha = kernel_commit({SVM_NESTED: (FLAGS_CHECK, BROKEN_CHECK)},
                                "KVM: nSVM: tighten the nested state flags check", parent)
        else:
            path = HARMLESS[i % len(HARMLESS)]
            sha = kernel_commit({path: _comment(i)},
                                f"KVM: x86: comment {Path(path).name} ({i})", parent)
        shas.append(sha)
        parent = sha
    culprit = shas[CULPRIT - 1]
    log = tmp_path / "bisect.log"
    code = kbot_main(["bisect", "--tree", str(kernel_source.path), "--good", base,
                      "--bad", shas[-1], "--test", "state_test", "--log", str(log)])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert f"{culprit} is the first bad commit" in out
    assert "KVM: nSVM: tighten the nested state flags check" in out
    assert "candidates left" in err
    # Deterministic: 2 endpoint runs + at most ceil(log2 16) = 4 search runs, then the culprit
    # and its parent are each rerun CONFIRM_RUNS times before the culprit is named.
    m = re.search(r"(\d+) runs \((\d+) searching\)", out)
    assert m is not None and int(m.group(2)) <= 4
    assert int(m.group(1)) <= 2 + 4 + 2 * CONFIRM_RUNS
    # The culprit was named only after its confirmation reruns: its table row counts them.
    row = [line for line in out.splitlines() if line.startswith(culprit[:10])][-1]
    assert int(row.split()[2]) >= 1 + CONFIRM_RUNS, row
    # The failing runs name the selftest's assertion; the replay log ends at the culprit.
    assert re.search(r"state_test FAIL", out + err)
    assert log.read_text().rstrip().endswith("tighten the nested state flags check")
