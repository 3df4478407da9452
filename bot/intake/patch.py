"""A patch mail's body -> commit message, diff, files touched, trailers, footers, patch-id.

`patch_id()` is a port of git's `patch-id --stable` (builtin/patch-id.c, get_one_patchid with
stable=1, verbatim=0): per file, SHA-1 over the diff lines with all whitespace removed (index
lines and hunk headers left out), the per-file digests added together bytewise with carry. Tests
compare it with real `git patch-id --stable` on generated patches.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from bot.errors import InputError
from bot.intake.model import Person, Trailer

# Canonical case of the trailers kbot understands.
TRAILER_NAMES: dict[str, str] = {
    n.lower(): n
    for n in (
        "Signed-off-by", "Reviewed-by", "Acked-by", "Tested-by", "Reported-by", "Suggested-by",
        "Fixes", "Link", "Closes", "Co-developed-by",
    )
}
# A reply may add review trailers; authorship trailers only count inside the patch itself.
REPLY_TRAILERS = frozenset(
    {"Reviewed-by", "Acked-by", "Tested-by", "Reported-by", "Suggested-by", "Fixes", "Link",
     "Closes"}
)
_DIFF_START = re.compile(r"^diff --git |^diff -|^Index: |^--- \S")
# Line counts of at most 18 digits: a longer one is no real hunk, and int() refuses numbers of
# over 4300 digits (a ValueError, not an InputError) anyway.
_HUNK = re.compile(r"^@@ -([0-9]{1,18})(?:,([0-9]{1,18}))? \+([0-9]{1,18})(?:,([0-9]{1,18}))? @@")
_IN_BODY_HEADER = re.compile(r"^(From|Subject|Date):\s*(.*)$")
_BASE_COMMIT = re.compile(r"^base-commit:\s*([0-9a-fA-F]{7,64})\s*$", re.M)
_PREREQ = re.compile(r"^prerequisite-patch-id:\s*([0-9a-fA-F]{40,64})\s*$", re.M)
_CHANGE_ID = re.compile(r"^change-id:\s*(\S+)\s*$", re.M)
_BINARY_NEXT = ("literal ", "delta ", "diff --git ")


@dataclass(frozen=True)
class ParsedPatch:
    """The pieces of one patch mail body."""

    commit_message: str
    diff: str
    files: tuple[str, ...]
    trailers: tuple[Trailer, ...]
    in_body_author: Person | None
    in_body_subject: str | None
    patch_id: str


@dataclass(frozen=True)
class Footers:
    base_commit: str | None
    prerequisite_patch_ids: tuple[str, ...]
    change_id: str | None


_DIFF_AT = re.compile(r"(?m)^diff --git |^--- \S[^\n]*\n\+\+\+ [^\n]*\n@@ -")
_PLAIN_DIFF_HEAD = re.compile(r"(?m)^(?:diff |Index: )[^\n]*\n(?:=+\n)?\Z")


def diff_offset(body: str) -> int | None:
    """Where the body's unquoted diff starts (a reply quoting one with `>` has none)."""
    m = _DIFF_AT.search(body)
    if m is None:
        return None
    start = m.start()
    if body.startswith("--- ", start):
        # A plain `diff -u`: start at its `diff`/`Index:` line when there is one.
        before = body[:start]
        prev = before.rfind("\n", 0, len(before) - 1) + 1
        if _PLAIN_DIFF_HEAD.match(before, prev):
            return prev
    return start


def has_diff(body: str) -> bool:
    return diff_offset(body) is not None


# The escapes git's quote_c_style() writes (and unquote_c_style() reads) besides \ooo octal.
_C_ESCAPES = {ord("a"): 7, ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9,
              ord("v"): 11, ord("\\"): 92, ord('"'): 34}


_C_SPECIAL = re.compile(rb'["\\\x00]')


