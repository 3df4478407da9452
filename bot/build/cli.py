"""`kbot` subcommands owned by bot.build."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this stage's subcommands (none yet)."""
