"""The bodies of the two tasks, the same in this process (LocalExecutor) and on a worker.

`run_plan` and `probe` are looked up here at call time, so the fault suites' fake VM
(tests/faults/fake_vm_kbot.py) replaces them for `kbot worker` exactly as for a series job.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bot.build.kernel import BuildResult, KernelBuilder
from bot.build.store import ArtifactStore
from bot.errors import InfraError
from bot.executor.base import BootTask, BuildTask, Progress, RunPlan, cut_plan
from bot.vm.host import probe as _probe
from bot.vm.model import HostCaps, TestRun
from bot.vm.runner import RunOptions
from bot.vm.runner import run_plan as _run_plan

run_plan: RunPlan = _run_plan
probe = _probe


def build(builder: KernelBuilder, task: BuildTask,
          progress: Progress | None = None) -> BuildResult:
    if task.config_fingerprint != builder.config_fingerprint:
        # Another kernel config (fragments, base) on this worker would build something else
        # under the same name: refuse, so the task runs where the configs agree.
        raise InfraError(f"build {task.sha[:12]}: this worker's kernel config "
                         f"{builder.config_fingerprint} is not the job's "
                         f"{task.config_fingerprint}")
    return builder.build(task.repo, task.sha, parent=task.parent, progress=progress)


def boot(task: BootTask, host: HostCaps, options: RunOptions, *,
         kernel: Path | None = None, selftests: Path | None = None,
         runner: RunPlan | None = None, progress: Progress | None = None
         ) -> tuple[TestRun, ...]:
    """Boot the task's kernel once on its route's backend and run its cut of the plan."""
    fn = runner if runner is not None else run_plan
    plan = cut_plan(task.plan, task.route.sets)
    runs = fn(kernel or task.kernel, selftests or task.selftests, plan, task.route.backend,
              host, options=options, progress=progress)
    if task.route.forced:
        return tuple(runs)
    # The plan was split by route and each part run with its backend named: say why that
    # backend (the route's reason), not "--backend given".
    return tuple(dataclasses.replace(r, backend_reason=task.route.reason)
                 if r.backend_reason == f"--backend {r.backend.value} given" else r
                 for r in runs)


def artifact_files(store: ArtifactStore, task: BootTask) -> tuple[Path, Path]:
    """The task's kernel and selftests in this machine's view of the shared store."""
    entry = store.entry_dir(task.artifact)
    kernel, selftests = entry / task.kernel.name, entry / task.selftests.name
    if not kernel.is_file() or not selftests.is_dir():
        raise InfraError(f"artifact {task.artifact[:16]} is not in the store at {store.root} "
                         "(is executor.artifact_dir the same shared folder on every worker?)")
    return kernel, selftests
