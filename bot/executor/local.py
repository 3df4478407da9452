"""The in-process executor: two thread pools, one for builds and one for emulators.

Builds run in up to `executor.build_slots` threads (the builder holds one slot per build, see
bot/build/kernel.py), boots in up to `executor.max_boots` threads (one emulator each: the
work is in the emulator process, a thread only waits for it). So the boots of different
commits run side by side, and the build of patch i+1 runs while patch i boots.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from bot.build.kernel import BuildResult, KernelBuilder
from bot.config import Config
from bot.executor import tasks
from bot.executor.base import (
    BootRoute,
    BootTask,
    BuildTask,
    Progress,
    Ran,
    RunPlan,
    TaskRecord,
    build_slots,
    host_routes,
    max_boots,
)
from bot.vm.model import Backend, HostCaps, TestRun
from bot.vm.plan import TestPlan
from bot.vm.runner import RunOptions, default_options

T = TypeVar("T")


class LocalExecutor:
    name = "local"

    def __init__(self, config: Config, *, host: HostCaps | None = None,
                 builder: KernelBuilder | None = None, run_plan: RunPlan | None = None,
                 options: RunOptions | None = None, progress: Progress | None = None,
                 boots: int | None = None, slots: int | None = None) -> None:
        self.config = config
        self.builds_at_once = slots or build_slots(config)
        self.boots_at_once = boots or max_boots(config)
        self.builder = builder or KernelBuilder.from_config(config)
        self.builder.slots = max(self.builder.slots, self.builds_at_once)
        self._host = host
        self.run_plan = run_plan
        self.options = options
        self.progress = progress
        self._lock = threading.Lock()
        self._build_pool = ThreadPoolExecutor(self.builds_at_once,
                                              thread_name_prefix="kbot-build")
        self._boot_pool = ThreadPoolExecutor(self.boots_at_once, thread_name_prefix="kbot-boot")

    @property
    def host(self) -> HostCaps:
        with self._lock:
            if self._host is None:
                self._host = tasks.probe()
            return self._host

    def routes(self, plan: TestPlan, forced: Backend | None) -> list[BootRoute]:
        return host_routes(plan, self.host, forced)

    def _run(self, pool: ThreadPoolExecutor, kind: str, token: str, label: str, queue: str,
             body: Callable[[], T]) -> Future[Ran[T]]:
        submitted = time.time()

        def run() -> Ran[T]:
            started = time.time()
            value = body()
            return Ran(value, TaskRecord(kind, token, label, self.name, queue, submitted,
                                         started, time.time(), "ok"))

        return pool.submit(run)

    def build(self, task: BuildTask) -> Future[Ran[BuildResult]]:
        return self._run(self._build_pool, "build", task.token, task.label, "build",
                         lambda: tasks.build(self.builder, task))

    def boot(self, task: BootTask) -> Future[Ran[tuple[TestRun, ...]]]:
        options = self.options or default_options(self.config)
        host = self.host
        return self._run(self._boot_pool, "boot", task.token, task.label, task.route.queue,
                         lambda: tasks.boot(task, host, options, runner=self.run_plan,
                                            progress=self.progress))

    def close(self) -> None:
        # Waits for what runs (a build, an emulator under its watchdog): nothing outlives it.
        self._build_pool.shutdown(wait=True, cancel_futures=True)
        self._boot_pool.shutdown(wait=True, cancel_futures=True)
