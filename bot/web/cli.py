"""`kbot web [--host H] [--port P]`: the read-only web pages over the store, until Ctrl-C.

Bound to loopback by default: the pages show unpublished test results and console logs, so
another address is the operator's explicit choice (put a proxy with TLS in front of it).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

from bot.errors import EXIT_OK, UserError

if TYPE_CHECKING:
    from bot.cli import Context
    from bot.web.app import Served

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("web", help="read-only web pages: series, matrices, bisections, jobs",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.set_defaults(func=cmd_web)


def cmd_web(args: argparse.Namespace, ctx: Context) -> int:
    # Starlette and uvicorn load only for this command, not for every `kbot` start.
    from bot.web.app import serve_web

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be between 0 and 65535")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def ready(served: Served) -> None:
        print(f"kbot web: serving {ctx.config.state_dir} on {served.url}/ (Ctrl-C stops)",
              file=sys.stderr, flush=True)

    try:
        serve_web(ctx.config, args.host, args.port, stop, ready=ready)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print("kbot web: stopped", file=sys.stderr)
    return EXIT_OK