def unquote_c_style(data: bytes, start: int = 0) -> tuple[bytes, int] | None:
    r"""git's quote.c unquote_c_style(): the C-quoted string at `data[start]` (which must be
    `"`) decoded to bytes, and the offset just past its closing quote; None where git fails.

    Byte for byte as git: \a \b \f \n \r \t \v \\ \" and three octal digits whose first
    is 0-3 (any byte, so `\056` is `.`); anything else after a backslash, a NUL or the end of
    the data before the closing quote is an error. Like git it does not stop at a newline.
    """
    if data[start:start + 1] != b'"':
        return None
    out = bytearray()
    i, n = start + 1, len(data)
    while True:
        found = _C_SPECIAL.search(data, i)
        j = found.start() if found else n
        out += data[i:j]
        if j >= n or data[j] == 0x00:
            return None
        i = j + 1
        if data[j] == 0x22:
            return bytes(out), i
        if i >= n:
            return None
        ch = data[i]
        i += 1
        if ch in _C_ESCAPES:
            out.append(_C_ESCAPES[ch])
        elif 0x30 <= ch <= 0x33:  # octal with first digit over 3 would overflow a byte
            value = ch - 0x30
            for _ in range(2):
                if i >= n or not 0x30 <= data[i] <= 0x37:
                    return None
                value = (value << 3) | (data[i] - 0x30)
                i += 1
            out.append(value)
        else:
            return None


def _unquote_path(text: str) -> tuple[str, str]:
    """Parse one path (maybe C-quoted) at the start of text; return (path, rest)."""
    if text.startswith('"'):
        raw = text.encode("utf-8", errors="surrogateescape")
        found = unquote_c_style(raw)
        if found is not None:
            value, end = found
            rest = raw[end:].decode("utf-8", errors="surrogateescape")
            return value.decode("utf-8", errors="replace"), rest.lstrip(" ")
    path, _, rest = text.partition("\t")
    return path.rstrip(), rest


def _strip_prefix(path: str) -> str | None:
    if path == "/dev/null":
        return None
    if path.startswith(("a/", "b/")):
        return path[2:]
    return path


def _git_header_paths(line: str) -> tuple[str, str] | None:
    rest = line[len("diff --git "):]
    if rest.startswith('"'):
        a, rest2 = _unquote_path(rest)
        b, _ = _unquote_path(rest2)
        return a, b
    # `a/P b/P` with identical P (mode-only or binary change): split in the middle.
    if len(rest) % 2 == 1:
        half = (len(rest) - 1) // 2
        if rest[half] == " " and rest[2:half] == rest[half + 3:]:
            return rest[:half], rest[half + 1:]
    parts = rest.split(" b/", 1)
    if len(parts) == 2:
        return parts[0], "b/" + parts[1]
    return None


def split_diff(lines: list[str], start: int, who: str) -> tuple[list[str], tuple[str, ...], int]:
    """The diff lines from `start`, the files it touches, and the index just past it.

    The diff ends where its last hunk's line counts are used up and a line follows that starts
    no new file (the `-- ` signature, a base-commit footer). A hunk cut short raises InputError.
    """
    files: dict[str, None] = {}
    i = start
    n = len(lines)
    out: list[str] = []
    old_path: str | None = None
    while i < n:
        line = lines[i]
        if line.startswith("diff --git "):
            paths = _git_header_paths(line)
            if paths:
                for p in paths:
                    sp = _strip_prefix(p)
                    if sp:
                        old_path = sp
                        break
                b = _strip_prefix(paths[1])
                if b:
                    files.setdefault(b, None)
            out.append(line)
            i += 1
            continue
        if line.startswith("rename from ") or line.startswith("copy from "):
            files.setdefault(line.split(" ", 2)[2], None)
        elif line.startswith("rename to ") or line.startswith("copy to "):
            files.setdefault(line.split(" ", 2)[2], None)
        elif line.startswith("--- "):
            p, _ = _unquote_path(line[4:])
            old_path = _strip_prefix(p)
        elif line.startswith("+++ "):
            p, _ = _unquote_path(line[4:])
            new_path = _strip_prefix(p)
            target = new_path or old_path
            if target:
                files.setdefault(target, None)
            if old_path and new_path and old_path != new_path:
                files.setdefault(old_path, None)
        elif line.startswith("@@ -"):
            m = _HUNK.match(line)
            if m is None:
                raise InputError(f"{who}: bad hunk header at diff line {i - start + 1}: {line!r}")
            before = int(m.group(2)) if m.group(2) is not None else 1
            after = int(m.group(4)) if m.group(4) is not None else 1
            out.append(line)
            i += 1
            while before > 0 or after > 0:
                if i >= n:
                    raise InputError(
                        f"{who}: diff is truncated: hunk {line!r} is missing "
                        f"{before} old / {after} new lines"
                    )
                h = lines[i]
                c = h[:1]
                if c == " " or h == "":
                    # Some mailers strip the trailing space of empty context lines.
                    before -= 1
                    after -= 1
                elif c == "-":
                    before -= 1
                elif c == "+":
                    after -= 1
                elif c != "\\":
                    raise InputError(
                        f"{who}: diff is truncated or mangled: unexpected {h[:60]!r} inside "
                        f"hunk {line!r}"
                    )
                out.append(h)
                i += 1
            while i < n and lines[i].startswith("\\ "):
                out.append(lines[i])
                i += 1
            continue
        elif line == "" and i + 1 < n and lines[i + 1].startswith(_BINARY_NEXT):
            pass  # blank lines separate the parts of a binary patch
        elif out and not _is_header_line(line):
            break
        out.append(line)
        i += 1
    return out, tuple(files), i


