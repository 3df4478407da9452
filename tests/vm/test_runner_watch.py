"""Fast tier: the runner's console watchdog (what turns a stuck guest into a hang early)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bot.vm import runner


def test_watch_follows_markers_and_flags_an_overdue_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "TEST_GRACE_S", 0.0)
    console = tmp_path / "console.log"
    console.write_text("[    0.1] Linux version 6.1\n")
    seen: list[str] = []
    watch = runner._Watch(console, "qemu-tcg", seen.append, boot_timeout_s=60.0, slowdown=1.0)
    watch.poll()
    assert watch.stage == "boot" and not watch.overdue()
    with console.open("a") as f:
        f.write("[    1.0] kbot: INIT uptime=1.0 release=6.1 vendor=x vmx=0 svm=1\n"
                "[    1.1] kbot: BEGIN test=state_test rep=1 timeout=1 uptime=1.1\n"
                "[    1.2] kbot: OUT kbot: END test=state_test rep=1 rc=0\n"
                "[    1.3] kbot: BEGIN test=half")  # a line still being written
    watch.poll()
    assert watch.stage == "test state_test"
    assert seen == ["[qemu-tcg] INIT uptime=1.0 release=6.1 vendor=x vmx=0 svm=1"]
    time.sleep(1.1)
    assert watch.overdue()  # the test's output cannot fake the END that would reset it
    with console.open("a") as f:
        f.write("_test rep=1 timeout=30 uptime=1.3\n")
    watch.poll()
    assert watch.stage == "test half_test" and not watch.overdue()
