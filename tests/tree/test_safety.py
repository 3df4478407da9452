"""Safety checks: patch text read as `git apply` reads it, and the base tree's symlinks.

The hostile patches below are ones real `git am -3` either applies (a symlink retargeted,
renamed or copied; a symlink mode written as 120777) or refuses only itself, which kbot then
reported as a conflict (C-quoted `..` and `.git` names, a quoted path through a symlink).
Each must be a REJECTED result naming the patch, the path and the rule, with nothing applied.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.config import BotSection, Config, TreeSection
from bot.intake.model import Patch, Person, Series
from bot.intake.patch import unquote_c_style
from bot.tree.apply import ApplyStatus, apply_series, check_series
from bot.tree.safety import (
    check_diff,
    diff_paths,
    path_problem,
    scan_patch,
    tree_problems,
)
from bot.tree.trees import Trees
from tests.build.fake_kernel import commit, git, make_fake_kernel

pytestmark = pytest.mark.timeout(120)

SYMLINKS = "kbot refuses patches that touch symlinks"


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("arch/x86/kvm/x86.c", None),
        ("dots..fine.c", None),
        (".gitignore", None),
        ("tools/.github/x", None),
        ("/etc/passwd", "absolute path"),
        ("../outside.c", "'..' in path"),
        ("arch/../../outside.c", "'..' in path"),
        ("arch\\..\\..\\outside.c", "'..' in path"),
        ("arch/./x.c", "'.' component in path"),
        (".git/hooks/post-checkout", "path inside .git"),
        ("sub/.GIT/config", "path inside .git"),
        (".Git/config", "path inside .git"),
        (".git. /config", "path inside .git"),  # NTFS drops trailing dots and spaces
        (".g\u200cit/config", "path inside .git"),  # HFS+ ignores zero-width joiners
        ("GIT~1/config", "path inside .git"),
        (".git::$INDEX_ALLOCATION/x", "path inside .git"),
        ("a\tb.c", "control character in path"),
        ("a\nb.c", "control character in path"),
        ("caf\udce9.c", "path is not valid UTF-8"),
    ],
)
def test_path_problem(path: str, problem: str | None) -> None:
    assert path_problem(path) == problem


@pytest.mark.parametrize(
    ("quoted", "decoded"),
    [
        (b'"b/\\056\\056/x"', b"b/../x"),
        (b'"\\a\\b\\f\\n\\r\\t\\v\\\\\\""', b'\a\b\f\n\r\t\v\\"'),
        (b'"caf\\303\\251.c" tail', b"caf\xc3\xa9.c"),
        (b'"\\377"', b"\xff"),
        (b'"x\ny"', b"x\ny"),  # like git, a quoted name does not stop at a newline
        (b'"\\477"', None),  # first octal digit over 3
        (b'"\\x41"', None),  # no hex escapes in git's quoting
        (b'"\\05"', None),
        (b'"open', None),
        (b'"a\0b"', None),
        (b"bare", None),
    ],
)
def test_unquote_c_style_is_gits(quoted: bytes, decoded: bytes | None) -> None:
    found = unquote_c_style(quoted)
    assert (found[0] if found else None) == decoded


def problems_of(diff: str) -> set[tuple[str, str]]:
    return {(p.path, p.problem) for p in check_diff(diff, 2)}


def test_symlink_creation_and_big_binaries_are_found() -> None:
    diff = (
        "diff --git a/evil b/evil\nnew file mode 120000\nindex 0000000..1111111\n"
        "--- /dev/null\n+++ b/evil\n@@ -0,0 +1 @@\n+/etc\n\\ No newline at end of file\n"
        "diff --git a/fw.bin b/fw.bin\nnew file mode 100644\nindex 0000000..2222222\n"
        "GIT binary patch\nliteral 5000000\nzcmeIu0Sy2E0K%a6Pi+o7\n\nliteral 0\nHcmV?d00001\n\n"
        "diff --git a/small.bin b/small.bin\nnew file mode 100644\nindex 0000000..3333333\n"
        "GIT binary patch\nliteral 10\nRcmZQz\n\nliteral 0\nHcmV?d00001\n\n"
    )
    assert diff_paths(diff) == ("evil", "fw.bin", "small.bin")
    assert problems_of(diff) == {
        ("evil", f"symlink (new file mode 120000): {SYMLINKS}"),
        ("fw.bin", "binary blob of 5000000 bytes (limit 1048576)"),
    }


def test_rename_paths_are_checked() -> None:
    diff = ("diff --git a/x.c b/x.c\nsimilarity index 100%\nrename from x.c\n"
            "rename to ../x.c\n")
    assert [(p.path, p.problem) for p in check_diff(diff)] == [("../x.c", "'..' in path")]


@pytest.mark.parametrize(
    ("diff", "expected"),
    [
        # git decodes C-quoted names: \056 is '.'
        ('diff --git "a/\\056\\056/x.c" "b/\\056\\056/x.c"\nnew file mode 100644\n'
         '--- /dev/null\n+++ "b/\\056\\056/x.c"\n@@ -0,0 +1 @@\n+x\n',
         {("../x.c", "'..' in path")}),
        ('diff --git "a/\\056Git/hooks/pre-commit" "b/\\056Git/hooks/pre-commit"\n'
         'new file mode 100755\n--- /dev/null\n+++ "b/\\056Git/hooks/pre-commit"\n'
         '@@ -0,0 +1 @@\n+evil\n',
         {(".Git/hooks/pre-commit", "path inside .git")}),
        # a binary patch has no ---/+++: its only name is on the diff --git line
        ('diff --git "a/\\056git/index" "b/\\056git/index"\nnew file mode 100644\n'
         'index 0000000..1111111\nGIT binary patch\nliteral 1\nIcmZo%0000\n\nliteral 0\n'
         'HcmV?d00001\n\n', {(".git/index", "path inside .git")}),
        # git's older spelling of rename headers
        ("diff --git a/x.c b/y.c\nsimilarity index 100%\nrename old x.c\n"
         "rename new .git/config\n", {(".git/config", "path inside .git")}),
        ('diff --git a/x.c b/x.c\n--- a/x.c\n+++ "b/x\\tc"\n@@ -1 +1 @@\n-a\n+b\n',
         {("x\tc", "control character in path")}),
        # -p1 strips *a* component, whatever it is: a//etc is /etc
        ("--- a//etc/passwd\n+++ b//etc/passwd\n@@ -1 +1 @@\n-a\n+b\n",
         {("/etc/passwd", "absolute path")}),
        # git's strtoul() reads modes: a leading 0, other permission bits, the next line
        ("diff --git a/README b/README\nold mode 100644\nnew mode 0120000\n",
         {("README", f"symlink (new mode 120000): {SYMLINKS}")}),
        ("diff --git a/e b/e\nnew file mode 120777\n--- /dev/null\n+++ b/e\n@@ -0,0 +1 @@\n+/\n",
         {("e", f"symlink (new file mode 120777): {SYMLINKS}")}),
        ("diff --git a/e b/e\nnew file mode \n120000\n",
         {("e", f"symlink (new file mode 120000): {SYMLINKS}")}),
        # a modified symlink says so on its index line
        ("diff --git a/l b/l\nindex 1111111..2222222 120000\n--- a/l\n+++ b/l\n"
         "@@ -1 +1 @@\n-x\n+/etc\n", {("l", f"symlink (index 120000): {SYMLINKS}")}),
        ("diff --git a/m b/m\nnew file mode 160000\n--- /dev/null\n+++ b/m\n@@ -0,0 +1 @@\n"
         "+Subproject commit 1111111111111111111111111111111111111111\n",
         {("m", "submodule (gitlink) entry (new file mode 160000): "
           "kbot refuses patches that touch submodules")}),
        ("diff --git a/d b/d\nnew file mode 040000\n",
         {("d", "submodule (gitlink) entry (new file mode 40000): "
           "kbot refuses patches that touch submodules")}),
        ("diff --git a/x.c b/x.c\n--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n-a\0\n+b\n",
         {("", "NUL byte in the patch text")}),
        # git reads a quoted name up to a \000 only: "arch/link" here, without mode lines
        ('diff --git "a/arch/link\\000x" "b/arch/link\\000y"\nindex 1111111..2222222\n'
         "GIT binary patch\nliteral 4\nLcmZQzU|<Jp00031\n\nliteral 0\nHcmV?d00001\n\n",
         {("", "NUL byte (\\000) in a quoted path")}),
        # git's unquote_c_style() reads a quoted name on into the next line: "x\n/../../etc/y"
        ('diff --git a/x b/x\n--- a/x\n+++ "b/x\n/../../etc/y"\n@@ -1 +1 @@\n-a\n+b\n',
         {("x", "quoted path runs on past the end of its line")}),
    ],
)
def test_hostile_patch_text(diff: str, expected: set[tuple[str, str]]) -> None:
    assert problems_of(diff) == expected


def test_ordinary_kernel_patch_text_passes() -> None:
    diff = (
        "diff --git a/arch/x86/kvm/x86.c b/arch/x86/kvm/x86.c\nindex 1111111..2222222 100644\n"
        "--- a/arch/x86/kvm/x86.c\n+++ b/arch/x86/kvm/x86.c\n@@ -1,2 +1,2 @@\n int a;\n"
        "--- removed line that looks like a header\n+++ added line that looks like one\n"
        "diff --git a/Documentation/a b.rst b/Documentation/a b.rst\nnew file mode 100644\n"
        "--- /dev/null\n+++ b/Documentation/a b.rst\t2024-01-01 00:00:00.000000000 +0000\n"
        "@@ -0,0 +1 @@\n+x\n"
        "diff --git a/tools/run.sh b/tools/run.sh\nold mode 100644\nnew mode 100755\n"
        'diff --git "a/caf\\303\\251.c" "b/caf\\303\\251.c"\ndeleted file mode 100644\n'
    )
    assert check_diff(diff) == []
    # Hunk lines that look like headers are read as names too (the checks see more than git).
    assert diff_paths(diff) == (
        "arch/x86/kvm/x86.c", "removed line that looks like a header",
        "added line that looks like one", "Documentation/a b.rst", "tools/run.sh", "caf\u00e9.c",
    )


# -- against git itself: every name `git apply` takes from a patch is one the checks saw ------

_NAME_CHARS = st.sampled_from(["a", "b", "x", "/", ".", "..", ".git", " ", "\t", '"', "\\",
                               "\u00e9", "\r", "-", "0"])
_ESCAPES = st.sampled_from(["\\056", "\\057", "\\t", "\\n", "\\\\", '\\"', "\\303\\251",
                            "\\101", "\\477", "\\x"])


@st.composite
def header_name(draw: st.DrawFn) -> str:
    """A name as it could stand on a header line: bare, or C-quoted with odd escapes."""
    prefix = draw(st.sampled_from(["a/", "b/", "", "/", "x/y/", "a//"]))
    body = "".join(draw(st.lists(st.one_of(_NAME_CHARS, _ESCAPES), min_size=1, max_size=8)))
    if draw(st.booleans()):
        return f'"{prefix}{body}"'
    return prefix + body.replace("\\", "")


@st.composite
def git_patch(draw: st.DrawFn) -> str:
    a, b = draw(header_name()), draw(header_name())
    same = draw(header_name())
    tail = draw(st.sampled_from(["", "\t2024-01-01 10:00:00.000 +0100", " 2024-01-01 10:00:00"]))
    shapes = [
        f"diff --git {a} {b}\n--- {a}\n+++ {b}\n@@ -1 +1 @@\n-x\n+y\n",
        f"diff --git {same} {same}\nnew file mode 100644\n--- /dev/null\n+++ {same}\n"
        "@@ -0,0 +1 @@\n+y\n",
        f"diff --git {same} {same}\nold mode 100644\nnew mode 100755\n",
        f"diff --git {a} {b}\nsimilarity index 100%\nrename from {a}\nrename to {b}\n",
        f"diff --git {a} {b}\nsimilarity index 90%\ncopy from {a}\ncopy to {b}\n"
        f"--- {a}\n+++ {b}\n@@ -1 +1 @@\n-x\n+y\n",
        f"--- {a}{tail}\n+++ {b}{tail}\n@@ -1 +1 @@\n-x\n+y\n",
    ]
    return draw(st.sampled_from(shapes))


def git_apply_names(patch: bytes, cwd: Path) -> list[bytes] | None:
    """The names `git apply --numstat -z` reads from a patch (None: git cannot parse it)."""
    res = subprocess.run(  # the oracle: git's own parser
        ["git", "apply", "--numstat", "-z"], input=patch, cwd=cwd, capture_output=True,
        check=False,
    )
    if res.returncode != 0:
        return None
    names: list[bytes] = []
    for record in res.stdout.split(b"\0"):
        fields = record.split(b"\t", 2)
        name = fields[2] if len(fields) == 3 else record
        if name:
            names.append(name)
    return names


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(git_patch())
def test_checks_see_every_name_git_apply_reads(patch: str) -> None:
    data = patch.encode("utf-8", errors="surrogateescape")
    with tempfile.TemporaryDirectory() as tmp:
        names = git_apply_names(data, Path(tmp))
    scan = scan_patch(data)
    if names is None or any("runs on" in p.problem for p in scan.problems):
        return  # git cannot parse it, or kbot refuses it without reading names
    seen = {n.path.encode("utf-8", errors="surrogateescape") for n in scan.names}
    assert set(names) <= seen, (names, seen)


# -- real git: apply_series on a tree with a symlink --------------------------------------------


@pytest.fixture
def linked(tmp_path: Path) -> tuple[Trees, Path]:
    """A fake kernel whose arch/link is a symlink to x86, as kbot's configured tree."""
    repo = tmp_path / "linux"
    make_fake_kernel(repo)
    os.symlink("x86", repo / "arch" / "link")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "link")
    config = Config(bot=BotSection(cache_dir=str(tmp_path / "cache")),
                    trees=(TreeSection(name="up", path=str(repo)),))
    return Trees(config), repo


