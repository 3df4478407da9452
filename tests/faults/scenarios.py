"""Fault scenarios for the list watcher, and the invariants a store must keep after them.

Reusable outside pytest (bench/faults.py imports this):

- `make_archive(n, seed)`: the mails of n patch series (three authors, 1-5 patches, with and
  without a cover, about one in eight missing a patch for good) and, for each, an
  `ExpectedSeries` naming its mail.
- `check_store(store, expected)`: the watcher's promise, measured on a store: every expected
  series has exactly one test-series job, that job's series holds all of the series' mail, and
  no mail is missing from the store. Pipeline fault suites can call it on their own stores.
- `WatchArchive`: one such archive served by a real public-inbox-httpd behind a `FaultProxy`,
  with the ways to break a poll: SIGKILL a real `kbot watch --once` at its k-th request (plus a
  delay) or at a named failpoint (bot/failpoints.py), or make the proxy fail thread fetches.
- `run_watch_scenarios(n, seed)`: n such faults, each on a fresh store and followed by two
  healthy polls; a `ScenarioResult` per fault with what was injected and what was lost or
  duplicated.
"""

from __future__ import annotations

import enum
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

from bot import proc
from bot.config import Config, load_config
from bot.errors import InfraError
from bot.intake.client import ArchiveClient
from bot.intake.local_inbox import LocalInbox
from bot.intake.watcher import JOB_KIND, watch_once
from bot.state import Store
from tests.faults.fault_proxy import Fault, FaultProxy, Rule, Seen
from tests.fixtures.public_inbox import patch_mail

REPO_ROOT = Path(__file__).resolve().parents[2]
AUTHORS = (
    "Ada Hacker <ada@example.org>",
    "Bo Reviewer <bo@example.org>",
    "Cy Maintainer <cy@example.org>",
)
CHILD_TIMEOUT_S = 120.0
THREAD_PATTERN = r"/t\.mbox\.gz$"
# The watcher's failpoints (bot/intake/watcher.py) and what each one counts.
WATCH_FAILPOINTS = ("watch:stored", "watch:thread", "watch:saved", "watch:settled")


@dataclass(frozen=True)
class ExpectedSeries:
    """One series as sent: a name for messages, and the Message-IDs of its mail on the list."""

    name: str
    msgids: frozenset[str]


@dataclass(frozen=True)
class Invariants:
    """What `check_store` found. `ok` is the watcher's promise after any interruption."""

    jobs: dict[str, int]  # expected series -> test-series jobs whose series holds its mail
    lost: tuple[str, ...]  # expected series with no job
    duplicated: tuple[str, ...]  # expected series with more than one job
    partial: tuple[str, ...]  # its one job's series lacks some of the series' mail
    messages_missing: tuple[str, ...]  # expected Message-IDs not in the store

    @property
    def duplicate_jobs(self) -> int:
        return sum(n - 1 for n in self.jobs.values() if n > 1)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.partial or self.messages_missing)

    def describe(self) -> str:
        return (f"lost {list(self.lost)}, duplicated {list(self.duplicated)}, partial "
                f"{list(self.partial)}, messages missing {list(self.messages_missing)}")


def _row_msgids(data: dict[str, object]) -> set[str]:
    ids: set[str] = set()
    cover = data.get("cover")
    if isinstance(cover, dict) and cover.get("message_id"):
        ids.add(str(cover["message_id"]))
    patches = data.get("patches")
    if isinstance(patches, list):
        ids.update(str(p["message_id"]) for p in patches if isinstance(p, dict))
    return ids


def check_store(store: Store, expected: Iterable[ExpectedSeries],
                kind: str = JOB_KIND) -> Invariants:
    """Jobs of `kind` per expected series, counted through the series rows that hold any of
    its mail (a series recorded twice, under two keys, counts twice; a requeue does not)."""
    held: dict[int, set[str]] = {row.id: _row_msgids(row.data) for row in store.all_series()}
    job_rows = [j.series_id for j in store.jobs() if j.kind == kind and j.series_id is not None]
    jobs: dict[str, int] = {}
    lost: list[str] = []
    duplicated: list[str] = []
    partial: list[str] = []
    missing: list[str] = []
    for exp in expected:
        mine = [sid for sid in job_rows if held.get(sid, set()) & exp.msgids]
        jobs[exp.name] = len(mine)
        if not mine:
            lost.append(exp.name)
        elif len(mine) > 1:
            duplicated.append(exp.name)
        elif not exp.msgids <= held[mine[0]]:
            partial.append(exp.name)
        missing.extend(sorted(m for m in exp.msgids if not store.has_message(m)))
    return Invariants(jobs, tuple(lost), tuple(duplicated), tuple(partial), tuple(missing))


