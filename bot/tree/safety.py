"""Checks a patch must pass before kbot lets `git am` write it into a worktree.

A patch from a mailing list is untrusted: it may name paths outside the tree (absolute, `..`,
`.git/`), create or change symlinks that later patches (or the build) write through, or carry
binary blobs big enough to fill a disk. A refused patch is a REJECTED result naming the patch,
the path and the rule, never a conflict.

The checks read the bytes `git am` will read (the mail body) the way `git apply` reads them
(apply.c): C-quoted names are decoded with git's own rules (unquote_c_style), names are taken
from every header line git takes them from (`diff --git`, `---`/`+++`, rename/copy from/to and
git's older `rename old`/`rename new`), with one and with zero leading components stripped
(git guesses -p0 for some plain diffs), and modes are read as git's strtoul() reads them (so
`0120000` and `120777` are symlinks too). Where git could read a name two ways, both are
checked: the checks may refuse a patch git would have refused anyway, never the other way round.
The base tree (`git ls-tree`) says which named paths, or directories above them, are already
symlinks or submodules: a patch without mode lines can still retarget, rename or copy those.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.intake.patch import unquote_c_style
from bot.tree import git

MAX_BINARY_BYTES = 1024 * 1024
MAX_PATCH_BYTES = 16 * 1024 * 1024
S_IFMT = 0o170000
SYMLINK_MODE = 0o120000
GITLINK_MODE = 0o160000
DIR_MODE = 0o040000  # git's create_ce_mode() turns a directory mode into a gitlink
LS_TREE_BATCH = 1000  # pathspecs per `git ls-tree` call (argv stays far below ARG_MAX)

# git's own isspace() (git-compat-util.h sane_ctype): space, tab, LF and CR, not VT/FF.
_GIT_SPACE = b" \t\n\r"
_TERM_SPACE, _TERM_TAB = 1, 2
# Header lines that carry names, as apply.c's parse_git_diff_header() optable spells them.
_NAME_HEADERS = (b"rename from ", b"rename to ", b"rename old ", b"rename new ",
                 b"copy from ", b"copy to ")
_MODE_HEADERS = (b"old mode ", b"new mode ", b"deleted file mode ", b"new file mode ")
_BINARY = re.compile(rb"^(?:literal|delta) (?P<size>\d+)$")
# The zero-width code points HFS+ ignores in names (git's is_hfs_dotgit()).
_HFS_IGNORABLE = frozenset(
    "\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u206a\u206b\u206c\u206d\u206e"
    "\u206f\ufeff"
)
_SYMLINKS_REFUSED = "kbot refuses patches that touch symlinks"
_SUBMODULES_REFUSED = "kbot refuses patches that touch submodules"


@dataclass(frozen=True)
class PatchProblem:
    patch: int  # index in the series (1-based), 0 when unknown
    path: str
    problem: str

    def __str__(self) -> str:
        where = f"patch {self.patch}: " if self.patch else ""
        return f"{where}{self.path}: {self.problem}" if self.path else f"{where}{self.problem}"


@dataclass(frozen=True)
class NamedPath:
    """A name git could take from one header line of a patch."""

    path: str  # decoded as UTF-8 (undecodable bytes kept as surrogates)
    header: str  # the header that names it: "diff --git", "+++", "rename from", ...
    line: int  # 1-based line of the patch text


@dataclass(frozen=True)
class PatchScan:
    """What the text of one patch shows: its problems and every name git could use."""

    index: int
    problems: tuple[PatchProblem, ...]
    names: tuple[NamedPath, ...]


# -- git's name parsing (apply.c), on bytes ---------------------------------------------------


def _squash_slash(name: bytes | None) -> bytes | None:
    return None if name is None else re.sub(rb"/+", b"/", name)


def _find_name_gnu(buf: bytes, pos: int, p_value: int) -> bytes | None:
    """apply.c find_name_gnu(): a quoted name, `p_value` leading components removed."""
    found = unquote_c_style(buf, pos)
    if found is None:
        return None
    name, cp = found[0], 0
    for _ in range(p_value):
        slash = name.find(b"/", cp)
        if slash < 0:
            return None
        cp = slash + 1
    return _squash_slash(name[cp:])


_NAME_STOPS = {t: re.compile(b"[\n\r" + (b" " if t & _TERM_SPACE else b"")
                              + (b"\t" if t & _TERM_TAB else b"") + b"]")
               for t in (0, _TERM_SPACE, _TERM_TAB, _TERM_SPACE | _TERM_TAB)}


def _find_name_common(buf: bytes, pos: int, p_value: int, end: int | None,
                      terminate: int) -> bytes | None:
    """apply.c find_name_common() without a default name (callers check the default too):
    the name ends at `end`, else at a newline, a CR (git's name_terminate()) or the space or
    tab `terminate` asks for; `p_value` leading components are skipped."""
    if end is None:
        found = _NAME_STOPS[terminate].search(buf, pos)
        end = found.start() if found else len(buf)
    start = pos
    for _ in range(p_value):
        slash = buf.find(b"/", start, end)
        if slash < 0:
            return None
        start = slash + 1
    if start == end:
        return None
    return _squash_slash(buf[start:end])


def _isdigit(c: int) -> bool:
    return 0x30 <= c <= 0x39


def _digits_at(line: bytes, at: int, shape: bytes) -> bool:
    """`line[at:]` starts with `shape`, where each 'd' in it stands for a digit."""
    if at < 0 or at + len(shape) > len(line):
        return False
    return all(_isdigit(c) if s == 0x64 else c == s
               for c, s in zip(line[at:at + len(shape)], shape, strict=True))


def _diff_timestamp_len(line: bytes) -> int:
    """apply.c diff_timestamp_len(): how much of a `---`/`+++` name line (no newline) is a
    diff(1) timestamp with the white space before it (0: none). Posix `2010-07-05 19:41:17`,
    GNU `2010-07-05 19:41:17.620000023 -0500`."""
    n = end = len(line)
    if not n or not _isdigit(line[-1]):
        return 0
    if _digits_at(line, end - 6, b" +dddd") or _digits_at(line, end - 6, b" -dddd"):
        end -= 6  # sane_tz_len
    elif _digits_at(line, end - 7, b" +dd:dd") or _digits_at(line, end - 7, b" -dd:dd"):
        end -= 7  # tz_with_colon_len
    if _digits_at(line, end - 9, b" dd:dd:dd"):
        end -= 9  # short_time_len
    elif end and _isdigit(line[end - 1]):  # fractional_time_len
        p = end - 1
        while p > 0 and _isdigit(line[p]):
            p -= 1
        if line[p] == 0x2E and _digits_at(line, p - 9, b" dd:dd:dd"):
            end = p - 9
    if not _digits_at(line, end - 8, b"dd-dd-dd"):
        return 0  # date_len: no date, too bad
    end -= 8
    if end >= 2 and _isdigit(line[end - 1]) and _isdigit(line[end - 2]):
        end -= 2  # a 4-digit year
    if end == 0:
        return 0
    if line[end - 1] == 0x09:
        return n - (end - 1)
    if line[end - 1] != 0x20:
        return 0
    while end and line[end - 1] == 0x20:  # trailing_spaces_len: white space damage
        end -= 1
    return n - end


def _find_names(buf: bytes, pos: int, p_values: Sequence[int], terminate: int,
                traditional: bool) -> list[bytes]:
    """Every name apply.c find_name() (and, with `traditional`, find_name_traditional())
    could return for the name at `pos`, for each of `p_values`: a C-quoted name decoded as git
    decodes it, else (also where git's unquoting fails, as git falls back) the bare text."""
    out: list[bytes] = []
    eol = buf.find(b"\n", pos)
    eol = len(buf) if eol < 0 else eol
    stamp = _diff_timestamp_len(buf[pos:eol]) if traditional else 0
    for p in p_values:
        if buf[pos:pos + 1] == b'"':
            name = _find_name_gnu(buf, pos, p)
            if name is not None:
                out.append(name)
                continue
        for end, term in ((None, terminate), (eol - stamp if stamp else None, 0)):
            found = _find_name_common(buf, pos, p, end, term)
            if found is not None:
                out.append(found)
    return list(dict.fromkeys(out))


def _skip_tree_prefix(p_value: int, name: bytes) -> int | None:
    """apply.c skip_tree_prefix(): the offset after `p_value` components, None if absolute."""
    if not p_value:
        return None if name[:1] == b"/" else 0
    for i, ch in enumerate(name):
        if ch == 0x2F:
            p_value -= 1
            if p_value <= 0:
                return None if i == 0 else i + 1
    return None


def git_header_name(p_value: int, data: bytes, pos: int = 0) -> bytes | None:
    """apply.c git_header_name() for the `diff --git A B` line at `data[pos]`: the one name
    both sides give (after `p_value` components); None for a rename or copy, whose names come
    from their own header lines. A quoted name is read on into later lines, as git does."""
    start = pos + len(b"diff --git ")
    eol = data.find(b"\n", start)
    end = len(data) if eol < 0 else eol + 1  # git's `line + llen`: just past the newline
    if data[start:start + 1] == b'"':
        found = unquote_c_style(data, start)
        if found is None:
            return None
        first, second = found
        cp = _skip_tree_prefix(p_value, first)
        if cp is None:
            return None
        first = first[cp:]
        while second < end and data[second] in _GIT_SPACE:
            second += 1
        if second >= end:
            return None
        if data[second] == 0x22:
            other = unquote_c_style(data, second)
            if other is None:
                return None
            cp = _skip_tree_prefix(p_value, other[0])
            return first if cp is not None and other[0][cp:] == first else None
        tail = data[second:end]
        cp = _skip_tree_prefix(p_value, tail)
        # git compares against the rest of the line *with* its newline: it never matches.
        if cp is None or tail[cp:] != first:
            return None
        return first
    line = data[start:end]
    name_at = _skip_tree_prefix(p_value, line)
    if name_at is None:
        return None
    name = line[name_at:]
    quote = name.find(b'"')
    if quote >= 0:
        found = unquote_c_style(data, start + name_at + quote)
        if found is None:
            return None
        np = _skip_tree_prefix(p_value, found[0])
        if np is None:
            return None
        tail = found[0][np:]
        n = len(tail)
        if n < quote and name[:n] == tail and name[n:n + 1] in (b" ", b"\t", b"\n", b"\r"):
            return tail
        return None
    line_len = name.find(b"\n")
    if line_len < 0:
        return None
    for n, c in enumerate(name):
        if c == 0x0A:
            return None
        if c not in (0x09, 0x20):
            continue
        at = _skip_tree_prefix(p_value, name[n + 1:line_len])
        if at is None:
            continue
        other_name = name[n + 1 + at:]
        if other_name[n:n + 1] == b"\n" and other_name[:n] == name[:n]:
            return name[:n]
    return None


def _quote_starts(line: bytes) -> list[int]:
    """Where on a header line git starts to unquote a C-quoted name (apply.c: the name after
    `---`/`+++`/`rename from`...; on `diff --git`, the first name, the second one after a
    quoted first, or the first quote after an unquoted first)."""
    if line.startswith(b"diff --git "):
        start = len(b"diff --git ")
        if line[start:start + 1] != b'"':
            quote = line.find(b'"', start)
            return [quote] if quote >= 0 else []
        found = unquote_c_style(line, start)
        if found is None:
            return [start]
        second = found[1]
        while second < len(line) and line[second] in _GIT_SPACE:
            second += 1
        return [start, second] if line[second:second + 1] == b'"' else [start]
    if line.startswith((b"--- ", b"+++ ")):
        return [4] if line[4:5] == b'"' else []
    for header in _NAME_HEADERS:
        if line.startswith(header):
            return [len(header)] if line[len(header):len(header) + 1] == b'"' else []
    return []


def _quote_runs_on(line: bytes) -> bool:
    """A quoted name on this header line that git's unquote_c_style() would read on past the
    end of the line (it does not stop at newlines). git itself never writes such a name."""
    probe_line = line + b'\n"'
    for at in _quote_starts(line):
        probe = unquote_c_style(probe_line, at)
        if probe is not None and probe[1] == len(probe_line):
            return True  # closed only by the quote added after the newline: it reads on
    return False


def _quoted_nul(line: bytes) -> bool:
    """A quoted name on this header line decodes to a NUL (`\\000`): git reads such a name
    only up to the NUL, everything after it would be unchecked text."""
    for at in _quote_starts(line):
        found = unquote_c_style(line, at)
        if found is not None and b"\0" in found[0]:
            return True
    return False


_STRTOUL_OCTAL = re.compile(rb"[ \t\n\v\f\r]*([+-]?)([0-7]+)")


def _parse_mode(data: bytes, at: int) -> int | None:
    """apply.c parse_mode_line(): strtoul(data + at, 8) as an unsigned int, None where git
    errors. Like strtoul it skips leading white space, newlines included (a mode may sit on
    the next line), and like git it wants white space right after the digits."""
    m = _STRTOUL_OCTAL.match(data, at)
    if m is None or data[m.end():m.end() + 1] not in (b" ", b"\t", b"\n", b"\v", b"\f", b"\r"):
        return None
    value = min(int(m.group(2), 8), 2**64 - 1)  # strtoul saturates at ULONG_MAX
    if m.group(1) == b"-":
        value = (-value) % 2**64
    return value & 0xFFFFFFFF


def _index_mode(data: bytes, at: int) -> int | None:
    """apply.c gitdiff_index() on the text at `at` (after `index `): the mode after
    `OLD..NEW `, if any. git's strchr() calls may look past the end of the line, so does this;
    ids up to 64 hex digits (SHA-256) count."""
    dot = data.find(b".", at)
    if dot < 0 or data[dot + 1:dot + 2] != b"." or dot - at > 64:
        return None
    new = dot + 2
    space = data.find(b" ", new)
    eol = data.find(b"\n", new)
    eol = len(data) if eol < 0 else eol
    if space < 0 or eol < space or space - new > 64:
        return None
    return _parse_mode(data, space + 1)


def _is_dev_null(text: bytes) -> bool:
    return text.startswith(b"/dev/null") and text[9:10] in (b" ", b"\t", b"\n", b"\r")


# -- the rules --------------------------------------------------------------------------------


_DROP_HFS_IGNORABLE = {ord(c): None for c in _HFS_IGNORABLE}
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_SURROGATE = re.compile("[\udc80-\udcff]")
MAX_PATH = 4096  # Linux PATH_MAX: no longer name can be written anyway


def _is_dotgit(component: str) -> bool:
    """`.git` as git's verify_path() sees it with core.protectHFS/NTFS: any case, HFS+
    ignorable code points, NTFS trailing dots/spaces, `.git:stream` and the short `git~1`."""
    c = component.translate(_DROP_HFS_IGNORABLE).lower()
    return c.rstrip(". ") == ".git" or c.startswith(".git:") or c == "git~1"


def path_problem(path: str) -> str | None:
    """Why a patch may not name `path` (a decoded name), or None."""
    if not path or path == "/dev/null":
        return None
    if len(path) > MAX_PATH:
        return f"path longer than {MAX_PATH} characters"
    if _CONTROL.search(path):
        return "control character in path"
    if _SURROGATE.search(path):
        return "path is not valid UTF-8"
    if path.startswith("/"):
        return "absolute path"
    # A backslash is a directory separator to Windows checkouts of the same tree.
    for component in re.split(r"[/\\]", path):
        if component == "..":
            return "'..' in path"
        if component == ".":
            return "'.' component in path"
        if _is_dotgit(component):
            return "path inside .git"
    return None


def _mode_problem(mode: int, header: str) -> str | None:
    kind = mode & S_IFMT
    shown = f"{header} {mode:o}"
    if kind == SYMLINK_MODE:
        return f"symlink ({shown}): {_SYMLINKS_REFUSED}"
    if kind in (GITLINK_MODE, DIR_MODE):
        return f"submodule (gitlink) entry ({shown}): {_SUBMODULES_REFUSED}"
    return None


def _decode(name: bytes) -> str:
    return name.decode("utf-8", errors="surrogateescape")


def scan_patch(data: bytes, index: int = 0, max_binary: int = MAX_BINARY_BYTES) -> PatchScan:
    """Read one patch's text (what `git apply` gets: the mail body) as git would, every line.

    Every line is looked at, not only the ones git's parser would reach (a line git skips as
    part of a hunk cannot start with a header word, and the commit message part of a mail is
    looked at too): the scan can only see more names than git, never fewer.
    """
    problems: list[PatchProblem] = []
    names: list[NamedPath] = []
    if len(data) > MAX_PATCH_BYTES:
        problems.append(PatchProblem(index, "", f"patch larger than {MAX_PATCH_BYTES} bytes"))
    if b"\0" in data:
        # git's parser works on C strings: a NUL would make it read names differently.
        problems.append(PatchProblem(index, "", "NUL byte in the patch text"))
        return PatchScan(index, tuple(problems), ())
    lines = data.split(b"\n")
    offsets = [0]
    for ln in lines[:-1]:
        offsets.append(offsets[-1] + len(ln) + 1)
    current = ""  # the file the last header named, for mode and binary problems

    def add_names(found: Iterable[bytes], header: str, lineno: int) -> None:
        nonlocal current
        decoded = [_decode(f) for f in found]
        for path in decoded:
            names.append(NamedPath(path, header, lineno))
        if decoded:
            current = decoded[0]
            # One problem per header line: the first reading (-p1 before -p0) that has one.
            for path in decoded:
                if why := path_problem(path):
                    shown = path if len(path) <= 300 else path[:300] + "..."
                    problems.append(PatchProblem(index, shown, why))
                    break

    for k, line in enumerate(lines):
        lineno = k + 1
        pos = offsets[k]
        if line.startswith((b"diff --git ", b"--- ", b"+++ ", *_NAME_HEADERS)) and b'"' in line:
            if _quote_runs_on(line):
                # Refused: its name would be read from the lines below (and reading it there
                # for every such line could cost time quadratic in the patch size).
                problems.append(PatchProblem(index, current,
                                             "quoted path runs on past the end of its line"))
                continue
            if _quoted_nul(line):
                problems.append(PatchProblem(index, current, "NUL byte (\\000) in a quoted path"))
        if line.startswith(b"diff --git "):
            found = [n for p in (1, 0) if (n := git_header_name(p, data, pos)) is not None]
            add_names(dict.fromkeys(found), "diff --git", lineno)
            if not found:
                # A rename/copy: the real names come from its own header lines. Name the file
                # by the `b/` side for the problems below.
                current = _decode(line.rsplit(b" b/", 1)[-1]) if b" b/" in line else current
        elif line.startswith((b"--- ", b"+++ ")):
            if not _is_dev_null(line[4:] + b"\n"):
                add_names(_find_names(data, pos + 4, (1, 0), _TERM_TAB, True),
                          line[:3].decode(), lineno)
        elif line.startswith(_NAME_HEADERS):
            header = line[:line.index(b" ", line.index(b" ") + 1)]
            # rename/copy names are read with one component less than ---/+++: -p0.
            add_names(_find_names(data, pos + len(header) + 1, (0,), 0, False),
                      header.decode(), lineno)
        elif line.startswith(_MODE_HEADERS):
            header = next(h for h in _MODE_HEADERS if line.startswith(h))
            mode = _parse_mode(data, pos + len(header))
            if mode is not None and (why := _mode_problem(mode, header.decode().strip())):
                problems.append(PatchProblem(index, current, why))
        elif line.startswith(b"index "):
            mode = _index_mode(data, pos + 6)
            if mode is not None and (why := _mode_problem(mode, "index")):
                problems.append(PatchProblem(index, current, why))
        elif m := _BINARY.match(line):
            digits = m["size"].lstrip(b"0") or b"0"
            if len(digits) > 18 or int(digits) > max_binary:
                size = digits.decode() if len(digits) <= 18 else f"over 10^{len(digits) - 1}"
                problems.append(PatchProblem(
                    index, current, f"binary blob of {size} bytes (limit {max_binary})"
                ))
        elif line.startswith(b"Binary files ") and line.endswith(b" differ"):
            problems.append(PatchProblem(index, current, "binary change without its content"))
    return PatchScan(index, tuple(dict.fromkeys(problems)), tuple(names))


def check_diff(diff: str, index: int = 0, max_binary: int = MAX_BINARY_BYTES) -> list[PatchProblem]:
    """Problems visible in a patch's text (see scan_patch)."""
    return list(scan_patch(diff.encode("utf-8", errors="surrogateescape"), index,
                           max_binary).problems)


def diff_paths(diff: str) -> tuple[str, ...]:
    """The names git reads from a diff with its usual -p1 (first reading of each header line)."""
    scan = scan_patch(diff.encode("utf-8", errors="surrogateescape"))
    firsts: dict[int, str] = {}
    for n in scan.names:
        firsts.setdefault(n.line, n.path)
    return tuple(dict.fromkeys(firsts.values()))


def _tree_modes(repo: Path, base: str, paths: Sequence[str]) -> dict[str, int]:
    """Mode of each of `paths` that exists in `base` (`git ls-tree`, names taken literally)."""
    modes: dict[str, int] = {}
    for at in range(0, len(paths), LS_TREE_BATCH):
        batch = paths[at:at + LS_TREE_BATCH]
        out = git.git(repo, "--literal-pathspecs", "ls-tree", "-z", base, "--", *batch).stdout
        for record in out.split("\0"):
            meta, tab, name = record.partition("\t")
            if tab:
                modes[name] = int(meta.split(" ")[0], 8)
    return modes


def tree_problems(repo: Path, base: str, scans: Iterable[PatchScan]) -> list[PatchProblem]:
    """Names that are, or go through, a symlink or a submodule in the base tree: a diff
    without mode lines still retargets, renames or copies such a path, or writes through it."""
    wanted: list[tuple[int, NamedPath]] = []
    queries: dict[str, None] = {}
    for scan in scans:
        for named in scan.names:
            if path_problem(named.path) is not None:
                continue  # refused already, and not a name to hand to git
            wanted.append((scan.index, named))
            parts = named.path.split("/")
            for i in range(1, len(parts) + 1):
                queries.setdefault("/".join(parts[:i]), None)
    if not queries:
        return []
    modes = _tree_modes(repo, base, list(queries))
    problems: dict[PatchProblem, None] = {}
    for index, named in wanted:
        parts = named.path.split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            kind = modes.get(prefix, 0) & S_IFMT
            if kind not in (SYMLINK_MODE, GITLINK_MODE):
                continue
            what = "symlink" if kind == SYMLINK_MODE else "submodule"
            rule = _SYMLINKS_REFUSED if kind == SYMLINK_MODE else _SUBMODULES_REFUSED
            if i == len(parts):
                why = f"is a {what} in the base tree (named by '{named.header}'): {rule}"
            else:
                why = f"goes through {what} {prefix} in the base tree"
            problems.setdefault(PatchProblem(index, named.path, why), None)
            break
    return list(problems)


def am_body(mail: bytes) -> bytes:
    """The body of a mail as `git am` hands it on: after the header block, CRLF made LF (its
    mailsplit step). The patch git applies is a part of this, so checking all of it is safe."""
    ends = [(at, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (at := mail.find(sep)) >= 0]
    if not ends:
        return b""
    at, size = min(ends)
    return mail[at + size:].replace(b"\r\n", b"\n")


def check_patches(repo: Path, base: str, mails: Iterable[tuple[int, bytes]],
                  max_binary: int = MAX_BINARY_BYTES) -> tuple[PatchProblem, ...]:
    """Every problem of a series: (index, the mail `git am` will read) per patch."""
    scans = [scan_patch(am_body(mail), index, max_binary) for index, mail in mails]
    problems = [p for s in scans for p in s.problems]
    problems.extend(tree_problems(repo, base, scans))
    return tuple(dict.fromkeys(problems))
