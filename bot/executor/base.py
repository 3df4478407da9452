"""The executor interface: typed build and boot tasks in, futures of typed results out.

A task says everything needed to run it somewhere else (a worker on another machine gets it as
JSON through bot.codec) and carries an idempotency token:

- a build: (tree id, config fingerprint, parent) — the same tree with the same config is the
  same build wherever it runs; the content-addressed artifact store makes a repeat a lookup;
- a boot: (job, artifact, plan, queue, round) — a resumed or redelivered boot returns the
  result the first run stored instead of booting again. Boots are scoped to their job: two
  series that share a base each get their own runs (the verdict treats runs as independent).

Futures resolve to `Ran(value, record)`: the value, and a TaskRecord saying where and when it
ran (the job keeps them as its timeline: bench/time_to_report.py and the overlap tests read it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from bot.build.kernel import BuildResult
from bot.config import Config
from bot.vm.model import Backend, HostCaps, TestRun
from bot.vm.plan import Requires, TestPlan, TestSet, choose_backend

if TYPE_CHECKING:
    from bot.vm.runner import RunOptions

BUILD_QUEUE = "build"
VM_KVM_VMX = "vm-kvm-vmx"
VM_KVM_SVM = "vm-kvm-svm"
VM_TCG = "vm-tcg"
VM_BOCHS = "vm-bochs"
QUEUES = (BUILD_QUEUE, VM_KVM_VMX, VM_KVM_SVM, VM_TCG, VM_BOCHS)
VM_QUEUES = QUEUES[1:]
QUEUE_BACKEND = {VM_KVM_VMX: Backend.QEMU_KVM, VM_KVM_SVM: Backend.QEMU_KVM,
                 VM_TCG: Backend.QEMU_TCG, VM_BOCHS: Backend.BOCHS}

T = TypeVar("T")
Progress = Callable[[str], None]
# bot.vm.runner.run_plan's shape: the fault suites hand in a fake VM with the same signature.
RunPlan = Callable[..., list[TestRun]]


def cores() -> int:
    return os.cpu_count() or 1


def max_boots(config: Config) -> int:
    """Emulators at once: executor.max_boots, 0 = one per core (an emulator keeps one busy)."""
    return config.executor.max_boots or cores()


def build_slots(config: Config) -> int:
    """Builds at once: executor.build_slots, 0 = one per 4 cores. A build runs make -jN over
    every core, so a second slot pays only where cores are left over (and costs a worktree
    and an O= directory, a few GB for a real kernel)."""
    return config.executor.build_slots or max(1, cores() // 4)


def artifact_root(config: Config) -> Path:
    """The content-addressed artifact store every worker reads and writes."""
    if config.executor.artifact_dir:
        return config.resolve(config.executor.artifact_dir)
    return config.cache_dir / "build"


@dataclass(frozen=True)
class TaskRecord:
    """Where and when one task ran (time.time() seconds)."""

    kind: str  # build | boot
    token: str
    label: str  # "c2 build", "c1 r1 vm-tcg": what the job calls it
    worker: str  # "local" or the worker's name
    queue: str
    submitted: float
    started: float
    ended: float
    status: str  # ok | error | stored (a repeat answered from what a first run stored)

    @property
    def seconds(self) -> float:
        return max(0.0, self.ended - self.started)


@dataclass(frozen=True)
class Ran(Generic[T]):
    value: T
    record: TaskRecord


@dataclass(frozen=True)
class BuildTask:
    repo: Path  # must be reachable at this path by the worker that builds it
    sha: str
    tree_id: str
    config_fingerprint: str  # the worker refuses a task built with another config
    parent: BuildResult | None = None  # new warnings are counted against it
    label: str = ""

    @property
    def token(self) -> str:
        parent = self.parent.rev if self.parent is not None else "-"
        return f"build:{self.tree_id}:{self.config_fingerprint}:{parent}"


@dataclass(frozen=True)
class BootRoute:
    """One emulator's share of a plan: the sets that go to one queue (and backend)."""

    queue: str
    backend: Backend
    reason: str
    sets: tuple[str, ...]
    forced: bool = False  # the job named the backend (--backend / vm.backend)


@dataclass(frozen=True)
class BootTask:
    scope: str  # the job this boot belongs to
    artifact: str  # the build's artifact store key
    kernel: Path  # on the coordinator; a worker finds the files by `artifact`
    selftests: Path
    plan: TestPlan  # cut to the route's sets
    route: BootRoute
    round: int
    label: str = ""

    @property
    def token(self) -> str:
        return (f"boot:{self.scope}:{self.artifact[:24]}:{self.plan.name}:{self.route.queue}"
                f":r{self.round}")


class Executor(Protocol):
    """Runs build and boot tasks somewhere; see the module docstring."""

    name: str

    def routes(self, plan: TestPlan, forced: Backend | None) -> list[BootRoute]:
        """How a boot of `plan` splits into emulator runs, and where each goes."""
        ...

    def build(self, task: BuildTask) -> Future[Ran[BuildResult]]: ...

    def boot(self, task: BootTask) -> Future[Ran[tuple[TestRun, ...]]]: ...

    def close(self) -> None: ...


def queue_for(backend: Backend, requires: Requires) -> str:
    if backend is Backend.QEMU_TCG:
        return VM_TCG
    if backend is Backend.BOCHS:
        return VM_BOCHS
    return VM_KVM_SVM if requires is Requires.SVM else VM_KVM_VMX


def group_routes(choices: list[tuple[TestSet, str, Backend, str]],
                 forced: bool) -> list[BootRoute]:
    """(set, queue, backend, reason) per set -> one route per queue, in plan order."""
    routes: dict[tuple[str, Backend], BootRoute] = {}
    for s, queue, backend, reason in choices:
        r = routes.get((queue, backend))
        if r is None:
            routes[(queue, backend)] = BootRoute(queue, backend, reason, (s.name,), forced)
        else:
            routes[(queue, backend)] = BootRoute(queue, backend, f"{r.reason}; {reason}",
                                                 (*r.sets, s.name), forced)
    return list(routes.values())


def host_routes(plan: TestPlan, host: HostCaps, forced: Backend | None) -> list[BootRoute]:
    """Routes on one host: the backend each set gets from the host probe (bot.vm.plan)."""
    choices = []
    for s in plan.sets:
        c = choose_backend(s, host, forced)
        choices.append((s, queue_for(c.backend, s.requires), c.backend, c.reason))
    return group_routes(choices, forced is not None)


def cut_plan(plan: TestPlan, sets: tuple[str, ...]) -> TestPlan:
    """The plan with only `sets` (same name: a run says which plan it belongs to)."""
    return TestPlan(plan.name, plan.description, tuple(s for s in plan.sets if s.name in sets),
                    plan.source)


def make_executor(config: Config, *, host: HostCaps | None = None,
                  run_plan: RunPlan | None = None, options: RunOptions | None = None,
                  progress: Progress | None = None) -> Executor:
    """The configured executor: local threads, or Celery workers (executor.kind)."""
    if config.executor.kind == "celery":
        from bot.executor.distributed import shared_executor  # loads celery only when asked

        return shared_executor(config, progress)
    from bot.executor.local import LocalExecutor

    return LocalExecutor(config, host=host, run_plan=run_plan, options=options,
                         progress=progress)
