"""Time from a series landing in the archive to its report, broken down by stage.

    .venv/bin/python bench/time_to_report.py [--world fake|kernel] [--cold] [--executor K]
                                             [--vm-seconds S] [--json]

A loopback public-inbox gets the series (the clock starts when the last mail is in the
archive); kbot watches the list once, runs the job and writes its reports (the clock stops
when the last report is delivered). Printed per job: intake (archive -> job recorded), queue
wait, apply, each build, each boot (where it ran, how long), judge, report, total; and the VM
stage: its wall time (first emulator start -> last emulator end) against emulator-seconds /
cores, the figure a perfect packing of emulators onto this machine's cores would reach.
Emulator-seconds are each emulator's wall time: an emulator keeps one thread busy (QEMU TCG's
vCPU, Bochs), so that is its CPU time when it is not starved.

Worlds:
- fake: the fault suite's world (tests/faults/pipeline_world.py: fake kernel tree with real
  make/gcc, fake VM whose boots take --vm-seconds each, both backends). Seconds; shows what
  kbot itself adds and how well boots are packed.
- kernel: Debian's linux-source-6.1 and a new 4-patch series (the demo's four patches plus a
  run id in a comment, so every tree is new), real QEMU TCG + Bochs boots. Warm (default):
  the build slot and the artifact store of the cache dir already hold the base; --cold: a
  fresh cache dir (one cold build, about 5 minutes on 2 cores). Takes the machine: run it
  under `flock /var/tmp/kbot-heavy.lock`.

Targets (issue 12, this 2-core machine): warm (new series, 4 patches, both backends) <= 45 s;
VM-stage wall <= 1.2 x emulator-seconds / cores; cold <= one cold build + 60 s.
Nothing passes or fails: it prints figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bot import codec  # noqa: E402
from bot.executor.base import TaskRecord  # noqa: E402
from bot.state import Store  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Breakdown:
    job: int
    title: str
    total_s: float
    stages: tuple[tuple[str, str, float], ...]  # (stage, where, seconds)
    vm_wall_s: float
    emulator_s: float
    cores: int

    @property
    def vm_ratio(self) -> float:
        """VM-stage wall against a perfect packing (1.0) of emulators onto the cores."""
        return self.vm_wall_s / (self.emulator_s / self.cores) if self.emulator_s else 0.0


def breakdown(store: Store, job_id: int, landed: float, cores: int) -> Breakdown:
    job = store.get_job(job_id)
    assert job is not None
    records = [r for s in store.steps(job_id, "timeline")
               for r in codec.load(tuple[TaskRecord, ...], s.data["tasks"])]
    reports = store.reports_for_job(job_id)
    done = max((r.sent_at or r.updated_at for r in reports), default=job.updated_at)
    stages: list[tuple[str, str, float]] = [("intake (archive -> job)", "coordinator",
                                             job.created_at - landed)]
    apply = next((r for r in records if r.label == "apply"), None)
    if apply is not None:
        stages.append(("queue wait", "coordinator", apply.started - job.created_at))
    for r in records:
        if r.kind == "stage":
            stages.append((r.label, r.worker, r.seconds))
        else:
            stages.append((r.label, r.worker, r.seconds))
    judge = next((r for r in records if r.label == "judge"), None)
    if judge is not None and reports:
        stages.append(("report", "coordinator", done - judge.ended))
    boots = [r for r in records if r.kind == "boot"]
    wall = (max(r.ended for r in boots) - min(r.started for r in boots)) if boots else 0.0
    title = str(job.detail.get("title", "")) or f"job {job_id}"
    series = store.get_series(job.series_id) if job.series_id is not None else None
    if series is not None:
        title = series.title
    return Breakdown(job_id, title, done - landed, tuple(stages), wall,
                     sum(r.seconds for r in boots), cores)


def show(b: Breakdown) -> None:
    print(f"\njob {b.job}: {b.title}")
    for stage, where, seconds in b.stages:
        print(f"  {stage:<28} {where:<12} {seconds:8.2f} s")
    print(f"  {'total (archive -> report)':<28} {'':<12} {b.total_s:8.2f} s")
    if b.emulator_s:
        print(f"  VM stage: wall {b.vm_wall_s:.1f} s, emulator-seconds {b.emulator_s:.1f} s "
              f"/ {b.cores} cores = {b.emulator_s / b.cores:.1f} s: "
              f"{b.vm_ratio:.2f}x a perfect packing (target <= 1.2x)")


# -- the fake world ----------------------------------------------------------------------------

def fake_world(args: argparse.Namespace) -> list[Breakdown]:
    from bot.intake.local_inbox import LocalInbox
    from tests.faults.pipeline_world import make_world, run_kbot
    from tests.fixtures.smtp import SmtpSink, free_port

    root = Path(tempfile.mkdtemp(prefix="kbot-ttr-"))
    inbox = LocalInbox(root / "public-inbox", ("kvm",))
    smtp = SmtpSink(port=free_port())
    inbox.start()
    smtp.start()
    lab: Any = None
    try:
        world = make_world(root / "world", inbox, smtp)
        landed = time.time()
        with world.config.open("a", encoding="utf-8") as fh:
            fh.write(f'\n[executor]\nkind = "{args.executor}"\n')
        if args.executor == "celery":
            lab = start_lab(world, root, args.vm_seconds)
        state = root / "state"
        res = run_kbot(world, state, ["watch", "--once", "--run-jobs"],
                       vm_seconds=args.vm_seconds)
        if res.returncode not in (0, 1):
            raise SystemExit(f"kbot failed: {res.describe()}")
        with Store.in_state_dir(state) as store:
            return [breakdown(store, j.id, landed, os.cpu_count() or 1) for j in store.jobs()]
    finally:
        if lab is not None:
            lab()
        smtp.stop()
        inbox.stop()


def start_lab(world: Any, root: Path, vm_seconds: float) -> Any:
    """redis-server and one `kbot worker` serving everything; returns the stop function."""
    from bot.executor.registry import Registry
    from tests.executor.lab import RedisServer, start_worker

    server = RedisServer(root / "redis").start()
    text = world.config.read_text(encoding="utf-8").replace(
        '[executor]\nkind = "celery"\n',
        f'[executor]\nkind = "celery"\nbroker_url = "{server.url}"\n')
    world.config.write_text(text, encoding="utf-8")
    worker = start_worker(world, Registry(server.url, 20.0), "all", "build,vm-tcg,vm-bochs",
                          vm_seconds=vm_seconds, log_dir=root)

    def stop() -> None:
        worker.stop()
        server.stop()

    return stop


# -- the real kernel ---------------------------------------------------------------------------

def kernel_world(args: argparse.Namespace) -> list[Breakdown]:
    from bot.config import load_config
    from bot.intake.client import ArchiveClient
    from bot.intake.local_inbox import serve_mbox
    from bot.intake.watcher import watch_once
    from bot.pipeline import demo
    from bot.pipeline.runner import run_queued
    from bot.tree.kernel_source import ensure_kernel_source

    root = Path(tempfile.mkdtemp(prefix="kbot-ttr-kernel-"))
    config = load_config(demo.DEMO_CONFIG)
    cache = Path(args.cache_dir) if args.cache_dir else config.cache_dir
    if args.cold:
        cache = root / "cache"
    config = dataclasses.replace(
        config, bot=dataclasses.replace(config.bot, state_dir=str(root / "state"),
                                        cache_dir=str(cache)),
        executor=dataclasses.replace(config.executor, kind=args.executor))
    src = ensure_kernel_source(config.cache_dir)
    # The demo's four patches, with a run id in the first one's comment: every tree is new.
    run_id = f"kbot time_to_report run {time.time_ns()}"
    first = demo.DEMO_PATCHES[0]
    patches = ((first[0], first[1], {**first[2], "arch/x86/kvm/ioapic.c":
                                     lambda text: text + f"/* {run_id} */\n"}),
               *demo.DEMO_PATCHES[1:])
    old = demo.DEMO_PATCHES
    demo.DEMO_PATCHES = patches
    try:
        mbox = root / "series.mbox"
        mbox.write_bytes(demo.demo_series_mbox(src.path, src.base_sha))
    finally:
        demo.DEMO_PATCHES = old
    if not args.cold:
        # Warm: the base is in the artifact store (as for every series after the first on a
        # tree) and the slot holds a build of it; not counted.
        from bot.build.kernel import KernelBuilder

        base = KernelBuilder.from_config(config).build(src.path, src.base_sha)
        print(f"  warm-up: base {base.summary()}", file=sys.stderr)
    inbox = serve_mbox(root / "inbox", [mbox], "kvm")
    landed = time.time()
    try:
        config = dataclasses.replace(
            config, archive=dataclasses.replace(config.archive, base_url=inbox.base_url),
            report=dataclasses.replace(config.report, archive_url=inbox.list_url("kvm")))
        with Store.in_state_dir(config.state_dir) as store, \
                ArchiveClient(config.archive) as client:
            watch_once(config, store, client)
            run_queued(config, store, progress=lambda line: print(f"  kbot: {line}",
                                                                  file=sys.stderr))
            return [breakdown(store, j.id, landed, os.cpu_count() or 1) for j in store.jobs()]
    finally:
        inbox.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", choices=("fake", "kernel"), default="fake")
    ap.add_argument("--executor", choices=("local", "celery"), default="local")
    ap.add_argument("--vm-seconds", type=float, default=3.0,
                    help="fake world: how long each fake emulator run takes")
    ap.add_argument("--cold", action="store_true", help="kernel world: a fresh cache dir")
    ap.add_argument("--cache-dir", default="", help="kernel world: the (warm) cache dir")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    started = time.time()
    results = fake_world(args) if args.world == "fake" else kernel_world(args)
    if args.json:
        print(json.dumps([{**dataclasses.asdict(b), "vm_ratio": b.vm_ratio} for b in results],
                         indent=1))
        return 0
    print(f"time_to_report: world={args.world} executor={args.executor} "
          f"cores={os.cpu_count()} ({time.time() - started:.0f} s in all)")
    for b in results:
        show(b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
