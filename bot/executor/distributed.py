"""The Celery executor: build and boot tasks on Redis-brokered queues, run by `kbot worker`s.

Why Celery with Redis: it is the task queue Python operators already run and watch (Flower,
`celery inspect`), it routes by named queues (our capabilities), and it has the delivery
guarantees a lab needs out of the box: late acknowledgement (a task is acknowledged only once it
finished, so a worker that dies mid-task leaves it in the broker) and, on Redis, a visibility
timeout after which an unacknowledged task is delivered again. Redis also holds the worker
registry, the task leases and the stored results (bot/executor/registry.py), so a lab runs
one extra service, Debian's `redis-server`.

The coordinator (`kbot serve` / `run-jobs` / `test-series`) owns the store; workers are
stateless and hand back values. Crash safety, on top of Celery's:

- every task carries an idempotency token (bot/executor/base.py); a worker that finds the
  token's result stored returns it, and one that finds another live worker holding the task's
  lease steps aside, so a redelivered or resent task never runs twice to completion;
- a running task holds a lease its worker renews; when the lease lapses before a result is
  stored, the worker died: this executor sends the task again (to any worker of the queue) at
  once, instead of waiting out the visibility timeout (which stays the backstop for a
  coordinator that died too: a resumed job asks again and gets the stored results);
- a boot of an artifact a worker built or booted lately goes to that worker's own queue when
  it has an emulator free; if that worker disappears, the boot is resent to the shared queue.

Artifacts move through the shared content-addressed store (executor.artifact_dir, a path every
worker mounts): it is already atomic (entries appear by rename, blobs are content-addressed and
written once), so sharing it needs no protocol of its own and moves each file once, from the
builder to the file server, never through the coordinator. Results name files by their store
key; paths are re-rooted to this machine's view of the store.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery  # type: ignore[import-untyped]

from bot import codec
from bot.build.kernel import BuildArtifacts, BuildResult
from bot.config import Config
from bot.errors import InfraError, UserError
from bot.executor.base import (
    BUILD_QUEUE,
    QUEUE_BACKEND,
    VM_BOCHS,
    VM_KVM_SVM,
    VM_KVM_VMX,
    VM_TCG,
    BootRoute,
    BootTask,
    BuildTask,
    Progress,
    Ran,
    TaskRecord,
    artifact_root,
    group_routes,
)
from bot.executor.registry import Registry, WorkerRecord, worker_queue
from bot.vm.model import Backend, TestRun
from bot.vm.plan import Requires, TestPlan, TestSet

log = logging.getLogger(__name__)

BUILD_TASK = "kbot.build"
BOOT_TASK = "kbot.boot"
POLL_S = 0.2
IDLE_EXIT_S = 5.0  # the waiting thread ends after this long with nothing to wait for
# Broker hiccups tolerated before the tasks in flight are given up as "could not test".
BROKER_GRACE_S = 60.0


def celery_app(config: Config) -> Any:
    """The Celery app both sides use, from the [executor] section."""
    ex = config.executor
    app = Celery("kbot", broker=ex.broker_url, backend=ex.result_backend or ex.broker_url)
    vt = int(ex.visibility_timeout_s)
    if ex.visibility_timeout_s <= config.build.timeout_s:
        # A build still running when its task becomes visible again is delivered again:
        # the copy finds the live lease and steps aside, but it takes a worker thread.
        log.warning("executor.visibility_timeout_s (%.0f s) is not longer than "
                    "build.timeout_s (%.0f s): long builds are delivered twice",
                    ex.visibility_timeout_s, config.build.timeout_s)
    app.conf.update(
        task_acks_late=True,  # acknowledged when done: a dead worker's task stays queued
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # take only what can start now
        broker_transport_options={"visibility_timeout": vt},
        result_backend_transport_options={"visibility_timeout": vt},
        task_serializer="json", result_serializer="json", accept_content=["json"],
        result_expires=7 * 86400,
        task_track_started=True,
        worker_send_task_events=True, task_send_sent_event=True,  # what Flower shows
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_create_missing_queues=True,
    )
    return app


def _rebase(path: Path | None, old: str, new: Path) -> Path | None:
    """A worker's path into the shared store, as this machine sees the store."""
    if path is None or not old:
        return path
    try:
        return new / path.relative_to(old)
    except ValueError:
        return path


