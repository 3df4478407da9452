"""Configured trees: kbot's own mirrors, scratch worktrees, and base resolution.

kbot never works in a user's checkout. A tree given by URL is mirrored (`git clone --mirror`)
under `<cache_dir>/trees/<name>.git`; a tree given by a local path is mirrored the same way with
`--shared` (objects borrowed through alternates, not copied: a kernel clone is gigabytes), unless
the path lies inside kbot's cache dir (the imported linux-source-6.1), which kbot owns and uses
as it is. Patches are applied in scratch worktrees of the mirror; the commits they make stay in
the mirror under `refs/kbot/`, where builds find them.

The first mirror of a kernel tree moves gigabytes: git's --progress output is turned into
progress lines (at most one every few seconds), and a url tree may name a `reference`, a local
clone of the same project the operator already has, whose objects the clone copies instead of
downloading them. Trees are mirrored when first needed, not all at once: a series without a
base-commit footer costs only the tree it goes to.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from bot import proc
from bot.config import BaseRule, Config, ListSection, TreeSection
from bot.errors import ConfigError, InfraError, UserError
from bot.intake.model import Series
from bot.locks import locked
from bot.tree import git

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 3600.0
PROGRESS_EVERY_S = 5.0  # the most often a mirror's progress is printed
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


def _log_progress(line: str) -> None:
    log.info("%s", line)


class Trees:
    def __init__(
        self, config: Config, *, progress: Callable[[str], None] = _log_progress,
        progress_every_s: float = PROGRESS_EVERY_S,
    ) -> None:
        self.config = config
        self.root = config.cache_dir / "trees"
        self._adhoc: dict[str, TreeSection] = {}  # trees given as a path, by the name they got
        self.progress = progress
        self.progress_every_s = progress_every_s

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
        return self._expand(section.path)

    def _expand(self, path: str) -> Path:
        return Path(path.replace("{cache_dir}", str(self.config.cache_dir))).expanduser()

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
            if section.reference:
                # Borrow the reference clone's objects, then copy them (--dissociate): only what
                # it lacks is downloaded, and the mirror stays whole when the operator's clone
                # is gc'd, pruned or moved. Without --dissociate the mirror would keep reading
                # them through objects/info/alternates (no copy, but a `git gc` there could
                # delete objects the mirror needs: a corrupt tree, found at the next build).
                # -if-able: a reference that is gone costs a full download, not a failure.
                extra = ("--reference-if-able", str(self._expand(section.reference)),
                         "--dissociate")
        digest = hashlib.sha256(origin.encode()).hexdigest()[:8]
        mirror = self.root / f"{section.name}-{digest}.git"
        self.root.mkdir(parents=True, exist_ok=True)
        with locked(self.root / f".{mirror.name}.lock"):
            if not (mirror / "HEAD").is_file():
                tmp = mirror.with_name(mirror.name + ".cloning")
                shutil.rmtree(tmp, ignore_errors=True)
                lines = git.ProgressLines(f"mirroring {section.name} from {origin}",
                                          self.progress, self.progress_every_s)
                git.git_progress(self.root, "clone", "--mirror", "--progress", *extra, origin,
                                 str(tmp), on_progress=lines, timeout=FETCH_TIMEOUT_S)
                self.progress(lines.summary())
                git.git(tmp, "config", "gc.autoDetach", "false")
                # Fetch (and prune) branches and tags only: a mirror's default refs/* refspec
                # would prune kbot's own refs/kbot/* (applied series, pinned builds).
                git.git(tmp, "config", "--replace-all", "remote.origin.fetch",
                        "+refs/heads/*:refs/heads/*")
                git.git(tmp, "config", "--add", "remote.origin.fetch", "+refs/tags/*:refs/tags/*")
                tmp.rename(mirror)
            elif fetch:
                lines = git.ProgressLines(f"fetching {section.name}", self.progress,
                                          self.progress_every_s)
                git.git_progress(mirror, "fetch", "--prune", "--progress", "origin",
                                 on_progress=lines, timeout=FETCH_TIMEOUT_S)
                self.progress(lines.summary())
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
        base-commit footer (if a tree has it), prerequisite patch ids (found in a candidate
        branch), config base rules (list, subject tag, files), the list's own tree/branch,
        the default branch. Trees are searched in that order too — the list's tree first —
        and mirrored only when reached."""
        notes: list[str] = []
        sections = [self.section(tree)] if tree else self._search_order(series, list_name)
        if not sections:
            raise ConfigError(str(self.config.source), "trees", "no trees configured")
        mirrored: dict[str, Tree] = {}

        def get(section: TreeSection) -> Tree:
            if section.name not in mirrored:
                mirrored[section.name] = self.get(section, fetch=fetch)
            return mirrored[section.name]

        if series.base_commit:
            if not _SHA.match(series.base_commit):
                notes.append(f"base-commit {series.base_commit!r} is not a commit id")
            else:
                for s in sections:
                    t = get(s)
                    if git.has_commit(t.mirror, series.base_commit):
                        return ResolvedBase(
                            t.name, None, git.rev_parse(t.mirror, series.base_commit),
                            BaseRuleKind.BASE_COMMIT, f"base-commit {series.base_commit[:12]}",
                        )
                notes.append(
                    f"base-commit {series.base_commit[:12]} not found in "
                    + ", ".join(s.name for s in sections)
                )
        candidates = self._candidates(series, sections, list_name)
        if series.prerequisite_patch_ids:
            wanted = set(series.prerequisite_patch_ids)
            for s, branch, _kind, _detail in candidates:
                t = get(s)
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
        s, branch, kind, detail = candidates[0]
        t = get(s)
        return ResolvedBase(t.name, branch, self.branch_sha(t, branch), kind, detail, tuple(notes))

    def _list(self, list_name: str | None) -> ListSection | None:
        return next((lst for lst in self.config.lists if lst.name == list_name), None)

    def _search_order(self, series: Series, list_name: str | None) -> list[TreeSection]:
        """Every configured tree: the list's own first, then those of matching base rules,
        then the rest in config order."""
        first: list[str] = []
        lst = self._list(list_name)
        if lst is not None and lst.tree:
            first.append(lst.tree)
        first += [r.tree for r in self.config.base_rules if rule_matches(r, series, list_name)]
        by_name = {t.name: t for t in self.config.trees}
        names = dict.fromkeys([*(n for n in first if n in by_name), *by_name])
        return [by_name[n] for n in names]

    def _candidates(
        self, series: Series, sections: Sequence[TreeSection], list_name: str | None
    ) -> list[tuple[TreeSection, str, BaseRuleKind, str]]:
        by_name = {s.name: s for s in sections}
        out: list[tuple[TreeSection, str, BaseRuleKind, str]] = []
        for i, rule in enumerate(self.config.base_rules):
            if rule.tree in by_name and rule_matches(rule, series, list_name):
                out.append((by_name[rule.tree], rule.branch, BaseRuleKind.CONFIG_RULE,
                            f"base_rules[{i}] ({describe_rule(rule)})"))
        lst = self._list(list_name)
        if lst is not None and lst.tree in by_name:
            s = by_name[lst.tree]
            branch = lst.branch or s.default_branch
            out.append((s, branch, BaseRuleKind.CONFIG_RULE,
                        f"list {lst.name}'s tree ({s.name}/{branch})"))
        for s in sections:
            out.append((s, s.default_branch, BaseRuleKind.DEFAULT_BRANCH,
                        f"{s.name}/{s.default_branch}"))
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
