"""A Reproduce (bot.report.context) as the steps a report shows and as the job's repro.sh.

One list of steps for both, so the mail and the script cannot say different things:

    tree      git clone URL linux (or: kbot's tree is a local one, any clone with the base)
    base      git checkout -B kbot-repro BASE
    apply     each patch as the list archive serves it: curl .../<msgid>/raw | git am -3
              (the mail also gives `b4 shazam`), or a commit to check out (bisections)
    config    make tinyconfig + merge_config.sh of the fragments (their full text) + olddefconfig
    build     make bzImage
    selftests make headers_install + the KVM selftests, static, against those headers
    test      kbot vmtest with a plan of the tests that failed, on the backend they failed on

The steps stop at the one that failed (`Reproduce.stop`). repro.sh runs them for real
(`--dry-run` prints them, `--stop-after STEP` stops early, `--tree` names another clone) and
exits 1 when the failure reproduces, 0 when it does not, 3 when a step could not run.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import quote

from bot import __version__
from bot.report.context import KbotLine, Reproduce, ReproVm, Vendor

CLONE_DIR = "linux"
BRANCH = "kbot-repro"
BUILD = "build"  # the O= folder, inside the clone
KERNEL = f"{BUILD}/arch/x86/boot/bzImage"
SELFTESTS = f"{BUILD}/kselftest/kvm"
PLAN_FILE = f"{BUILD}/kbot-repro-plan.toml"
SELFTESTS_SRC = "tools/testing/selftests/kvm"
STEPS = ("tree", "base", "apply", "config", "build", "selftests", "test")
WIDTH = 80  # a command line in a mail, indent included
# An absolute path of two or more parts ("/init" on a kernel command line is the guest's).
_ABS_PATH = re.compile(r"(?<![\w.~=-])/[^\s:,\"'=/]+(?:/[^\s:,\"'=/]+)+")
_EOF = "KBOT_EOF"


@dataclass(frozen=True)
class File:
    """A file a reader writes before a step (a config fragment, the test plan)."""

    path: str  # relative to the clone
    text: str


def sanitize_emulator(argv: Sequence[str], kernel: str) -> tuple[str, ...]:
    """The emulator argv kbot ran, with kbot's own paths replaced: the kernel by the
    reader's build output, any other path by its file name (the initramfs, the console
    file, bochsrc), so no path of kbot's machine reaches a mail."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == kernel:
            out.append(KERNEL)
        elif i == 0:
            out.append(PurePosixPath(arg).name)
        else:
            out.append(_ABS_PATH.sub(lambda m: PurePosixPath(m.group(0)).name, arg))
    return tuple(out)


def plan_toml(vm: ReproVm) -> str:
    """A test plan (bot.vm.plan) with only the tests to rerun, in the set they ran in."""
    requires = "vmx" if vm.vendor is Vendor.VMX else "svm"
    tests = ", ".join(f'{{ name = "{t}" }}' for t in vm.tests)
    return (f'name = "kbot-repro"\ndescription = "the tests of this report"\n'
            f"[[sets]]\nname = \"{requires}\"\nrequires = \"{requires}\"\n"
            f"tests = [{tests}]\n")


def files(r: Reproduce) -> tuple[File, ...]:
    out = [File(f"{BUILD}/{f.name}", f.text) for f in r.fragments if _runs("config", r)]
    if r.vm is not None and r.vm.tests and _runs("test", r):
        out.append(File(PLAN_FILE, plan_toml(r.vm)))
    return tuple(out)


def _runs(step: str, r: Reproduce) -> bool:
    """Is `step` one of the steps up to the failing one?"""
    if step == "selftests" and not r.selftests:
        return False
    return STEPS.index(step) <= STEPS.index(r.stop if r.stop in STEPS else "test")


def _line(r: Reproduce, step: str) -> KbotLine | None:
    return next((k for k in r.kbot if k.step == step), None)


def raw_url(r: Reproduce, msgid: str) -> str:
    return f"{r.archive_url}{quote(msgid, safe='-._~!$&()*+,;=:@')}/raw"


