"""Checks a patch must pass before kbot lets `git am` write it into a worktree.

A patch from a mailing list is untrusted: it may name paths outside the tree (absolute, `..`,
`.git/`), create symlinks that later patches (or the build) write through, or carry binary blobs
big enough to fill a disk. These checks read the diff text only (plus, for symlinks already in
the tree, `git ls-tree` of the base), so they run before anything touches a worktree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bot.tree import git

MAX_BINARY_BYTES = 1024 * 1024
MAX_PATCH_BYTES = 16 * 1024 * 1024
SYMLINK_MODE = "120000"
GITLINK_MODE = "160000"

_DIFF_GIT = re.compile(r"^diff --git (?P<a>\S+) (?P<b>\S+)$")
_PATH_LINE = re.compile(
    r"^(?:--- |\+\+\+ |rename from |rename to |copy from |copy to )(?P<path>.+?)(?:\t.*)?$"
)
_MODE = re.compile(r"^(?:new file mode|new mode|deleted file mode|old mode) (?P<mode>\d{6})$")
_BINARY = re.compile(r"^(?:literal|delta) (?P<size>\d+)$")


@dataclass(frozen=True)
class PatchProblem:
    patch: int  # index in the series (1-based), 0 when unknown
    path: str
    problem: str

    def __str__(self) -> str:
        where = f"patch {self.patch}: " if self.patch else ""
        return f"{where}{self.path}: {self.problem}" if self.path else f"{where}{self.problem}"


def _strip_prefix(raw: str, prefix: str) -> str:
    raw = raw.strip()
    if raw.startswith('"') and raw.endswith('"'):
        raw = raw[1:-1]
    return raw[len(prefix):] if prefix and raw.startswith(prefix) else raw


def path_problem(path: str) -> str | None:
    """Why `path` may not appear in a patch, or None."""
    if not path or path == "/dev/null":
        return None
    if "\\" in path and ".." in path:
        return "backslash path"
    if path.startswith("/") or PurePosixPath(path).is_absolute():
        return "absolute path"
    parts = PurePosixPath(path).parts
    if ".." in parts:
        return "'..' in path"
    if any(p.lower() == ".git" for p in parts):
        return "path inside .git"
    if "\0" in path or "\n" in path:
        return "control character in path"
    return None


def diff_paths(diff: str) -> tuple[str, ...]:
    """Every path a diff names, a/ and b/ prefixes removed."""
    paths: dict[str, None] = {}
    for line in diff.splitlines():
        if m := _DIFF_GIT.match(line):
            paths.setdefault(_strip_prefix(m["a"], "a/"), None)
            paths.setdefault(_strip_prefix(m["b"], "b/"), None)
        elif m := _PATH_LINE.match(line):
            raw = m["path"]
            if line.startswith("--- "):
                raw = _strip_prefix(raw, "a/")
            elif line.startswith("+++ "):
                raw = _strip_prefix(raw, "b/")
            paths.setdefault(_strip_prefix(raw, ""), None)
    paths.pop("/dev/null", None)
    return tuple(paths)


def check_diff(diff: str, index: int = 0, max_binary: int = MAX_BINARY_BYTES) -> list[PatchProblem]:
    """Problems visible in the diff text itself."""
    problems: list[PatchProblem] = []
    if len(diff.encode("utf-8", errors="replace")) > MAX_PATCH_BYTES:
        problems.append(PatchProblem(index, "", f"diff larger than {MAX_PATCH_BYTES} bytes"))
    for path in diff_paths(diff):
        if why := path_problem(path):
            problems.append(PatchProblem(index, path, why))
    current = ""
    for line in diff.splitlines():
        if m := _DIFF_GIT.match(line):
            current = _strip_prefix(m["b"], "b/")
        elif m := _MODE.match(line):
            if m["mode"] == SYMLINK_MODE:
                problems.append(PatchProblem(index, current, "creates or changes a symlink"))
            elif m["mode"] == GITLINK_MODE:
                problems.append(PatchProblem(index, current, "submodule (gitlink) entry"))
        elif m := _BINARY.match(line):
            if int(m["size"]) > max_binary:
                problems.append(PatchProblem(
                    index, current, f"binary blob of {m['size']} bytes (limit {max_binary})"
                ))
        elif line.startswith("Binary files ") and line.endswith(" differ"):
            problems.append(PatchProblem(index, current, "binary change without its content"))
    return problems


def symlinks_on_paths(repo: Path, base: str, paths: tuple[str, ...]) -> list[tuple[str, str]]:
    """(path, symlink) for each path whose leading directories include a symlink in `base`:
    applying there would write outside the directory the patch names."""
    paths = tuple(p for p in paths if path_problem(p) is None)  # the others are rejected anyway
    prefixes: dict[str, None] = {}
    for path in paths:
        parts = PurePosixPath(path).parts
        for i in range(1, len(parts)):
            prefixes.setdefault("/".join(parts[:i]), None)
    if not prefixes:
        return []
    out = git.git(repo, "--literal-pathspecs", "ls-tree", base, "--", *prefixes).stdout
    links = set()
    for line in out.splitlines():
        meta, _, name = line.partition("\t")
        if meta.split(" ")[0] == SYMLINK_MODE:
            links.add(name)
    hits = []
    for path in paths:
        parts = PurePosixPath(path).parts
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in links:
                hits.append((path, prefix))
                break
    return hits
