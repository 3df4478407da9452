"""`kbot bisect ... --report`: a finished bisection as a BisectionReport, addressed and
threaded the way kernel people expect.

- Threaded under the culprit's patch mail when the list archive has it: searched by subject
  and author (public-inbox `s:"..." f:...`), each hit confirmed by its patch-id (git's
  `patch-id --stable`, bot.intake.patch) against the culprit's diff; or under the mail named
  with `--in-reply-to` (a Message-ID or a lore URL).
- To: the culprit's author; Cc: its committer, the list the patch was found on, and whoever
  the tree's `scripts/get_maintainer.pl` names for the files it touches (run through bot.proc
  with a timeout; a tree without the script, like kbot's test tree, has no maintainers).
- Subject in 0-day's style, `[tree:branch] [subsystem] <sha>: <test>.fail` (bot.report.message).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path

from bot import proc
from bot.bisect.kernel_eval import KernelEvaluator
from bot.bisect.model import BisectResult, Commit
from bot.config import Config
from bot.errors import InfraError, InputError, KbotError
from bot.intake.client import ArchiveClient
from bot.intake.lore_url import parse_message_ref
from bot.intake.mail import parse_message
from bot.intake.model import Message
from bot.intake.patch import parse_patch_body, patch_id
from bot.pipeline.report import fragments, list_archive_url, vm_setup
from bot.report import context as rc
from bot.report import repro
from bot.report.commands import kbot_line
from bot.tree import git
from bot.vm.model import Outcome as TestOutcome

log = logging.getLogger(__name__)

GET_MAINTAINER = "scripts/get_maintainer.pl"
GET_MAINTAINER_TIMEOUT_S = 120.0
SEARCH_HITS = 10  # archive hits checked by patch-id
MAX_WORDS = 16  # of the subject, in the search
CONSOLE_LINES = 40


@dataclass(frozen=True)
class Thread:
    """Where a report replies: the mail, its References: chain, and its list."""

    msgid: str
    references: tuple[str, ...]
    list_name: str = ""


def _addr(person: str) -> rc.Addr | None:
    name, email = parseaddr(person)
    return rc.Addr(name, email) if "@" in email else None


def _commit(c: Commit) -> rc.Commit:
    return rc.Commit(c.sha, c.subject, _addr(c.author), c.date)


def _diff(repo: Path, sha: str) -> str:
    return git.git_out(repo, "show", "--format=", "--no-color", "--no-ext-diff", sha)


def committer(repo: Path, sha: str) -> rc.Addr | None:
    try:
        out = git.git_out(repo, "log", "-1", "--format=%cn <%ce>", sha)
    except InfraError:
        return None
    return _addr(out)


def maintainers(repo: Path, sha: str) -> tuple[rc.Addr, ...]:
    """Who `scripts/get_maintainer.pl` names for the files `sha` touches (people and lists);
    () when the tree has no such script or it fails (logged)."""
    script = repo / GET_MAINTAINER
    if not script.is_file():
        return ()
    try:
        files = git.git_out(repo, "diff-tree", "--no-commit-id", "--name-only", "-r",
                            sha).split()
        res = proc.run(["perl", GET_MAINTAINER, "--no-rolestats", "--no-git",
                        "--no-git-fallback", "-f", *files],
                       cwd=repo, timeout=GET_MAINTAINER_TIMEOUT_S, env=proc.clean_env())
    except KbotError as exc:
        log.warning("get_maintainer.pl did not run: %s", exc)
        return ()
    if not res.ok:
        log.warning("get_maintainer.pl failed: %s", res.describe())
        return ()
    out = [a for line in res.stdout.splitlines() if (a := _addr(line.strip())) is not None]
    return tuple(dict.fromkeys(out))


def _thread_of(msg: Message, list_name: str) -> Thread:
    refs = tuple(dict.fromkeys((*msg.references, *([msg.in_reply_to] if msg.in_reply_to
                                                     else []))))
    return Thread(msg.msgid, refs, list_name)


def find_patch_mail(config: Config, repo: Path, culprit: Commit,
                    lists: Sequence[str]) -> Thread | None:
    """The culprit's patch mail in the archive: a mail with its subject whose diff has its
    patch-id. (Not by author: lists rewrite From: for DMARC, and a maintainer may have
    applied it under another name; the patch-id is what proves it is the same change.)"""
    if not culprit.subject:
        return None
    want = patch_id(_diff(repo, culprit.sha))
    # Every word of the subject (public-inbox answers no s:"phrase" without positions).
    words = list(dict.fromkeys(re.findall(r"[A-Za-z0-9_]+", culprit.subject)))[:MAX_WORDS]
    if not words:
        return None
    query = " AND ".join(f"s:{w}" for w in words)
    with ArchiveClient(config.archive) as client:
        for list_name in lists:
            try:
                hits = client.search_atom(list_name, query, limit=SEARCH_HITS)
            except KbotError as exc:
                log.warning("searching %s for the culprit's mail: %s", list_name, exc)
                continue
            for hit in hits:
                if hit.title.lower().startswith("re:"):
                    continue
                try:
                    msg = parse_message(client.raw(hit.msgid, list_name))
                    got = parse_patch_body(msg.body, hit.msgid).patch_id
                except KbotError as exc:
                    log.debug("archive hit <%s> is not the patch: %s", hit.msgid, exc)
                    continue
                if got == want:
                    return _thread_of(msg, list_name)
    return None


def named_thread(config: Config, ref: str, list_name: str | None) -> Thread:
    """The mail `--in-reply-to` names (a Message-ID or lore URL); its References: from the
    archive when it answers, else just the one Message-ID (still threads in every reader)."""
    parsed = parse_message_ref(ref)
    if parsed is None:
        raise InputError(f"--in-reply-to {ref}: not a Message-ID or an archive URL of one")
    where = list_name or parsed.list_name
    try:
        with ArchiveClient(config.archive) as client:
            msg = parse_message(client.raw(parsed.msgid, where))
        return _thread_of(msg, where or "")
    except KbotError as exc:
        log.warning("could not read <%s> from the archive (%s): replying to it anyway",
                    parsed.msgid, exc)
        return Thread(parsed.msgid, (), where or "")


def _symptom_and_console(evaluator: KernelEvaluator | None, test: str,
                         at: Commit) -> tuple[str, tuple[str, ...], rc.VmSetup | None,
                                              tuple[str, ...]]:
    """What failed at `at`, its console excerpt, the machine, and the emulator line."""
    if evaluator is None:
        return "", (), None, ()
    runs = evaluator.runs.get(at.sha, [])
    for run in reversed(runs):
        for r in run.results:
            if r.name == test and r.outcome in (TestOutcome.FAIL, TestOutcome.CRASH):
                symptom = (r.assertion.message or r.assertion.expression
                           if r.assertion is not None else f"{test} {r.outcome.value}")
                return (symptom, tuple(r.output[-CONSOLE_LINES:]), vm_setup(run),
                        repro.sanitize_emulator(run.command, str(run.kernel)))
    if runs:
        run = runs[-1]
        return "", (), vm_setup(run), repro.sanitize_emulator(run.command, str(run.kernel))
    return "", (), None, ()


def tree_of(config: Config, repo: Path) -> tuple[str, str]:
    """(name, public URL) of the configured tree at `repo` (its path, or kbot's mirror of
    it, <cache_dir>/trees/<name>-<digest>.git), else (the folder's name, "")."""
    mirrors = (config.cache_dir / "trees").resolve()
    for t in config.trees:
        if t.path:
            p = Path(t.path.replace("{cache_dir}", str(config.cache_dir))).expanduser()
            if p.resolve() == repo.resolve():
                return t.name, t.url
        if repo.resolve().parent == mirrors and re.fullmatch(
                rf"{re.escape(t.name)}-[0-9a-f]{{8}}\.git", repo.name):
            return t.name, t.url
    return repo.name, ""


def branch_of(repo: Path, rev: str) -> str:
    """The branch `rev` names ("queue" for queue or origin/queue), else ""."""
    res = git.git(repo, "rev-parse", "--symbolic-full-name", rev, check=False)
    full = res.stdout.strip() if res.ok else ""
    for prefix in ("refs/heads/", "refs/remotes/origin/"):
        if full.startswith(prefix):
            return full[len(prefix):]
    return ""


def bisection_context(config: Config, repo: Path, res: BisectResult, test: str, *,
                      bad_rev: str, evaluator: KernelEvaluator | None = None,
                      in_reply_to: str | None = None, list_name: str | None = None,
                      set_name: str | None = None) -> rc.BisectionReport:
    tree, url = tree_of(config, repo)
    at = res.culprit or res.bad
    symptom, console, vm, emulator = _symptom_and_console(evaluator, test, at)
    thread: Thread | None = None
    if in_reply_to:
        thread = named_thread(config, in_reply_to, list_name)
    elif res.culprit is not None:
        lists = [list_name] if list_name else [lst.name for lst in config.lists]
        thread = find_patch_mail(config, repo, res.culprit, lists)
    found_list = (thread.list_name if thread is not None else "") or (list_name or "")
    address = next((lst.address for lst in config.lists if lst.name == found_list), "")
    steps = tuple(
        rc.BisectStep(_commit(t.commit), rc.Verdict(t.verdict.value),
                      rc.RunCount(t.fails, t.runs))
        for t in res.tested)
    good = res.good[0]
    lines = []
    if vm is not None:
        lines.append(kbot_line(
            "vmtest", "--kernel", repro.KERNEL, "--selftests", repro.SELFTESTS, "--plan",
            repro.PLAN_FILE, "--backend", vm.backend.value, step="test",
            why="boot it and run the test (kbot makes the initramfs and runs the emulator)"))
    lines.append(kbot_line(
        "bisect", "--tree", ".", "--good", good.sha, "--bad", res.bad.sha, "--test", test,
        *(("--set", set_name) if set_name else ()),
        why="or let kbot bisect it again in your clone"))
    reproduce = rc.Reproduce(
        tree=tree, base_sha=good.sha, tree_url=url,
        tree_note="" if url else "not published", commit=at.sha,
        base_config=config.build.base_config, fragments=fragments(config),
        selftests=config.build.selftests, stop="test",
        vm=rc.ReproVm(vm.backend, vm.vendor, (test,), emulator) if vm is not None else None,
        kbot=tuple(lines))
    who = res.culprit or (res.candidates[0] if res.candidates else None)
    return rc.BisectionReport(
        tree=tree, branch=branch_of(repo, bad_rev), test=test, good=_commit(good),
        bad=_commit(res.bad), confidence=res.confidence, steps=steps,
        bisect_log=res.replay_log, reproduce=reproduce,
        culprit=_commit(res.culprit) if res.culprit is not None else None,
        candidates=tuple(_commit(c) for c in res.candidates), symptom=symptom, vm=vm,
        console=console,
        in_reply_to=thread.msgid if thread is not None else "",
        references=thread.references if thread is not None else (),
        list_address=address,
        archive_url=list_archive_url(config, found_list) if found_list else "",
        committer=committer(repo, who.sha) if who is not None else None,
        maintainers=maintainers(repo, who.sha) if who is not None else (),
        platform=f"{vm.backend.value}, nested {vm.vendor.value}" if vm is not None else "",
    )


def verdict_ok(res: BisectResult) -> bool:
    """Only a bisection that named a culprit or candidates makes a report."""
    return res.culprit is not None or bool(res.candidates)

