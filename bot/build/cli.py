"""`kbot build --tree NAME|PATH --rev REV|A..B [--config FRAGMENT...] [--json]`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bot.build.kernel import BuildStatus, KernelBuilder
from bot.build.series import build_commits, diagnostics_text, results_table
from bot.errors import EXIT_FAILURE_FOUND, EXIT_INFRA_ERROR, EXIT_OK, UserError
from bot.tree import git
from bot.tree.trees import Trees


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "build",
        help="build a kernel (bzImage + static KVM selftests) for one commit or a range",
        description="Builds in kbot's own copy of the tree (never in your checkout); the same "
        "tree and config are served from the artifact store without building again.",
    )
    p.add_argument("--tree", required=True, help="a configured tree name or a git repo path")
    p.add_argument("--rev", required=True,
                   help="a commit, or A..B to build every commit after A up to B in order")
    # dest differs from the global -c/--config (the kbot config file), which it would shadow.
    p.add_argument("--config", dest="fragments", action="append", default=[], type=Path,
                   metavar="FRAGMENT",
                   help="an extra kconfig fragment on top of the configured ones (repeatable)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_build)


def _resolve_revs(source: Path | None, mirror: Path, rev: str) -> list[str]:
    """Commits to build, oldest first. Revs are looked up in the mirror first (kbot's own
    commits, e.g. an applied series); for a path tree, else in the user's repository
    (read-only), then pinned under refs/kbot/build/ in the mirror, which shares its objects."""
    ends = [e for e in rev.split("..") if e] if ".." in rev else [rev]
    in_mirror = all(git.has_commit(mirror, e) for e in ends)
    where = mirror if in_mirror or source is None else source
    if where is mirror:
        source = None
    if ".." in rev:
        start, _, end = rev.partition("..")
        out = git.git_out(where, "rev-list", "--reverse", "--first-parent", f"{start}..{end}")
        shas = out.split()
        if not shas:
            raise UserError(f"{rev}: no commits in that range")
        shas.insert(0, git.rev_parse(where, start))
    else:
        if not git.has_commit(where, rev):
            raise UserError(f"{where}: no commit {rev!r}")
        shas = [git.rev_parse(where, rev)]
    if source is not None:
        for sha in shas:
            git.git(mirror, "update-ref", f"refs/kbot/build/{sha}", sha)
    return shas


def cmd_build(args: argparse.Namespace, ctx: Any) -> int:
    trees = Trees(ctx.config)
    section = trees.section(args.tree)
    tree = trees.get(section, fetch=bool(section.path))
    source = None
    if section.path:
        p = Path(section.path.replace("{cache_dir}", str(ctx.config.cache_dir))).expanduser()
        source = None if p.resolve() == tree.mirror.resolve() else p
    for frag in args.fragments:
        if not frag.is_file():
            raise UserError(f"--config {frag}: no such file")
    shas = _resolve_revs(source, tree.mirror, args.rev)
    builder = KernelBuilder.from_config(ctx.config, args.fragments)
    results = build_commits(builder, tree.mirror, shas)
    if args.json:
        doc = [r.to_json() for r in results]
        print(json.dumps(doc[0] if len(doc) == 1 else doc, indent=2))
    else:
        print(results_table(results))
        for r in results:
            text = diagnostics_text(r)
            extra = []
            if r.config_dropped:
                extra.append("config options dropped: " + ", ".join(r.config_dropped))
            if r.missing_selftests:
                extra.append("selftests not built: " + ", ".join(r.missing_selftests))
            if r.artifacts.bzimage:
                extra.append(f"bzImage: {r.artifacts.bzimage}")
            if r.artifacts.selftests_dir:
                extra.append(f"selftests: {r.artifacts.selftests_dir} ({len(r.selftests)})")
            if r.artifacts.log:
                extra.append(f"log: {r.artifacts.log}")
            if text or extra:
                print(f"\n{r.rev[:12]}:")
                for line in [*extra, *text.splitlines()]:
                    print(f"  {line}")
    statuses = {r.status for r in results}
    if BuildStatus.ERROR in statuses:
        return EXIT_INFRA_ERROR
    if BuildStatus.FAIL in statuses:
        return EXIT_FAILURE_FOUND
    return EXIT_OK
