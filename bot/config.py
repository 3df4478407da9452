"""Config files (TOML) into frozen, validated dataclasses.

Each section is a dataclass; its fields and their types *are* the schema: the loader walks the
type hints, so adding a setting means adding one field with a default. Unknown keys are errors
(a typo must not silently fall back to a default) and every error names the file, the dotted key
and the problem.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from bot.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
TEMPLATE_DIR = REPO_ROOT / "templates"
DEFAULT_CONFIG = CONFIG_DIR / "kvm.toml"
SCHEMA_VERSION = 1


def default_state_dir() -> Path:
    env = os.environ.get("KBOT_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kbot"


def default_cache_dir() -> Path:
    env = os.environ.get("KBOT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kbot"


@dataclass(frozen=True)
class BotSection:
    name: str = "kbot"
    email: str = "kbot@localhost"
    state_dir: str = ""  # empty: $KBOT_STATE_DIR or ~/.local/share/kbot
    cache_dir: str = ""  # empty: $KBOT_CACHE_DIR or ~/.cache/kbot
    # Who runs this kbot, "Name <address>": named in every report's signature, so a reader
    # knows whom a reply reaches ("" = the signature names only the bot).
    owner: str = ""


@dataclass(frozen=True)
class ArchiveSection:
    base_url: str = "https://lore.kernel.org"
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 2.0
    max_download_bytes: int = 64 * 1024 * 1024
    max_inflated_bytes: int = 256 * 1024 * 1024
    max_message_bytes: int = 16 * 1024 * 1024
    # The most messages kbot takes from one thread (t.mbox.gz) or search mbox: a small .gz of
    # millions of tiny mails would otherwise cost gigabytes once parsed. Big lore threads
    # hold a few hundred.
    max_thread_messages: int = 5000
    # Watcher paging (bot/intake/watcher.py): rt: searches re-read this much before the cursor
    # (search lags new mail, clocks differ); pages of this many Atom entries (public-inbox max
    # 200); the delivery-order sweep reads at most sweep_max messages and stops after
    # sweep_stop_known already-stored ones in a row (0 turns the sweep off).
    rt_overlap_s: float = 3600.0
    first_lookback_s: float = 86400.0
    search_page: int = 200
    sweep_max: int = 200
    sweep_stop_known: int = 25


@dataclass(frozen=True)
class ListSection:
    """One mailing list to watch, with the filters that decide which series kbot tests."""

    name: str
    address: str = ""  # the list's posting address, Cc'd on every report (kvm@vger.kernel.org)
    files: tuple[str, ...] = ()  # fnmatch-style globs on touched files; empty: any
    subject_patterns: tuple[str, ...] = ()  # regexes on the cleaned subject; empty: any
    skip_prefixes: tuple[str, ...] = ()  # subject prefixes (e.g. RFC, kvm-unit-tests) to skip
    settle_s: float = 600.0  # how long an incomplete series may wait for its missing patches
    poll_s: float = 300.0
    max_pages: int = 20  # rt: search pages per poll
    # This list's own tree, branch and test plan; "" = the global choice (base rules, then the
    # first tree's default branch; vm.plan). A base rule that matches still wins over `tree`:
    # rules are the more specific choice (a subject tag, a file).
    tree: str = ""
    branch: str = ""  # "" = the tree's default_branch
    plan: str = ""  # a plan name (configs/testplans/<name>.toml) or a .toml path


@dataclass(frozen=True)
class TreeSection:
    """A git tree kbot can apply series to. Exactly one of url / path."""

    name: str
    url: str = ""
    path: str = ""
    branches: tuple[str, ...] = ("master",)
    default_branch: str = "master"
    # A local clone of the same project (url trees only) whose objects the first mirror borrows
    # so that only what it lacks crosses the network (bot/tree/trees.py: copied, not shared).
    reference: str = ""


@dataclass(frozen=True)
class BaseRule:
    """Pick a tree/branch for a series that has no usable base-commit footer."""

    tree: str
    branch: str
    lists: tuple[str, ...] = ()
    subject_tags: tuple[str, ...] = ()  # e.g. "KVM: nVMX" matched against the subject
    files: tuple[str, ...] = ()
    name: str = ""  # optional: a later config layer changes or removes a rule by its name


@dataclass(frozen=True)
class BuildSection:
    base_config: str = "tinyconfig"
    fragments: tuple[str, ...] = ("kconfig/kvm-nested.config",)
    timeout_s: float = 3600.0
    jobs: int = 0  # 0: one per CPU
    ccache: bool = True
    selftests: bool = True
    # The build sandbox (bot/build/sandbox.py): bubblewrap, and limits per build step.
    bwrap: str = "bwrap"
    max_memory_mb: int = 4096  # address space of each process (RLIMIT_AS)
    max_procs: int = 4096  # processes in the sandbox (RLIMIT_NPROC; not enforced for root)
    max_file_mb: int = 4096  # the largest file a step may write (RLIMIT_FSIZE)
    max_tmp_mb: int = 1024  # the private /tmp and /dev/shm (tmpfs, in memory)
    max_log_mb: int = 64  # the build log file; later output is dropped with a note
    sandbox_read: tuple[str, ...] = ()  # more host paths a build may read (a toolchain in /srv)


@dataclass(frozen=True)
class VmSection:
    plan: str = "nested-state"
    backend: str = "auto"  # auto | qemu-kvm | qemu-tcg | bochs
    boot_timeout_s: float = 120.0
    memory_mb: int = 1024
    # A flaky-looking result gets more boots of the commits that decide it, up to this many
    # rounds in all (the first included).
    max_rounds: int = 3


@dataclass(frozen=True)
class JobsSection:
    """How the job runner treats a job that could not finish (bot/pipeline/runner.py)."""

    # An infrastructure error (archive down, a VM that would not start) is retried after
    # retry_backoff_s, doubling per attempt up to retry_max_backoff_s, at most max_attempts
    # times in all; then the job is 'failed' with its reason (`kbot jobs retry` starts over).
    max_attempts: int = 4
    retry_backoff_s: float = 300.0
    retry_max_backoff_s: float = 6 * 3600.0


@dataclass(frozen=True)
class ExecutorSection:
    """Where builds and boots run (bot/executor/): in this process, or on `kbot worker`s."""

    kind: str = "local"  # local (threads in kbot, no broker) | celery (Redis-brokered workers)
    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str = ""  # "" = broker_url
    max_boots: int = 0  # emulators at once (per process or per worker); 0 = one per core
    build_slots: int = 0  # builds at once, one slot each; 0 = one per 4 cores (at least 1)
    # An unacknowledged task goes back to its queue after this long: longer than the longest
    # build (build.timeout_s), or a slow build would run twice. The fast path when a worker
    # dies is its lease (lease_s, renewed every lease_s / 4): the coordinator sends it again.
    visibility_timeout_s: float = 4 * 3600.0
    lease_s: float = 20.0
    # How long a task may wait with no live worker serving its queue: then "could not test".
    no_worker_timeout_s: float = 1800.0
    # The content-addressed artifact store every worker reads and writes: a path all machines
    # mount (NFS); "" = <cache_dir>/build (one machine). Repositories a build task names must be
    # reachable at the same path too (cache_dir/trees on the shared mount).
    artifact_dir: str = ""


@dataclass(frozen=True)
class BisectSection:
    confidence: float = 0.95
    max_runs: int = 64
    jobs: int = 1
    # A series job confirms each new failure (or fix) by booting the patch and its parent again
    # (vm.max_rounds caps the runs per commit): at most this many boots after the first round,
    # so that a series with many unsure tests still costs minutes, not hours.
    series_max_reruns: int = 12


@dataclass(frozen=True)
class SmtpSection:
    host: str = ""
    port: int = 587
    security: str = "starttls"  # starttls | ssl | none
    username_env: str = "KBOT_SMTP_USER"
    password_env: str = "KBOT_SMTP_PASSWORD"
    timeout_s: float = 60.0


@dataclass(frozen=True)
class ReportSection:
    delivery: str = "outbox"  # outbox | smtp
    outbox_format: str = "maildir"  # maildir | mbox
    archive_url: str = "https://lore.kernel.org/kvm/"  # where Closes: links point
    web_url: str = ""  # `kbot web`'s public base URL: reports link there ("" = no link)
    staging_allowlist: tuple[str, ...] = ()  # non-empty: only these get mail
    unchanged: str = "brief"  # always | brief | never: a new revision that fails the same way
    max_attempts: int = 8  # SMTP tries before a report is marked failed (kept, listed)
    retry_backoff_s: float = 60.0  # first retry delay; doubles per attempt
    retry_max_backoff_s: float = 3600.0
    min_bisect_confidence: float = 0.66  # below it a bisection is held, not mailed (syzbot's bar)
    # The per-series summary (the patch-by-patch table, a reply to the cover): on-failure
    # (only when something failed; a clean series mails no one), always (to the list too),
    # author (a clean series mails its author only, a failing one the list), never.
    series_summary: str = "on-failure"
    # Where <state_dir>/jobs/ is published (e.g. https://kbot.example.org/kbot): reports then
    # link each job's repro.sh, .config and logs as <artifacts_url>/jobs/<id>/... ("" = none).
    artifacts_url: str = ""
    # After a final dot that got no verdict: how long to look for the report in the archive
    # (lore shows list mail within minutes) before holding it for a person. Never resent.
    confirm_window_s: float = 1800.0
    smtp: SmtpSection = field(default_factory=SmtpSection)


@dataclass(frozen=True)
class CommandsSection:
    """Commands mailed to kbot (`#kbot test`, ...): off unless enabled, then only from `allow`."""

    enabled: bool = False
    allow: tuple[str, ...] = ()  # sender addresses or @domains whose commands kbot obeys
    # Sender domains whose command mail must carry a passing DKIM signature of that domain.
    require_dkim: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    schema: int = SCHEMA_VERSION
    bot: BotSection = field(default_factory=BotSection)
    archive: ArchiveSection = field(default_factory=ArchiveSection)
    lists: tuple[ListSection, ...] = ()
    trees: tuple[TreeSection, ...] = ()
    base_rules: tuple[BaseRule, ...] = ()
    build: BuildSection = field(default_factory=BuildSection)
    vm: VmSection = field(default_factory=VmSection)
    bisect: BisectSection = field(default_factory=BisectSection)
    jobs: JobsSection = field(default_factory=JobsSection)
    executor: ExecutorSection = field(default_factory=ExecutorSection)
    report: ReportSection = field(default_factory=ReportSection)
    commands: CommandsSection = field(default_factory=CommandsSection)
    source: Path = DEFAULT_CONFIG  # the file it came from; relative paths resolve against it

    @property
    def state_dir(self) -> Path:
        return Path(self.bot.state_dir).expanduser() if self.bot.state_dir else default_state_dir()

    @property
    def cache_dir(self) -> Path:
        return Path(self.bot.cache_dir).expanduser() if self.bot.cache_dir else default_cache_dir()

    def resolve(self, relative: str) -> Path:
        """A path from the config: relative to the config file's folder, else as given."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else (self.source.parent / p)

    def list_named(self, name: str) -> ListSection:
        for lst in self.lists:
            if lst.name == name:
                return lst
        raise ConfigError(str(self.source), "lists", f"no list named {name!r}")

    def tree_named(self, name: str) -> TreeSection:
        for tree in self.trees:
            if tree.name == name:
                return tree
        raise ConfigError(str(self.source), "trees", f"no tree named {name!r}")

    def plan_for(self, list_name: str | None) -> str:
        """The test plan for a series from `list_name`: the list's own, else vm.plan."""
        for lst in self.lists:
            if lst.name == list_name and lst.plan:
                return lst.plan
        return self.vm.plan


