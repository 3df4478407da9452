"""Turn a series job's results into report contexts (bot.report.context).

The report stage knows nothing of builds or VMs; this is the one place that reads
ApplyResult / BuildResult / TestRun / SeriesVerdict and says what a maintainer should read.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from bot.bisect.series import TestClass, TestVerdict
from bot.build.diagnostics import Diagnostic as BuildDiagnostic
from bot.build.diagnostics import Severity
from bot.build.kernel import BuildStatus
from bot.config import Config
from bot.errors import InfraError
from bot.pipeline.series_job import CommitRuns, SeriesJobResult, result_key
from bot.report import context as rc
from bot.report.adapt import series_info
from bot.tree import git
from bot.tree.apply import ApplyStatus
from bot.tree.trees import BaseRuleKind
from bot.vm.model import Backend, Outcome, TestResult, TestRun

CONSOLE_EXCERPT_LINES = 40
EXCERPT_CONTEXT = 2

_BACKEND = {
    Backend.QEMU_KVM: rc.Backend.QEMU_KVM,
    Backend.QEMU_TCG: rc.Backend.QEMU_TCG,
    Backend.BOCHS: rc.Backend.BOCHS,
}
_CPU = {
    Backend.QEMU_KVM: "-cpu host",
    Backend.QEMU_TCG: "-cpu max",
    Backend.BOCHS: "corei7_haswell_4770",
}
_CHOSEN_BY = {
    BaseRuleKind.BASE_COMMIT: rc.BaseChoice.FOOTER,
    BaseRuleKind.PREREQUISITES: rc.BaseChoice.FOOTER,
    BaseRuleKind.CONFIG_RULE: rc.BaseChoice.RULE,
    BaseRuleKind.EXPLICIT: rc.BaseChoice.RULE,
    BaseRuleKind.DEFAULT_BRANCH: rc.BaseChoice.GUESSED,
}


def vm_setup(run: TestRun) -> rc.VmSetup:
    vendor = rc.Vendor.VMX if (run.guest.vmx or "vmx" in run.sets) else rc.Vendor.SVM
    return rc.VmSetup(_BACKEND[run.backend], vendor, _CPU[run.backend],
                      nested=bool(run.guest.nested))


def _reproduce(config: Config, result: SeriesJobResult) -> rc.Reproduce:
    root = result.series.cover.message_id if result.series.cover else (
        result.series.patches[0].message_id)
    argv = ["kbot", "test-series", root, "--tree", result.apply.tree]
    if result.list_name:
        argv += ["--list", result.list_name]
    if config.source.name != "kvm.toml":
        argv = ["kbot", "-c", str(config.source), *argv[1:]]
    frags = []
    for name in config.build.fragments:
        try:
            text = config.resolve(name).read_text(encoding="utf-8")
        except OSError:
            text = ""
        frags.append(rc.ConfigFragment(name, text))
    return rc.Reproduce(kbot_command=shlex.join(argv), base_config=config.build.base_config,
                        fragments=tuple(frags))


def _series(config: Config, result: SeriesJobResult) -> rc.SeriesInfo:
    address = ""
    for lst in config.lists:
        if lst.name == result.list_name:
            address = lst.address
    info = series_info(result.series, list_address=address)
    shas = {c.index: c.sha for c in result.apply.commits}
    patches = tuple(rc.PatchInfo(p.index, p.total, p.msgid, p.subject, p.author,
                                 shas.get(p.index, "")) for p in info.patches)
    return rc.SeriesInfo(
        info.title, info.version, info.author, patches, info.list_address, info.cover_msgid,
        info.cover_subject, info.cc, info.trailer_people, info.change_id)


def _base(result: SeriesJobResult) -> rc.BaseInfo:
    b = result.apply.base
    try:  # a name a reader recognises, e.g. v6.1-rc3-123-gabcdef (empty when there is none)
        described = git.git_out(result.apply.repo, "describe", "--tags", "--always", b.sha)
    except InfraError:
        described = ""
    return rc.BaseInfo(b.tree, b.branch or "", b.sha, _CHOSEN_BY[b.rule], described)


def _diag(d: BuildDiagnostic, new: bool = True) -> rc.Diagnostic:
    return rc.Diagnostic(d.file, d.line, d.column, d.message, new)


def _test_outcome(key: str, r: TestResult) -> rc.TestOutcome:
    if r.outcome is Outcome.PASS:
        return rc.TestOutcome(key, rc.TestStatus.PASS)
    if r.outcome is Outcome.SKIP:
        return rc.TestOutcome(key, rc.TestStatus.SKIP, r.skip_reason or "skipped")
    if r.outcome is Outcome.NOT_RUN and r.skip_reason:
        # Left out on purpose (a plan exclusion such as a test that hangs Bochs, a selftest
        # that did not build): a skip with its reason, not a failure to test.
        why = r.skip_reason + (f": {r.known_limit}" if r.known_limit else "")
        return rc.TestOutcome(key, rc.TestStatus.SKIP, why)
    if r.outcome is Outcome.NOT_RUN:
        return rc.TestOutcome(key, rc.TestStatus.ERROR, "not run: the guest stopped before it")
    if r.known_limit:
        return rc.TestOutcome(key, rc.TestStatus.SKIP, f"known emulator limit: {r.known_limit}")
    why = r.assertion.location if r.assertion else r.outcome.value.lower()
    return rc.TestOutcome(key, rc.TestStatus.FAIL, why)


def _outcomes(commit: CommitRuns) -> tuple[rc.TestOutcome, ...]:
    """The last round's result per test at one commit (a flaky test shows in the verdict)."""
    latest: dict[str, rc.TestOutcome] = {}
    for run in commit.runs:
        if run.status.is_infrastructure:
            for r in run.results:
                latest[result_key(run.backend, r.name)] = rc.TestOutcome(
                    result_key(run.backend, r.name), rc.TestStatus.ERROR,
                    f"could not test: {run.status_detail}")
            continue
        for r in run.results:
            latest[result_key(run.backend, r.name)] = _test_outcome(
                result_key(run.backend, r.name), r)
    return tuple(latest.values())


