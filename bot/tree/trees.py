"""Configured trees: kbot's own mirrors, scratch worktrees, and base resolution.

kbot never works in a user's checkout. A tree given by URL is mirrored (`git clone --mirror`)
under `<cache_dir>/trees/<name>.git`; a tree given by a local path is mirrored the same way with
`--shared` (objects borrowed through alternates, not copied: a kernel clone is gigabytes), unless
the path lies inside kbot's cache dir (the imported linux-source-6.1), which kbot owns and uses
as it is. Patches are applied in scratch worktrees of the mirror; the commits they make stay in
the mirror under `refs/kbot/`, where builds find them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from bot import proc
from bot.config import BaseRule, Config, TreeSection
from bot.errors import ConfigError, InfraError, UserError
from bot.intake.model import Series
from bot.locks import locked
from bot.tree import git

FETCH_TIMEOUT_S = 3600.0
PATCH_ID_SCAN = 500  # commits searched for prerequisite patch ids
_SHA = re.compile(r"^[0-9a-f]{7,64}$")


class BaseRuleKind(Enum):
    BASE_COMMIT = "base-commit footer"
    PREREQUISITES = "prerequisite-patch-id"
    CONFIG_RULE = "config rule"
    DEFAULT_BRANCH = "default branch"
    EXPLICIT = "given on the command line"


@dataclass(frozen=True)
class ResolvedBase:
    tree: str
    branch: str | None  # None when the base is a bare commit (base-commit footer)
    sha: str
    rule: BaseRuleKind
    detail: str = ""  # which rule, which footer
    notes: tuple[str, ...] = ()  # what was tried and did not fit, e.g. an unknown base-commit

    @property
    def guessed(self) -> bool:
        """True when nothing in the series named its base: a report should say so."""
        return self.rule in (BaseRuleKind.CONFIG_RULE, BaseRuleKind.DEFAULT_BRANCH)

    def describe(self) -> str:
        where = f"{self.tree}/{self.branch}" if self.branch else self.tree
        why = self.rule.value + (f": {self.detail}" if self.detail else "")
        return f"{where} {self.sha[:12]} ({why})"


@dataclass(frozen=True)
class Tree:
    section: TreeSection
    mirror: Path  # the git repository kbot works in
    owned: bool  # kbot's own repository (a mirror or the cache's import)

    @property
    def name(self) -> str:
        return self.section.name


def tree_for_path(path: Path) -> TreeSection:
    """An ad-hoc tree for `--tree PATH`."""
    return TreeSection(name=path.resolve().name or "tree", path=str(path))


class Trees:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.root = config.cache_dir / "trees"
        self._adhoc: dict[str, TreeSection] = {}  # trees given as a path, by the name they got

    def section(self, name_or_path: str) -> TreeSection:
        for t in (*self.config.trees, *self._adhoc.values()):
            if t.name == name_or_path:
                return t
        p = Path(name_or_path).expanduser()
        if p.exists():
            section = tree_for_path(p)
            self._adhoc[section.name] = section
            return section
        known = ", ".join(t.name for t in self.config.trees) or "none configured"
        raise UserError(f"no tree named {name_or_path!r} and no such path (trees: {known})")

    def _source_path(self, section: TreeSection) -> Path:
        return Path(section.path.replace("{cache_dir}", str(self.config.cache_dir))).expanduser()

    def get(self, section: TreeSection, *, fetch: bool = False) -> Tree:
        """The tree's repository, mirroring it first if kbot has none yet."""
        if section.path:
            src = self._source_path(section)
            if not (src / ".git").exists() and not (src / "HEAD").is_file():
                raise UserError(f"tree {section.name}: {src} is not a git repository")
            cache = self.config.cache_dir.resolve()
            if src.resolve().is_relative_to(cache):
                return Tree(section, src, owned=True)
            origin = str(src.resolve())
            extra: tuple[str, ...] = ("--shared",)
        else:
            origin = section.url
            extra = ()
        digest = hashlib.sha256(origin.encode()).hexdigest()[:8]
        mirror = self.root / f"{section.name}-{digest}.git"
        self.root.mkdir(parents=True, exist_ok=True)
        with locked(self.root / f".{mirror.name}.lock"):
            if not (mirror / "HEAD").is_file():
                tmp = mirror.with_name(mirror.name + ".cloning")
                shutil.rmtree(tmp, ignore_errors=True)
                git.git(self.root, "clone", "--mirror", "--quiet", *extra, origin, str(tmp),
                        timeout=FETCH_TIMEOUT_S)
                git.git(tmp, "config", "gc.autoDetach", "false")
                # Fetch (and prune) branches and tags only: a mirror's default refs/* refspec
                # would prune kbot's own refs/kbot/* (applied series, pinned builds).
                git.git(tmp, "config", "--replace-all", "remote.origin.fetch",
                        "+refs/heads/*:refs/heads/*")
                git.git(tmp, "config", "--add", "remote.origin.fetch", "+refs/tags/*:refs/tags/*")
                tmp.rename(mirror)
            elif fetch:
                git.git(mirror, "fetch", "--prune", "--quiet", "origin", timeout=FETCH_TIMEOUT_S)
        return Tree(section, mirror, owned=True)

    def branch_sha(self, tree: Tree, branch: str) -> str:
        for ref in (f"refs/heads/{branch}", f"refs/remotes/origin/{branch}"):
            if git.has_commit(tree.mirror, ref):
                return git.rev_parse(tree.mirror, ref)
        raise InfraError(f"tree {tree.name}: no branch {branch!r}")

    # --- base resolution -------------------------------------------------------------------

    def resolve_base(
        self,
        series: Series,
        *,
        tree: str | None = None,
        list_name: str | None = None,
        fetch: bool = False,
    ) -> ResolvedBase:
        """Where to apply `series`, by the first rule that gives an answer:
        base-commit footer (if a mirror has it), prerequisite patch ids (found in a candidate
        branch), config base rules (list, subject tag, files), the default branch."""
        notes: list[str] = []
        sections = [self.section(tree)] if tree else list(self.config.trees)
        if not sections:
            raise ConfigError(str(self.config.source), "trees", "no trees configured")
        trees = [self.get(s, fetch=fetch) for s in sections]
        if series.base_commit:
            if not _SHA.match(series.base_commit):
                notes.append(f"base-commit {series.base_commit!r} is not a commit id")
            else:
                for t in trees:
                    if git.has_commit(t.mirror, series.base_commit):
                        return ResolvedBase(
                            t.name, None, git.rev_parse(t.mirror, series.base_commit),
                            BaseRuleKind.BASE_COMMIT, f"base-commit {series.base_commit[:12]}",
                        )
                notes.append(
                    f"base-commit {series.base_commit[:12]} not found in "
                    + ", ".join(t.name for t in trees)
                )
        candidates = self._candidates(series, trees, list_name)
        if series.prerequisite_patch_ids:
            wanted = set(series.prerequisite_patch_ids)
            for t, branch, _kind, _detail in candidates:
                found = self._patch_ids_in(t, branch, wanted)
                if found >= wanted:
                    return ResolvedBase(
                        t.name, branch, self.branch_sha(t, branch), BaseRuleKind.PREREQUISITES,
                        f"all {len(wanted)} prerequisite patches are in {t.name}/{branch}",
                        tuple(notes),
                    )
                notes.append(
                    f"{len(wanted - found)} of {len(wanted)} prerequisite patches not in the "
                    f"last {PATCH_ID_SCAN} commits of {t.name}/{branch}"
                )
        if not candidates:
            raise InfraError("no tree and branch to apply the series to")
        t, branch, kind, detail = candidates[0]
        return ResolvedBase(t.name, branch, self.branch_sha(t, branch), kind, detail, tuple(notes))

    def _candidates(
        self, series: Series, trees: Sequence[Tree], list_name: str | None
    ) -> list[tuple[Tree, str, BaseRuleKind, str]]:
        by_name = {t.name: t for t in trees}
        out: list[tuple[Tree, str, BaseRuleKind, str]] = []
        for i, rule in enumerate(self.config.base_rules):
            if rule.tree in by_name and rule_matches(rule, series, list_name):
                out.append((by_name[rule.tree], rule.branch, BaseRuleKind.CONFIG_RULE,
                            f"base_rules[{i}] ({describe_rule(rule)})"))
        for t in trees:
            out.append((t, t.section.default_branch, BaseRuleKind.DEFAULT_BRANCH,
                        f"{t.name}/{t.section.default_branch}"))
        return out

    def _patch_ids_in(self, tree: Tree, branch: str, wanted: set[str]) -> set[str]:
        log = git.git(
            tree.mirror, "log", "-p", "--no-color", f"-n{PATCH_ID_SCAN}", f"refs/heads/{branch}",
            check=False, timeout=600,
        )
        if not log.ok:
            return set()
        ids = proc.run(
            ["git", "patch-id", "--stable"], cwd=tree.mirror, env=git.git_env(),
            input=log.stdout.encode(), timeout=600, check=True,
        )
        return {line.split()[0] for line in ids.stdout.splitlines() if line} & wanted

    # --- scratch worktrees -----------------------------------------------------------------

    @contextmanager
    def worktree(self, tree: Tree, base: str, *, keep: bool = False) -> Iterator[Path]:
        """A worktree of the mirror detached at `base`, reset before use (no stale am session,
        no changes, no untracked files) and removed after (`keep=True` leaves it, clean, for the
        next job: on a kernel tree that saves checking out 75,000 files)."""
        wt_root = self.config.cache_dir / "worktrees"
        wt_root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(str(tree.mirror.resolve()).encode()).hexdigest()[:12]
        path = wt_root / f"{tree.name}-{digest}"
        with locked(wt_root / f".{path.name}.lock"):
            reset_worktree(tree.mirror, path, base)
            try:
                yield path
            finally:
                if keep:
                    clean_worktree(path, base)
                else:
                    remove_worktree(tree.mirror, path)


