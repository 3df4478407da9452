"""Kernel + KVM selftest builds: one reused build slot per (repository, config), results in a
content-addressed store keyed by (git tree id, config, toolchain).

A slot is a directory under `<cache_dir>/build/slots/`, one per repository (or several, with
`executor.build_slots` > 1: builds of one repository then run side by side, each in its own
slot, and a commit goes to the free slot that holds its parent), holding a detached
git worktree of it (`src/`) and, per config fingerprint, the kbuild output directory
(`out-<fp>/`, the reused `O=`), a scratch `O=` used only to compute the effective .config
(`cfg-<fp>/`), and `state-<fp>.json` saying which commit `out-<fp>/` holds and the diagnostics
of each translation unit (bot/build/slot.py). Walking c0..cN in order through one
slot is
incremental: `git checkout` rewrites only the files a patch changed, so make rebuilds only what
depends on them, and the warnings of the new tree are the previous tree's with the rebuilt units
replaced. The source path and `out/` stay the same for the slot's whole life, because kbuild
records absolute source paths in its .cmd files and would rebuild everything if they moved;
CCACHE_BASEDIR is the slot, so ccache hits across slots too. kbot's ccache lives in
`<cache_dir>/ccache` (CCACHE_DIR), not in the operator's home.

Builds run untrusted code (a patch's Makefile), each make step in the build sandbox
(bot/build/sandbox.py, bubblewrap): no network, no secrets (a clean environment, a private HOME
and /tmp, only the system directories of the host visible), nothing writable but the slot's
worktree, its O= directories and the ccache dir, per-step limits on memory, processes and file
size, the build log bounded, a time limit for the whole build and the process group killed when
it runs past it. The sandbox is probed before the first build; when it cannot start, the build
is an ERROR naming the reason — kbot could not build here — never a FAIL, and never stored.

Why not tuxmake: it would replace the three make calls of the config step and the bzImage call
(some 30 lines here), but not what this module is for — the per-unit diagnostics and new-warning
accounting, the content-addressed store, static selftests with `make -k` and the missing list
(tuxmake's selftests come out dynamically linked), the option-survival check — and its own
subprocesses would bypass bot.proc (no-network namespace, clean environment, one timeout that
kills the process group). A dependency that saves 30 lines and costs those guarantees is not
worth keeping.

One module per step; KernelBuilder here only orchestrates them and owns the store entries:

  bot/build/slot.py            the reused slots: their paths, worktrees, state files, locks
  bot/build/config_step.py     the effective .config (base + fragments + olddefconfig)
  bot/build/kernel_step.py     make bzImage, its diagnostics scanned per unit
  bot/build/selftests_step.py  the static KVM selftests (make -k, the missing list)
  bot/build/steps.py           how a step runs (sandbox, log, deadline), what a failure means
  bot/build/result.py          BuildStatus, BuildArtifacts, BuildResult (the values)
  bot/build/progress.py        ProgressFn, StderrProgress
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bot import proc
from bot.build.config_step import Fragment, config_step, dropped_options
from bot.build.diagnostics import Diagnostic, merge_units
from bot.build.kernel_step import ARCH, BZIMAGE, kernel_step
from bot.build.progress import ProgressFn, StderrProgress
from bot.build.result import BuildArtifacts, BuildResult, BuildStatus
from bot.build.sandbox import Sandbox, git_read_paths
from bot.build.selftests_step import SELFTEST_UNIT, expected_selftests, selftests_step
from bot.build.slot import (
    SlotPaths,
    SlotState,
    hold_slot,
    prepare_worktree,
    remove_slot,
    slot_dir,
)
from bot.build.steps import Deadline, StepFailed, StepRunner, classify
from bot.build.store import ArtifactStore
from bot.config import BuildSection, Config
from bot.errors import InfraError, ProcTimeout, UserError
from bot.tree import git

# The names the rest of kbot imports from here; each lives in its step's module.
__all__ = [
    "ARCH", "SELFTEST_UNIT", "STORE_FORMAT", "BuildArtifacts", "BuildResult", "BuildStatus",
    "Fragment", "KernelBuilder", "ProgressFn", "StderrProgress", "dropped_options",
    "expected_selftests",
]

# 2: builds run in bubblewrap. Format-1 entries made by a non-root kbot may hold false FAILs
# (`unshare --net` could not start, make never ran): never serve them.
STORE_FORMAT = 2


@dataclass
class _Outcome:
    """What the steps of one build have found so far: the orchestrator's bookkeeping."""

    state: SlotState
    units: dict[str, tuple[Diagnostic, ...]]
    status: BuildStatus = BuildStatus.PASS
    step: str = ""  # the step running (after a failure: the one that failed)
    message: str = ""
    dropped: tuple[str, ...] = ()
    selftests: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    out_touched: bool = False  # a make ran in out/ (and may have left it half-written)