def patch_outcomes(result: SeriesJobResult) -> tuple[rc.PatchOutcome, ...]:
    out: list[rc.PatchOutcome] = []
    by_index = {c.index: c for c in result.commits}
    for p in result.series.patches:
        c = by_index.get(p.index)
        if c is None:
            note = ("does not apply" if result.apply.failed_index == p.index
                    else "not applied: an earlier patch failed")
            out.append(rc.PatchOutcome(p.index, applied=False, note=note))
            continue
        b = c.build
        built = None if b is None else b.ok
        note = ""
        if b is not None and not b.ok:
            note = ("could not build (infrastructure): " if b.status is BuildStatus.ERROR
                    else "build failed: ") + b.message
        elif b is not None and b.ok and not c.runs:
            note = "not booted"
        out.append(rc.PatchOutcome(
            p.index, applied=True, built=built,
            new_warnings=tuple(_diag(d) for d in (b.new_warnings if b else ())),
            tests=_outcomes(c), note=note))
    return tuple(out)


def _excerpt(result: SeriesJobResult, sha: str, d: BuildDiagnostic,
             added: set[str]) -> tuple[rc.SourceLine, ...]:
    try:
        text = git.git_out(result.apply.repo, "show", f"{sha}:{d.file}")
    except InfraError:
        return ()
    lines = text.splitlines()
    lo, hi = max(1, d.line - EXCERPT_CONTEXT), min(len(lines), d.line + EXCERPT_CONTEXT)
    return tuple(rc.SourceLine(n, lines[n - 1], lines[n - 1].strip() in added and
                               bool(lines[n - 1].strip()))
                 for n in range(lo, hi + 1))


def _added_lines(diff: str) -> set[str]:
    return {ln[1:].strip() for ln in diff.splitlines()
            if ln.startswith("+") and not ln.startswith("+++")}


def _first_failure(result: SeriesJobResult, tv: TestVerdict,
                   index: int) -> tuple[TestRun | None, TestResult | None]:
    commit = next((c for c in result.commits if c.index == index), None)
    if commit is None:
        return None, None
    for run in reversed(commit.runs):
        for r in run.results:
            if result_key(run.backend, r.name) == tv.test and r.counts_as_failure:
                return run, r
        for sig in run.signatures:
            if tv.test == result_key(run.backend, f"kernel: {sig.title}"):
                return run, None
        if tv.test == result_key(run.backend, "boot"):
            return run, None
    return (commit.runs[-1] if commit.runs else None), None


