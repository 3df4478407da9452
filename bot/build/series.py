"""Build commits c0..cN in order through one build slot, and show the results as a table."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bot import failpoints
from bot.build.kernel import BuildResult, BuildStatus, KernelBuilder, ProgressFn
from bot.executor.base import BuildTask, Executor
from bot.table import columns
from bot.tree import git


def build_commits(
    builder: KernelBuilder,
    repo: Path,
    shas: Sequence[str],
    *,
    progress: ProgressFn | None = None,
    before_each: Callable[[], None] | None = None,
    executor: Executor | None = None,
) -> list[BuildResult]:
    """Each commit is built after its predecessor in the same slot (incremental), and its new
    warnings are counted against the predecessor's result. `before_each` runs before every
    build (a job's cancel/shutdown check: it may raise to stop between builds). With an
    `executor` the builds run where it runs them (a build worker), one after the other."""
    results: list[BuildResult] = []
    for i, sha in enumerate(shas):
        if before_each is not None:
            before_each()
        parent = results[-1] if results else None
        failpoints.hit("build:before")
        if executor is None:
            results.append(builder.build(repo, sha, parent=parent, progress=progress))
        else:
            task = BuildTask(repo, sha, git.tree_id(repo, sha), builder.config_fingerprint,
                             parent, f"c{i} build")
            results.append(executor.build(task).result().value)
        failpoints.hit("build:after")
    return results


def results_table(results: Sequence[BuildResult], titles: Sequence[str] = ()) -> str:
    rows = [("#", "commit", "build", "time", "new warnings", "what")]
    for i, r in enumerate(results):
        what = titles[i] if i < len(titles) else ""
        if r.status is not BuildStatus.PASS:
            what = r.message
        elif r.new_warnings:
            what = str(r.new_warnings[0])
        when = "cached" if r.cached else f"{r.build_seconds:.1f}s"
        rows.append((f"c{i}", r.rev[:12], r.status.value.upper(), when,
                     str(len(r.new_warnings)) if r.parent_rev else "-", what))
    return "\n".join(columns(rows))


def diagnostics_text(result: BuildResult) -> str:
    """Errors and warnings, the new ones marked `>>` as kernel test robot reports do."""
    new = {(d.key, d.line) for d in result.new_warnings}
    out = []
    for d in result.errors:
        out.append(f">> {d}")
    for d in result.warnings:
        out.append(f"{'>>' if (d.key, d.line) in new else '  '} {d}")
    return "\n".join(out)
