"""The Service behind `kbot serve`: the parts of kbot that run for weeks, in one process.

Threads, each with its own store connection (SQLite connections stay in their thread):

- intake: polls each list every `poll_s` (bot.intake.watcher), reads mail commands from the
  watched threads (bot.commands), and delivers reports that wait for a retry
  (bot.report.deliver). New jobs wake the job thread.
- jobs (the main thread): runs due jobs one after the other (bot.pipeline.runner), resumes
  what a crash left, retries errored jobs after their backoff.
- web (optional): the read-only pages (bot.web).

Each part writes a heartbeat row (`kbot status` shows them). Shutdown: the first SIGTERM or
SIGINT lets the step in flight finish (a build, a boot) and stops at the next step boundary;
the job goes back to the queue without counting as an attempt and resumes from its stored
steps at the next start. A second signal stops at once (the child processes are killed with
their process groups); the job is then resumed as an orphan at the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.config import Config
from bot.errors import KbotError
from bot.intake.client import ArchiveClient
from bot.intake.watcher import watch_once
from bot.pipeline.runner import run_queued, runner_owner
from bot.report.deliver import Reporter
from bot.state import Store
from bot.vm.model import Backend

log = logging.getLogger("kbot.service")

# Hooks other stages register to run after each poll of the lists (mail commands). Each gets
# the config, the intake thread's store and archive client, and returns how many things it
# did (jobs it queued wake the job thread).
AfterPoll = Callable[[Config, Store, ArchiveClient], int]


@dataclass(frozen=True)
class ServiceOptions:
    backend: Backend | None = None
    jobs_idle_s: float = 10.0  # how often an idle job thread looks for due retries
    web: bool = False
    web_host: str = "127.0.0.1"
    web_port: int = 8080


class Service:
    def __init__(self, config: Config, options: ServiceOptions | None = None, *,
                 after_poll: tuple[AfterPoll, ...] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.options = options or ServiceOptions()
        self.after_poll = after_poll
        self.clock = clock
        self.stop = threading.Event()
        self.wake = threading.Event()  # new or requeued jobs: the job thread looks now
        self.owner = runner_owner()
        self.errors: list[str] = []

    def request_stop(self) -> None:
        self.stop.set()
        self.wake.set()

    def run(self) -> None:
        """Run until request_stop(); returns once every part has stopped."""
        threads = [threading.Thread(target=self._guard, args=("intake", self._intake_loop),
                                    name="kbot-intake", daemon=True)]
        if self.options.web:
            threads.append(threading.Thread(target=self._guard, args=("web", self._web),
                                            name="kbot-web", daemon=True))
        for t in threads:
            t.start()
        try:
            self._guard("jobs", self._jobs_loop)
        finally:
            self.request_stop()
            for t in threads:
                t.join(timeout=60)
            with Store.in_state_dir(self.config.state_dir) as store:
                for part in ["jobs", "intake"] + (["web"] if self.options.web else []):
                    store.beat(part, self.owner, "stopped")
            log.info("stopped", extra={"component": "service"})

    def _guard(self, component: str, body: Callable[[], None]) -> None:
        """A part that dies takes the service down (systemd restarts it) rather than leaving
        half a service running: nothing is lost, everything is resumable."""
        try:
            body()
        except KbotError as exc:
            self.errors.append(f"{component}: {exc}")
            log.error("%s stopped: %s", component, exc, extra={"component": component})
            self.request_stop()
        except BaseException:
            self.request_stop()
            raise

    # -- the parts --------------------------------------------------------------------------

    def _jobs_loop(self) -> None:
        def progress(line: str) -> None:
            log.info(line, extra={"component": "jobs"})

        with Store.in_state_dir(self.config.state_dir) as store:
            store.beat("jobs", self.owner, "starting", started=True)
            while not self.stop.is_set():
                self.wake.clear()
                store.beat("jobs", self.owner, "working")
                outcomes = run_queued(self.config, store, backend=self.options.backend,
                                      progress=progress, clock=self.clock, stop=self.stop)
                done = ", ".join(f"job {o.job_id} {o.status}" for o in outcomes)
                store.beat("jobs", self.owner, "idle", done)
                self.wake.wait(self.options.jobs_idle_s)

    def _intake_loop(self) -> None:
        lists = list(self.config.lists)
        due = {lst.name: 0.0 for lst in lists}
        with Store.in_state_dir(self.config.state_dir) as store, \
                ArchiveClient(self.config.archive) as client:
            store.beat("intake", self.owner, "starting", started=True)
            while not self.stop.is_set():
                for lst in lists:
                    if due[lst.name] > self.clock() or self.stop.is_set():
                        continue
                    store.beat("intake", self.owner, "working", f"polling {lst.name}")
                    try:
                        report = watch_once(self.config, store, client, lists=[lst.name])
                    except KbotError as exc:  # archive down: try again next time
                        log.warning("poll of %s failed: %s", lst.name, exc,
                                    extra={"component": "intake", "list": lst.name})
                    else:
                        if report.recorded:
                            self.wake.set()
                        log.info("%s: %d new message(s), %d series recorded", lst.name,
                                 report.new_messages, len(report.recorded),
                                 extra={"component": "intake", "list": lst.name})
                    due[lst.name] = self.clock() + lst.poll_s
                for hook in self.after_poll:
                    try:
                        if hook(self.config, store, client):
                            self.wake.set()
                    except KbotError as exc:
                        log.warning("after-poll step failed: %s", exc,
                                    extra={"component": "intake"})
                try:
                    summary = Reporter(self.config, store).flush()
                    if summary.sent or summary.failed:
                        log.info("reports: %d sent, %d failed, %d waiting", summary.sent,
                                 summary.failed, summary.retrying,
                                 extra={"component": "report"})
                except KbotError as exc:
                    log.warning("report delivery failed: %s", exc,
                                extra={"component": "report"})
                nxt = min(due.values(), default=self.clock() + 60)
                store.beat("intake", self.owner, "idle",
                           f"next poll in {max(0.0, nxt - self.clock()):.0f} s")
                self.stop.wait(max(0.2, nxt - self.clock()))

    def _web(self) -> None:
        from bot.web.app import serve_web  # the web stage loads starlette: only when asked

        with Store.in_state_dir(self.config.state_dir) as store:
            store.beat("web", self.owner, "working",
                       f"http://{self.options.web_host}:{self.options.web_port}/", started=True)
        serve_web(self.config, self.options.web_host, self.options.web_port, self.stop)