_HEADER_WORDS = (
    "index ", "old mode ", "new mode ", "deleted file mode ", "new file mode ", "similarity index ",
    "dissimilarity index ", "rename from ", "rename to ", "copy from ", "copy to ",
    "Binary files ", "GIT binary patch", "literal ", "delta ", "Index: ", "====", "diff ",
)


def _is_header_line(line: str) -> bool:
    if line.startswith(_HEADER_WORDS):
        return True
    # Lines of a base85 binary patch: a length letter then base85 text.
    return bool(line) and line[0].isalpha() and " " not in line and len(line) <= 71


def _flush(result: list[int], ctx: hashlib._Hash) -> hashlib._Hash:
    digest = ctx.digest()
    carry = 0
    for k in range(len(result)):
        carry += result[k] + digest[k]
        result[k] = carry & 0xFF
        carry >>= 8
    return hashlib.sha1()


def _atoi(digits: bytes) -> int:
    """C's atoi() as glibc does it: strtol() saturating at LONG_MAX, then cut to an int."""
    digits = digits.lstrip(b"0") or b"0"
    value = int(digits) if len(digits) <= 19 else 2**63 - 1
    value = min(value, 2**63 - 1) & 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


def _scan_hunk_header(line: bytes) -> tuple[int, int] | None:
    m = re.match(rb"@@ -\d*(?:,(\d*))? \+\d*(?:,(\d*))?", line)
    if m is None:
        return None
    before = _atoi(m.group(1)) if m.group(1) is not None else 1
    after = _atoi(m.group(2)) if m.group(2) is not None else 1
    return before, after


_PID_DROP = re.compile(rb"(?m)^(?:index [^\n]*|@@ -[^\n]*|\\ [^\n]{10,})\n")
_PID_SECTION = re.compile(rb"(?m)^(?=diff )")


def patch_id(diff: str) -> str:
    """`git patch-id --stable` of a diff; '' when it holds no diff (git prints nothing).

    The common case (text diffs, every file with `---`/`+++`) is hashed per file in bulk:
    drop index lines, hunk headers and "\\ No newline" markers, delete whitespace, SHA-1.
    Anything else (binary, mode-only sections) takes git's line-by-line state machine.
    """
    data = diff.encode("utf-8", errors="surrogateescape")
    if (
        data.startswith(b"diff ")
        and b"\nBinary files " not in data
        and b"\nGIT binary patch" not in data
    ):
        sections = [sec for sec in _PID_SECTION.split(data) if sec]
        if all(b"\n--- " in sec for sec in sections):
            result = [0] * 20
            for sec in sections:
                ctx = hashlib.sha1(_PID_DROP.sub(b"", sec).translate(None, b" \t\n\r"))
                _flush(result, ctx)
            return bytes(result).hex()
    return patch_id_exact(diff)


def patch_id_exact(diff: str) -> str:
    """git's get_one_patchid() (stable, not verbatim), line by line."""
    result = [0] * 20
    ctx = hashlib.sha1()
    patchlen = 0
    before = after = -1
    is_binary = False
    pre_oid = post_oid = b""
    for raw in diff.encode("utf-8", errors="surrogateescape").split(b"\n"):
        line = raw + b"\n"
        if line.startswith(b"\\ ") and len(line) > 12:
            continue
        if not patchlen and not line.startswith(b"diff "):
            continue
        if before == -1:
            if line.startswith(b"GIT binary patch") or line.startswith(b"Binary files"):
                is_binary = True
                before = 0
                ctx.update(pre_oid)
                ctx.update(post_oid)
                ctx = _flush(result, ctx)
                continue
            if line.startswith(b"index "):
                dots = line.find(b"..")
                if dots >= 0:
                    end = line.find(b" ", dots)
                    if end < 0:
                        end = len(line) - 1
                    pre_oid = line[6:dots][:64]
                    post_oid = line[dots + 2:end][:64]
                continue
            if line.startswith(b"--- "):
                before = after = 1
            elif not line[:1].isalpha():
                break
        if is_binary:
            if line.startswith(b"diff "):
                is_binary = False
                before = -1
            continue
        if before == 0 and after == 0:
            if line.startswith(b"@@ -"):
                counts = _scan_hunk_header(line)
                if counts is not None:
                    before, after = counts
                continue
            if not line.startswith(b"diff "):
                break
            ctx = _flush(result, ctx)
            before = after = -1
        c = line[:1]
        if c == b" ":
            before -= 1
            after -= 1
        elif c == b"-":
            before -= 1
        elif c == b"+":
            after -= 1
        # git's isspace(): space, tab, LF, CR (not VT/FF, unlike Python's \s).
        stripped = line.translate(None, b" \t\n\r")
        patchlen += len(stripped)
        ctx.update(stripped)
    if patchlen == 0:
        return ""
    _flush(result, ctx)
    return bytes(result).hex()


