"""A kbot that delivers queued reports and dies (SIGKILL, no cleanup) at one delivery hook.

Usage: smtp_crash_child.py CONFIG STAGE (claimed | body | data | accepted; see
bot.report.deliver.Hook). Run by tests/faults/smtp_faults.py; exits 3 if STAGE never came.
"""

from __future__ import annotations

import os
import signal
import sys

from bot.config import load_config
from bot.report.deliver import Reporter
from bot.state import Store


def main() -> int:
    cfg = load_config(sys.argv[1])
    stage = sys.argv[2]

    def hook(at: str, msgid: str) -> None:
        if at == stage:
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a power cut would

    Reporter(cfg, Store.in_state_dir(cfg.state_dir), hook=hook).flush()
    return 3


if __name__ == "__main__":
    sys.exit(main())