def make_archive(n: int, seed: int) -> tuple[list[bytes], list[ExpectedSeries]]:
    """n series, sent a minute apart over the last hours (see the module doc)."""
    rng = random.Random(seed)
    mails: list[bytes] = []
    expected: list[ExpectedSeries] = []
    start = datetime.now(UTC) - timedelta(hours=2)
    for s in range(n):
        tag = f"s{seed}-{s}"
        total = rng.randint(1, 5)
        cover = rng.random() < 0.6
        author = AUTHORS[s % len(AUTHORS)]
        when = start + timedelta(seconds=60 * s)
        root = f"{tag}-0@example.org" if cover else f"{tag}-1@example.org"
        sent: list[tuple[str, bytes]] = []
        if cover:
            sent.append((root, patch_mail(root, f"[PATCH 0/{total}] KVM: x86: change {tag}",
                                          files=(), author=author, date=when,
                                          body=f"Cover letter of {tag}.\n")))
        for i in range(1, total + 1):
            mid = f"{tag}-{i}@example.org"
            sent.append((mid, patch_mail(
                mid, f"[PATCH {i}/{total}] KVM: x86: change {tag} part {i}", author=author,
                date=when + timedelta(seconds=i), files=(f"arch/x86/kvm/f{s}_{i}.c",),
                in_reply_to=None if mid == root else root)))
        if total >= 3 and rng.random() < 0.125:
            del sent[-2]  # a patch that never reaches the list
        mails.extend(raw for _, raw in sent)
        expected.append(ExpectedSeries(tag, frozenset(mid for mid, _ in sent)))
    return mails, expected


def write_config(path: Path, base_url: str, *, settle_s: float = 0.0, retries: int = 1,
                 timeout_s: float = 10.0) -> Config:
    """A kbot config for list kvm at base_url (what the subprocess reads with -c)."""
    path.write_text(
        "schema = 1\ninherit = false\n[archive]\n"
        f'base_url = "{base_url}"\nretries = {retries}\nbackoff_s = 0.01\n'
        f"timeout_s = {timeout_s}\n"
        f'[[lists]]\nname = "kvm"\nsettle_s = {settle_s}\npoll_s = 1\n',
        encoding="utf-8",
    )
    return load_config(path)


@dataclass(frozen=True)
class Probe:
    """What one healthy first poll of the archive does: requests (all, the last one of
    discovery, thread fetches) and how often each watcher failpoint is passed."""

    requests: int
    discovery_end: int  # number of the last request before the first thread fetch
    threads: int
    failpoint_hits: dict[str, int]


class WatchArchive:
    """`series` series served by a real public-inbox-httpd behind a FaultProxy (see module
    doc). Use as a context manager; every scenario takes a fresh state dir."""

    def __init__(self, root: Path, series: int = 40, seed: int = 1) -> None:
        self.root = root
        self.mails, self.expected = make_archive(series, seed)
        self.inbox = LocalInbox(root / "inbox", ("kvm",))
        self.proxy: FaultProxy | None = None
        self.config_path = root / "kbot.toml"
        self.config: Config | None = None
        self.probe: Probe | None = None

    def __enter__(self) -> WatchArchive:
        self.inbox.start()
        try:
            self.inbox.deliver_many(self.mails, "kvm")
            self.proxy = FaultProxy(self.inbox.base_url)
            self.proxy.start()
            self.config = write_config(self.config_path, self.proxy.base_url)
            self.probe = self._probe()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        self.inbox.stop()

    def _probe(self) -> Probe:
        proxy, config = self._parts()
        proxy.reset()
        state = self.root / "probe"
        self.heal(state, polls=1)
        seen = list(proxy.seen)
        first_thread = next((s.number for s in seen if s.path.endswith("/t.mbox.gz")),
                            len(seen) + 1)
        with Store.in_state_dir(state) as store:
            series = len(store.all_series())
            stored = len(store.messages("kvm"))
        return Probe(len(seen), first_thread - 1, len(seen) - first_thread + 1,
                     {"watch:stored": stored, "watch:thread": len(seen) - first_thread + 1,
                      "watch:saved": series, "watch:settled": series})

    def _parts(self) -> tuple[FaultProxy, Config]:
        if self.proxy is None or self.config is None:
            raise RuntimeError("WatchArchive is not started")
        return self.proxy, self.config

    def kill_at_request(self, state: Path, k: int, delay_s: float = 0.0) -> bool:
        """`kbot watch --once` in a subprocess, SIGKILLed `delay_s` after its k-th request
        reached the proxy (with 0, while that request is in flight). True if the kill landed
        (False: the poll ended first)."""
        proxy, _ = self._parts()
        bg: proc.Background | None = None
        started = threading.Event()
        killed = threading.Event()

        def kill() -> None:
            if bg is not None and bg.alive():
                os.kill(bg.pid, signal.SIGKILL)
                killed.set()

        def hook(seen: Seen) -> None:
            if seen.number != k:
                return
            started.wait(10)
            if delay_s <= 0:
                kill()
            else:
                threading.Timer(delay_s, kill).start()

        proxy.reset()
        proxy.on_request = hook
        try:
            bg = self._start_child(state, {})
            started.set()
            self._wait(bg)
        finally:
            proxy.on_request = None
            if bg is not None:
                bg.stop()
        return killed.is_set()

    def kill_at_failpoint(self, state: Path, name: str, at: int) -> bool:
        """`kbot watch --once` SIGKILLed by itself at the `at`-th pass of failpoint `name`.
        True if it died there."""
        proxy, _ = self._parts()
        proxy.reset()
        bg = self._start_child(state, {"KBOT_FAILPOINTS": f"{name}@{at}"})
        try:
            self._wait(bg)
        finally:
            code = bg.stop()
        return code == -signal.SIGKILL

    def fail_threads(self, state: Path, rule: Rule) -> int:
        """One in-process poll with `rule` on the proxy; returns the faults it served."""
        proxy, _ = self._parts()
        proxy.reset()
        proxy.add(rule)
        try:
            self.heal(state, polls=1)
        except InfraError:
            pass  # the archive failed part-way: what the fault is for
        finally:
            injected = proxy.injected
            proxy.reset()
        return injected

    def heal(self, state: Path, polls: int = 2) -> None:
        """Healthy polls, in-process, on the store at `state`."""
        _, config = self._parts()
        with Store.in_state_dir(state) as store, ArchiveClient(config.archive) as client:
            for _ in range(polls):
                watch_once(config, store, client)

    def check(self, state: Path) -> Invariants:
        with Store.in_state_dir(state) as store:
            return check_store(store, self.expected)

    def _start_child(self, state: Path, extra_env: dict[str, str]) -> proc.Background:
        argv = [sys.executable, "-m", "bot.cli", "-c", str(self.config_path), "--state-dir",
                str(state), "watch", "--once"]
        env = proc.clean_env({"PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO_ROOT)),
                              **extra_env})
        state.mkdir(parents=True, exist_ok=True)
        # cwd: not the checkout, whose bot/ `python -m` would put ahead of PYTHONPATH.
        return proc.start_background(argv, ready=lambda: True, ready_timeout=10,
                                     max_lifetime_s=CHILD_TIMEOUT_S, cwd=state, env=env,
                                     log_path=state / "watch.log")

    @staticmethod
    def _wait(bg: proc.Background) -> None:
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        while bg.alive():
            if time.monotonic() > deadline:
                raise InfraError(f"still running after {CHILD_TIMEOUT_S:.0f}s: {bg.describe()}")
            time.sleep(0.01)


