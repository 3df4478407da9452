"""Turn a series job's results into report contexts (bot.report.context).

The report stage knows nothing of builds or VMs; this is the one place that reads
ApplyResult / BuildResult / TestRun / SeriesVerdict and says what a maintainer should read:

- an apply failure (nothing else: nothing was built);
- a build failure, replying to the first patch that breaks the build;
- one regression mail per culprit patch, listing every test that patch broke;
- the series summary (the per-patch table, replying to the cover), as [report]
  series_summary says: on-failure (default: a clean series mails no one), always, author
  (a clean series mails its author only), never.

Every context carries its Reproduce: the steps of bot.report.repro, the kbot lines checked
against kbot's own parser (bot.report.commands) and, with [report] artifacts_url, links to
the job's folder (bot.pipeline.artifacts).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import replace

from bot.bisect.series import TestClass, TestVerdict
from bot.build.diagnostics import Diagnostic as BuildDiagnostic
from bot.build.diagnostics import Severity
from bot.build.kernel import BuildStatus
from bot.config import Config, TreeSection
from bot.errors import ConfigError, InfraError
from bot.pipeline.series_job import CommitRuns, SeriesJobResult, result_key
from bot.report import context as rc
from bot.report import repro
from bot.report.adapt import series_info
from bot.report.commands import kbot_line
from bot.tree import git
from bot.tree.apply import ApplyStatus
from bot.tree.trees import BaseRuleKind
from bot.vm.model import Backend, Outcome, TestResult, TestRun

CONSOLE_EXCERPT_LINES = 40
EXCERPT_CONTEXT = 2
SUMMARY_POLICIES = ("on-failure", "always", "author", "never")

_BACKEND = {
    Backend.QEMU_KVM: rc.Backend.QEMU_KVM,
    Backend.QEMU_TCG: rc.Backend.QEMU_TCG,
    Backend.BOCHS: rc.Backend.BOCHS,
}
_CPU = {
    Backend.QEMU_KVM: "host",
    Backend.QEMU_TCG: "max",
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


def list_archive_url(config: Config, list_name: str) -> str:
    """The archive of a list, as lore lays it out: <archive.base_url>/<list>/. Without a
    list, [report] archive_url."""
    if list_name:
        return f"{config.archive.base_url.rstrip('/')}/{urllib.parse.quote(list_name)}/"
    url = config.report.archive_url
    return url if url.endswith("/") else url + "/"


def job_links(config: Config, job_id: int | None) -> tuple[str, str]:
    """(repro.sh URL, folder URL) of a job under [report] artifacts_url; empty without it."""
    base = config.report.artifacts_url.rstrip("/")
    if not base or job_id is None:
        return "", ""
    return f"{base}/jobs/{job_id}/repro.sh", f"{base}/jobs/{job_id}/"


def fragments(config: Config) -> tuple[rc.ConfigFragment, ...]:
    """The configured kconfig fragments, whole, under their file names (never kbot's path)."""
    out = []
    for name in config.build.fragments:
        path = config.resolve(name)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(str(config.source), "build.fragments",
                              f"{name}: cannot read: {exc.strerror}") from exc
        out.append(rc.ConfigFragment(path.name, text))
    return tuple(out)


def _tree(config: Config, name: str) -> TreeSection | None:
    try:
        return config.tree_named(name)
    except ConfigError:
        return None  # an ad-hoc tree (`test-series --tree PATH`)


def _split_key(key: str) -> tuple[str, str]:
    """"state_test [qemu-tcg]" -> ("state_test", "qemu-tcg")."""
    name, sep, backend = key.rpartition(" [")
    return (name, backend.rstrip("]")) if sep else (key, "")


def _repro_vm(run: TestRun, tests: Sequence[str]) -> rc.ReproVm:
    v = vm_setup(run)
    return rc.ReproVm(v.backend, v.vendor, tuple(dict.fromkeys(tests)),
                      repro.sanitize_emulator(run.command, str(run.kernel)))


def reproduce(config: Config, result: SeriesJobResult, job_id: int | None, *, upto: int,
              stop: str, expect: str = "fail", vm: rc.ReproVm | None = None) -> rc.Reproduce:
    """How a reader redoes this job's failing step: patches 1..upto, stopping at `stop`."""
    section = _tree(config, result.apply.tree)
    url = section.url if section is not None else ""
    base = result.apply.base
    described = _describe(result)
    note = ""
    if not url:
        note = "not published" + (f"; its base {base.sha[:12]} is {described}"
                                  if described else "")
    series = result.series
    root = series.cover.message_id if series.cover else series.patches[0].message_id
    archive = list_archive_url(config, result.list_name)
    lines = []
    if stop == "test" and vm is not None:
        lines.append(kbot_line(
            "vmtest", "--kernel", repro.KERNEL, "--selftests", repro.SELFTESTS,
            "--plan", repro.PLAN_FILE, "--backend", vm.backend.value, step="test",
            why="boot it and run the tests (kbot makes the initramfs and runs the emulator)"))
    if stop == "build":
        lines.append(kbot_line("build", "--tree", ".", "--rev", "HEAD", step="build",
                               why="or let kbot build it (sandboxed, as it did)"))
    tree_arg = result.apply.tree if url else "."
    listed = ("--list", result.list_name) if result.list_name else ()
    lines.append(kbot_line(
        "test-series", f"{archive}{urllib.parse.quote(root, safe='@!$&()*+,;=:~-._')}/",
        "--tree", tree_arg, *listed,
        why=("or let kbot redo the whole job: apply, build and test every patch"
             + ("" if url else " (in your clone, with its base)"))))
    script_url, files_url = job_links(config, job_id)
    return rc.Reproduce(
        tree=result.apply.tree, base_sha=base.sha, tree_url=url, tree_note=note,
        archive_url=archive, series_msgid=root,
        patches=tuple(p.message_id for p in series.patches if p.index <= upto),
        patches_total=series.total, base_config=config.build.base_config,
        fragments=fragments(config), selftests=config.build.selftests, stop=stop,
        expect=expect, vm=vm, kbot=tuple(lines), script_url=script_url, files_url=files_url)


def _series(config: Config, result: SeriesJobResult) -> rc.SeriesInfo:
    address = ""
    for lst in config.lists:
        if lst.name == result.list_name:
            address = lst.address
    info = series_info(result.series, list_address=address)
    shas = {c.index: c.sha for c in result.apply.commits}
    patches = tuple(replace(p, sha=shas.get(p.index, "")) for p in info.patches)
    return replace(info, patches=patches, archive_url=list_archive_url(config, result.list_name))


def _describe(result: SeriesJobResult) -> str:
    try:  # a name a reader recognises, e.g. v6.1-rc3-123-gabcdef ("" without a tag)
        return git.git_out(result.apply.repo, "describe", "--tags", result.apply.base.sha)
    except InfraError:
        return ""


def _base(result: SeriesJobResult) -> rc.BaseInfo:
    b = result.apply.base
    return rc.BaseInfo(b.tree, b.branch or "", b.sha, _CHOSEN_BY[b.rule], _describe(result))


def _diag(d: BuildDiagnostic, new: bool = True) -> rc.Diagnostic:
    return rc.Diagnostic(d.file, d.line, d.column, d.message, new, d.severity.value)


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


def _failure(result: SeriesJobResult, tv: TestVerdict,
             index: int) -> tuple[rc.Failure, TestRun] | None:
    run, r = _first_failure(result, tv, index)
    if run is None:
        return None
    name, _ = _split_key(tv.test)
    title = name.split("kernel: ", 1)[1] if name.startswith("kernel: ") else ""
    assertion = None
    if r is not None and r.assertion is not None:
        assertion = rc.Assertion(r.assertion.file, r.assertion.line,
                                 r.assertion.message or r.assertion.expression)
    return rc.Failure(
        name, vm_setup(run),
        on_patch=rc.RunCount(tv.patches[index - 1].fails, tv.patches[index - 1].runs),
        on_base=rc.RunCount(tv.base.fails, tv.base.runs), assertion=assertion,
        splat=title, console=_console(run, r, title)), run


def contexts(config: Config, result: SeriesJobResult, job_id: int | None = None, *,
             series_summary: str | None = None) -> list[rc.ReportContext]:
    """The reports this result deserves (see the module docstring). `series_summary`
    overrides [report] series_summary (the job's folder records every summary)."""
    policy = series_summary or config.report.series_summary
    series = _series(config, result)
    base = _base(result)
    out: list[rc.ReportContext] = []
    a = result.apply
    if a.status is ApplyStatus.CONFLICT and a.failed_index is not None:
        repro_ = reproduce(config, result, job_id, upto=a.failed_index, stop="apply")
        out.append(rc.ApplyFailureReport(series, base, a.failed_index, a.conflicts,
                                          a.git_message, repro_))
        return out
    if a.status is ApplyStatus.REJECTED:
        first = min(p.patch for p in a.problems) if a.problems else 1
        repro_ = reproduce(config, result, job_id, upto=first, stop="apply")
        out.append(rc.ApplyFailureReport(
            series, base, first, tuple(sorted({p.path for p in a.problems})),
            "kbot refused the series before applying it:\n"
            + "\n".join(str(p) for p in a.problems), repro_))
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
                                                      b.message, severity="")),)
            out.append(rc.BuildFailureReport(
                series, base, c.index, errors,
                reproduce(config, result, job_id, upto=c.index, stop="build"),
                compiler=b.toolchain.split(";")[0]))
            break
    out += _regressions(config, result, job_id, series, base)
    if any(c.runs for c in result.commits) and policy != "never":
        last = next(c for c in reversed(result.commits) if c.runs)
        run = last.runs[-1]
        outcomes = patch_outcomes(result)
        # What repro.sh sees at the last tested patch: a failure there, or a pass.
        at_last = next((o for o in outcomes if o.index == last.index), None)
        ok = at_last is None or not at_last.failed
        tests = [r.name for r in run.results if r.outcome is not Outcome.NOT_RUN]
        summary = rc.SeriesReport(
            series, base, _vms([c.runs for c in result.commits]), outcomes,
            reproduce(config, result, job_id, upto=last.index, stop="test",
                      expect="pass" if ok else "fail", vm=_repro_vm(run, tests)))
        if not summary.ok:
            out.append(summary)
        elif policy == "always":
            out.append(summary)
        elif policy == "author":
            out.append(replace(summary, audience=rc.Audience.AUTHOR))
    return out


