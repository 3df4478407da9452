"""`kbot` subcommands. The one place exceptions become exit codes.

Each stage owns a `cli` module with `register(subparsers)`; its handlers take (args, ctx) and
return an exit code. This file only wires them together and maps errors to exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bot import __version__
from bot.config import Config, load_layered
from bot.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, KbotError
from bot.state import Store

# The stage modules that add subcommands. Each has register(subparsers) -> None.
COMMAND_MODULES: tuple[str, ...] = (
    "bot.intake.cli",
    "bot.intake.watch_cli",
    "bot.tree.cli",
    "bot.build.cli",
    "bot.vm.cli",
    "bot.bisect.cli",
    "bot.report.cli",
    "bot.pipeline.cli",
    "bot.pipeline.jobs_cli",
    "bot.web.cli",
    "bot.service.cli",
    "bot.executor.cli",
    "bot.config_cli",
    "bot.commands.cli",
)


@dataclass
class Context:
    """What every handler gets: the loaded config and a lazily opened store."""

    config: Config
    _store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.in_state_dir(self.config.state_dir)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kbot",
        description="Patch-series regression and bisection bot for kernel mailing lists.",
    )
    parser.add_argument("--version", action="version", version=f"kbot {__version__}")
    parser.add_argument(
        "-c", "--config", type=Path, default=None,
        help="config file, the top layer over configs/kvm.toml, /etc/kbot/config.toml, "
        "~/.config/kbot/config.toml and $KBOT_CONFIG",
    )
    parser.add_argument(
        "--state-dir", type=Path, default=None,
        help="where the store, outbox and logs live (default: from config / $KBOT_STATE_DIR)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="kbot: %(message)s",
        stream=sys.stderr,
    )
    ctx: Context | None = None
    try:
        config = load_layered(args.config).config  # the layers, -c on top
        if args.state_dir is not None:
            from dataclasses import replace

            config = replace(config, bot=replace(config.bot, state_dir=str(args.state_dir)))
        ctx = Context(config)
        code: int = args.func(args, ctx)
        return code
    except KbotError as exc:
        print(f"kbot: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kbot: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_USER_ERROR
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":
    sys.exit(main())