class Kind(enum.Enum):
    KILL_REQUEST = "kill@request"  # SIGKILL `kbot watch --once` at its k-th request (+delay)
    KILL_FAILPOINT = "kill@failpoint"  # ... at the n-th pass of a watcher failpoint
    HTTP_503 = "503"  # thread fetches answer 503 from the j-th one on


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    kind: Kind
    faults_injected: int  # SIGKILLs that landed plus error answers served
    series_expected: int
    series_lost: int
    duplicate_jobs: int
    partial: int  # series whose one job lacks some of its mail
    messages_lost: int
    seconds: float

    @property
    def ok(self) -> bool:
        return not (self.series_lost or self.duplicate_jobs or self.partial or self.messages_lost)


def run_scenario(archive: WatchArchive, state: Path, kind: Kind,
                 rng: random.Random) -> ScenarioResult:
    """One fault of `kind` (its place drawn from rng) on a fresh store, then two healthy
    polls, then the invariants."""
    probe = archive.probe
    assert probe is not None
    began = time.monotonic()
    if kind is Kind.KILL_REQUEST:
        k = rng.randint(1, probe.requests)
        delay = rng.choice((0.0, 0.0, rng.uniform(0.0, 0.1)))
        name = f"kill at request {k}/{probe.requests} +{delay:.2f}s"
        injected = int(archive.kill_at_request(state, k, delay))
    elif kind is Kind.KILL_FAILPOINT:
        point = rng.choice(WATCH_FAILPOINTS)
        at = rng.randint(1, max(1, probe.failpoint_hits[point]))
        name = f"kill at {point}@{at}/{probe.failpoint_hits[point]}"
        injected = int(archive.kill_at_failpoint(state, point, at))
    else:
        j = rng.randint(1, max(1, probe.threads))
        name = f"503 from thread fetch {j}/{probe.threads}"
        injected = archive.fail_threads(state, Rule(Fault.STATUS, pattern=THREAD_PATTERN,
                                                    first=j))
    archive.heal(state, polls=2)
    inv = archive.check(state)
    return ScenarioResult(
        name=name, kind=kind, faults_injected=injected,
        series_expected=len(archive.expected), series_lost=len(inv.lost),
        duplicate_jobs=inv.duplicate_jobs, partial=len(inv.partial),
        messages_lost=len(inv.messages_missing), seconds=time.monotonic() - began,
    )


def run_watch_scenarios(
    n: int, seed: int, *, series: int = 40, workdir: Path | None = None,
    kinds: Sequence[Kind] = (Kind.KILL_REQUEST, Kind.KILL_FAILPOINT, Kind.HTTP_503),
) -> list[ScenarioResult]:
    """n scenarios (the kinds in turn) over one archive of `series` series; see module doc.
    Setting up the archive takes about 0.25 s per message (public-inbox-mda)."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="kbot-faults-", dir=workdir) as tmp:
        root = Path(tmp)
        with WatchArchive(root, series=series, seed=seed) as archive:
            return [run_scenario(archive, root / f"state-{i}", kinds[i % len(kinds)], rng)
                    for i in range(n)]
