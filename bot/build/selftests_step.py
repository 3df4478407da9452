"""The selftests step: the KVM selftests, statically linked, against this tree's uapi headers.

`make headers_install` into the slot's O=, then `make -k` in tools/testing/selftests/kvm: a
program that does not build is recorded as missing (6.1.192's dirty_log_test and steal_time
never build), not a build failure, unless kbot's own limits stopped it. The selftests build
again from clean only when a change can change what they compile against; otherwise make
rebuilds what changed.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bot.build.diagnostics import Diagnostic, LogScanner
from bot.build.progress import ProgressFn
from bot.build.slot import SlotState
from bot.build.steps import StepFailed, StepRunner, classify, hit_limit
from bot.build.store import ArtifactStore
from bot.errors import InfraError
from bot.tree import git

SELFTESTS_SUBDIR = "tools/testing/selftests/kvm"
# A change under these paths can change what the selftests compile against (uapi headers,
# tools/ copies of kernel headers, the selftests themselves): rebuild them from clean.
SELFTEST_INPUTS = (
    "include/uapi/", "arch/x86/include/uapi/", "tools/", "usr/", "scripts/", "Makefile",
)
SELFTEST_UNIT = "<selftests>"
_TEST_PROGS = re.compile(
    r"^TEST_GEN_PROGS(?:_EXTENDED)?_x86_64\s*\+?=\s*(?P<prog>[A-Za-z0-9_/\-]+)\s*$", re.M
)


@dataclass(frozen=True)
class SelftestsOutcome:
    built: tuple[str, ...]
    missing: tuple[str, ...]  # in the Makefile but not built (make -k)
    units: dict[str, tuple[Diagnostic, ...]]  # {SELFTEST_UNIT: ...}, or {} to keep the old


def expected_selftests(src: Path) -> tuple[str, ...]:
    """The x86_64 KVM selftest programs the tree's Makefile asks for."""
    try:
        text = (src / SELFTESTS_SUBDIR / "Makefile").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    return tuple(dict.fromkeys(m["prog"] for m in _TEST_PROGS.finditer(text)))


def selftests_step(
    steps: StepRunner, src: Path, out: Path, state: SlotState, sha: str, common: Sequence[str],
    jobs: int, cc: str, on_line: ProgressFn, store: ArtifactStore, staging: Path,
) -> SelftestsOutcome:
    """Build the selftests and put the built programs into the store entry being staged.
    Raises StepFailed."""
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
    res = steps.make(
        [f"O={out}", *common, "headers_install", f"INSTALL_HDR_PATH={out / 'usr'}"], cwd=src,
    )
    if not res.ok:
        raise StepFailed(*classify("headers_install", res, ()))
    on_line(f"make -k selftests/kvm ({'clean' if fresh else 'incremental'})")
    # gcc runs in the selftests folder (make -C): relative paths are relative to it.
    scanner = LogScanner(src, src / SELFTESTS_SUBDIR)

    def feed(line: str) -> None:
        scanner.feed(line)
        on_line(line)

    res = steps.make(
        ["-k", f"-j{jobs}", "-Otarget", "-C", str(src / SELFTESTS_SUBDIR),
         f"O={kself}", f"OUTPUT={output}", f"KHDR_INCLUDES=-isystem {out / 'usr/include'}",
         "USERLDFLAGS=-static", f"CC={cc}"],
        cwd=src, on_line=feed,
    )
    if res.timed_out or hit_limit(res):
        # make -k carries on past broken programs (expected: the missing list), but not
        # past kbot's own limits: a program cut short by them is not the patch's fault.
        raise StepFailed(*classify("selftests", res, ()))
    state.selftests_rev = sha
    built: list[str] = []
    missing: list[str] = []
    for prog in expected_selftests(src):
        binary = output / prog
        if binary.is_file() and os.access(binary, os.X_OK):
            store.add_file(staging, f"selftests/{prog}", binary)
            built.append(prog)
        else:
            missing.append(prog)
    diags = tuple(replace(d, unit=SELFTEST_UNIT) for d in scanner.result().diagnostics)
    # An incremental no-op prints nothing: keep the previous tree's selftest diagnostics.
    units = {SELFTEST_UNIT: diags} if fresh else {}
    return SelftestsOutcome(tuple(built), tuple(missing), units)
