"""Config files (TOML) into frozen, validated dataclasses.

Each section is a dataclass; its fields and their types *are* the schema: the loader walks the
type hints, so adding a setting means adding one field with a default. Unknown keys are errors
(a typo must not silently fall back to a default) and every error names the file, the dotted key
and the problem.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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


@dataclass(frozen=True)
class ArchiveSection:
    base_url: str = "https://lore.kernel.org"
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 2.0
    max_download_bytes: int = 64 * 1024 * 1024
    max_inflated_bytes: int = 256 * 1024 * 1024
    max_message_bytes: int = 16 * 1024 * 1024
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


@dataclass(frozen=True)
class TreeSection:
    """A git tree kbot can apply series to. Exactly one of url / path."""

    name: str
    url: str = ""
    path: str = ""
    branches: tuple[str, ...] = ("master",)
    default_branch: str = "master"


@dataclass(frozen=True)
class BaseRule:
    """Pick a tree/branch for a series that has no usable base-commit footer."""

    tree: str
    branch: str
    lists: tuple[str, ...] = ()
    subject_tags: tuple[str, ...] = ()  # e.g. "KVM: nVMX" matched against the subject
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildSection:
    base_config: str = "tinyconfig"
    fragments: tuple[str, ...] = ("kconfig/kvm-nested.config",)
    timeout_s: float = 3600.0
    jobs: int = 0  # 0: one per CPU
    ccache: bool = True
    selftests: bool = True


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
class BisectSection:
    confidence: float = 0.95
    max_runs: int = 64
    jobs: int = 1


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
    staging_allowlist: tuple[str, ...] = ()  # non-empty: only these get mail
    unchanged: str = "brief"  # always | brief | never: a new revision that fails the same way
    max_attempts: int = 8  # SMTP tries before a report is marked failed (kept, listed)
    retry_backoff_s: float = 60.0  # first retry delay; doubles per attempt
    retry_max_backoff_s: float = 3600.0
    min_bisect_confidence: float = 0.66  # below it a bisection is held, not mailed (syzbot's bar)
    smtp: SmtpSection = field(default_factory=SmtpSection)


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
    report: ReportSection = field(default_factory=ReportSection)
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
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, key, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, key, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(path, key, f"internal: unsupported type {tp!r}")


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
    "report.delivery": ("outbox", "smtp"),
    "report.outbox_format": ("maildir", "mbox"),
    "report.unchanged": ("always", "brief", "never"),
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
    for i, rule in enumerate(cfg.base_rules):
        if rule.tree not in seen:
            raise ConfigError(path, f"base_rules[{i}].tree", f"no tree named {rule.tree!r}")
    names = [lst.name for lst in cfg.lists]
    if len(set(names)) != len(names):
        raise ConfigError(path, "lists", "duplicate list names")
    if not 0.5 <= cfg.bisect.confidence < 1.0:
        raise ConfigError(path, "bisect.confidence", "must be in [0.5, 1.0)")
    if "\n" in cfg.bot.email or "@" not in cfg.bot.email:
        raise ConfigError(path, "bot.email", f"{cfg.bot.email!r} is not an email address")


def parse_config(text: str, source: Path) -> Config:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(source), "(syntax)", str(exc)) from exc
    cfg = _build(Config, table, str(source))
    cfg = dataclasses.replace(cfg, source=source.resolve())
    _cross_check(cfg, str(source))
    return cfg


def load_config(path: Path | str | None = None) -> Config:
    """Load a config file; None means the embedded default (configs/kvm.toml)."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), "(file)", f"cannot read: {exc.strerror}") from exc
    return parse_config(text, p)
