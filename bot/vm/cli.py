"""`kbot vmtest`: boot a built kernel and run a test plan's selftests inside it."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from bot.errors import EXIT_FAILURE_FOUND, EXIT_INFRA_ERROR, EXIT_OK
from bot.vm.host import probe
from bot.vm.model import Backend
from bot.vm.plan import load_plan
from bot.vm.render import runs_to_json, table
from bot.vm.runner import default_options, run_plan


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "vmtest",
        help="boot a kernel in a VM and run the KVM selftests of a test plan",
        description="Boot BZIMAGE under QEMU (KVM or TCG) or Bochs, whichever this host and the "
        "plan's sets need, run the plan's selftests inside, and print per-test results. "
        "Exit 0: everything passed or skipped; 1: a test failed or the kernel reported a bug; "
        "3: could not test (hang, emulator failure).",
    )
    p.add_argument("--kernel", type=Path, required=True, metavar="BZIMAGE")
    p.add_argument("--selftests", type=Path, required=True, metavar="DIR",
                   help="the KVM selftests output folder (x86_64/state_test, ...)")
    p.add_argument("--plan", default=None,
                   help="plan name in configs/testplans, or a .toml path (default: [vm] plan)")
    p.add_argument("--backend", choices=["auto", *(b.value for b in Backend)], default=None,
                   help="force one backend for every set (default: [vm] backend, auto)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--serial", action="store_true", help="one boot after the other")
    p.set_defaults(func=cmd_vmtest)


def cmd_vmtest(args: argparse.Namespace, ctx: Any) -> int:
    cfg = ctx.config
    plan = load_plan(args.plan or cfg.vm.plan)
    choice = args.backend or cfg.vm.backend
    backend = None if choice == "auto" else Backend(choice)
    options = replace(default_options(cfg), parallel=not args.serial)

    def progress(msg: str) -> None:
        print(f"kbot: {msg}", file=sys.stderr, flush=True)

    runs = run_plan(args.kernel.resolve(), args.selftests.resolve(), plan, backend, probe(),
                    options=options, progress=progress)
    if args.json:
        print(json.dumps(runs_to_json(runs), indent=2))
    else:
        print(table(runs))
    if any(r.regressions_possible for r in runs):
        return EXIT_FAILURE_FOUND
    if any(r.status.is_infrastructure for r in runs):
        return EXIT_INFRA_ERROR
    return EXIT_OK