def decode_build(envelope: dict[str, Any], root: Path) -> BuildResult:
    result: BuildResult = codec.load(BuildResult, envelope["value"], "build result")
    old = str(envelope.get("store_root", ""))
    a = result.artifacts
    if envelope.get("repeat"):  # answered from a stored result: nothing was built for it
        result = dataclasses.replace(result, cached=True, build_seconds=0.0)
    return dataclasses.replace(result, artifacts=BuildArtifacts(
        _rebase(a.bzimage, old, root), _rebase(a.selftests_dir, old, root),
        _rebase(a.config, old, root), _rebase(a.log, old, root)))


def decode_boot(envelope: dict[str, Any], root: Path) -> tuple[TestRun, ...]:
    runs: tuple[TestRun, ...] = codec.load(tuple[TestRun, ...], envelope["value"], "boot result")
    old = str(envelope.get("store_root", ""))
    return tuple(dataclasses.replace(r, kernel=_rebase(r.kernel, old, root) or r.kernel,
                                     console_log=_rebase(r.console_log, old, root)
                                     or r.console_log)
                 for r in runs)


@dataclass(eq=False)
class _Wait:
    """One task this coordinator waits for (across the sends it took)."""

    kind: str
    name: str  # the Celery task name
    token: str
    label: str
    queue: str  # the shared queue of its kind
    payload: Any
    future: Future[Any]
    decode: Callable[[dict[str, Any]], Any]
    submitted: float
    task_ids: list[str] = field(default_factory=list)
    target: str | None = None  # sent to this worker's own queue
    holder: str | None = None  # the worker seen running it
    elsewhere: bool = False  # a worker said another one runs it
    orphan_since: float | None = None  # no live worker serves its queue since
    warned: bool = False


