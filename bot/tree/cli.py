"""`kbot apply SERIES [--tree NAME|PATH] [--base REV] [--list NAME] [--build] [--json]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bot.errors import (
    EXIT_FAILURE_FOUND,
    EXIT_INFRA_ERROR,
    EXIT_OK,
    EXIT_USER_ERROR,
    InputError,
    UserError,
)
from bot.intake.model import Series
from bot.tree import git
from bot.tree.apply import ApplyResult, ApplyStatus, apply_series
from bot.tree.trees import BaseRuleKind, ResolvedBase, Trees


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "apply",
        help="apply a series (mbox file) patch by patch on its base, in kbot's own worktree",
        description="Resolves the base (base-commit footer, prerequisite-patch-ids, base "
        "rules, default branch), checks every patch, and applies each with `git am -3` as its "
        "own commit. With --build, builds c0..cN incrementally.",
    )
    p.add_argument("series", type=Path, help="an mbox/maildir/.eml/t.mbox.gz file")
    p.add_argument("--tree", help="a configured tree name or a git repo path (default: all)")
    p.add_argument("--base", help="apply on this commit/branch instead of resolving the base")
    p.add_argument("--list", dest="list_name", help="the list the series came from (base rules)")
    p.add_argument("--fetch", action="store_true", help="update the tree's mirror first")
    p.add_argument("--build", action="store_true", help="then build every commit c0..cN")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_apply)


def load_series(path: Path, max_bytes: int) -> Series:
    from bot.intake.cli import load_messages
    from bot.intake.mbox import ParseProblem
    from bot.intake.series import assemble_all, newest_first

    if not path.exists():
        raise UserError(f"{path}: no such file")
    problems: list[ParseProblem] = []
    messages = load_messages(str(path), max_bytes=max_bytes, problems=problems)
    for problem in problems:
        print(f"kbot: skipped {problem}", file=sys.stderr)
    series = newest_first(assemble_all(messages).series)
    if not series:
        raise InputError(f"{path}: no patch series found ({len(messages)} messages read)")
    if len(series) > 1:
        print(f"kbot: {path} holds {len(series)} series; applying the newest: "
              f"v{series[0].version} {series[0].title}", file=sys.stderr)
    return series[0]


def result_json(r: ApplyResult) -> dict[str, Any]:
    return {
        "status": r.status.value, "tree": r.tree, "repo": str(r.repo), "ref": r.ref,
        "base": {"tree": r.base.tree, "branch": r.base.branch, "sha": r.base.sha,
                 "rule": r.base.rule.value, "detail": r.base.detail, "guessed": r.base.guessed,
                 "notes": list(r.base.notes)},
        "commits": [{"index": c.index, "title": c.title, "sha": c.sha,
                     "message_id": c.message_id} for c in r.commits],
        "failed_index": r.failed_index, "failed_title": r.failed_title,
        "conflicts": list(r.conflicts), "git_message": r.git_message,
        "problems": [str(p) for p in r.problems],
    }


def result_text(r: ApplyResult, series: Series) -> str:
    verb = "applied on" if r.status is ApplyStatus.APPLIED else "tried on"
    lines = [f"{verb} {r.base.describe()}"]
    if r.base.guessed:
        lines.append("  note: the series names no base; use `git format-patch --base=...`")
    lines.extend(f"  note: {n}" for n in r.base.notes)
    lines.append(f"  c0  {r.base.sha[:12]}  (base)")
    done = {c.index: c for c in r.commits}
    for p in series.patches:
        if p.index in done:
            lines.append(f"  c{p.index}  {done[p.index].sha[:12]}  {p.title}")
        elif p.index == r.failed_index:
            files = ", ".join(r.conflicts) or "?"
            lines.append(f"  c{p.index}  DOES NOT APPLY ({files})  {p.title}")
        else:
            lines.append(f"  c{p.index}  -             {p.title}")
    if r.status is ApplyStatus.CONFLICT and r.git_message:
        lines.append("git am says:")
        lines.extend(f"  {ln}" for ln in r.git_message.splitlines()[-15:])
    if r.status is ApplyStatus.REJECTED:
        lines.append("rejected before applying:")
        lines.extend(f"  {p}" for p in r.problems)
    if series.missing:
        lines.append(f"  note: patches {list(series.missing)} of {series.total} are missing")
    return "\n".join(lines)


def cmd_apply(args: argparse.Namespace, ctx: Any) -> int:
    series = load_series(args.series, ctx.config.archive.max_message_bytes)
    trees = Trees(ctx.config)
    base: ResolvedBase | None = None
    if args.base:
        if not args.tree:
            raise UserError("--base needs --tree")
        tree = trees.get(trees.section(args.tree), fetch=args.fetch)
        if not git.has_commit(tree.mirror, args.base):
            raise UserError(f"tree {tree.name}: no commit {args.base!r}")
        base = ResolvedBase(tree.name, None, git.rev_parse(tree.mirror, args.base),
                            BaseRuleKind.EXPLICIT, args.base)
    elif args.fetch:
        for s in ([trees.section(args.tree)] if args.tree else list(ctx.config.trees)):
            trees.get(s, fetch=True)
    result = apply_series(trees, series, tree=args.tree, list_name=args.list_name, base=base)
    build_code = EXIT_OK
    builds = []
    if args.build and result.status is not ApplyStatus.REJECTED:
        from bot.build.kernel import BuildStatus, KernelBuilder
        from bot.build.series import build_commits, results_table

        builder = KernelBuilder.from_config(ctx.config)
        builds = build_commits(builder, result.repo, result.shas)
        statuses = {b.status for b in builds}
        if BuildStatus.ERROR in statuses:
            build_code = EXIT_INFRA_ERROR
        elif BuildStatus.FAIL in statuses:
            build_code = EXIT_FAILURE_FOUND
    if args.json:
        doc = result_json(result)
        if builds:
            doc["builds"] = [b.to_json() for b in builds]
        print(json.dumps(doc, indent=2))
    else:
        print(result_text(result, series))
        if builds:
            titles = ["(base)", *(c.title for c in result.commits)]
            print()
            print(results_table(builds, titles))
    if result.status is ApplyStatus.REJECTED:
        return EXIT_USER_ERROR
    if result.status is ApplyStatus.CONFLICT:
        return EXIT_INFRA_ERROR
    return build_code
