"""`kbot worker`: a stateless Celery worker that builds and boots for a coordinator.

It probes its host (bot.vm.host) and consumes only the queues it can serve:

    build        make and gcc are here (the build sandbox is probed at the first build)
    vm-kvm-vmx   KVM on an Intel CPU with nested=Y (the production backend for VMX tests)
    vm-kvm-svm   KVM on an AMD CPU with nested=1
    vm-tcg       QEMU (TCG emulates SVM anywhere)
    vm-bochs     Bochs and xorriso (Bochs emulates VMX anywhere)

plus, for each VM queue, its own queue (`vm-tcg@NAME`) where a boot of an artifact it already
holds is sent. `--capabilities` overrides the probe: an operator may want a big box to build
only (`--capabilities build`), or keep a KVM host for KVM boots.

It runs at most `--build-slots` builds and `--max-boots` emulators at once (Celery's thread
pool holds one thread per slot and per emulator), renews a lease on each task it runs and its
registry entry (bot/executor/registry.py) every lease_s / 4, and stores each result under its
idempotency token before acknowledging it.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bot import codec
from bot.build.kernel import KernelBuilder
from bot.config import Config
from bot.errors import InfraError, InputError, UserError
from bot.executor import tasks
from bot.executor.base import (
    BUILD_QUEUE,
    QUEUES,
    VM_BOCHS,
    VM_KVM_SVM,
    VM_KVM_VMX,
    VM_QUEUES,
    VM_TCG,
    BootTask,
    BuildTask,
    TaskRecord,
    artifact_root,
    build_slots,
    max_boots,
)
from bot.executor.distributed import BOOT_TASK, BUILD_TASK, celery_app
from bot.executor.registry import Registry, RunningTask, WorkerRecord, worker_queue
from bot.vm.model import HostCaps
from bot.vm.runner import RunOptions

log = logging.getLogger(__name__)


def host_capabilities(host: HostCaps) -> tuple[str, ...]:
    """The queues this host can serve, from the probe."""
    caps = []
    if shutil.which("make") and shutil.which("gcc"):
        caps.append(BUILD_QUEUE)
    if host.qemu and host.kvm_usable and host.vmx and host.nested_vmx:
        caps.append(VM_KVM_VMX)
    if host.qemu and host.kvm_usable and host.svm and host.nested_svm:
        caps.append(VM_KVM_SVM)
    if host.qemu:
        caps.append(VM_TCG)
    if host.bochs and host.xorriso:
        caps.append(VM_BOCHS)
    return tuple(caps)


def parse_capabilities(text: str) -> tuple[str, ...]:
    caps = tuple(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))
    unknown = [c for c in caps if c not in QUEUES]
    if unknown or not caps:
        raise UserError(f"--capabilities {text!r}: name some of {', '.join(QUEUES)}")
    return caps


def describe_host(host: HostCaps) -> str:
    kvm = "KVM usable" if host.kvm_usable else f"no KVM ({host.kvm_detail})"
    return (f"{host.cpu_vendor or '?'} {host.cpu_model or '?'}, {host.cpus} CPUs, {kvm}, "
            f"nested vmx={'Y' if host.nested_vmx else 'N'} svm={'Y' if host.nested_svm else 'N'}"
            f", qemu={'yes' if host.qemu else 'no'}, bochs={'yes' if host.bochs else 'no'}")


@dataclass(frozen=True)
class WorkerOptions:
    name: str
    capabilities: tuple[str, ...]
    build_slots: int
    max_boots: int


def worker_options(config: Config, host: HostCaps, *, name: str = "",
                   capabilities: str = "", slots: int = 0, boots: int = 0) -> WorkerOptions:
    caps = parse_capabilities(capabilities) if capabilities else host_capabilities(host)
    if not caps:
        raise UserError("this host can serve no queue (no make/gcc, QEMU or Bochs found): "
                        "install them or name --capabilities")
    return WorkerOptions(name or socket.gethostname(), caps,
                         (slots or build_slots(config)) if BUILD_QUEUE in caps else 0,
                         (boots or max_boots(config)) if set(caps) & set(VM_QUEUES) else 0)


class Worker:
    """What the Celery tasks of one `kbot worker` process share."""

    def __init__(self, config: Config, options: WorkerOptions, host: HostCaps) -> None:
        self.config = config
        self.options = options
        self.host = host
        self.name = options.name
        self.registry = Registry(config.executor.broker_url, config.executor.lease_s)
        self.root = artifact_root(config)
        self.builder = KernelBuilder.from_config(config)
        self.builder.slots = max(1, options.build_slots)
        # Console logs go to the shared store too, so the coordinator can read them.
        self.vm_options = RunOptions(cache_dir=config.cache_dir,
                                     work_dir=self.root / "vm-runs" / self.name,
                                     memory_mb=config.vm.memory_mb,
                                     boot_timeout_s=config.vm.boot_timeout_s)
        self.slots = {"build": threading.BoundedSemaphore(max(1, options.build_slots)),
                      "boot": threading.BoundedSemaphore(max(1, options.max_boots))}
        self.queues = tuple(options.capabilities) + tuple(
            worker_queue(q, self.name) for q in options.capabilities if q in VM_QUEUES)
        self._lock = threading.Lock()
        self.running: dict[str, RunningTask] = {}
        self.started = time.time()
        self.stop = threading.Event()

    def record(self) -> WorkerRecord:
        with self._lock:
            running = tuple(self.running.values())
        return WorkerRecord(self.name, socket.gethostname(), os.getpid(),
                            self.options.capabilities, self.queues, self.options.build_slots,
                            self.options.max_boots, describe_host(self.host), self.started,
                            time.time(), running)

    def heartbeat(self) -> None:
        """Registry entry and leases, every lease_s / 4, until stopped."""
        while True:
            try:
                self.registry.beat(self.record())
                with self._lock:
                    tokens = list(self.running)
                if tokens:
                    self.registry.renew_leases(tokens, self.name)
            except InfraError as exc:
                log.warning("worker %s: heartbeat: %s", self.name, exc)
            if self.stop.wait(self.config.executor.lease_s / 4):
                return

    def _mark(self, token: str, kind: str, label: str, waiting: bool) -> None:
        with self._lock:
            self.running[token] = RunningTask(token, kind, label, time.time(), waiting)
        self.registry.beat(self.record())

    def _unmark(self, token: str) -> None:
        with self._lock:
            self.running.pop(token, None)
        self.registry.beat(self.record())

    @contextmanager
    def _slot(self, kind: str, token: str, label: str) -> Iterator[None]:
        self._mark(token, kind, label, True)
        with self.slots[kind]:
            self._mark(token, kind, label, False)
            yield

    def execute(self, kind: str, token: str, payload: Any, queue: str = "") -> dict[str, Any]:
        """One task: the stored result of an earlier run, or "elsewhere" when another live
        worker runs it, or run it here and store the result under its token."""
        done = self.registry.get_done(token)
        if done is not None:
            return {**done, "repeat": True}
        holder = self.registry.take_lease(token, self.name)
        if holder is not None:
            return {"status": "elsewhere", "worker": holder}
        label = str(payload.get("label", "")) if isinstance(payload, dict) else ""
        try:
            with self._slot(kind, token, label):
                started = time.time()
                value, artifact = self._run(kind, payload)
                ended = time.time()
            envelope = {"status": "ok", "kind": kind, "value": value, "worker": self.name,
                        "store_root": str(self.root), "started": started, "ended": ended}
            # Before the result shows: the coordinator may send the next boot of this
            # artifact at once, and should see that this worker holds it and has room.
            if artifact:
                self.registry.hold(self.name, artifact)
            self._unmark(token)
            self.registry.put_done(token, envelope)
            self.registry.record(TaskRecord(kind, token, label, self.name, queue, started,
                                            started, ended, "ok"))
            return envelope
        except (InfraError, InputError) as exc:
            # Could not run it here (a missing artifact, a sandbox that will not start): the
            # coordinator's job says "could not test" for it; nothing is stored.
            return {"status": "error", "error_kind": "infra", "error": str(exc),
                    "worker": self.name}
        except UserError as exc:
            return {"status": "error", "error_kind": "user", "error": str(exc),
                    "worker": self.name}
        finally:
            with self._lock:
                self.running.pop(token, None)
            try:
                self.registry.drop_lease(token, self.name)
            except InfraError as exc:
                log.warning("worker %s: %s", self.name, exc)

    def _run(self, kind: str, payload: Any) -> tuple[Any, str]:
        if kind == "build":
            build = codec.load(BuildTask, payload, "build task")
            result = tasks.build(self.builder, build)
            return codec.dump(result), result.key if result.status.value != "error" else ""
        boot = codec.load(BootTask, payload, "boot task")
        kernel, selftests = tasks.artifact_files(self.builder.store, boot)
        runs = tasks.boot(boot, self.host, self.vm_options, kernel=kernel, selftests=selftests)
        return codec.dump(runs), boot.artifact


def run_worker(config: Config, options: WorkerOptions, host: HostCaps) -> int:
    """Serve until SIGTERM/SIGINT (Celery's warm shutdown: running tasks finish first)."""
    worker = Worker(config, options, host)
    worker.registry.ping()
    app = celery_app(config)

    def queue_of(task: Any) -> str:
        info = getattr(task.request, "delivery_info", None) or {}
        return str(info.get("routing_key") or "")

    @app.task(name=BUILD_TASK, bind=True)  # type: ignore[untyped-decorator]
    def build_task(self: Any, token: str, payload: Any) -> dict[str, Any]:
        return worker.execute("build", token, payload, queue_of(self))

    @app.task(name=BOOT_TASK, bind=True)  # type: ignore[untyped-decorator]
    def boot_task(self: Any, token: str, payload: Any) -> dict[str, Any]:
        return worker.execute("boot", token, payload, queue_of(self))

    beat = threading.Thread(target=worker.heartbeat, name="kbot-worker-beat", daemon=True)
    beat.start()
    concurrency = max(1, options.build_slots + options.max_boots)
    celery_worker = app.Worker(
        hostname=f"{options.name}@{socket.gethostname()}", queues=list(worker.queues),
        concurrency=concurrency, pool_cls="threads", loglevel="WARNING", quiet=True,
        without_gossip=True, without_mingle=True, optimization="fair",
    )
    log.info("worker %s: serving %s (%d build slot(s), %d emulator(s))", options.name,
             ", ".join(worker.queues), options.build_slots, options.max_boots)
    try:
        celery_worker.start()
    finally:
        worker.stop.set()
        beat.join(timeout=5)
        try:
            worker.registry.remove(options.name)
        except InfraError as exc:
            log.warning("worker %s: %s", options.name, exc)
    code: int = celery_worker.exitcode or 0
    return code