class CeleryExecutor:
    name = "celery"

    def __init__(self, config: Config, *, progress: Progress | None = None) -> None:
        self.config = config
        self.section = config.executor
        self.app = celery_app(config)
        self.registry = Registry(self.section.broker_url, self.section.lease_s)
        self.registry.ping()  # no broker: could not test (the job is retried later)
        self.root = artifact_root(config)
        self.progress = progress or (lambda line: None)
        self._lock = threading.Lock()
        self._waits: list[_Wait] = []
        self._stop = threading.Event()
        self._broker_down_since: float | None = None
        self._thread: threading.Thread | None = None  # runs while tasks are awaited

    # -- routing -----------------------------------------------------------------------------

    def routes(self, plan: TestPlan, forced: Backend | None) -> list[BootRoute]:
        """Each set to the queue that serves it best among the registered workers: a VMX set
        to an Intel KVM host with nested VMX when one is registered, else to Bochs; an SVM
        set to an AMD KVM host with nested SVM, else to QEMU TCG."""
        served = {c for w in self.registry.workers() for c in w.capabilities}
        choices = []
        for s in plan.sets:
            queue, reason = self._queue_for(s, forced, served)
            choices.append((s, queue, QUEUE_BACKEND[queue], reason))
        return group_routes(choices, forced is not None)

    @staticmethod
    def _queue_for(s: TestSet, forced: Backend | None, served: set[str]) -> tuple[str, str]:
        if forced is not None:
            if forced is Backend.QEMU_TCG:
                return VM_TCG, f"--backend {forced.value} given"
            if forced is Backend.BOCHS:
                return VM_BOCHS, f"--backend {forced.value} given"
            return (VM_KVM_SVM if s.requires is Requires.SVM else VM_KVM_VMX,
                    f"--backend {forced.value} given")
        if s.requires is Requires.VMX:
            if VM_KVM_VMX in served:
                return VM_KVM_VMX, "a worker runs KVM on Intel with nested=Y"
            return VM_BOCHS, (f"set {s.name} needs VMX; no worker runs KVM with nested VMX: "
                              "Bochs emulates VMX")
        if s.requires is Requires.SVM:
            if VM_KVM_SVM in served:
                return VM_KVM_SVM, "a worker runs KVM on AMD with nested=1"
            return VM_TCG, (f"set {s.name} needs SVM; no worker runs KVM with nested SVM: "
                            "QEMU TCG -cpu max emulates SVM")
        for queue in (VM_KVM_VMX, VM_KVM_SVM):
            if queue in served:
                return queue, "a worker runs KVM"
        return VM_TCG, "no worker runs KVM: QEMU TCG"

    # -- tasks -------------------------------------------------------------------------------

    def build(self, task: BuildTask) -> Future[Ran[BuildResult]]:
        return self._submit("build", BUILD_TASK, task.token, task.label, BUILD_QUEUE,
                            codec.dump(task), lambda env: decode_build(env, self.root), None)

    def boot(self, task: BootTask) -> Future[Ran[tuple[TestRun, ...]]]:
        return self._submit("boot", BOOT_TASK, task.token, task.label, task.route.queue,
                            codec.dump(task), lambda env: decode_boot(env, self.root),
                            self._holder(task))

    def _holder(self, task: BootTask) -> str | None:
        """A live worker of the boot's queue that holds its artifact and has an emulator
        free (the least busy such one), or None."""
        best: WorkerRecord | None = None
        for w in self.registry.workers():
            if task.route.queue not in w.capabilities or w.busy("boot") >= w.max_boots:
                continue
            if not self.registry.holds(w.name, task.artifact):
                continue
            if best is None or w.busy("boot") < best.busy("boot"):
                best = w
        return best.name if best is not None else None

    def _submit(self, kind: str, name: str, token: str, label: str, queue: str, payload: Any,
                decode: Callable[[dict[str, Any]], Any], target: str | None) -> Future[Any]:
        fut: Future[Any] = Future()
        # Running from the start: a sent task cannot be taken back, so a job that stops
        # waits for it (and stores what it returns) rather than cancelling it.
        fut.set_running_or_notify_cancel()
        w = _Wait(kind, name, token, label, queue, payload, fut, decode, time.time(),
                  target=target)
        self._send(w, worker_queue(queue, target) if target else queue)
        with self._lock:
            self._waits.append(w)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._poll_loop, name="kbot-executor",
                                                daemon=True)
                self._thread.start()
        return fut

    def _send(self, w: _Wait, queue: str) -> None:
        try:
            res = self.app.send_task(w.name, args=[w.token, w.payload], queue=queue)
        except Exception as exc:  # kombu raises its own connection errors
            raise InfraError(f"broker {self.section.broker_url}: cannot send {w.label}: "
                             f"{exc}") from exc
        # Only the latest send is asked for its answer: an earlier one either stored its
        # result under the token (read there) or said another worker had it.
        w.task_ids = [str(res.id)]

    # -- waiting -----------------------------------------------------------------------------

    def _poll_loop(self) -> None:
        idle_since = time.monotonic()
        while not self._stop.wait(POLL_S):
            with self._lock:
                waits = list(self._waits)
                if not waits and time.monotonic() - idle_since > IDLE_EXIT_S:
                    self._thread = None  # the next task starts another
                    return
            if not waits:
                continue
            idle_since = time.monotonic()
            try:
                served = {q for wr in self.registry.workers() for q in wr.queues}
                for w in waits:
                    self._check(w, served)
                self._broker_down_since = None
            except InfraError as exc:
                now = time.monotonic()
                self._broker_down_since = self._broker_down_since or now
                if now - self._broker_down_since > BROKER_GRACE_S:
                    for w in waits:
                        self._settle(w, exc=InfraError(f"{w.label}: {exc}"))
                else:
                    log.warning("executor: %s (retrying)", exc)
            except Exception as exc:  # the waiting thread must not die: fail what it waits for
                log.exception("executor: waiting for tasks failed")
                for w in waits:
                    self._settle(w, exc=InfraError(f"{w.label}: executor failed: {exc}"))

    def _check(self, w: _Wait, served: set[str]) -> None:
        envelope = self.registry.get_done(w.token)
        started_by: str | None = None  # the worker Celery says began the latest send
        if envelope is None:
            for tid in w.task_ids:
                res = self.app.AsyncResult(tid)
                state = res.state
                if state == "STARTED" and isinstance(res.info, dict):
                    started_by = str(res.info.get("hostname", "")).split("@")[0] or None
                if state == "SUCCESS":
                    got = res.result
                    if isinstance(got, dict) and got.get("status") == "elsewhere":
                        w.elsewhere = True
                        continue
                    if isinstance(got, dict):
                        envelope = got
                        break
                if state == "FAILURE":
                    self._settle(w, exc=InfraError(f"{w.label}: the worker's task failed: "
                                                   f"{res.result!r}"[:500]))
                    return
        if envelope is not None:
            self._finish(w, envelope)
            return
        holder = self.registry.lease_holder(w.token)
        if holder is not None:
            w.holder, w.elsewhere = holder, False
            return
        # Gone: the worker seen holding its lease, the worker Celery says began it (it may
        # die before this coordinator saw its lease), or the worker it was sent to.
        lost = w.holder or next((name for name in (started_by, w.target)
                                 if name and not self.registry.alive(name)), None)
        if lost or w.elsewhere:
            if self.registry.get_done(w.token) is not None:
                return  # it finished just now: the next look takes the result
            self.progress(f"{w.label}: worker {lost or '?'} is gone: sending the task again")
            w.holder = w.target = None
            w.elsewhere = False
            self._send(w, w.queue)
            return
        queue = worker_queue(w.queue, w.target) if w.target else w.queue
        if queue in served:
            w.orphan_since = None
            return
        now = time.monotonic()
        w.orphan_since = w.orphan_since or now
        if not w.warned:
            w.warned = True
            self.progress(f"{w.label}: no live worker serves queue {queue}: waiting for one")
        if w.target is not None:  # its worker went: any worker of the queue will do
            w.target = None
            self._send(w, w.queue)
        elif now - w.orphan_since > self.section.no_worker_timeout_s:
            self._settle(w, exc=InfraError(
                f"{w.label}: no worker serves queue {w.queue} after "
                f"{self.section.no_worker_timeout_s:.0f} s (start a `kbot worker` that can)"))

    def _finish(self, w: _Wait, envelope: dict[str, Any]) -> None:
        if envelope.get("status") == "error":
            cls = UserError if envelope.get("error_kind") == "user" else InfraError
            self._settle(w, exc=cls(str(envelope.get("error", "worker error"))))
            return
        try:
            value = w.decode(envelope)
        except Exception as exc:  # a result this kbot cannot read: could not test
            self._settle(w, exc=InfraError(f"{w.label}: unreadable result: {exc}"))
            return
        record = TaskRecord(w.kind, w.token, w.label, str(envelope.get("worker", "?")),
                            w.queue, w.submitted, float(envelope.get("started", 0.0)),
                            float(envelope.get("ended", 0.0)),
                            "stored" if envelope.get("repeat") else "ok")
        self._settle(w, value=Ran(value, record))

    def _settle(self, w: _Wait, *, value: Any = None, exc: BaseException | None = None) -> None:
        with self._lock:
            if w not in self._waits:
                return
            self._waits.remove(w)
        if exc is not None:
            w.future.set_exception(exc)
        else:
            w.future.set_result(value)

    def close(self) -> None:
        """Stop waiting (what is still awaited fails as "could not test"). The executor is
        shared by the jobs of this process (make_executor): it starts waiting again at the
        next task."""
        with self._lock:
            thread = self._thread
            self._stop.set()
        if thread is not None:
            thread.join(timeout=10)
        with self._lock:
            waits, self._waits = self._waits, []
            self._thread = None
        for w in waits:
            w.future.set_exception(InfraError(f"{w.label}: the executor was closed"))


_shared: dict[tuple[str, ...], CeleryExecutor] = {}
_shared_lock = threading.Lock()


def shared_executor(config: Config, progress: Progress | None = None) -> CeleryExecutor:
    """One executor (one Celery app and its broker connections) per broker for the whole
    process: `kbot serve` makes one per job otherwise, and keeps their sockets."""
    ex = config.executor
    key = (ex.broker_url, ex.result_backend, str(ex.visibility_timeout_s), str(ex.lease_s),
           str(ex.no_worker_timeout_s), str(artifact_root(config)))
    with _shared_lock:
        executor = _shared.get(key)
        if executor is None:
            executor = _shared[key] = CeleryExecutor(config, progress=progress)
        elif progress is not None:
            executor.progress = progress  # the job running now (one at a time)
        return executor