def reset_worktree(repo: Path, path: Path, base: str) -> None:
    if (path / ".git").is_file():
        git.git(path, "am", "--abort", check=False)
        if git.git(path, "checkout", "--detach", "--force", "--quiet", base, check=False).ok:
            git.git(path, "clean", "-ffdxq")
            return
    remove_worktree(repo, path)
    git.git(repo, "worktree", "add", "--detach", "--force", "--quiet", str(path), base,
            timeout=1800)


def clean_worktree(path: Path, base: str) -> None:
    git.git(path, "am", "--abort", check=False)
    git.git(path, "checkout", "--detach", "--force", "--quiet", base, check=False)
    git.git(path, "clean", "-ffdxq", check=False)


def remove_worktree(repo: Path, path: Path) -> None:
    if path.exists():
        git.git(repo, "worktree", "remove", "--force", str(path), check=False)
        shutil.rmtree(path, ignore_errors=True)
    git.git(repo, "worktree", "prune", check=False)


def rule_matches(rule: BaseRule, series: Series, list_name: str | None) -> bool:
    if rule.lists and (list_name is None or list_name not in rule.lists):
        return False
    if rule.subject_tags:
        subjects = [series.title] + [p.title for p in series.patches]
        if not any(tag in s for tag in rule.subject_tags for s in subjects):
            return False
    if rule.files:
        files = series.files()
        if not any(fnmatch.fnmatch(f, g) for f in files for g in rule.files):
            return False
    return True


def describe_rule(rule: BaseRule) -> str:
    parts = []
    if rule.lists:
        parts.append("list " + "|".join(rule.lists))
    if rule.subject_tags:
        parts.append("subject " + "|".join(repr(t) for t in rule.subject_tags))
    if rule.files:
        parts.append("files " + "|".join(rule.files))
    return ", ".join(parts) or "any series"
