"""Build slots: one directory per repository under `<cache_dir>/build/slots/`, reused build
after build so that walking c0..cN is incremental.

A slot holds a detached git worktree of the repository (`src/`) and, per config fingerprint,
the kbuild output directory (`out-<fp>/`, the reused `O=`), a scratch `O=` used only to compute
the effective .config (`cfg-<fp>/`), the build log and `state-<fp>.json`: which commit `out/`
holds, which commit cfg/.config and the selftests were made for, and the diagnostics of each
translation unit. Paths never move for the slot's life: kbuild records absolute source paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bot.build.diagnostics import Diagnostic
from bot.locks import locked, try_locked
from bot.tree import git

SLOT_POLL_S = 0.2  # how often a build waiting for a free slot looks again


@dataclass(frozen=True)
class SlotPaths:
    """The files of one slot for one config fingerprint."""

    slot: Path
    fingerprint: str

    @property
    def src(self) -> Path:
        return self.slot / "src"

    @property
    def out(self) -> Path:
        return self.slot / f"out-{self.fingerprint}"

    @property
    def cfg(self) -> Path:
        return self.slot / f"cfg-{self.fingerprint}"

    @property
    def state(self) -> Path:
        return self.slot / f"state-{self.fingerprint}.json"

    @property
    def log(self) -> Path:
        return self.slot / f"build-{self.fingerprint}.log"


@dataclass
class SlotState:
    rev: str = ""
    selftests_rev: str = ""
    config_rev: str = ""  # the commit cfg/.config was computed for
    units: dict[str, tuple[Diagnostic, ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> SlotState:
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


def slot_dir(root: Path, repo: Path, n: int = 0) -> Path:
    """Slot `n` of a repository (0 keeps the one-slot name): the worktree is shared by
    every config, each config has its own `out-<fingerprint>/`; the slot lock serialises
    them. Several slots let builds of one repository run side by side (a K-ary
    bisection round), each in its own worktree and O= directory."""
    ident = str(repo.resolve())
    name = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return root / "slots" / (name if n == 0 else f"{name}-{n}")


@contextmanager
def hold_slot(slots: Sequence[Path], repo: Path, sha: str, fingerprint: str) -> Iterator[Path]:
    """Hold a free slot of `repo`, preferring the one whose last build is `sha`'s parent
    (or `sha`): the walk c0..cN stays incremental in one slot while other slots take
    the builds that run beside it. Waits while every slot is busy."""
    if len(slots) == 1:
        slots[0].mkdir(parents=True, exist_ok=True)
        with locked(slots[0] / "lock"):
            yield slots[0]
        return
    parent = git.git(repo, "rev-parse", "--verify", "--quiet", f"{sha}^", check=False)
    near = {sha, parent.stdout.strip()} if parent.ok else {sha}

    def rank(slot: Path) -> int:
        rev = SlotState.load(SlotPaths(slot, fingerprint).state).rev
        return 0 if rev in near else (1 if rev else 2)

    while True:
        for slot in sorted(slots, key=rank):
            slot.mkdir(parents=True, exist_ok=True)
            with try_locked(slot / "lock") as held:
                if held:
                    yield slot
                    return
        time.sleep(SLOT_POLL_S)


def remove_slot(slot: Path, repo: Path) -> None:
    """Delete the slot's worktree and build dir (the stored artifacts stay)."""
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


def prepare_worktree(repo: Path, src: Path, sha: str) -> None:
    """`src` holding exactly commit `sha` of `repo`: checked out in place when it is already a
    worktree (git rewrites only what differs: the incremental build), made anew otherwise."""
    if (src / ".git").is_file():
        res = git.git(src, "checkout", "--detach", "--force", "--quiet", sha, check=False)
        if res.ok:
            # A build may have written into the sources: back to exactly the commit.
            git.git(src, "clean", "-ffdxq")
            return
        shutil.rmtree(src, ignore_errors=True)
    elif src.exists():
        shutil.rmtree(src)
    # Slots of one repository share its worktree list: one add/prune at a time.
    slot = src.parent
    with locked(slot.parent / f"{slot.name.split('-')[0]}.worktrees.lock"):
        git.git(repo, "worktree", "prune")
        git.git(repo, "worktree", "add", "--detach", "--force", "--quiet", str(src), sha,
                timeout=1800)
