"""`python -m tests.report.fake_vm KBOT-ARGS...`: the real kbot CLI with the VM stage faked,
for the series jobs (tests/faults/fake_vm_kbot.py), `kbot bisect --test` and `kbot vmtest`
(what a repro.sh runs) too.

A fake boot fails test NAME when the built image holds `KBOT_FAKE_FAIL:NAME`, and the kernel
"warns" (a console signature, as bot.vm.console reports a real WARNING) when it holds
`KBOT_FAKE_WARN:<title>`; everything else (archive, git, sandboxed builds of the fake
kernel, store, reports) is real.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from bot import cli
from bot.bisect import kernel_eval
from bot.pipeline import series_job
from bot.vm import cli as vm_cli
from bot.vm.model import Backend, ConsoleSignature, HostCaps, SignatureKind, TestRun
from bot.vm.plan import TestPlan
from bot.vm.runner import RunOptions
from tests.faults.fake_vm_kbot import fake_host, fake_run_plan

WARN_MARK = b"KBOT_FAKE_WARN:"


def _warnings(image: bytes) -> tuple[ConsoleSignature, ...]:
    out = []
    at = image.find(WARN_MARK)
    while at >= 0:
        end = image.find(b"\0", at)
        title = image[at + len(WARN_MARK):end].decode("ascii", "replace")
        function = title.rsplit(" ", 1)[-1]
        out.append(ConsoleSignature(
            SignatureKind.WARNING, title, function, "arch/x86/kvm/svm/nested.c", 1234,
            "state_test", 1, (
                "------------[ cut here ]------------",
                f"WARNING: CPU: 0 PID: 91 at arch/x86/kvm/svm/nested.c:1234 {function}+0x1a/0x2b",
                "Call Trace:", " <TASK>", " kvm_arch_vcpu_ioctl+0x2a/0x40", " </TASK>",
                "---[ end trace 0000000000000000 ]---")))
        at = image.find(WARN_MARK, end)
    return tuple(out)


def run_plan(kernel: Path, selftests: Path, plan: TestPlan, backend: object,
             host: HostCaps | None, *, options: RunOptions | None = None,
             progress: Callable[[str], None] | None = None) -> list[TestRun]:
    runs = fake_run_plan(kernel, selftests, plan, backend if isinstance(backend, Backend) else None,
                         host, options=options,
                         progress=progress)
    sigs = _warnings(kernel.read_bytes())
    return [dataclasses.replace(r, signatures=sigs) if sigs else r for r in runs]


def main(argv: list[str]) -> int:
    for module in (series_job, kernel_eval, vm_cli):  # the job, `bisect --test`, `vmtest`
        module.run_plan = run_plan  # type: ignore[attr-defined]
        module.probe = fake_host  # type: ignore[attr-defined]
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
