"""Kernel + KVM selftest builds: one reused build slot per (repository, config), results in a
content-addressed store keyed by (git tree id, config, toolchain).

A slot is a directory under `<cache_dir>/build/slots/`, one per repository, holding a detached
git worktree of it (`src/`) and, per config fingerprint, the kbuild output directory
(`out-<fp>/`, the reused `O=`), a scratch `O=` used only to compute the effective .config
(`cfg-<fp>/`), and `state-<fp>.json` saying which commit `out-<fp>/` holds and the diagnostics
of each translation unit. Walking c0..cN in order through one slot is
incremental: `git checkout` rewrites only the files a patch changed, so make rebuilds only what
depends on them, and the warnings of the new tree are the previous tree's with the rebuilt units
replaced. The source path and `out/` stay the same for the slot's whole life, because kbuild
records absolute source paths in its .cmd files and would rebuild everything if they moved;
CCACHE_BASEDIR is the slot, so ccache hits across slots too.

Builds run untrusted code (a patch's Makefile): no network, an environment without secrets, a
time limit for the whole build, and the process group killed when it runs past it.

Why not tuxmake: it would replace the three make calls of the config step and the bzImage call
(some 30 lines here), but not what this module is for — the per-unit diagnostics and new-warning
accounting, the content-addressed store, static selftests with `make -k` and the missing list
(tuxmake's selftests come out dynamically linked), the option-survival check — and its own
subprocesses would bypass bot.proc (no-network namespace, clean environment, one timeout that
kills the process group). A dependency that saves 30 lines and costs those guarantees is not
worth keeping.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from bot import proc
from bot.build.diagnostics import (
    Diagnostic,
    LogScanner,
    Severity,
    merge_units,
    new_against,
)
from bot.build.store import ArtifactStore
from bot.config import BuildSection, Config
from bot.errors import InfraError, ProcTimeout, UserError
from bot.locks import locked
from bot.tree import git

ARCH = "x86_64"
STORE_FORMAT = 1
SELFTESTS_SUBDIR = "tools/testing/selftests/kvm"
# A change under these paths can change what the selftests compile against (uapi headers,
# tools/ copies of kernel headers, the selftests themselves): rebuild them from clean.
SELFTEST_INPUTS = (
    "include/uapi/", "arch/x86/include/uapi/", "tools/", "usr/", "scripts/", "Makefile",
)
SELFTEST_UNIT = "<selftests>"
_FRAG_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_FRAG_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_TEST_PROGS = re.compile(
    r"^TEST_GEN_PROGS(?:_EXTENDED)?_x86_64\s*\+?=\s*(?P<prog>[A-Za-z0-9_/\-]+)\s*$", re.M
)

ProgressFn = Callable[[str], None]


class BuildStatus(Enum):
    PASS = "pass"
    FAIL = "fail"  # the tree does not build: the patch's fault
    ERROR = "error"  # kbot could not build it (timeout, tool missing, disk full): infra


@dataclass(frozen=True)
class BuildArtifacts:
    bzimage: Path | None
    selftests_dir: Path | None  # binaries at their Makefile paths: x86_64/state_test, ...
    config: Path | None  # the effective .config
    log: Path | None


@dataclass(frozen=True)
class BuildResult:
    status: BuildStatus
    rev: str  # the commit asked for (another commit with the same tree may have built it)
    tree_id: str
    config_fingerprint: str
    key: str  # the artifact store key
    duration_s: float  # of the build that made the entry (0.0 never: a cached entry keeps it)
    artifacts: BuildArtifacts
    diagnostics: tuple[Diagnostic, ...] = ()  # every kernel warning/error of this tree
    # The selftests' own (6.1.192's dirty_log_test and steal_time always fail to build: those
    # errors live here, next to missing_selftests, not in `errors`).
    selftest_diagnostics: tuple[Diagnostic, ...] = ()
    new_warnings: tuple[Diagnostic, ...] = ()  # against `parent_rev`'s result
    parent_rev: str | None = None
    selftests: tuple[str, ...] = ()
    missing_selftests: tuple[str, ...] = ()  # in the Makefile but not built (make -k)
    config_dropped: tuple[str, ...] = ()  # requested options that olddefconfig did not keep
    failed_step: str = ""  # config | bzImage | selftests | ""
    message: str = ""  # one line for a report when not PASS
    cached: bool = False  # served from the artifact store, nothing was built
    toolchain: str = ""
    build_seconds: float = 0.0  # what this call spent building (0 when cached)

    @property
    def ok(self) -> bool:
        return self.status is BuildStatus.PASS

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity is Severity.WARNING)

    def new_warnings_against(self, parent: BuildResult) -> tuple[Diagnostic, ...]:
        mine = self.diagnostics + self.selftest_diagnostics
        theirs = parent.diagnostics + parent.selftest_diagnostics
        return new_against(mine, theirs, Severity.WARNING)

    def summary(self) -> str:
        head = f"{self.rev[:12]} {self.status.value.upper()}"
        if self.cached:
            head += " (cached)"
        else:
            head += f" in {self.build_seconds:.1f}s"
        parts = [head]
        if self.status is not BuildStatus.PASS and self.message:
            parts.append(self.message)
        if self.new_warnings:
            parts.append(f"{len(self.new_warnings)} new warning(s)")
        if self.missing_selftests:
            parts.append(f"selftests missing: {', '.join(self.missing_selftests)}")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value, "rev": self.rev, "tree_id": self.tree_id,
            "config_fingerprint": self.config_fingerprint, "key": self.key,
            "duration_s": self.duration_s, "build_seconds": self.build_seconds,
            "cached": self.cached, "toolchain": self.toolchain,
            "artifacts": {
                k: (str(v) if v is not None else None)
                for k, v in vars(self.artifacts).items()
            },
            "diagnostics": [d.to_json() for d in self.diagnostics],
            "selftest_diagnostics": [d.to_json() for d in self.selftest_diagnostics],
            "new_warnings": [d.to_json() for d in self.new_warnings],
            "parent_rev": self.parent_rev,
            "selftests": list(self.selftests),
            "missing_selftests": list(self.missing_selftests),
            "config_dropped": list(self.config_dropped),
            "failed_step": self.failed_step, "message": self.message,
        }


class StderrProgress:
    """Progress of a long build on stderr: one rewritten line on a terminal, a line every
    `every_s` seconds otherwise (CI logs)."""

    def __init__(self, label: str, every_s: float = 30.0) -> None:
        self.label = label
        self.every_s = every_s
        self.start = time.monotonic()
        self.last = 0.0
        self.count = 0
        self.tty = sys.stderr.isatty()

    def __call__(self, line: str) -> None:
        self.count += 1
        now = time.monotonic()
        if self.tty:
            if now - self.last < 0.2:
                return
            self.last = now
            text = f"[{self.label} {now - self.start:5.0f}s {self.count} lines] {line.strip()}"
            sys.stderr.write("\r" + text[:118].ljust(118))
            sys.stderr.flush()
        elif now - self.last >= self.every_s:
            self.last = now
            sys.stderr.write(f"[{self.label} {now - self.start:.0f}s] {line.strip()[:100]}\n")
            sys.stderr.flush()

    def done(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r" + " " * 118 + "\r")
        sys.stderr.write(f"[{self.label}] {text}\n")
        sys.stderr.flush()


@dataclass(frozen=True)
class Fragment:
    path: Path
    text: str

    def requested(self) -> dict[str, str | None]:
        """CONFIG_X -> value, None for `# CONFIG_X is not set`."""
        out: dict[str, str | None] = {}
        for raw in self.text.splitlines():
            line = raw.strip()
            if m := _FRAG_SET.match(line):
                out[m[1]] = m[2]
            elif m := _FRAG_UNSET.match(line):
                out[m[1]] = None
        return out


def read_config_values(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if m := _FRAG_SET.match(line):
            out[m[1]] = m[2]
    return out


def dropped_options(fragments: Sequence[Fragment], config_text: str) -> tuple[str, ...]:
    """Requested options the effective config does not have, as `CONFIG_X=y (got n)`."""
    have = read_config_values(config_text)
    lost: list[str] = []
    for frag in fragments:
        for name, want in frag.requested().items():
            got = have.get(name)
            if got != want:
                shown = f"{name}={want}" if want is not None else f"{name} unset"
                lost.append(f"{shown} (got {got if got is not None else 'unset'})")
    return tuple(dict.fromkeys(lost))


def expected_selftests(src: Path) -> tuple[str, ...]:
    """The x86_64 KVM selftest programs the tree's Makefile asks for."""
    try:
        text = (src / SELFTESTS_SUBDIR / "Makefile").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    return tuple(dict.fromkeys(m["prog"] for m in _TEST_PROGS.finditer(text)))


