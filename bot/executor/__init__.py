"""Where builds and boots run: the executor interface and its two implementations.

A series job or a bisection hands its builds and boots to an `Executor` (bot/executor/base.py)
as typed tasks and gets futures back; the job decides *what* runs and stores every result, the
executor decides *where and when*:

- `LocalExecutor` (bot/executor/local.py), the embedded default: thread pools in this process,
  up to `executor.build_slots` builds and `executor.max_boots` emulators at once. `kbot demo`
  and `kbot test-series` need nothing else.
- `CeleryExecutor` (bot/executor/distributed.py): tasks on Redis-brokered Celery queues
  (`build`, `vm-kvm-vmx`, `vm-kvm-svm`, `vm-tcg`, `vm-bochs`), run by `kbot worker`s that
  probe their host and consume only the queues they can serve (bot/executor/worker.py); the
  coordinator (`kbot serve`, `kbot run-jobs`) still owns the store.

The task bodies both run are in bot/executor/tasks.py.
"""

from bot.executor.base import BootTask, BuildTask, Executor, Ran, TaskRecord, make_executor

__all__ = ["BootTask", "BuildTask", "Executor", "Ran", "TaskRecord", "make_executor"]
