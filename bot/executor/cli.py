"""`kbot worker` (serve builds and boots for a coordinator) and `kbot workers` (who serves)."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

from bot import codec
from bot.errors import EXIT_OK, UserError
from bot.executor.base import QUEUES
from bot.table import columns

if TYPE_CHECKING:
    from bot.cli import Context


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker",
        help="build and boot for a coordinator (executor.kind = celery)",
        description="Probe this host, register with the broker ([executor] broker_url) and "
        "consume the queues it can serve: " + ", ".join(QUEUES) + ". Stateless: results go "
        "back to the coordinator (kbot serve), artifacts to the shared store "
        "(executor.artifact_dir). SIGTERM/SIGINT finishes the tasks in flight, then stops.")
    p.add_argument("--name", default="", help="this worker's name (default: the host name)")
    p.add_argument("--capabilities", default="", metavar="LIST",
                   help="comma-separated queues to serve instead of what the probe finds, "
                   "e.g. `build` for a big box that should only build")
    p.add_argument("--build-slots", type=int, default=0,
                   help="builds at once (default: executor.build_slots)")
    p.add_argument("--max-boots", type=int, default=0,
                   help="emulators at once (default: executor.max_boots, 0 = cores)")
    p.add_argument("--probe", action="store_true",
                   help="print what this host can serve and exit")
    p.set_defaults(func=cmd_worker)
    w = sub.add_parser("workers", help="registered workers: capabilities, queues, tasks")
    w.add_argument("--history", type=int, default=0, metavar="N",
                   help="also the last N tasks the workers ran")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_workers)


def cmd_worker(args: argparse.Namespace, ctx: Context) -> int:
    from bot.executor import tasks
    from bot.executor.worker import describe_host, run_worker, worker_options

    if args.build_slots < 0 or args.max_boots < 0:
        raise UserError("--build-slots and --max-boots take a count (0 = the config's)")
    host = tasks.probe()
    options = worker_options(ctx.config, host, name=args.name, capabilities=args.capabilities,
                             slots=args.build_slots, boots=args.max_boots)
    if args.probe:
        print(f"host: {describe_host(host)}")
        print(f"capabilities: {', '.join(options.capabilities)}"
              + (" (--capabilities)" if args.capabilities else " (probed)"))
        print(f"build slots: {options.build_slots}, emulators: {options.max_boots}")
        return EXIT_OK
    return run_worker(ctx.config, options, host)


def cmd_workers(args: argparse.Namespace, ctx: Context) -> int:
    from bot.executor.registry import Registry

    section = ctx.config.executor
    registry = Registry(section.broker_url, section.lease_s)
    workers = registry.workers()
    history = registry.history(args.history) if args.history > 0 else []
    if args.json:
        print(json.dumps({"executor": section.kind, "broker": section.broker_url,
                          "workers": codec.dump(tuple(workers)),
                          "history": codec.dump(tuple(history))}, indent=1))
        return EXIT_OK
    if section.kind != "celery":
        print(f"executor.kind is {section.kind}: builds and boots run inside kbot; "
              f"workers registered at {section.broker_url} are not used")
    if not workers:
        print(f"no worker registered at {section.broker_url}")
    now = time.time()
    rows = [("worker", "host", "capabilities", "slots", "emulators", "running", "beat")]
    for w in workers:
        running = "; ".join(f"{t.label or t.kind}{' (waiting)' if t.waiting else ''} "
                            f"{now - t.since:.0f}s" for t in w.running) or "-"
        rows.append((w.name, w.host, ",".join(w.capabilities), str(w.build_slots),
                     str(w.max_boots), running, f"{now - w.beat:.0f}s ago"))
    if workers:
        print("\n".join(columns(rows)))
        for w in workers:
            print(f"{w.name}: queues {', '.join(w.queues)}; {w.probed}")
    if history:
        done = [("task", "worker", "kind", "started", "seconds", "status")]
        for r in history:
            done.append((r.label or r.token[:40], r.worker, r.kind,
                         time.strftime("%H:%M:%S", time.localtime(r.started)),
                         f"{r.seconds:.1f}", r.status))
        print("\n".join(columns(done)))
    return EXIT_OK