def _regressions(config: Config, result: SeriesJobResult, job_id: int | None,
                 series: rc.SeriesInfo, base: rc.BaseInfo) -> list[rc.RegressionReport]:
    """One report per culprit patch, with every test it broke (most important first)."""
    verdict = result.verdict
    if verdict is None:
        return []
    order = result.plan_order

    def rank(tv: TestVerdict) -> tuple[int, str]:
        name = _split_key(tv.test)[0]
        return (order.index(name) if name in order else len(order), tv.test)

    by_patch: dict[int, list[tuple[rc.Failure, TestRun]]] = {}
    for tv in sorted(verdict.of_kind(TestClass.NEW), key=rank):
        if tv.first_bad_patch is None:
            continue  # not confident: the series table shows it as unsure
        found = _failure(result, tv, tv.first_bad_patch)
        if found is not None:
            by_patch.setdefault(tv.first_bad_patch, []).append(found)
    out = []
    for index in sorted(by_patch):
        failures = by_patch[index]
        first_run = failures[0][1]
        # The selftests to rerun on the first failure's backend; a kernel splat or a boot
        # failure is not a selftest: rerun what that boot ran.
        tests = [f.test for f, run in failures if run.backend is first_run.backend
                 and f.test != "boot" and not f.test.startswith("kernel: ")]
        vm = _repro_vm(first_run, tests or [r.name for r in first_run.results])
        out.append(rc.RegressionReport(
            series, base, index, tuple(f for f, _ in failures),
            reproduce(config, result, job_id, upto=index, stop="test", vm=vm)))
    return out


def _vms(runs: Sequence[Sequence[TestRun]]) -> tuple[rc.VmSetup, ...]:
    seen: dict[rc.VmSetup, None] = {}
    for rs in runs:
        for r in rs:
            seen.setdefault(vm_setup(r), None)
    return tuple(seen)