def shell_wrap(words: Sequence[str], width: int = WIDTH, indent: str = "  ",
               cont: str = "    ") -> list[str]:
    """Shell words (already quoted) as lines of at most `width` columns, continued with
    a backslash; a word longer than a line stays whole on its own line."""
    # An option stays on the line of its value ("--tree ." is never split).
    units: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if (w.startswith("-") and i + 1 < len(words) and i > 0
                and not words[i + 1].startswith("-") and words[i + 1] != "|"):
            units.append(f"{w} {words[i + 1]}")
            i += 2
        else:
            units.append(w)
            i += 1
    lines: list[str] = []
    cur = indent
    for w in units:
        if cur.strip() and len(cur) + 1 + len(w) + 2 > width:
            lines.append(cur + " \\")
            cur = indent + cont + w
        else:
            cur = f"{cur} {w}" if cur.strip() else cur + w
    lines.append(cur)
    return lines


def _comment(text: str, width: int = WIDTH, indent: str = "  ") -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent=indent + "# ",
                         subsequent_indent=indent + "# ", break_long_words=False,
                         break_on_hyphens=False)


def _q(words: Sequence[str]) -> list[str]:
    return [shlex.quote(w) for w in words]


def _make(r: Reproduce, *args: str) -> list[str]:
    return ["make", f"O={BUILD}", f"ARCH={r.arch}", *args]


def _selftests_make(r: Reproduce) -> list[str]:
    return ["make", "-k", "-C", SELFTESTS_SRC, f'O="$PWD/{BUILD}/kselftest"',
            f'OUTPUT="$PWD/{SELFTESTS}"', f'KHDR_INCLUDES="-isystem $PWD/{BUILD}/usr/include"',
            "USERLDFLAGS=-static"]


def mail_text(r: Reproduce) -> str:
    """The commands of the report's Reproduce section (lines of at most 80 columns)."""
    out: list[str] = []

    def step(comment: str, *commands: list[str]) -> None:
        if out:
            out.append("")
        out.extend(_comment(comment))
        for words in commands:
            out.extend(shell_wrap(words))

    if r.tree_url:
        step(f"the tree ({r.tree})", ["git", "clone", shlex.quote(r.tree_url), CLONE_DIR],
             ["cd", CLONE_DIR])
    else:
        step(f"the tree: kbot's {r.tree!r} is a local tree ({r.tree_note}); any clone that "
             f"has the base commit will do", ["cd", CLONE_DIR])
    if r.commit:
        step("the commit", ["git", "checkout", "-B", BRANCH, r.commit])
    else:
        step("the base", ["git", "checkout", "-B", BRANCH, r.base_sha])
    if r.patches and r.series_msgid:
        n, total = len(r.patches), r.patches_total
        which = f"patches 1-{n} of {total}" if total and n < total else "the series"
        cherry = ["-P", f"1-{n}"] if total and n < total else []
        step(f"{which}, with b4", ["b4", "shazam", *cherry, shlex.quote(r.series_msgid)])
        out.extend(_comment("or without b4, each patch as the list archive serves it:"))
        for m in r.patches:
            out.extend(shell_wrap(["curl", "-sfL", shlex.quote(raw_url(r, m)), "|",
                                   "git", "am", "-3"]))
    if _runs("config", r):
        frags = [f"{BUILD}/{f.name}" for f in r.fragments]
        names = " + ".join(f.name for f in r.fragments)
        saved = (f"; save the fragment{'s' if len(frags) > 1 else ''} below as "
                 + ", ".join(frags)) if frags else ""
        step(f"kernel config: {r.base_config}" + (f" + {names}" if names else "") + saved,
             ["mkdir", "-p", BUILD], _make(r, r.base_config),
             *([["bash", "scripts/kconfig/merge_config.sh", "-m", "-O", BUILD,
                 f"{BUILD}/.config", *frags]] if frags else []),
             _make(r, "olddefconfig"))
    if _runs("build", r):
        step("the kernel", _make(r, '-j"$(nproc)"', "bzImage"))
        if (k := _line(r, "build")) is not None:
            step(k.why or "or let kbot build it", _q(k.argv))
    if _runs("selftests", r):
        step("the KVM selftests, static, against this tree's headers",
             _make(r, "headers_install", f'INSTALL_HDR_PATH="$PWD/{BUILD}/usr"'),
             _selftests_make(r))
    if _runs("test", r) and r.vm is not None:
        if (k := _line(r, "test")) is not None:
            step(k.why or "boot it and run the tests", _q(k.argv))
        if r.vm.emulator:
            step("the emulator command line kbot ran (the initramfs holds busybox, the "
                 "selftests and kbot's init)", _q(r.vm.emulator))
        step("in the guest, kbot's init runs each test:",
             *([f"x86_64/{t}"] for t in r.vm.tests))
    for k in r.kbot:
        if not k.step:
            step(k.why or "or let kbot redo it", _q(k.argv))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# repro.sh


