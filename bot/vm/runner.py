"""Run a test plan against one kernel: choose backends, build images, boot, parse.

    run_plan(kernel, selftests, plan, backend=None, host=None, *, options=None, progress=None)
        -> list[TestRun]

returns one TestRun per backend used (on a host without usable KVM: QEMU TCG for the SVM set,
Bochs for the VMX set), booted in parallel. Every emulator runs in its own process group (via
bot.proc) under a watchdog that follows init's markers on the console: no INIT within the boot
limit, a test past its own timeout (scaled for slow emulated clocks) plus a grace, or the whole
plan's budget used up, and the group is killed: the run is a HANG, or a BOOT_FAILURE when init
never started. Nothing outlives the call.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from bot import proc
from bot.config import Config, load_config
from bot.errors import InfraError, UserError
from bot.vm import parse
from bot.vm.backends import BackendImpl, Launch, backend_impl
from bot.vm.console import strip_console
from bot.vm.host import probe
from bot.vm.image import GuestTest, build_initramfs, find_selftest, guest_tests
from bot.vm.model import Backend, GuestInfo, HostCaps, Outcome, RunStatus, TestResult, TestRun
from bot.vm.plan import LimitAction, TestPlan, TestSet, choose_backend

log = logging.getLogger(__name__)

HARD_LIMIT_MARGIN_S = 30.0
TEST_GRACE_S = 20.0  # past a test's own (scaled) timeout: the guest itself is stuck
BETWEEN_TESTS_S = 30.0  # from one marker to the next BEGIN, or from DONE to power-off
POLL_S = 0.2
MAX_CONSOLE_BYTES = 32 * 1024 * 1024
MAX_RUN_DIRS = 200

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RunOptions:
    cache_dir: Path  # guest images and ISOs, cached by content
    work_dir: Path  # one folder per boot: console.log, emulator.log, bochsrc
    memory_mb: int = 1024
    boot_timeout_s: float = 120.0
    parallel: bool = True


@dataclass(frozen=True)
class _Group:
    backend: Backend
    reason: str
    sets: tuple[TestSet, ...]


def hard_limit(impl: BackendImpl, tests: Sequence[GuestTest], boot_timeout_s: float) -> float:
    """Wall seconds before the emulator is killed: boot + every test's budget, scaled for
    emulated clocks that run slower than the wall clock, plus a margin for power-off."""
    budget = sum(t.timeout_s * t.repetitions for t in tests)
    return boot_timeout_s + budget * impl.slowdown + HARD_LIMIT_MARGIN_S


def _groups(plan: TestPlan, host: HostCaps, forced: Backend | None) -> list[_Group]:
    groups: dict[Backend, _Group] = {}
    for s in plan.sets:
        choice = choose_backend(s, host, forced)
        g = groups.get(choice.backend)
        if g is None:
            groups[choice.backend] = _Group(choice.backend, choice.reason, (s,))
        else:
            groups[choice.backend] = replace(g, sets=(*g.sets, s),
                                             reason=f"{g.reason}; {choice.reason}")
    return list(groups.values())


class _Watch:
    """Follows init's markers in the growing console file while the emulator runs, reports
    progress, and says when the guest is overdue: no INIT within the boot limit, a test past
    its own timeout (scaled for slow emulated clocks) plus a grace, no power-off after DONE."""

    _MARK = re.compile(r"^kbot: (INIT|BEGIN|END|DONE)\b(.*)$")
    _TIMEOUT = re.compile(r"\btimeout=(\d+)")
    _TEST = re.compile(r"\btest=(\S+)")

    def __init__(self, path: Path, label: str, progress: Progress | None, boot_timeout_s: float,
                 slowdown: float) -> None:
        self.path, self.label, self.progress = path, label, progress
        self.slowdown = slowdown
        self.pos = 0
        self.pending = b""
        self.stage = "boot"
        self.deadline = time.monotonic() + boot_timeout_s

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.pos)
                data = f.read(1 << 20)
        except OSError:
            return
        self.pos += len(data)
        *lines, self.pending = (self.pending + data).split(b"\n")
        for raw in lines:
            # anchored after the timestamp: a test printing "kbot: END" cannot fake a marker
            m = self._MARK.match(strip_console(raw.decode("utf-8", "replace")))
            if m is None:
                continue
            kind, rest = m.group(1), m.group(2)
            now = time.monotonic()
            if kind == "BEGIN" and (t := self._TIMEOUT.search(rest)):
                name = self._TEST.search(rest)
                self.stage = f"test {name.group(1) if name else '?'}"
                self.deadline = now + int(t.group(1)) * self.slowdown + TEST_GRACE_S
            else:
                self.stage = kind.lower()
                self.deadline = now + BETWEEN_TESTS_S
            if self.progress is not None and kind != "BEGIN":
                self.progress(f"[{self.label}] {kind}{rest}")

    def overdue(self) -> bool:
        return time.monotonic() > self.deadline


def _run_dir(work_dir: Path, backend: Backend) -> Path:
    work_dir.mkdir(parents=True, exist_ok=True)
    old = sorted((p for p in work_dir.iterdir() if p.is_dir()), key=lambda p: p.name)
    for p in old[: max(0, len(old) - MAX_RUN_DIRS)]:
        shutil.rmtree(p, ignore_errors=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    d = work_dir / f"{stamp}-{backend.value}-{os.getpid()}-{threading.get_ident() % 100000}"
    d.mkdir()
    return d


def _excluded_results(group: _Group, present: set[str]) -> list[TestResult]:
    out: list[TestResult] = []
    for s in group.sets:
        for t in s.tests:
            lim = s.limit_for(group.backend, t.name)
            if lim is not None and lim.action is LimitAction.EXCLUDE and t.name not in present:
                out.extend(TestResult(t.name, r, Outcome.NOT_RUN, None, None,
                                      skip_reason=f"excluded on {group.backend.value}",
                                      known_limit=lim.reason)
                           for r in range(1, t.repetitions + 1))
    return out


@dataclass(frozen=True)
class _Emulated:
    returncode: int | None
    killed: bool
    kill_reason: str
    duration_s: float


def _emulate(launch: Launch, run_dir: Path, limit: float, boot_timeout_s: float,
             slowdown: float, label: str, progress: Progress | None) -> _Emulated:
    """Run the emulator until it exits or the guest is overdue; then kill its process group."""
    watch = _Watch(launch.console, label, progress, boot_timeout_s, slowdown)
    start = time.monotonic()
    log_path = run_dir / "emulator.log"
    log_path.write_text(f"$ {' '.join(launch.argv)}\n")
    bg = proc.start_background(launch.argv, ready=lambda: True, ready_timeout=10.0,
                               max_lifetime_s=limit, cwd=run_dir, env=proc.clean_env(),
                               log_path=log_path)
    killed, reason = False, ""
    try:
        while bg.alive():
            watch.poll()
            if watch.overdue():
                killed, reason = True, f"guest overdue in stage {watch.stage}"
                break
            if time.monotonic() - start > limit:
                killed, reason = True, f"hard limit {limit:.0f}s"
                break
            time.sleep(POLL_S)
    finally:
        # Reaps the leader and kills whatever is left in its process group, killed or not.
        rc = bg.stop()
    watch.poll()
    duration = time.monotonic() - start
    with log_path.open("a") as f:
        f.write(f"# exit {rc} after {duration:.1f}s" + (f" (killed: {reason})\n" if killed
                                                          else "\n"))
    return _Emulated(None if killed else rc, killed, reason, duration)


def default_options(config: Config | None = None) -> RunOptions:
    """Options from the [vm] section: images in the cache dir, run folders in the state dir."""
    cfg = config if config is not None else load_config()
    return RunOptions(cache_dir=cfg.cache_dir, work_dir=cfg.state_dir / "vm-runs",
                      memory_mb=cfg.vm.memory_mb, boot_timeout_s=cfg.vm.boot_timeout_s)


def run_group(
    kernel: Path,
    selftests: Path,
    plan: TestPlan,
    group: _Group,
    opts: RunOptions,
    progress: Progress | None = None,
) -> TestRun:
    impl = backend_impl(group.backend)
    entries = [(t.name, t.timeout_s, t.repetitions)
               for s in group.sets for t in s.tests_for(group.backend)]
    wanted = guest_tests(entries)
    binaries = {t.name: p for t in wanted if (p := find_selftest(selftests, t.name)) is not None}
    missing = [t for t in wanted if t.name not in binaries]
    present = [t for t in wanted if t.name in binaries]
    if not present:
        raise UserError(f"none of plan {plan.name}'s tests for {group.backend.value} are in "
                        f"{selftests} (looked for {', '.join(t.name for t in wanted)})")
    image = build_initramfs(binaries, present, opts.cache_dir)
    run_dir = _run_dir(opts.work_dir, group.backend)
    launch = impl.launch(kernel, image, run_dir, opts.cache_dir, opts.memory_mb)
    limit = hard_limit(impl, present, opts.boot_timeout_s)
    if progress is not None:
        progress(f"[{group.backend.value}] booting {kernel} with {len(present)} tests: "
                 f"{group.reason}")
    emulator = _emulate(launch, run_dir, limit, opts.boot_timeout_s, impl.slowdown,
                        group.backend.value, progress)
    try:
        with launch.console.open("rb") as f:
            data = f.read(MAX_CONSOLE_BYTES + 1)
    except OSError:
        data = b""
    truncated = len(data) > MAX_CONSOLE_BYTES
    text = data[:MAX_CONSOLE_BYTES].decode("utf-8", errors="replace")
    parsed = parse.parse_console(text)

    def known_limit(name: str) -> str | None:
        for s in group.sets:
            lim = s.limit_for(group.backend, name)
            if lim is not None and lim.action is LimitAction.EXPECT_FAIL:
                return lim.reason
        return None

    results = list(parse.results(parsed, present, emulator.killed, known_limit))
    results.extend(
        TestResult(t.name, r, Outcome.NOT_RUN, None, None,
                   skip_reason=f"no {t.name} binary in {selftests}")
        for t in missing for r in range(1, t.repetitions + 1)
    )
    results.extend(_excluded_results(group, {t.name for t in present}))
    status, detail = parse.classify(parsed, emulator.killed, emulator.returncode,
                                    impl.clean_exit)
    if emulator.killed:
        detail += f" [{emulator.kill_reason}]"
    elif status is RunStatus.COMPLETED and not impl.clean_exit(emulator.returncode):
        detail += f" (emulator exit {emulator.returncode})"
    run = TestRun(
        backend=group.backend,
        backend_reason=group.reason,
        plan=plan.name,
        sets=tuple(s.name for s in group.sets),
        kernel=kernel,
        status=status,
        status_detail=detail,
        results=tuple(results),
        signatures=parsed.signatures,
        guest=parsed.guest or GuestInfo(),
        command=launch.argv,
        console_log=launch.console,
        emulator_exit=None if emulator.killed else emulator.returncode,
        duration_s=round(emulator.duration_s, 2),
        boot_s=parsed.boot_s,
        console_truncated=truncated,
    )
    if progress is not None:
        progress(f"[{group.backend.value}] {status.value}: {detail} "
                 f"({emulator.duration_s:.1f}s)")
    return run


def run_plan(
    kernel: Path,
    selftests: Path,
    plan: TestPlan,
    backend: Backend | None = None,
    host: HostCaps | None = None,
    *,
    options: RunOptions | None = None,
    progress: Progress | None = None,
) -> list[TestRun]:
    """Boot `kernel` once per backend the plan needs on this host and run its tests.

    `backend=None` picks per set from `host` (probed when None); a Backend forces every set
    onto it (tests the backend cannot run then SKIP in the guest, with their reason).
    """
    if not kernel.is_file():
        raise UserError(f"kernel image {kernel} not found")
    if not selftests.is_dir():
        raise UserError(f"selftests folder {selftests} not found")
    host = host if host is not None else probe()
    options = options if options is not None else default_options()
    if backend is Backend.QEMU_KVM and not host.kvm_usable:
        raise InfraError(f"--backend qemu-kvm: {host.kvm_detail}")
    groups = _groups(plan, host, backend)
    start = time.monotonic()
    if opts_parallel := (options.parallel and len(groups) > 1):
        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            futures = [pool.submit(run_group, kernel, selftests, plan, g, options, progress)
                       for g in groups]
            runs = [f.result() for f in futures]
    else:
        runs = [run_group(kernel, selftests, plan, g, options, progress) for g in groups]
    log.debug("plan %s: %d boots in %.1fs (parallel=%s)", plan.name, len(runs),
              time.monotonic() - start, opts_parallel)
    return runs