def _console(run: TestRun, r: TestResult | None, title: str) -> tuple[str, ...]:
    if r is not None and r.output:
        return tuple(r.output[-CONSOLE_EXCERPT_LINES:])
    for sig in run.signatures:
        if sig.title == title and sig.report:
            return tuple(sig.report[:CONSOLE_EXCERPT_LINES])
    try:
        lines = run.console_log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ()
    return tuple(lines[-CONSOLE_EXCERPT_LINES:])


def contexts(config: Config, result: SeriesJobResult) -> list[rc.ReportContext]:
    """The reports this result deserves: an apply failure; else a build failure for the
    first patch that breaks the build, one regression per new failure, and the series
    table (replying to the cover) in every case where something was tested."""
    series = _series(config, result)
    base = _base(result)
    repro = _reproduce(config, result)
    out: list[rc.ReportContext] = []
    a = result.apply
    if a.status is ApplyStatus.CONFLICT and a.failed_index is not None:
        out.append(rc.ApplyFailureReport(series, base, a.failed_index, a.conflicts,
                                          a.git_message, repro))
        return out
    if a.status is ApplyStatus.REJECTED:
        first = min(p.patch for p in a.problems) if a.problems else 1
        out.append(rc.ApplyFailureReport(
            series, base, first, tuple(sorted({p.path for p in a.problems})),
            "kbot refused the series before applying it:\n"
            + "\n".join(str(p) for p in a.problems), repro))
        return out
    builds = [c.build for c in result.commits]
    base_ok = bool(builds) and builds[0] is not None and builds[0].ok
    for c in result.commits[1:]:
        b = c.build
        if base_ok and b is not None and b.status is BuildStatus.FAIL:
            patch = next(p for p in result.series.patches if p.index == c.index)
            added = _added_lines(patch.diff)
            errors = tuple(rc.BuildError(_diag(d), _excerpt(result, c.sha, d, added))
                           for d in b.diagnostics if d.severity is Severity.ERROR)
            if not errors:
                errors = (rc.BuildError(rc.Diagnostic(b.failed_step or "build", 0, 0,
                                                      b.message)),)
            out.append(rc.BuildFailureReport(series, base, c.index, errors, repro,
                                             compiler=b.toolchain.split(";")[0]))
            break
    verdict = result.verdict
    if verdict is not None:
        reported: set[int] = set()
        def rank(tv: TestVerdict) -> tuple[int, str]:
            name = tv.test.rsplit(" [", 1)[0]
            order = result.plan_order
            return (order.index(name) if name in order else len(order), tv.test)

        for tv in sorted(verdict.of_kind(TestClass.NEW), key=rank):
            index = tv.first_bad_patch
            if index is None or index in reported:
                # Not confident (the series table shows it as unsure), or this patch already
                # gets a regression mail: one per culprit patch, the table lists the rest.
                continue
            reported.add(index)
            run, r = _first_failure(result, tv, index)
            if run is None:
                continue
            title = tv.test.split("kernel: ", 1)[1].rsplit(" [", 1)[0] \
                if "kernel: " in tv.test else ""
            assertion = None
            if r is not None and r.assertion is not None:
                assertion = rc.Assertion(r.assertion.file, r.assertion.line,
                                         r.assertion.message or r.assertion.expression)
            out.append(rc.RegressionReport(
                series, base, vm_setup(run), index, tv.test,
                rc.RunCount(tv.patches[index - 1].fails, tv.patches[index - 1].runs),
                rc.RunCount(tv.base.fails, tv.base.runs), repro, assertion=assertion,
                splat=title, console=_console(run, r, title)))
    vms = _vms([c.runs for c in result.commits])
    if any(c.runs for c in result.commits):
        out.append(rc.SeriesReport(series, base, vms, patch_outcomes(result), repro))
    return out


def _vms(runs: Sequence[Sequence[TestRun]]) -> tuple[rc.VmSetup, ...]:
    seen: dict[rc.VmSetup, None] = {}
    for rs in runs:
        for r in rs:
            seen.setdefault(vm_setup(r), None)
    return tuple(seen)
