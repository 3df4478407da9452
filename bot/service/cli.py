"""`kbot serve` (the long-running service) and `kbot status` (what it is doing)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING

from bot.errors import EXIT_INFRA_ERROR, EXIT_OK, UserError
from bot.table import columns
from bot.vm.model import Backend

if TYPE_CHECKING:
    from bot.cli import Context

log = logging.getLogger("kbot.service")
BACKENDS = ("auto", "qemu-kvm", "qemu-tcg", "bochs")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run as a service: watch the lists, run jobs, deliver reports, read commands",
        description="Poll every configured list, test each ready series, deliver its reports "
        "and act on `#kbot` mail commands, until SIGTERM/SIGINT. The first signal finishes "
        "the step in flight (a build, a boot) and stops; the next start resumes. A second "
        "signal stops at once (the next start resumes from the last stored step).")
    p.add_argument("--backend", choices=BACKENDS, default=None)
    p.add_argument("--web", action="store_true", help="also serve the web pages")
    p.add_argument("--web-host", default="127.0.0.1")
    p.add_argument("--web-port", type=int, default=8080)
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="json: one JSON object per line (for journald, jq, Loki)")
    p.set_defaults(func=cmd_serve)
    s = sub.add_parser("status", help="what a running `kbot serve` is doing (heartbeats, queue)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)


def cmd_serve(args: argparse.Namespace, ctx: Context) -> int:
    from bot.commands.act import after_poll as read_commands
    from bot.service import logs
    from bot.service.loop import AfterPoll, Service, ServiceOptions

    config = ctx.config
    if not config.lists:
        raise UserError(f"{config.source}: no [[lists]] to watch")
    if not 0 < args.web_port < 65536:
        raise UserError(f"--web-port {args.web_port}: not a TCP port")
    logs.setup(args.log_format, verbose=args.verbose)
    name = args.backend or config.vm.backend
    after_poll: tuple[AfterPoll, ...] = (read_commands,)
    service = Service(config, ServiceOptions(
        backend=None if name == "auto" else Backend(name), web=args.web,
        web_host=args.web_host, web_port=args.web_port), after_poll=after_poll)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if service.stop.is_set():
            # Second signal: stop now. The running child is killed with its process group
            # (bot.proc); the job stays 'running' and is resumed at the next start.
            raise KeyboardInterrupt
        log.info("%s: stopping after the step in flight (send it again to stop now)",
                 signal.Signals(signum).name, extra={"component": "service"})
        service.request_stop()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    lists = ", ".join(lst.name for lst in config.lists)
    log.info("serving %s from %s (state %s)", lists, config.archive.base_url, config.state_dir,
             extra={"component": "service"})
    try:
        service.run()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if service.errors:
        for err in service.errors:
            print(f"kbot: error: {err}")
        return EXIT_INFRA_ERROR
    return EXIT_OK


def cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    store = ctx.store
    beats = store.heartbeats()
    counts: dict[str, int] = {}
    for job in store.jobs():
        counts[job.status] = counts.get(job.status, 0) + 1
    reports: dict[str, int] = {}
    for r in store.reports():
        reports[r.status] = reports.get(r.status, 0) + 1
    now = time.time()
    if args.json:
        print(json.dumps({"heartbeats": [vars(b) for b in beats], "jobs": counts,
                          "reports": reports}, indent=2))
        return EXIT_OK
    if beats:
        rows = [("part", "state", "owner", "last beat", "detail")]
        rows += [(b.component, b.state, b.owner, f"{now - b.beat_at:.0f}s ago", b.detail)
                 for b in beats]
        print("\n".join(columns(rows)))
    else:
        print("no `kbot serve` has run with this state dir")
    print("jobs: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none"))
    print("reports: " + (", ".join(f"{n} {k}" for k, n in sorted(reports.items())) or "none"))
    return EXIT_OK
