"""Files the web app shows: a job's artifact folder, build logs, console logs.

Two rules make these safe to serve from URLs:
- an artifact URL names a path *inside* the job's folder: every part is checked (no "..",
  no empty or absolute parts, no NUL or backslash) and the resolved file must still lie under
  the folder's resolved path, so neither `..` nor a symlink leads out of it;
- console and build logs are found through the store (a boot's stored TestRun, a stored
  BuildResult), picked by job and step key: no URL ever carries a file path for them.
A view shows a bounded tail, with control characters (a guest's escape sequences) drawn as
visible symbols; the whole file is only ever a download (attachment, text/plain, nosniff).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from bot.errors import UserError

TAIL_BYTES = 64 * 1024  # what a log view shows at most: the end of the file
MAX_LISTED = 500  # entries of an artifact folder listed at most
MAX_DEPTH = 4


@dataclass(frozen=True)
class Tail:
    """The end of a text file, ready to show: `lines` never hold control characters."""

    lines: tuple[str, ...]
    size: int  # the file's size in bytes
    shown: int  # bytes shown (the tail)
    truncated: bool  # the file is longer than what is shown


@dataclass(frozen=True)
class ListedFile:
    rel: str  # path under the folder, "/"-separated
    size: int


# C0 controls and DEL as the Unicode "control pictures" (U+2400..): inert, and visible, so
# an escape sequence in a console log shows as "␛[31m" instead of vanishing or acting.
_CONTROL = {c: 0x2400 + c for c in range(0x20) if c not in (0x09, 0x0A)}
_CONTROL[0x7F] = 0x2421
# C1 controls (U+0080..U+009F) have no pictures: shown as a replacement character.
_CONTROL.update({c: 0xFFFD for c in range(0x80, 0xA0)})


def clean_line(text: str) -> str:
    """A line with its control characters replaced by visible, inert symbols."""
    return text.translate(_CONTROL)


def read_tail(path: Path, limit: int = TAIL_BYTES) -> Tail:
    """The last `limit` bytes of a regular file, as clean lines (first partial line dropped)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{path.name} is not a regular file")
        size = info.st_size
        start = max(0, size - limit)
        os.lseek(fd, start, os.SEEK_SET)
        data = b""
        while len(data) < size - start:
            chunk = os.read(fd, size - start - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if start > 0 and len(lines) > 1:
        lines = lines[1:]  # begins mid-line
    if lines and lines[-1] == "":
        lines.pop()
    return Tail(tuple(clean_line(ln.removesuffix("\r")) for ln in lines), size, len(data),
                start > 0)


def regular_file(path: Path) -> bool:
    """An existing regular file (a symlink is not followed: False)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def safe_join(root: Path, rel: str) -> Path | None:
    """`rel` (from a URL) as a regular file inside `root`, or None. Never leaves `root`:
    ".." and empty parts are refused and the resolved path must stay under `root`'s."""
    if not rel or len(rel) > 1024 or "\x00" in rel or "\\" in rel or rel.startswith("/"):
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    try:
        base = root.resolve(strict=True)
        target = base.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(base) or target == base:
        return None
    return target if regular_file(target) else None


def list_folder(root: Path) -> tuple[tuple[ListedFile, ...], bool]:
    """Regular files under `root` (sorted, at most MAX_LISTED, MAX_DEPTH deep; symlinks
    skipped) and whether the listing was cut."""
    out: list[ListedFile] = []
    cut = False

    def walk(folder: Path, prefix: str, depth: int) -> None:
        nonlocal cut
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            if len(out) >= MAX_LISTED:
                cut = True
                return
            if e.is_symlink():
                continue
            rel = f"{prefix}{e.name}"
            if e.is_dir(follow_symlinks=False):
                if depth < MAX_DEPTH:
                    walk(Path(e.path), rel + "/", depth + 1)
                else:
                    cut = True
            elif e.is_file(follow_symlinks=False):
                out.append(ListedFile(rel, e.stat(follow_symlinks=False).st_size))

    if root.is_dir() and not root.is_symlink():
        walk(root, "", 1)
    return tuple(out), cut
