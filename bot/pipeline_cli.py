"""`kbot` subcommands that drive the whole pipeline (test-series, demo)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the pipeline subcommands (none yet)."""
