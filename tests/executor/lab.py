"""A small lab on loopback: a real `redis-server`, real `kbot worker` processes (with the fake
VM of tests/faults/fake_vm_kbot.py: only the emulator is faked) and the fault suite's world
(tests/faults/pipeline_world.py) pointed at them with `[executor] kind = "celery"`.

Reusable outside pytest: bench/scale.py starts the same lab.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bot import proc
from bot.executor.base import TaskRecord
from bot.executor.registry import Registry
from tests.faults.pipeline_world import REPO_ROOT, World
from tests.fixtures.smtp import free_port

LIFETIME_S = 1800.0


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """`redis-server` on 127.0.0.1, in memory only (no RDB/AOF files), killed on stop."""

    root: Path
    port: int = 0
    server: proc.Background | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.server = proc.start_background(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root), "--protected-mode", "yes"],
            ready=lambda: _answers_ping(self.port), ready_timeout=30,
            max_lifetime_s=LIFETIME_S, log_path=self.root / "redis.log")
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def use_celery(world: World, redis_url: str, *, lease_s: float = 2.0,
               visibility_timeout_s: float = 120.0, max_boots: int = 2) -> None:
    """Point the world's config at the broker (a new table at the end of its TOML)."""
    with world.config.open("a", encoding="utf-8") as fh:
        fh.write(f"""
[executor]
kind = "celery"
broker_url = "{redis_url}"
lease_s = {lease_s}
visibility_timeout_s = {visibility_timeout_s}
no_worker_timeout_s = 120
max_boots = {max_boots}
""")


def child_env(vm_seconds: float, logs: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBOT_")}
    env["KBOT_FAKE_VM_S"] = str(vm_seconds)
    env["KBOT_FAKE_VM_LOGS"] = str(logs)
    return env


def start_worker(world: World, registry: Registry, name: str, capabilities: str, *,
                 vm_seconds: float = 0.0, extra: Sequence[str] = (),
                 log_dir: Path | None = None) -> proc.Background:
    """`kbot worker --name NAME --capabilities CAPS` (fake VM), ready once registered."""
    logs = log_dir or world.root
    argv = [sys.executable, "-m", "tests.faults.fake_vm_kbot", "-c", str(world.config),
            "worker", "--name", name, "--capabilities", capabilities, *extra]
    return proc.start_background(
        argv, ready=lambda: registry.alive(name), ready_timeout=60, max_lifetime_s=LIFETIME_S,
        cwd=REPO_ROOT, env=child_env(vm_seconds, logs / "fake-vm-logs"),
        log_path=logs / f"worker-{name}.log")


def wait_for(what: str, check: object, timeout_s: float = 120.0) -> None:
    """Poll `check()` until true (a state to reach, not a timing assertion)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def max_overlap(records: Sequence[TaskRecord]) -> int:
    """The most tasks whose [started, ended] intervals overlap at one moment."""
    edges = sorted([(r.started, 1) for r in records] + [(r.ended, -1) for r in records],
                   key=lambda e: (e[0], e[1]))
    best = cur = 0
    for _, step in edges:
        cur += step
        best = max(best, cur)
    return best