def _canonical(name: str) -> str | None:
    return TRAILER_NAMES.get(name.lower())


_TRAILER_LINE = re.compile(
    r"(?mi)^(" + "|".join(re.escape(n) for n in TRAILER_NAMES) + r")[ \t]*:[ \t]+(\S[^\n]*?)[ \t]*$"
)


def parse_trailers(text: str, *, source: str = "", allowed: frozenset[str] | None = None
                   ) -> tuple[Trailer, ...]:
    """Known trailers in unquoted lines of `text` (not in a signature), in order, no repeats."""
    sig = text.find("\n-- \n")
    if sig >= 0:
        text = text[:sig]
    found: dict[tuple[str, str], Trailer] = {}
    for m in _TRAILER_LINE.finditer(text):
        name = TRAILER_NAMES[m.group(1).lower()]
        if allowed is not None and name not in allowed:
            continue
        value = m.group(2)
        found.setdefault((name, value), Trailer(name, value, source))
    return tuple(found.values())


def commit_trailers(message: str) -> tuple[Trailer, ...]:
    """Trailers of a commit message: its last paragraph (git interpret-trailers' rule, loosely)."""
    paragraphs = [p for p in re.split(r"\n\s*\n", message.strip()) if p.strip()]
    if not paragraphs:
        return ()
    return parse_trailers(paragraphs[-1])


def footers(body: str) -> Footers:
    text = "\n".join(line for line in body.split("\n") if not line.startswith(">"))
    base = _BASE_COMMIT.search(text)
    change = _CHANGE_ID.search(text)
    return Footers(
        base_commit=base.group(1).lower() if base else None,
        prerequisite_patch_ids=tuple(dict.fromkeys(m.lower() for m in _PREREQ.findall(text))),
        change_id=change.group(1) if change else None,
    )


def _in_body_headers(lines: list[str]) -> tuple[Person | None, str | None, int]:
    """`From:`/`Subject:`/`Date:` lines at the top of the body override the mail's headers."""
    author: Person | None = None
    subject: str | None = None
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    j = i
    seen = False
    while j < len(lines):
        m = _IN_BODY_HEADER.match(lines[j])
        if m is None:
            break
        seen = True
        if m.group(1) == "From":
            from email.utils import parseaddr

            name, addr = parseaddr(m.group(2))
            if addr:
                author = Person(name, addr)
        elif m.group(1) == "Subject":
            subject = m.group(2).strip()
        j += 1
    if seen and (j >= len(lines) or not lines[j].strip()):
        return author, subject, j
    return None, None, 0


def parse_patch_body(body: str, who: str) -> ParsedPatch:
    """Split a patch mail body. Raises InputError when it holds no diff or a broken one."""
    start = diff_offset(body)
    if start is None:
        raise InputError(f"{who}: no diff in the body")
    head = body[:start].split("\n")
    if head and head[-1] == "":
        head.pop()
    author, subject, skip = _in_body_headers(head)
    msg_lines = head[skip:]
    # The commit message ends at the `---` line before the diffstat.
    for k, line in enumerate(msg_lines):
        if line.rstrip() == "---":
            msg_lines = msg_lines[:k]
            break
    commit_message = "\n".join(msg_lines).strip("\n")
    diff_lines, files, _end = split_diff(body[start:].split("\n"), 0, who)
    diff = "\n".join(diff_lines) + "\n"
    return ParsedPatch(
        commit_message=commit_message,
        diff=diff,
        files=files,
        trailers=commit_trailers(commit_message),
        in_body_author=author,
        in_body_subject=subject,
        patch_id=patch_id(diff),
    )