@dataclass
class _SlotState:
    rev: str = ""
    selftests_rev: str = ""
    config_rev: str = ""  # the commit cfg/.config was computed for
    units: dict[str, tuple[Diagnostic, ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> _SlotState:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            units = {
                k: tuple(Diagnostic.from_json(d) for d in v) for k, v in data["units"].items()
            }
            return cls(str(data["rev"]), str(data.get("selftests_rev", "")),
                       str(data.get("config_rev", "")), units)
        except (OSError, ValueError, KeyError, TypeError):
            return cls()

    def save(self, path: Path) -> None:
        data = {
            "rev": self.rev, "selftests_rev": self.selftests_rev, "config_rev": self.config_rev,
            "units": {k: [d.to_json() for d in v] for k, v in self.units.items()},
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise ProcTimeout("build time limit reached")
        return left


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
    ) -> None:
        self.cache_dir = cache_dir
        self.section = section
        self.root = cache_dir / "build"
        self.store = ArtifactStore(self.root)
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
        return cls(config.cache_dir, config.build, frags)

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

    def slot_dir(self, repo: Path) -> Path:
        """One per repository: the worktree is shared by every config, each config has its own
        `out-<fingerprint>/`; the slot lock serialises them."""
        ident = str(repo.resolve())
        return self.root / "slots" / hashlib.sha256(ident.encode()).hexdigest()[:16]

    def remove_slot(self, repo: Path) -> None:
        """Delete the slot's worktree and build dir (the stored artifacts stay)."""
        slot = self.slot_dir(repo)
        if not slot.exists():
            return
        with locked(slot / "lock"):
            git.git(repo, "worktree", "remove", "--force", str(slot / "src"), check=False)
            git.git(repo, "worktree", "prune", check=False)
            for p in slot.iterdir():
                if p.name == "lock":
                    continue
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

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
        slot = self.slot_dir(repo)
        slot.mkdir(parents=True, exist_ok=True)
        with locked(slot / "lock"):
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

    def _prepare_worktree(self, repo: Path, src: Path, sha: str) -> None:
        if (src / ".git").is_file():
            res = git.git(src, "checkout", "--detach", "--force", "--quiet", sha, check=False)
            if res.ok:
                # A build may have written into the sources: back to exactly the commit.
                git.git(src, "clean", "-ffdxq")
                return
            shutil.rmtree(src, ignore_errors=True)
        elif src.exists():
            shutil.rmtree(src)
        git.git(repo, "worktree", "prune")
        git.git(repo, "worktree", "add", "--detach", "--force", "--quiet", str(src), sha,
                timeout=1800)

    def _make(
        self,
        args: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        log: Path,
        deadline: _Deadline,
        on_line: ProgressFn | None = None,
    ) -> proc.ProcResult:
        return proc.run(
            ["make", *args], cwd=cwd, env=env, log_path=log, on_line=on_line,
            timeout=deadline.left(), no_network=True, capture_limit=256 * 1024,
        )

    def _build_in_slot(
        self, repo: Path, sha: str, tree: str, key: str, slot: Path,
        on_line: ProgressFn, timeout_s: float,
    ) -> BuildResult:
        start = time.monotonic()
        deadline = _Deadline(timeout_s)
        fp = self.config_fingerprint
        src, out, cfg = slot / "src", slot / f"out-{fp}", slot / f"cfg-{fp}"
        state_path = slot / f"state-{fp}.json"
        state = _SlotState.load(state_path)
        log = slot / f"build-{fp}.log"
        frags = " ".join(str(f.path) for f in self.fragments) or "none"
        log.write_text(
            f"# reproduce: kbot build --tree {repo} --rev {sha}\n"
            f"# config: {self.section.base_config} + {frags}; toolchain: {self.toolchain}\n",
            encoding="utf-8",
        )
        staging = self.store.begin(key)
        env = proc.clean_env({
            "CCACHE_BASEDIR": str(slot),
            "KBUILD_BUILD_TIMESTAMP": "@0", "KBUILD_BUILD_USER": "kbot",
            "KBUILD_BUILD_HOST": "kbot",
        })
        common = [f"ARCH={ARCH}", f"CC={self.cc}"]
        scanner = LogScanner(src, out)

        def feed(line: str) -> None:
            scanner.feed(line)
            on_line(line)

        status, step, message = BuildStatus.PASS, "", ""
        dropped: tuple[str, ...] = ()
        selftests: tuple[str, ...] = ()
        missing: tuple[str, ...] = ()
        units = dict(state.units)
        try:
            on_line(f"checking out {sha[:12]}")
            self._prepare_worktree(repo, src, sha)
            if not state.rev or not (out / ".config").is_file():
                # Unknown contents in out/: start it over rather than trust it.
                shutil.rmtree(out, ignore_errors=True)
                state = _SlotState()
                units = {}
            out.mkdir(parents=True, exist_ok=True)
            # --- effective config, computed in cfg/ so out/.config only changes when it must
            step = "config"
            cfg.mkdir(parents=True, exist_ok=True)
            if not _config_inputs_same(src, state.config_rev, sha, cfg):
                state.config_rev = ""
                self._compute_config(src, cfg, env, common, log, deadline)
            state.config_rev = sha
            config_text = (cfg / ".config").read_text(encoding="utf-8", errors="replace")
            dropped = dropped_options(self.fragments, config_text)
            if dropped:
                on_line("config: requested options dropped: " + ", ".join(dropped))
            old = out / ".config"
            if not old.is_file() or old.read_text(errors="replace") != config_text:
                shutil.copyfile(cfg / ".config", old)
            # --- the kernel
            step = "bzImage"
            on_line(f"make bzImage -j{self.jobs}")
            res = self._make(
                [f"O={out}", *common, f"-j{self.jobs}", "-Otarget", "bzImage"],
                cwd=src, env=env, log=log, deadline=deadline, on_line=feed,
            )
            scan = scanner.result()
            units = merge_units(units, scan.units)
            if res.timed_out:
                raise _StepFailed(
                    BuildStatus.ERROR, f"bzImage: timed out after {res.duration_s:.0f}s"
                )
            if not res.ok:
                raise _StepFailed(*_classify(res, scan.diagnostics))
            bzimage = out / "arch/x86/boot/bzImage"
            self.store.add_file(staging, "bzImage", bzimage)
            # --- the KVM selftests, statically linked, against this tree's uapi headers
            if self.section.selftests:
                step = "selftests"
                selftests, missing, st_units = self._build_selftests(
                    src, out, state, sha, env, common, log, deadline, on_line, staging
                )
                units = merge_units(units, st_units)
            step = ""
        except _StepFailed as exc:
            status, message = exc.status, exc.message
        except ProcTimeout as exc:
            status, message = BuildStatus.ERROR, f"{step or 'build'}: {exc}"
        except InfraError as exc:
            status, message = BuildStatus.ERROR, f"{step or 'build'}: {exc}"
        duration = time.monotonic() - start
        # After an ERROR (a make killed mid-write) out/ may hold half-written objects that look
        # up to date: the next build starts it over (ccache keeps that short).
        state.rev = "" if status is BuildStatus.ERROR else sha
        state.units = units
        state.save(state_path)
        diagnostics = tuple(d for u, ds in units.items() if u != SELFTEST_UNIT for d in ds)
        st_diagnostics = units.get(SELFTEST_UNIT, ())
        if (cfg / ".config").is_file():
            self.store.add_file(staging, "config", cfg / ".config")
        if log.is_file():
            self.store.add_file(staging, "build.log", log)
        artifacts = {
            "bzimage": "bzImage" if (staging / "bzImage").is_file() else None,
            "selftests_dir": "selftests" if (staging / "selftests").is_dir() else None,
            "config": "config" if (staging / "config").is_file() else None,
            "log": "build.log" if (staging / "build.log").is_file() else None,
        }
        meta: dict[str, Any] = {
            "format": STORE_FORMAT, "status": status.value, "tree_id": tree, "rev": sha,
            "config_fingerprint": self.config_fingerprint, "toolchain": self.toolchain,
            "duration_s": duration, "artifacts": artifacts,
            "diagnostics": [d.to_json() for d in diagnostics],
            "selftest_diagnostics": [d.to_json() for d in st_diagnostics],
            "selftests": list(selftests), "missing_selftests": list(missing),
            "config_dropped": list(dropped), "failed_step": step if status.value != "pass" else "",
            "message": message,
        }
        if status is BuildStatus.ERROR:
            # Infrastructure failures are not facts about the tree: never stored as its result.
            entry = staging.parent / f".error-{key[:12]}"
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(staging, entry)
            (entry / "result.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        else:
            entry = self.store.commit(key, staging, meta)
        result = BuildResult(
            status=status, rev=sha, tree_id=tree, config_fingerprint=self.config_fingerprint,
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
            selftests=selftests, missing_selftests=missing,
            config_dropped=dropped, failed_step=meta["failed_step"], message=message,
            cached=False, toolchain=self.toolchain, build_seconds=duration,
        )
        return result

    def _compute_config(
        self, src: Path, cfg: Path, env: Mapping[str, str], common: Sequence[str], log: Path,
        deadline: _Deadline,
    ) -> None:
        """base config + fragments (merge_config.sh -m) + olddefconfig, in the scratch O=."""
        steps: list[list[str]] = [
            ["make", f"O={cfg}", *common, self.section.base_config],
            ["bash", "scripts/kconfig/merge_config.sh", "-m", "-O", str(cfg),
             str(cfg / ".config"), *(str(f.path) for f in self.fragments)],
            ["make", f"O={cfg}", *common, "olddefconfig"],
        ]
        for argv in steps:
            res = proc.run(argv, cwd=src, env=env, log_path=log, timeout=deadline.left(),
                           no_network=True, capture_limit=256 * 1024)
            if not res.ok:
                raise _StepFailed(BuildStatus.FAIL, f"config: {res.describe()}")

    def _build_selftests(
        self, src: Path, out: Path, state: _SlotState, sha: str, env: Mapping[str, str],
        common: Sequence[str], log: Path, deadline: _Deadline, on_line: ProgressFn,
        staging: Path,
    ) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, tuple[Diagnostic, ...]]]:
        kself = out / "kselftest"
        output = kself / "kvm"
        fresh = True
        if state.selftests_rev and output.is_dir():
            try:
                changed = git.changed_files(src, state.selftests_rev, sha)
                fresh = any(f.startswith(SELFTEST_INPUTS) for f in changed)
            except InfraError:
                fresh = True
        if fresh:
            shutil.rmtree(kself, ignore_errors=True)
        on_line("make headers_install")
        res = self._make(
            [f"O={out}", *common, "headers_install", f"INSTALL_HDR_PATH={out / 'usr'}"],
            cwd=src, env=env, log=log, deadline=deadline,
        )
        if not res.ok:
            raise _StepFailed(BuildStatus.FAIL, f"headers_install: {res.describe()}")
        on_line(f"make -k selftests/kvm ({'clean' if fresh else 'incremental'})")
        # gcc runs in the selftests folder (make -C): relative paths are relative to it.
        scanner = LogScanner(src, src / SELFTESTS_SUBDIR)
        def feed(line: str) -> None:
            scanner.feed(line)
            on_line(line)

        res = proc.run(
            ["make", "-k", f"-j{self.jobs}", "-Otarget", "-C", str(src / SELFTESTS_SUBDIR),
             f"O={kself}", f"OUTPUT={output}", f"KHDR_INCLUDES=-isystem {out / 'usr/include'}",
             "USERLDFLAGS=-static", f"CC={self.cc}"],
            cwd=src, env=env, log_path=log, on_line=feed,
            timeout=deadline.left(), no_network=True, capture_limit=256 * 1024,
        )
        if res.timed_out:
            raise _StepFailed(BuildStatus.ERROR, "selftests: timed out")
        state.selftests_rev = sha
        built: list[str] = []
        missing: list[str] = []
        for prog in expected_selftests(src):
            binary = output / prog
            if binary.is_file() and os.access(binary, os.X_OK):
                self.store.add_file(staging, f"selftests/{prog}", binary)
                built.append(prog)
            else:
                missing.append(prog)
        diags = tuple(replace(d, unit=SELFTEST_UNIT) for d in scanner.result().diagnostics)
        # An incremental no-op prints nothing: keep the previous tree's selftest diagnostics.
        units = {SELFTEST_UNIT: diags} if fresh else {}
        return tuple(built), tuple(missing), units


# A change to one of these can change the effective config; anything else cannot.
CONFIG_INPUT_DIRS = ("scripts/", "arch/x86/configs/", "kernel/configs/", "arch/x86/Makefile")


def _config_inputs_same(src: Path, old: str, new: str, cfg: Path) -> bool:
    """True when cfg/.config, computed for `old`, is also the effective config of `new`."""
    if not old or not (cfg / ".config").is_file():
        return False
    if old == new:
        return True
    try:
        changed = git.changed_files(src, old, new)
    except InfraError:
        return False
    return not any(
        f == "Makefile" or f.startswith(CONFIG_INPUT_DIRS) or Path(f).name.startswith("Kconfig")
        for f in changed
    )


class _StepFailed(Exception):
    def __init__(self, status: BuildStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_INFRA_MARKERS = ("No space left on device", "Cannot allocate memory", "Killed signal terminated")


def _classify(res: proc.ProcResult, diags: Sequence[Diagnostic]) -> tuple[BuildStatus, str]:
    """A failed make: the patch's fault (FAIL) unless it died of something around it."""
    text = res.stdout + res.stderr
    if res.returncode < 0 or any(m in text for m in _INFRA_MARKERS):
        return BuildStatus.ERROR, f"bzImage: {res.describe()}"
    errors = [d for d in diags if d.severity is Severity.ERROR]
    if errors:
        return BuildStatus.FAIL, f"{errors[0]}" + (
            f" (+{len(errors) - 1} more errors)" if len(errors) > 1 else ""
        )
    return BuildStatus.FAIL, f"bzImage: {res.describe()}"