def one_patch_series(diff: str, message: str = "Do a thing.\n") -> Series:
    patch = Patch(
        index=1, total=1, message_id="hostile@test", subject="[PATCH] hostile", title="hostile",
        author=Person("Mallory", "m@example.org"), date=None, commit_message=message,
        diff=diff, files=(), patch_id="", trailers=(),
    )
    return Series(version=1, title="hostile", prefixes=("PATCH",), total=1, cover=None,
                  patches=(patch,), missing=())


RETARGET = ("diff --git a/arch/link b/arch/link\nindex 1111111..2222222{mode}\n"
            "--- a/arch/link\n+++ b/arch/link\n@@ -1 +1 @@\n-x86\n"
            "\\ No newline at end of file\n+/etc\n\\ No newline at end of file\n")
FORK_FIX = ("diff --git a/kernel/fork.c b/kernel/fork.c\n--- a/kernel/fork.c\n"
            "+++ b/kernel/fork.c\n@@ -1,4 +1,4 @@\n int fork_me(void)\n {\n-\treturn 2;\n"
            "+\treturn 3;\n }\n")
LINK_IN_TREE = f"is a symlink in the base tree (named by '{{header}}'): {SYMLINKS}"


@pytest.mark.parametrize(
    ("diff", "message", "path", "problem"),
    [
        pytest.param(RETARGET.format(mode=" 120000"), "", "arch/link",
                     f"symlink (index 120000): {SYMLINKS}", id="retarget-symlink"),
        pytest.param(RETARGET.format(mode=""), "", "arch/link",
                     LINK_IN_TREE.format(header="diff --git"), id="retarget-symlink-no-mode"),
        pytest.param("diff --git a/arch/link b/arch/link2\nsimilarity index 100%\n"
                     "rename from arch/link\nrename to arch/link2\n", "", "arch/link",
                     LINK_IN_TREE.format(header="rename from"), id="rename-symlink"),
        pytest.param("diff --git a/arch/link b/arch/link2\nsimilarity index 100%\n"
                     "rename old arch/link\nrename new arch/link2\n", "", "arch/link",
                     LINK_IN_TREE.format(header="rename old"), id="rename-old-new-symlink"),
        pytest.param("diff --git a/arch/link b/link3\nsimilarity index 100%\n"
                     "copy from arch/link\ncopy to link3\n", "", "arch/link",
                     LINK_IN_TREE.format(header="copy from"), id="copy-symlink"),
        pytest.param("diff --git a/evil b/evil\nnew file mode 120777\nindex 0000000..1111111\n"
                     "--- /dev/null\n+++ b/evil\n@@ -0,0 +1 @@\n+/etc\n"
                     "\\ No newline at end of file\n", "", "evil",
                     f"symlink (new file mode 120777): {SYMLINKS}", id="symlink-mode-120777"),
        # git am starts the patch at the commit message's `Index:` line (its mailinfo), and
        # reads `---  a/arch/link` (two spaces) as a plain diff of arch/link.
        pytest.param(FORK_FIX,
                     "Fix things.\n\nIndex: whatever\n---  a/arch/link\n+++  b/arch/link\n"
                     "@@ -1 +1 @@\n-x86\n\\ No newline at end of file\n+/etc\n"
                     "\\ No newline at end of file\n", "arch/link",
                     LINK_IN_TREE.format(header="---"), id="patch-hidden-in-commit-message"),
        pytest.param('diff --git "a/\\056\\056/outside.c" "b/\\056\\056/outside.c"\n'
                     "new file mode 100644\nindex 0000000..1111111\n--- /dev/null\n"
                     '+++ "b/\\056\\056/outside.c"\n@@ -0,0 +1 @@\n+int x;\n', "",
                     "../outside.c", "'..' in path", id="quoted-dotdot"),
        pytest.param('diff --git "a/\\056git/hooks/post-applypatch" '
                     '"b/\\056git/hooks/post-applypatch"\nnew file mode 100755\n'
                     "index 0000000..1111111\n--- /dev/null\n"
                     '+++ "b/\\056git/hooks/post-applypatch"\n@@ -0,0 +1 @@\n+evil\n', "",
                     ".git/hooks/post-applypatch", "path inside .git", id="quoted-dotgit"),
        pytest.param('diff --git "a/arch/lin\\153/x.c" "b/arch/lin\\153/x.c"\n'
                     "new file mode 100644\nindex 0000000..1111111\n--- /dev/null\n"
                     '+++ "b/arch/lin\\153/x.c"\n@@ -0,0 +1 @@\n+int x;\n', "",
                     "arch/link/x.c", "goes through symlink arch/link in the base tree",
                     id="quoted-path-through-symlink"),
    ],
)
def test_hostile_patch_is_refused_not_applied_or_conflicting(
    linked: tuple[Trees, Path], diff: str, message: str, path: str, problem: str
) -> None:
    trees, repo = linked
    series = one_patch_series(diff, message or "Do a thing.\n")
    result = apply_series(trees, series, tree="up")
    assert result.status is ApplyStatus.REJECTED, result.summary()
    assert result.commits == () and result.ref == ""
    assert (1, path, problem) in {(p.patch, p.path, p.problem) for p in result.problems}
    assert f"patch 1: {path}: {problem}" in result.summary()
    # The same tree still takes an ordinary patch.
    assert apply_series(trees, one_patch_series(FORK_FIX), tree="up").ok


