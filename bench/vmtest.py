"""VM test benchmark: boot-to-results wall time of the nested-state plan per backend, and kbot's
overhead against the bare emulator command line it generates.

    .venv/bin/python bench/vmtest.py --kernel BZIMAGE --selftests DIR [--plan nested-state]
        [--rounds 1] [--backends qemu-tcg,bochs]

For each backend, each round: (1) kbot: `run_plan` forced onto that backend's set (guest image
from the content cache, emulator, console parsing, TestRun) timed from the call to the result;
(2) bare: the exact argv that run recorded in TestRun.command, run again by itself. Backends run
one after the other so neither is timed while the other competes for the 2 cores. Targets on
this machine: at most 15 s under QEMU TCG and 45 s under Bochs, overhead ratio at most 1.1.
Figures only; nothing here passes or fails.
"""

from __future__ import annotations

import os
import sys

# bench/bisect.py shadows the stdlib's `bisect`, which `random` (via statistics, tempfile)
# imports: drop this folder from the module path before importing them.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bot import proc  # noqa: E402
from bot.config import default_cache_dir  # noqa: E402
from bot.vm.host import probe  # noqa: E402
from bot.vm.model import Backend, Outcome, TestRun  # noqa: E402
from bot.vm.plan import Requires, TestPlan, load_plan  # noqa: E402
from bot.vm.runner import RunOptions, run_plan  # noqa: E402

TARGET_S = {Backend.QEMU_TCG: 15.0, Backend.BOCHS: 45.0, Backend.QEMU_KVM: 15.0}
SET_FOR = {Backend.QEMU_TCG: Requires.SVM, Backend.BOCHS: Requires.VMX}


def _plan_for(plan: TestPlan, backend: Backend) -> TestPlan:
    want = SET_FOR.get(backend)
    sets = tuple(s for s in plan.sets if want is None or s.requires is want)
    return replace(plan, sets=sets or plan.sets)


def _bare(run: TestRun) -> float:
    # The same argv, files and console path: what a person would paste from the report.
    run.console_log.unlink(missing_ok=True)
    start = time.monotonic()
    res = proc.run(run.command, timeout=600, cwd=run.console_log.parent, env=proc.clean_env())
    elapsed = time.monotonic() - start
    if res.timed_out:
        print(f"  bare run of {run.backend.value} timed out", file=sys.stderr)
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", type=Path, required=True)
    ap.add_argument("--selftests", type=Path, required=True)
    ap.add_argument("--plan", default="nested-state")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--backends", default="qemu-tcg,bochs")
    args = ap.parse_args()
    plan = load_plan(args.plan)
    host = probe()
    backends = [Backend(b) for b in args.backends.split(",") if b]
    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="kbot-bench-vm-") as tmp:
        opts = RunOptions(cache_dir=default_cache_dir(), work_dir=Path(tmp), parallel=False)
        for backend in backends:
            sub = _plan_for(plan, backend)
            # warm the image/ISO cache so the timed runs measure boot-to-results only
            run_plan(args.kernel, args.selftests, sub, backend, host, options=opts)
            kbot_s: list[float] = []
            bare_s: list[float] = []
            last: TestRun | None = None
            for _ in range(args.rounds):
                start = time.monotonic()
                (last,) = run_plan(args.kernel, args.selftests, sub, backend, host, options=opts)
                kbot_s.append(time.monotonic() - start)
                bare_s.append(_bare(last))
            assert last is not None
            ran = sum(r.outcome is not Outcome.NOT_RUN for r in last.results)
            k, b = statistics.median(kbot_s), statistics.median(bare_s)
            rows.append((
                backend.value, ",".join(s.name for s in sub.sets), str(ran),
                last.status.value, f"{last.boot_s or 0:.1f}", f"{k:.1f}",
                f"{TARGET_S.get(backend, 0):.0f}", f"{b:.1f}", f"{k / b:.3f}",
            ))
    head = ("backend", "sets", "tests", "status", "guest boot s", "kbot s", "target s",
            "bare s", "kbot/bare")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(f"plan {plan.name}, {args.rounds} round(s), median wall seconds; host: "
          f"{host.cpu_model}, {host.cpus} CPUs, KVM usable: {host.kvm_usable}")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