def _bash_array(values: Sequence[str]) -> str:
    return "(" + " ".join(shlex.quote(v) for v in values) + ")"


def _heredoc(path: str, text: str) -> str:
    body = text if text.endswith("\n") else text + "\n"
    if f"\n{_EOF}\n" in "\n" + body:
        raise ValueError(f"{path}: holds the heredoc delimiter {_EOF}")
    return f"  write_file {shlex.quote(path)} <<'{_EOF}' || return\n{body}{_EOF}\n"


def script(r: Reproduce, title: str) -> str:
    """repro.sh: the same steps as `mail_text`, runnable (see the module docstring)."""
    q = shlex.quote
    title = " ".join(title.split())  # one comment line, whatever the subject held
    fails_at = r.stop if r.stop in STEPS else "test"
    test_line = _line(r, "test")
    frags = [f"{BUILD}/{f.name}" for f in r.fragments]
    tests = r.vm.tests if r.vm is not None else ()
    parts: list[str] = [f"""#!/bin/bash
# {title}
# Made by kbot {__version__}: replays the step that failed on a fresh machine (the tree, its
# base, the patches as the list archive serves them, the kernel config, the build, the KVM
# selftests, the VM test), stopping at that step.
#
# Usage: repro.sh [--dry-run] [--stop-after STEP] [--tree URL|PATH] [--dir DIR]
#   --dry-run        print the commands, run nothing
#   --stop-after S   stop after step S: {", ".join(STEPS)}
#   --tree URL|PATH  clone this tree instead (a local tree of kbot's has no public URL)
#   --dir DIR        the clone's folder (default {CLONE_DIR}; an existing clone is reused)
# Exit: 1 the failure reproduced, 0 it did not, 2 usage, 3 a step could not run.
set -euo pipefail

TREE_URL={q(r.tree_url)}
TREE_NAME={q(r.tree)}
TREE_NOTE={q(r.tree_note)}
BASE={q(r.base_sha)}
COMMIT={q(r.commit)}
ARCHIVE={q(r.archive_url)}
PATCHES={_bash_array(r.patches)}
TESTS={_bash_array(tests)}
FAILS_AT='{fails_at}'
BUILD_SELFTESTS={str(r.selftests).lower()}
STEPS=({" ".join(STEPS)})
EXPECT={"passes" if r.expect == "pass" else "fails"}
DIR={CLONE_DIR}
STOP=""
DRY=0

usage() {{
  sed -n '/^# Usage:/,/^# Exit:/s/^# \\{{0,1\\}}//p' "$0"
}}

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run|--print) DRY=1 ;;
    --stop-after) STOP=${{2:?--stop-after needs a step}}; shift ;;
    --tree) TREE_URL=${{2:?--tree needs a URL or path}}; shift ;;
    --dir) DIR=${{2:?--dir needs a folder}}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "repro.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$STOP" ] && [[ " ${{STEPS[*]}} " != *" $STOP "* ]]; then
  echo "repro.sh: --stop-after: no step $STOP (${{STEPS[*]}})" >&2
  exit 2
fi

run() {{  # print a command as it would be typed; run it unless --dry-run
  printf '+'
  printf ' %q' "$@"
  printf '\\n'
  if [ "$DRY" -eq 0 ]; then
    "$@"
  fi
}}

write_file() {{  # stdin into $1 (only printed with --dry-run)
  printf '+ cat > %q\\n' "$1"
  if [ "$DRY" -eq 0 ]; then
    cat > "$1"
  else
    cat > /dev/null
  fi
}}

am_from_archive() {{  # one patch, as the list archive serves it, through git am -3
  local who=()
  if ! git config user.email > /dev/null; then  # a fresh machine: git am needs a committer
    who=(-c user.name=kbot-repro -c user.email=kbot-repro@localhost)
  fi
  curl -sfL "$ARCHIVE$1/raw" | git "${{who[@]}}" am -3
}}

step_tree() {{
  if [ -d "$DIR/.git" ]; then
    echo "using the clone in $DIR"
  elif [ -n "$TREE_URL" ]; then
    run git clone "$TREE_URL" "$DIR" || return
  elif [ "$DRY" -eq 1 ]; then
    echo "+ git clone <a clone of $TREE_NAME that has $BASE> $DIR"
  else
    echo "repro.sh: kbot's tree $TREE_NAME is a local one ($TREE_NOTE): give" \\
      "--tree URL|PATH of a clone that has $BASE" >&2
    return 3
  fi
  run cd "$DIR" || return
}}

step_base() {{
  run git checkout -q -B {BRANCH} "$BASE" || return
}}

step_apply() {{
  local m
  if [ -n "$COMMIT" ]; then
    run git checkout -q -B {BRANCH} "$COMMIT" || return
  fi
  for m in "${{PATCHES[@]}}"; do
    run am_from_archive "$m" || return
  done
}}

step_config() {{
  run mkdir -p {BUILD} || return
"""]
    for f in r.fragments:
        parts.append(_heredoc(f"{BUILD}/{f.name}", f.text))
    merge = (f"  run bash scripts/kconfig/merge_config.sh -m -O {BUILD} {BUILD}/.config "
             + " ".join(q(p) for p in frags) + " || return\n") if frags else ""
    parts.append(f"""  run make O={BUILD} ARCH={r.arch} {q(r.base_config)} || return
{merge}  run make O={BUILD} ARCH={r.arch} olddefconfig || return
}}

step_build() {{
  run make O={BUILD} ARCH={r.arch} -j"$(nproc)" bzImage || return
}}

step_selftests() {{
  local t
  run make O={BUILD} ARCH={r.arch} headers_install INSTALL_HDR_PATH="$PWD/{BUILD}/usr" || return
  # -k: some selftests of a tree may not build; the ones to run are checked below.
  run make -k -C {SELFTESTS_SRC} O="$PWD/{BUILD}/kselftest" OUTPUT="$PWD/{SELFTESTS}" \\
    KHDR_INCLUDES="-isystem $PWD/{BUILD}/usr/include" USERLDFLAGS=-static || true
  [ "$DRY" -eq 1 ] && return
  for t in "${{TESTS[@]}}"; do
    if [ -z "$(find {SELFTESTS} -name "$t" -type f -perm -u+x)" ]; then
      echo "repro.sh: selftest $t did not build" >&2
      return 3
    fi
  done
}}

step_test() {{
""")
    if r.vm is not None and test_line is not None:
        parts.append(_heredoc(PLAN_FILE, plan_toml(r.vm)))
        parts.append(f"""  if [ "$DRY" -eq 0 ] && ! command -v kbot > /dev/null; then
    echo "repro.sh: the test step needs kbot: it makes the initramfs and runs the" \\
      "emulator" >&2
    return 3
  fi
  run {" ".join(q(a) for a in test_line.argv)}
}}
""")
    else:
        parts.append("""  echo "repro.sh: this report has no VM test to run" >&2
  return 3
}
""")
    parts.append("""
for step in "${STEPS[@]}"; do
  if [ "$step" = selftests ] && [ "$BUILD_SELFTESTS" = false ]; then
    continue
  fi
  if [ "$step" = "$FAILS_AT" ] && [ -z "$STOP" ]; then
    status=0
    "step_$step" || status=$?
    if [ "$DRY" -eq 1 ]; then
      echo "dry run: nothing was run"
      exit 0
    fi
    case "$step:$status" in
      *:0) result=passes ;;
      test:1|build:*|apply:*) result=fails ;;
      *) echo "repro.sh: could not run the $step step (exit $status)" >&2; exit 3 ;;
    esac
    if [ "$result" = "$EXPECT" ]; then
      echo "as kbot saw: the $step step $result"
    else
      echo "unlike kbot: the $step step $result here (kbot saw it: $EXPECT)"
    fi
    if [ "$result" = fails ]; then
      exit 1
    fi
    exit 0
  fi
  "step_$step"
  if [ "$step" = "$STOP" ]; then
    echo "stopped after the $step step (--stop-after)"
    exit 0
  fi
done
""")
    return "".join(parts)
