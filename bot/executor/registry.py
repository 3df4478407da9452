"""The worker registry, task leases and stored task results, in the broker's Redis.

Keys (all under `kbot:`, each with a time to live so a dead worker's entries go by themselves):

- `worker:<name>`: one registered worker (WorkerRecord JSON), renewed every lease_s / 4;
  `workers` is the set of names ever seen (a name whose record expired is gone);
- `lease:<token>`: the worker running the task with that idempotency token, renewed while it
  runs. A lease that lapses before the task's result is stored means its worker died: the
  coordinator sends the task again (bot/executor/distributed.py);
- `done:<token>`: the result of a task that finished (its envelope): a repeat of the task (a
  redelivery after a crash, a resumed job) returns it instead of running again;
- `held:<name>`: the artifacts a worker built or booted lately (a sorted set by time): a boot
  of one of them goes to that worker when it has room;
- `history`: the last HISTORY task records (TaskRecord JSON), newest first: `kbot workers`
  shows them, and the tests read the overlap of tasks from them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from bot import codec
from bot.errors import InfraError, InputError
from bot.executor.base import TaskRecord

PREFIX = "kbot:"
HISTORY = 1000
HELD = 200  # artifacts remembered per worker
DONE_TTL_S = 7 * 86400
REDIS_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RunningTask:
    token: str
    kind: str  # build | boot
    label: str
    since: float
    waiting: bool = False  # taken, but waiting for a free build slot or emulator


@dataclass(frozen=True)
class WorkerRecord:
    name: str
    host: str
    pid: int
    capabilities: tuple[str, ...]  # what it offers: build, vm-tcg, ...
    queues: tuple[str, ...]  # what it consumes (its capabilities and its own boot queues)
    build_slots: int
    max_boots: int
    probed: str  # one line: what the host probe saw
    started: float
    beat: float
    running: tuple[RunningTask, ...] = ()

    def busy(self, kind: str) -> int:
        return sum(1 for t in self.running if t.kind == kind)


def worker_queue(queue: str, worker: str) -> str:
    """The queue only `worker` consumes, for boots of artifacts it already holds."""
    return f"{queue}@{worker}"


class Registry:
    def __init__(self, url: str, lease_s: float) -> None:
        self.url = url
        self.lease_s = lease_s
        self.db = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                                       socket_connect_timeout=REDIS_TIMEOUT_S,
                                       decode_responses=True)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise InfraError(f"broker {self.url}: {what}: {exc}") from exc

    def ping(self) -> None:
        self._call("ping", self.db.ping)

    # -- workers ---------------------------------------------------------------------------

    def beat(self, record: WorkerRecord) -> None:
        ttl = max(1, int(self.lease_s + 0.999))
        pipe = self.db.pipeline()
        pipe.set(f"{PREFIX}worker:{record.name}", json.dumps(codec.dump(record)), ex=ttl)
        pipe.sadd(f"{PREFIX}workers", record.name)
        pipe.expire(f"{PREFIX}held:{record.name}", DONE_TTL_S)
        self._call("worker heartbeat", pipe.execute)

    def remove(self, name: str) -> None:
        self._call("unregister", self.db.delete, f"{PREFIX}worker:{name}")

    def workers(self) -> list[WorkerRecord]:
        names = sorted(self._call("list workers", self.db.smembers, f"{PREFIX}workers"))
        if not names:
            return []
        raws = self._call("read workers", self.db.mget, [f"{PREFIX}worker:{n}" for n in names])
        out = []
        for name, raw in zip(names, raws, strict=True):
            if raw is None:
                self._call("forget worker", self.db.srem, f"{PREFIX}workers", name)
                continue
            try:
                out.append(codec.load(WorkerRecord, json.loads(raw), f"worker {name}"))
            except (InputError, ValueError):
                continue  # written by another kbot version: not ours to route to
        return out

    def alive(self, name: str) -> bool:
        return bool(self._call("worker alive", self.db.exists, f"{PREFIX}worker:{name}"))

    # -- leases and results ----------------------------------------------------------------

    def take_lease(self, token: str, worker: str) -> str | None:
        """Take the task's lease; None when taken, else the live worker that holds it."""
        key = f"{PREFIX}lease:{token}"
        ttl = max(1, int(self.lease_s + 0.999))
        if self._call("take lease", self.db.set, key, worker, nx=True, ex=ttl):
            return None
        holder = self._call("read lease", self.db.get, key)
        if holder is None or holder == worker or not self.alive(holder):
            self._call("take lease", self.db.set, key, worker, ex=ttl)
            return None
        return str(holder)

    def renew_leases(self, tokens: Sequence[str], worker: str) -> None:
        ttl = max(1, int(self.lease_s + 0.999))
        pipe = self.db.pipeline()
        for token in tokens:
            pipe.set(f"{PREFIX}lease:{token}", worker, ex=ttl)
        self._call("renew leases", pipe.execute)

    def drop_lease(self, token: str, worker: str) -> None:
        key = f"{PREFIX}lease:{token}"
        if self._call("read lease", self.db.get, key) == worker:
            self._call("drop lease", self.db.delete, key)

    def lease_holder(self, token: str) -> str | None:
        holder = self._call("read lease", self.db.get, f"{PREFIX}lease:{token}")
        return str(holder) if holder is not None else None

    def put_done(self, token: str, envelope: dict[str, Any]) -> None:
        self._call("store result", self.db.set, f"{PREFIX}done:{token}", json.dumps(envelope),
                   ex=DONE_TTL_S)

    def get_done(self, token: str) -> dict[str, Any] | None:
        raw = self._call("read result", self.db.get, f"{PREFIX}done:{token}")
        if raw is None:
            return None
        data = json.loads(raw)
        return data if isinstance(data, dict) else None

    # -- artifacts and history -------------------------------------------------------------

    def hold(self, worker: str, artifact: str) -> None:
        key = f"{PREFIX}held:{worker}"
        pipe = self.db.pipeline()
        pipe.zadd(key, {artifact: time.time()})
        pipe.zremrangebyrank(key, 0, -HELD - 1)
        pipe.expire(key, DONE_TTL_S)
        self._call("hold artifact", pipe.execute)

    def holds(self, worker: str, artifact: str) -> bool:
        return self._call("held artifact", self.db.zscore, f"{PREFIX}held:{worker}",
                          artifact) is not None

    def record(self, rec: TaskRecord) -> None:
        pipe = self.db.pipeline()
        pipe.lpush(f"{PREFIX}history", json.dumps(codec.dump(rec)))
        pipe.ltrim(f"{PREFIX}history", 0, HISTORY - 1)
        self._call("record task", pipe.execute)

    def history(self, limit: int = HISTORY) -> list[TaskRecord]:
        raws = self._call("read history", self.db.lrange, f"{PREFIX}history", 0, limit - 1)
        out = []
        for raw in raws:
            try:
                out.append(codec.load(TaskRecord, json.loads(raw), "task record"))
            except (InputError, ValueError):
                continue
        return out