T = TypeVar("T")


def _convert(value: Any, tp: Any, path: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(path, key, f"expected a table, got {type(value).__name__}")
        return _build(tp, value, path, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(path, key, f"expected an array, got {type(value).__name__}")
        return tuple(_convert(v, args[0], path, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(path, key, "internal: union types are not supported in config")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, key, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(path, key, f"expected a finite number, got {value!r}")
        return _checked(float(value), path, key)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, key, f"expected an integer, got {value!r}")
        return _checked(value, path, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, key, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, key, f"expected a string, got {value!r}")
        return _checked(value, path, key)
    raise ConfigError(path, key, f"internal: unsupported type {tp!r}")


# -- per-value rules ------------------------------------------------------------------------
#
# Every value the file sets is checked when the config loads, so a bad one is a one-line
# ConfigError naming the file and key, never a crash later. A key gets the first rule of
# _RULES whose pattern matches its dotted name (list indexes written `[]`), else the rule its
# name implies (_CONVENTIONS: `*_s` is a duration > 0, `*_bytes` a size > 0, `*port` a TCP port,
# `*_url` an http(s) URL), else, for an integer, >= 0 (no count or size is negative). A new
# setting is covered by its name; one that means something else adds a line to _RULES.

Check = Callable[[Any], "str | None"]


def _positive(v: float) -> str | None:
    return None if v > 0 else f"must be > 0, got {v!r}"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {v!r}"


def _between(low: float, high: float, *, high_open: bool = False) -> Check:
    closing = ")" if high_open else "]"

    def check(v: float) -> str | None:
        ok = low <= v < high if high_open else low <= v <= high
        return None if ok else f"must be in [{low}, {high}{closing}, got {v!r}"

    return check


def _port(v: int) -> str | None:
    return None if 1 <= v <= 65535 else f"{v!r} is not a TCP port (1..65535)"


def _regex(v: str) -> str | None:
    try:
        re.compile(v)
    except (re.error, RecursionError, OverflowError) as exc:
        return f"{v!r} is not a regular expression: {exc}"
    return None


def _url(schemes: tuple[str, ...], *, empty_ok: bool = False) -> Check:
    def check(v: str) -> str | None:
        if not v and empty_ok:
            return None
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            return f"{v!r} is not a URL: {exc}"
        if any(c.isspace() or ord(c) < 0x20 for c in v):
            return f"{v!r} is not a URL: white space or control characters"
        if parts.scheme not in schemes:
            return f"{v!r} is not a URL with a scheme of {', '.join(schemes)}"
        if parts.scheme != "file" and not parts.hostname:
            return f"{v!r} is not a URL: no host"
        return None

    return check


_EMAIL = re.compile(r"^[^@\s<>,;\"()\[\]\\]+@[^@\s<>,;\"()\[\]\\]+$")


def _email(*, empty_ok: bool = False) -> Check:
    def check(v: str) -> str | None:
        if (not v and empty_ok) or _EMAIL.match(v):
            return None
        return f"{v!r} is not an email address"

    return check


def _mailbox(v: str) -> str | None:
    """`Name <user@host>`, a bare address, or empty."""
    if not v:
        return None
    name, sep, rest = v.rpartition("<")
    addr = rest.removesuffix(">") if sep and rest.endswith(">") else v
    if any(ord(c) < 0x20 for c in v) or not _EMAIL.match(addr.strip()) or "<" in name:
        return f"{v!r} is not an address or `Name <address>`"
    return None


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"^@?{_LABEL}(?:\.{_LABEL})*$")


def _sender(v: str) -> str | None:
    """A command allowlist entry: `user@host` or `@host` (every address of that domain)."""
    if _EMAIL.match(v) or (v.startswith("@") and _DOMAIN.match(v)):
        return None
    return f"{v!r} is not an address or @domain"


def _domain(v: str) -> str | None:
    return None if _DOMAIN.match(v) else f"{v!r} is not a domain name"


def _address_pattern(v: str) -> str | None:
    """A staging allowlist entry: `user@host`, `@host` or an fnmatch pattern of addresses."""
    if not v or any(c.isspace() or ord(c) < 0x20 for c in v):
        return f"{v!r} is not an address, @domain or address pattern"
    return None


_HTTP_URL = _url(("http", "https"))
_RULES: tuple[tuple[str, Check], ...] = (
    ("bot.name", _non_empty),
    ("bot.email", _email()),
    ("archive.rt_overlap_s", _non_negative),  # 0: no overlap
    ("archive.search_page", _between(1, 200)),  # public-inbox's Atom feed gives 200 at most
    ("lists[].name", _non_empty),
    ("lists[].address", _email(empty_ok=True)),
    ("lists[].subject_patterns[]", _regex),
    ("lists[].settle_s", _non_negative),  # 0: an incomplete series is tested at once
    ("lists[].max_pages", _positive),
    ("trees[].name", _non_empty),
    ("trees[].url", _url(("http", "https", "git", "ssh", "file"), empty_ok=True)),
    ("trees[].branches[]", _non_empty),
    ("trees[].default_branch", _non_empty),
    ("build.jobs", _non_negative),  # 0: one per CPU
    ("vm.memory_mb", _positive),
    ("vm.max_rounds", _positive),
    ("bisect.confidence", _between(0.5, 1.0, high_open=True)),
    ("bisect.max_runs", _positive),
    ("bisect.jobs", _positive),
    ("executor.max_boots", _non_negative),  # 0: one per core
    ("executor.broker_url", _url(("redis", "rediss"))),
    ("executor.result_backend", _url(("redis", "rediss"), empty_ok=True)),  # "" = broker_url
    ("report.staging_allowlist[]", _address_pattern),
    ("report.max_attempts", _positive),
    ("report.min_bisect_confidence", _between(0.0, 1.0)),
    ("report.artifacts_url", _url(("http", "https"), empty_ok=True)),
    ("report.web_url", _url(("http", "https"), empty_ok=True)),  # "" = no link
    ("bot.owner", _mailbox),
    ("commands.allow[]", _sender),
    ("commands.require_dkim[]", _domain),
)
_NUMBER = (int, float)
_CONVENTIONS: tuple[tuple[str, tuple[type, ...], Check], ...] = (
    ("*_s", _NUMBER, _positive),  # a duration: 0 would be "give up at once" or a busy loop
    ("*_bytes", _NUMBER, _positive),
    ("*_mb", _NUMBER, _positive),
    ("max_*", _NUMBER, _positive),  # a limit of 0 lets nothing through
    ("*port", (int,), _port),
    ("*_url", (str,), _HTTP_URL),
    ("*", (int,), _non_negative),  # no count or size is negative
)


def rule_for(key: str, value: Any) -> Check | None:
    """The check for `value` at a dotted config key (`lists[0].settle_s`), if any."""
    pattern = re.sub(r"\[\d+\]", "[]", key)
    leaf = pattern.rsplit(".", 1)[-1]
    for glob, check in _RULES:
        if fnmatch.fnmatchcase(pattern, glob.replace("[]", "[[]]")):
            return check
    for glob, types_, check in _CONVENTIONS:
        if isinstance(value, types_) and fnmatch.fnmatchcase(leaf, glob):
            return check
    return None


def _checked(value: Any, path: str, key: str) -> Any:
    check = rule_for(key, value)
    if check is not None and (problem := check(value)) is not None:
        raise ConfigError(path, key, problem)
    return value


def _build(cls: type[T], table: dict[str, Any], path: str, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in fields or key == "source":
            known = ", ".join(sorted(k for k in fields if k != "source"))
            raise ConfigError(path, dotted, f"unknown key (known: {known})")
        kwargs[key] = _convert(value, hints[key], path, dotted)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and (
            f.default_factory is dataclasses.MISSING
        ):
            raise ConfigError(path, f"{prefix}.{name}" if prefix else name, "required key missing")
    return cls(**kwargs)


_CHOICES = {
    "vm.backend": ("auto", "qemu-kvm", "qemu-tcg", "bochs"),
    "executor.kind": ("local", "celery"),
    "report.delivery": ("outbox", "smtp"),
    "report.outbox_format": ("maildir", "mbox"),
    "report.unchanged": ("always", "brief", "never"),
    "report.series_summary": ("on-failure", "always", "author", "never"),
    "report.smtp.security": ("starttls", "ssl", "none"),
}


def _cross_check(cfg: Config, path: str) -> None:
    for dotted, choices in _CHOICES.items():
        obj: Any = cfg
        for part in dotted.split("."):
            obj = getattr(obj, part)
        if obj not in choices:
            raise ConfigError(path, dotted, f"{obj!r} is not one of {', '.join(choices)}")
    if cfg.schema != SCHEMA_VERSION:
        raise ConfigError(
            path, "schema", f"version {cfg.schema} unsupported (want {SCHEMA_VERSION})"
        )
    seen: set[str] = set()
    for i, tree in enumerate(cfg.trees):
        if tree.name in seen:
            raise ConfigError(path, f"trees[{i}].name", f"duplicate tree {tree.name!r}")
        seen.add(tree.name)
        if bool(tree.url) == bool(tree.path):
            raise ConfigError(path, f"trees[{i}]", "give exactly one of url or path")
        if tree.default_branch not in tree.branches:
            raise ConfigError(
                path, f"trees[{i}].default_branch", f"{tree.default_branch!r} not in branches"
            )
        if tree.reference and not tree.url:
            raise ConfigError(path, f"trees[{i}].reference",
                              "only for url trees (a path tree already borrows from its path)")
    branches = {t.name: t.branches for t in cfg.trees}
    for i, rule in enumerate(cfg.base_rules):
        if rule.tree not in seen:
            raise ConfigError(path, f"base_rules[{i}].tree", f"no tree named {rule.tree!r}")
        if rule.branch not in branches[rule.tree]:
            raise ConfigError(path, f"base_rules[{i}].branch",
                              f"{rule.branch!r} not in trees {rule.tree!r} branches")
    rule_names = [r.name for r in cfg.base_rules if r.name]
    if len(set(rule_names)) != len(rule_names):
        raise ConfigError(path, "base_rules", "duplicate rule names")
    names = [lst.name for lst in cfg.lists]
    if len(set(names)) != len(names):
        raise ConfigError(path, "lists", "duplicate list names")
    for i, lst in enumerate(cfg.lists):
        if lst.branch and not lst.tree:
            raise ConfigError(path, f"lists[{i}].branch", "needs lists[].tree (which tree?)")
        if lst.tree and lst.tree not in seen:
            raise ConfigError(path, f"lists[{i}].tree", f"no tree named {lst.tree!r}")
        if lst.branch and lst.branch not in branches[lst.tree]:
            raise ConfigError(path, f"lists[{i}].branch",
                              f"{lst.branch!r} not in trees {lst.tree!r} branches")
    for limit in ("max_memory_mb", "max_procs", "max_file_mb", "max_tmp_mb", "max_log_mb"):
        if getattr(cfg.build, limit) < 1:
            raise ConfigError(path, f"build.{limit}", "must be at least 1")
    if cfg.report.retry_max_backoff_s < cfg.report.retry_backoff_s:
        raise ConfigError(path, "report.retry_max_backoff_s",
                          f"must be >= report.retry_backoff_s ({cfg.report.retry_backoff_s})")


# -- layers ---------------------------------------------------------------------------------
#
# The effective config is the embedded default with layers on top, each overriding keys, never
# whole sections:
#
#   configs/kvm.toml < /etc/kbot/config.toml < $XDG_CONFIG_HOME/kbot/config.toml (~/.config)
#   < $KBOT_CONFIG < -c FILE
#
# Tables merge key by key. An array of plain values (files, branches, fragments) is one value:
# a layer that sets it sets all of it. Arrays of tables merge by `name`: an entry named like one
# below changes only the keys it sets, `remove = true` next to the name deletes it, a new name
# adds an entry — after the lower layers' lists and trees, but before their base rules (rules
# are tried in order and a later layer is the more specific one); an unnamed base rule is always
# new; `lists = []` (any array of tables set to []) drops every entry below. `inherit = false`
# at the top of a file makes it the whole config: the layers below it are not used.
# Relative paths resolve against the folder of the file that set them. An error names the file
# that set the value and the key as it is written there.

SYSTEM_CONFIG = Path("/etc/kbot/config.toml")
CONFIG_ENV = "KBOT_CONFIG"
INHERIT_KEY = "inherit"  # a layer's own switch, not a setting
REMOVE_KEY = "remove"  # in an entry of an array of tables: delete the entry of that name
# Settings that are paths, made absolute against their file's folder when it is read; the
# second group are names unless they look like a path (a plan name, bwrap found on PATH).
_PATH_KEYS = ("bot.state_dir", "bot.cache_dir", "build.fragments[]", "build.sandbox_read[]",
              "trees[].path", "trees[].reference")
_NAME_OR_PATH_KEYS = ("vm.plan", "lists[].plan", "build.bwrap")
_MERGED = "<merged config>"  # the placeholder file of an error raised after the merge


def user_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kbot" / "config.toml"


@dataclass(frozen=True)
class Layer:
    """One config file of the stack."""

    kind: str  # default | system | user | env ($KBOT_CONFIG) | cli (-c) | file
    path: Path


@dataclass(frozen=True)
class Origin:
    """Where a value was set: the file, and the key as written there (`lists[0].files`)."""

    path: str
    key: str


@dataclass(frozen=True, eq=False)
class LoadedConfig:
    config: Config
    layers: tuple[Layer, ...]  # the files in effect, lowest first
    origins: Mapping[str, Origin]  # effective dotted key -> where it was set; absent: built in

    def origin(self, key: str) -> Origin | None:
        """Who set `key` (an effective dotted key such as `lists[1].files[0]`), or None when
        it is kbot's built-in default."""
        return _locate(self.origins, key)


@dataclass
class _Node:
    """A table while the layers merge into it: leaf values, nested _Nodes, lists of _Nodes
    (the entries of an array of tables), each with the origin of its last change."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)
    origin: Origin | None = None  # an entry of an array of tables: the last layer to touch it


def _generic(key: str) -> str:
    return re.sub(r"\[\d+\]", "[]", key)


def _absolute(value: Any, folder: Path) -> Any:
    if not isinstance(value, str) or not value or value.startswith("{cache_dir}"):
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else folder / p)


def _resolve_paths(key: str, value: Any, folder: Path) -> Any:
    generic = _generic(key)
    if generic in _PATH_KEYS:
        return _absolute(value, folder)
    if f"{generic}[]" in _PATH_KEYS and isinstance(value, list):
        return [_absolute(v, folder) for v in value]
    if generic in _NAME_OR_PATH_KEYS and isinstance(value, str) and (
        "/" in value or value.endswith(".toml")
    ):
        return _absolute(value, folder)
    return value


def _dataclass_type(tp: Any) -> type[Any] | None:
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _entry_type(tp: Any) -> type[Any] | None:
    """T for a field typed tuple[T, ...] with T a dataclass (an array of tables)."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return _dataclass_type(args[0]) if args else None
    return None


def _merge_layer(root: _Node, table: dict[str, Any], path: str, folder: Path) -> tuple[_Node, bool]:
    """Merge one file's table into `root`; True when the file said `inherit = false` (and
    `root` was started over)."""
    inherit = table.get(INHERIT_KEY, True)
    if not isinstance(inherit, bool):
        raise ConfigError(path, INHERIT_KEY, f"expected true or false, got {inherit!r}")
    if not inherit:
        root = _Node()
    _merge_table(root, {k: v for k, v in table.items() if k != INHERIT_KEY}, Config, "", path,
                 folder)
    return root, not inherit


def _merge_table(
    node: _Node, table: dict[str, Any], cls: type[Any] | None, prefix: str, path: str,
    folder: Path,
) -> None:
    hints = typing.get_type_hints(cls) if cls is not None else {}
    for key, raw in table.items():
        lk = f"{prefix}.{key}" if prefix else key
        tp = hints.get(key) if key != "source" else None
        value = _resolve_paths(lk, raw, folder)
        sub, entry = _dataclass_type(tp), _entry_type(tp)
        if sub is not None and isinstance(value, dict):
            child = node.values.get(key)
            if not isinstance(child, _Node):
                child = node.values[key] = _Node()
            _merge_table(child, value, sub, lk, path, folder)
        elif entry is not None and isinstance(value, list) and value and all(
            isinstance(v, dict) for v in value
        ):
            below = node.values.get(key)
            entries = below if isinstance(below, list) and all(
                isinstance(e, _Node) for e in below) else []
            node.values[key] = _merge_entries(entries, value, entry, lk, path, folder,
                                              new_first=key == "base_rules")
        else:
            node.values[key] = value  # a leaf (or a value of the wrong type: _build says so)
        node.origins[key] = Origin(path, lk)


def _merge_entries(
    entries: list[_Node], items: list[dict[str, Any]], cls: type[Any], key: str, path: str,
    folder: Path, *, new_first: bool,
) -> list[_Node]:
    """One layer's [[key]] entries into the entries below, by name (see above)."""
    name_required = any(f.name == "name" and f.default is dataclasses.MISSING
                        for f in dataclasses.fields(cls))
    by_name = {e.values["name"]: e for e in entries
               if isinstance(e.values.get("name"), str) and e.values["name"]}
    entries = list(entries)
    added: list[_Node] = []
    seen: set[str] = set()
    for j, item in enumerate(items):
        ek = f"{key}[{j}]"
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise ConfigError(path, f"{ek}.name", f"expected a string, got {name!r}")
        remove = item.get(REMOVE_KEY, False)
        if not isinstance(remove, bool):
            raise ConfigError(path, f"{ek}.{REMOVE_KEY}", f"expected true or false, got {remove!r}")
        if name:
            if name in seen:
                raise ConfigError(path, f"{ek}.name", f"a second {key} entry named {name!r}")
            seen.add(name)
        if remove:
            if not name:
                raise ConfigError(path, f"{ek}.name", f"{REMOVE_KEY} = true needs the name of "
                                  "the entry to remove")
            extra = sorted(set(item) - {"name", REMOVE_KEY})
            if extra:
                raise ConfigError(path, f"{ek}.{extra[0]}",
                                  f"an entry with {REMOVE_KEY} = true takes only its name")
            target = by_name.pop(name, None)
            if target is None:
                raise ConfigError(path, f"{ek}.name",
                                  f"no {key} entry named {name!r} in the layers below to remove")
            entries = [e for e in entries if e is not target]
            continue
        target = by_name.get(name) if name else None
        if target is None:
            if name is None and name_required:
                raise ConfigError(path, f"{ek}.name", "required key missing")
            target = _Node()
            added.append(target)
        target.origin = Origin(path, ek)
        _merge_table(target, {k: v for k, v in item.items() if k != REMOVE_KEY}, cls, ek, path,
                     folder)
    return added + entries if new_first else entries + added


def _finish(node: _Node, prefix: str, origins: dict[str, Origin]) -> dict[str, Any]:
    """The merged plain table, filling `origins` (effective dotted key -> Origin)."""
    out: dict[str, Any] = {}
    for key, value in node.values.items():
        mk = f"{prefix}.{key}" if prefix else key
        if key in node.origins:
            origins[mk] = node.origins[key]
        if isinstance(value, _Node):
            out[key] = _finish(value, mk, origins)
        elif isinstance(value, list) and value and all(isinstance(v, _Node) for v in value):
            items = []
            for i, entry in enumerate(value):
                if entry.origin is not None:
                    origins[f"{mk}[{i}]"] = entry.origin
                items.append(_finish(entry, f"{mk}[{i}]", origins))
            out[key] = items
        else:
            out[key] = value
    return out


def _locate(origins: Mapping[str, Origin], key: str) -> Origin | None:
    """The origin of `key` or of the nearest table or array holding it, with the rest of the
    key appended (`lists[2].files[1]` -> the file and key that set `lists[0].files`)."""
    probe = key
    while True:
        if probe in origins:
            found = origins[probe]
            return Origin(found.path, found.key + key[len(probe):])
        cut = max(probe.rfind("."), probe.rfind("["))
        if cut <= 0:
            return None
        probe = probe[:cut]


def _parse_toml(text: str, path: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "(syntax)", str(exc)) from exc
    except RecursionError:
        raise ConfigError(path, "(syntax)", "arrays or tables nested too deeply") from None


def _read_toml(p: Path) -> dict[str, Any]:
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), "(file)", f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        # TOML is UTF-8 by definition: name the first bad byte instead of a traceback.
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise ConfigError(str(p), "(file)", f"not UTF-8 text (line {line}, byte {exc.start}: "
                          f"{exc.object[exc.start:exc.start + 1]!r})") from None
    return _parse_toml(text, str(p))


def _build_merged(root: _Node, top: Path, layers: tuple[Layer, ...]) -> LoadedConfig:
    origins: dict[str, Origin] = {}
    table = _finish(root, "", origins)
    try:
        cfg = dataclasses.replace(_build(Config, table, _MERGED), source=top.resolve())
        _cross_check(cfg, _MERGED)
    except ConfigError as exc:
        if exc.path != _MERGED:
            raise
        where = _locate(origins, exc.key) or Origin(str(top), exc.key)
        raise ConfigError(where.path, where.key, exc.problem) from None
    return LoadedConfig(cfg, layers, origins)


def parse_config(text: str, source: Path) -> Config:
    """One config file on its own (no layers below it), `source` naming it."""
    root, _ = _merge_layer(_Node(), _parse_toml(text, str(source)), str(source),
                           source.resolve().parent)
    return _build_merged(root, source, (Layer("file", source),)).config


def load_config(path: Path | str | None = None) -> Config:
    """Load one config file on its own; None means the embedded default (configs/kvm.toml).
    The CLI loads the whole stack instead: load_layered."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    root, _ = _merge_layer(_Node(), _read_toml(p), str(p), p.resolve().parent)
    return _build_merged(root, p, (Layer("file", p),)).config


def config_layers(cli: Path | str | None = None,
                  env: Mapping[str, str] | None = None) -> tuple[Layer, ...]:
    """The files of the stack that exist (or, for $KBOT_CONFIG and -c, that were named),
    lowest first."""
    env = os.environ if env is None else env
    layers = [Layer("default", DEFAULT_CONFIG)]
    for kind, p in (("system", SYSTEM_CONFIG), ("user", user_config_path(env))):
        if p.exists():
            layers.append(Layer(kind, p))
    if env.get(CONFIG_ENV):
        layers.append(Layer("env", Path(env[CONFIG_ENV])))
    if cli is not None:
        layers.append(Layer("cli", Path(cli)))
    return tuple(layers)


def load_layered(cli: Path | str | None = None,
                 env: Mapping[str, str] | None = None) -> LoadedConfig:
    """The effective config of the whole stack (see "layers" above), with the origin of
    every value."""
    root = _Node()
    used: list[Layer] = []
    layers = config_layers(cli, env)
    for layer in layers:
        root, restart = _merge_layer(root, _read_toml(layer.path), str(layer.path),
                                     layer.path.resolve().parent)
        used = [layer] if restart else [*used, layer]
    return _build_merged(root, layers[-1].path, tuple(used))