def test_symlink_checks_use_the_base_tree_not_the_working_copy(tmp_path: Path) -> None:
    repo = tmp_path / "t"
    base = make_fake_kernel(repo)
    os.symlink("/tmp", repo / "arch" / "link")
    head = commit(repo, {"kernel/x.c": "int x;\n"}, "more")  # commit -A picks up the link
    scan = scan_patch(b"diff --git a/arch/link/x.c b/arch/link/x.c\nnew file mode 100644\n"
                      b"--- /dev/null\n+++ b/arch/link/x.c\n@@ -0,0 +1 @@\n+x\n", 4)
    assert {(p.patch, p.path, p.problem) for p in tree_problems(repo, head, [scan])} == {
        (4, "arch/link/x.c", "goes through symlink arch/link in the base tree")
    }
    assert tree_problems(repo, base, [scan]) == []


def test_check_series_reads_the_mail_git_am_reads(linked: tuple[Trees, Path]) -> None:
    """A lone CR becomes a line break in the mail: the header after it is seen."""
    trees, repo = linked
    sneaky = FORK_FIX.replace("+\treturn 3;\n", "+\treturn 3;\rrename to ../x\n")
    series = one_patch_series(sneaky)
    problems = check_series(series, repo, git(repo, "rev-parse", "HEAD"))
    assert [(p.path, p.problem) for p in problems] == [("../x", "'..' in path")]
    clean = dataclasses.replace(series, patches=(dataclasses.replace(
        series.patches[0], diff=FORK_FIX),))
    assert check_series(clean, repo, git(repo, "rev-parse", "HEAD")) == ()
