"""`kbot` subcommands owned by bot.intake (watch)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this stage's subcommands (none yet)."""