class KernelBuilder:
    """Builds commits of a kernel repository; see the module docstring."""

    def __init__(
        self,
        cache_dir: Path,
        section: BuildSection,
        fragments: Sequence[Path],
        *,
        ccache: bool | None = None,
        jobs: int | None = None,
        slots: int = 1,
        store_root: Path | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.section = section
        self.root = cache_dir / "build"
        # The store may live on a mount every worker shares (executor.artifact_dir); slots,
        # with their absolute source paths, stay on this machine.
        self.store = ArtifactStore(store_root or self.root)
        self.slots = max(1, slots)  # builds of one repository that may run at once
        self.ccache_dir = cache_dir / "ccache"
        self._probed: set[Sandbox] = set()  # sandboxes that started once: no probe again
        self.ccache = section.ccache if ccache is None else ccache
        self.jobs = jobs or section.jobs or os.cpu_count() or 1
        frags: list[Fragment] = []
        for p in fragments:
            try:
                frags.append(Fragment(p, p.read_text(encoding="utf-8")))
            except OSError as exc:
                raise UserError(f"kconfig fragment {p}: cannot read: {exc.strerror}") from exc
        self.fragments = tuple(frags)
        if section.base_config not in ("tinyconfig", "defconfig", "allnoconfig"):
            raise UserError(
                f"build.base_config {section.base_config!r}: use tinyconfig, defconfig or "
                "allnoconfig"
            )
        self._toolchain: str | None = None

    @classmethod
    def from_config(cls, config: Config, extra_fragments: Sequence[Path] = ()) -> KernelBuilder:
        frags = [config.resolve(f) for f in config.build.fragments] + list(extra_fragments)
        from bot.executor.base import artifact_root, build_slots  # late: executor imports us

        return cls(config.cache_dir, config.build, frags, slots=build_slots(config),
                   store_root=artifact_root(config))

    # --- identity -------------------------------------------------------------------------

    @property
    def cc(self) -> str:
        return "ccache gcc" if self.ccache else "gcc"

    @property
    def toolchain(self) -> str:
        if self._toolchain is None:
            parts = []
            for tool in (["gcc", "--version"], ["ld", "--version"], ["make", "--version"]):
                res = proc.run(tool, timeout=30, env=proc.clean_env(), check=True)
                parts.append(res.stdout.splitlines()[0].strip() if res.stdout else tool[0])
            self._toolchain = "; ".join(parts)
        return self._toolchain

    @property
    def config_fingerprint(self) -> str:
        """What decides the effective config besides the tree: arch, base, fragments."""
        h = hashlib.sha256()
        h.update(f"arch={ARCH}\nbase={self.section.base_config}\n".encode())
        h.update(f"selftests={self.section.selftests}\n".encode())
        for frag in self.fragments:
            h.update(hashlib.sha256(frag.text.encode()).digest())
        return h.hexdigest()[:16]

    def key_for(self, tree_id: str) -> str:
        ident = json.dumps(
            [STORE_FORMAT, tree_id, self.config_fingerprint, self.toolchain], sort_keys=True
        )
        return hashlib.sha256(ident.encode()).hexdigest()

    def slot_dir(self, repo: Path, n: int = 0) -> Path:
        return slot_dir(self.root, repo, n)

    @contextmanager
    def _slot(self, repo: Path, sha: str) -> Iterator[Path]:
        slots = [self.slot_dir(repo, n) for n in range(self.slots)]
        with hold_slot(slots, repo, sha, self.config_fingerprint) as slot:
            yield slot

    def remove_slot(self, repo: Path) -> None:
        """Delete the slots' worktrees and build dirs (the stored artifacts stay)."""
        for n in range(self.slots):
            remove_slot(self.slot_dir(repo, n), repo)

    # --- the store --------------------------------------------------------------------------

    def lookup(self, repo: Path, rev: str) -> BuildResult | None:
        """The stored result for rev's tree, without building."""
        sha = git.rev_parse(repo, rev)
        return self._load(self.key_for(git.tree_id(repo, sha)), sha)

    def _load(self, key: str, rev: str) -> BuildResult | None:
        meta = self.store.load(key)
        if meta is None:
            return None
        entry = self.store.entry_dir(key)

        def art(name: str) -> Path | None:
            rel = meta["artifacts"].get(name)
            return entry / rel if rel else None

        return BuildResult(
            status=BuildStatus(meta["status"]), rev=rev, tree_id=meta["tree_id"],
            config_fingerprint=meta["config_fingerprint"], key=key,
            duration_s=float(meta["duration_s"]),
            artifacts=BuildArtifacts(
                bzimage=art("bzimage"), selftests_dir=art("selftests_dir"),
                config=art("config"), log=art("log"),
            ),
            diagnostics=tuple(Diagnostic.from_json(d) for d in meta["diagnostics"]),
            selftest_diagnostics=tuple(
                Diagnostic.from_json(d) for d in meta["selftest_diagnostics"]
            ),
            selftests=tuple(meta["selftests"]), missing_selftests=tuple(meta["missing_selftests"]),
            config_dropped=tuple(meta["config_dropped"]), failed_step=meta["failed_step"],
            message=meta["message"], cached=True, toolchain=meta["toolchain"],
        )

    def _with_parent(
        self, result: BuildResult, repo: Path, parent: BuildResult | None
    ) -> BuildResult:
        if parent is None:
            res = git.git(repo, "rev-parse", "--verify", "--quiet", f"{result.rev}^", check=False)
            if res.ok:
                parent = self._load(self.key_for(git.tree_id(repo, res.stdout.strip())),
                                    res.stdout.strip())
        if parent is None:
            return result
        return replace(
            result, parent_rev=parent.rev, new_warnings=result.new_warnings_against(parent)
        )

    # --- building ---------------------------------------------------------------------------

    def build(
        self,
        repo: Path,
        rev: str,
        *,
        parent: BuildResult | None = None,
        progress: ProgressFn | None = None,
        timeout_s: float | None = None,
    ) -> BuildResult:
        """Build `rev` of `repo` (or return the stored build of the same tree).

        `parent` is the result new warnings are counted against; by default the stored result
        of rev's first parent, when there is one. Never raises for a build that fails: FAIL and
        ERROR are results. Raises InfraError only when the repository itself is unusable.
        """
        sha = git.rev_parse(repo, rev)
        tree = git.tree_id(repo, sha)
        key = self.key_for(tree)
        cached = self._load(key, sha)
        if cached is not None:
            return self._with_parent(cached, repo, parent)
        with self._slot(repo, sha) as slot:
            cached = self._load(key, sha)  # another process may have built it meanwhile
            if cached is not None:
                return self._with_parent(cached, repo, parent)
            reporter = StderrProgress(f"build {sha[:12]}")
            result = self._build_in_slot(
                repo, sha, tree, key, slot, progress if progress is not None else reporter,
                timeout_s if timeout_s is not None else self.section.timeout_s,
            )
            if progress is None:
                reporter.done(result.summary())
        return self._with_parent(result, repo, parent)

    def _env(self, slot: Path) -> dict[str, str]:
        return proc.clean_env({
            "CCACHE_DIR": str(self.ccache_dir),
            "CCACHE_BASEDIR": str(slot),
            "KBUILD_BUILD_TIMESTAMP": "@0", "KBUILD_BUILD_USER": "kbot",
            "KBUILD_BUILD_HOST": "kbot",
        })

    def _build_in_slot(
        self, repo: Path, sha: str, tree: str, key: str, slot: Path,
        on_line: ProgressFn, timeout_s: float,
    ) -> BuildResult:
        start = time.monotonic()
        deadline = Deadline(timeout_s)
        paths = SlotPaths(slot, self.config_fingerprint)
        state = SlotState.load(paths.state)
        sandbox = Sandbox.for_build(
            self.section, writable=(paths.src, paths.out, paths.cfg, self.ccache_dir),
            readable=(*git_read_paths(repo), *(f.path for f in self.fragments)),
        )
        frags = " ".join(str(f.path) for f in self.fragments) or "none"
        paths.log.write_text(
            f"# reproduce: kbot build --tree {repo} --rev {sha}\n"
            f"# config: {self.section.base_config} + {frags}; toolchain: {self.toolchain}\n"
            + "".join(f"# sandbox: {note}\n" for note in sandbox.notes()),
            encoding="utf-8",
        )
        staging = self.store.begin(key)
        steps = StepRunner(self._env(slot), paths.log, deadline, sandbox,
                           self.section.max_log_mb * 1024 * 1024)
        o = _Outcome(state, dict(state.units))
        try:
            self._run_steps(o, repo, sha, paths, steps, on_line, staging)
        except StepFailed as exc:
            o.status, o.message = exc.status, exc.message
        except ProcTimeout as exc:
            o.status, o.message = BuildStatus.ERROR, f"{o.step or 'build'}: {exc}"
        except InfraError as exc:
            o.status, o.message = BuildStatus.ERROR, f"{o.step or 'build'}: {exc}"
        duration = time.monotonic() - start
        # After an ERROR (a make killed mid-write) out/ may hold half-written objects that look
        # up to date: the next build starts it over (ccache keeps that short). An ERROR before
        # any make ran there (the sandbox did not start) leaves out/ as the state says it is.
        if o.status is not BuildStatus.ERROR:
            o.state.rev = sha
            o.state.units = o.units
        elif o.out_touched:
            o.state.rev = ""
            o.state.units = o.units
        o.state.save(paths.state)
        return self._store_result(o, key, tree, sha, paths, staging, duration)

    def _run_steps(
        self, o: _Outcome, repo: Path, sha: str, paths: SlotPaths, steps: StepRunner,
        on_line: ProgressFn, staging: Path,
    ) -> None:
        """Checkout, sandbox probe, config, bzImage, selftests; `o` says how far it got.
        Raises StepFailed or InfraError."""
        common = [f"ARCH={ARCH}", f"CC={self.cc}"]
        on_line(f"checking out {sha[:12]}")
        prepare_worktree(repo, paths.src, sha)
        if not o.state.rev or not (paths.out / ".config").is_file():
            # Unknown contents in out/: start it over rather than trust it.
            shutil.rmtree(paths.out, ignore_errors=True)
            o.state = SlotState()
            o.units = {}
        paths.out.mkdir(parents=True, exist_ok=True)
        paths.cfg.mkdir(parents=True, exist_ok=True)
        self.ccache_dir.mkdir(parents=True, exist_ok=True)
        o.step = "sandbox"
        if steps.sandbox not in self._probed:
            steps.sandbox.probe()
            self._probed.add(steps.sandbox)
        o.step = "config"
        o.dropped = config_step(steps, paths.src, paths.cfg, paths.out, o.state, sha, common,
                                self.section.base_config, self.fragments, on_line)
        o.step = "bzImage"
        kernel = kernel_step(steps, paths.src, paths.out, common, self.jobs, on_line)
        o.out_touched = True
        o.units = merge_units(o.units, kernel.scan.units)
        if not kernel.result.ok:
            raise StepFailed(*classify("bzImage", kernel.result, kernel.scan.diagnostics))
        self.store.add_file(staging, "bzImage", paths.out / BZIMAGE)
        if self.section.selftests:
            o.step = "selftests"
            st = selftests_step(steps, paths.src, paths.out, o.state, sha, common, self.jobs,
                                self.cc, on_line, self.store, staging)
            o.selftests, o.missing = st.built, st.missing
            o.units = merge_units(o.units, st.units)
        o.step = ""

    def _store_result(
        self, o: _Outcome, key: str, tree: str, sha: str, paths: SlotPaths, staging: Path,
        duration: float,
    ) -> BuildResult:
        """The store entry (an ERROR is kept only where lookups never look) and the result."""
        diagnostics = tuple(d for u, ds in o.units.items() if u != SELFTEST_UNIT for d in ds)
        st_diagnostics = o.units.get(SELFTEST_UNIT, ())
        if (paths.cfg / ".config").is_file():
            self.store.add_file(staging, "config", paths.cfg / ".config")
        if paths.log.is_file():
            self.store.add_file(staging, "build.log", paths.log)
        artifacts = {
            "bzimage": "bzImage" if (staging / "bzImage").is_file() else None,
            "selftests_dir": "selftests" if (staging / "selftests").is_dir() else None,
            "config": "config" if (staging / "config").is_file() else None,
            "log": "build.log" if (staging / "build.log").is_file() else None,
        }
        meta: dict[str, Any] = {
            "format": STORE_FORMAT, "status": o.status.value, "tree_id": tree, "rev": sha,
            "config_fingerprint": self.config_fingerprint, "toolchain": self.toolchain,
            "duration_s": duration, "artifacts": artifacts,
            "diagnostics": [d.to_json() for d in diagnostics],
            "selftest_diagnostics": [d.to_json() for d in st_diagnostics],
            "selftests": list(o.selftests), "missing_selftests": list(o.missing),
            "config_dropped": list(o.dropped),
            "failed_step": o.step if o.status.value != "pass" else "",
            "message": o.message,
        }
        if o.status is BuildStatus.ERROR:
            # Infrastructure failures are not facts about the tree: never stored as its result
            # (kept for their log where lookups never look; the next request builds again).
            entry = self.store.keep_error(key, staging, meta)
        else:
            entry = self.store.commit(key, staging, meta)
        return BuildResult(
            status=o.status, rev=sha, tree_id=tree, config_fingerprint=self.config_fingerprint,
            key=key, duration_s=duration,
            artifacts=BuildArtifacts(
                bzimage=entry / artifacts["bzimage"] if artifacts["bzimage"] else None,
                selftests_dir=(
                    entry / artifacts["selftests_dir"] if artifacts["selftests_dir"] else None
                ),
                config=entry / artifacts["config"] if artifacts["config"] else None,
                log=entry / artifacts["log"] if artifacts["log"] else None,
            ),
            diagnostics=diagnostics, selftest_diagnostics=st_diagnostics,
            selftests=o.selftests, missing_selftests=o.missing,
            config_dropped=o.dropped, failed_step=meta["failed_step"], message=o.message,
            cached=False, toolchain=self.toolchain, build_seconds=duration,
        )
