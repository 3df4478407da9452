"""`kbot config show|check`: the effective config of the layers, and whether it works here.

`show` prints the effective config as TOML (it loads back as the same config), each key
annotated with the file it came from when `--origin` is given, secrets masked: any key whose
name holds password, token or secret, except the `*_env` keys, whose values are the names of
environment variables (KBOT_SMTP_PASSWORD), not the secrets themselves.

`check` tries what the config names, one line per check: each tree (a path tree is a git
repository with the configured branches; a url tree answers `git ls-remote` within the timeout
and has them), the test plans, the archive (each list's feed), SMTP when delivery = smtp
(connect, EHLO, STARTTLS when asked: no login, no mail), the command allowlist when commands
are on, the build sandbox. `--offline` skips what needs the network. Exit 0 when all is well,
2 when the config is wrong, 3 when something it names cannot be reached (config problems win:
fix those first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import smtplib
import ssl
import tempfile
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot import proc
from bot.config import Config, LoadedConfig, Origin, TreeSection, load_layered
from bot.errors import EXIT_INFRA_ERROR, EXIT_OK, EXIT_USER_ERROR, InfraError, UserError
from bot.table import columns

if TYPE_CHECKING:
    from bot.cli import Context

SECRET_WORDS = ("password", "token", "secret")
MASK = "********"
DEFAULT_CHECK_TIMEOUT_S = 30.0


def is_secret(key: str) -> bool:
    """A key whose value must never be printed: named like a secret, and not an `*_env` key
    (those name the environment variable that holds it)."""
    leaf = key.rsplit(".", 1)[-1].lower()
    return any(w in leaf for w in SECRET_WORDS) and not leaf.endswith("_env")


# -- show ----------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _shown(key: str, value: Any) -> Any:
    if not is_secret(key) or value in ("", ()):
        return value  # an empty secret says "not set", which is worth seeing
    return tuple(MASK for _ in value) if isinstance(value, tuple) else MASK


def _fields(obj: Any) -> Iterator[tuple[str, Any]]:
    for f in dataclasses.fields(obj):
        if f.name != "source":
            yield f.name, getattr(obj, f.name)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, tuple) and any(dataclasses.is_dataclass(v) for v in value)


def render_toml(obj: Any, note: Callable[[str], str] | None = None) -> str:
    """A config dataclass as TOML, secrets masked; `note(dotted key)` gives each key's
    trailing comment (its origin)."""
    out: list[str] = []

    def line(key: str, name: str, value: Any) -> None:
        text = f"{name} = {_toml_value(_shown(key, value))}"
        out.append(f"{text}  # {note(key)}" if note is not None else text)

    def table(obj: Any, prefix: str, header: str) -> None:
        nested: list[tuple[str, Any]] = []
        arrays: list[tuple[str, Any]] = []
        if header:
            out.extend(["", header])
        for name, value in _fields(obj):
            key = f"{prefix}.{name}" if prefix else name
            if dataclasses.is_dataclass(value):
                nested.append((key, value))
            elif _is_table_array(value):
                arrays.append((key, value))
            elif _is_entry_field(obj, name):  # an empty [[name]]: TOML has no way to say it
                out.append(f"# {name}: none")
            else:
                line(key, name, value)
        for key, value in nested:
            table(value, key, f"[{key}]")
        for key, value in arrays:
            for i, entry in enumerate(value):
                table(entry, f"{key}[{i}]", f"[[{key}]]")

    table(obj, "", "")
    return "\n".join(out) + "\n"


def _is_entry_field(obj: Any, name: str) -> bool:
    """Is `name` an array of tables ([[lists]]) by its type, even when empty?"""
    tp = typing.get_type_hints(type(obj)).get(name)
    args = typing.get_args(tp)
    return bool(args) and dataclasses.is_dataclass(args[0])


def _origin_note(loaded: LoadedConfig, overrides: dict[str, str]) -> Callable[[str], str]:
    kinds = {str(layer.path): layer.kind for layer in loaded.layers}

    def note(key: str) -> str:
        if key in overrides:
            return overrides[key]
        origin: Origin | None = loaded.origins.get(key)  # exact: a table's is not its keys'
        if origin is None:
            return "built in"
        where = f"{kinds.get(origin.path, 'file')} {origin.path}"
        return where if origin.key == key else f"{where} ({origin.key})"

    return note


def _show(args: argparse.Namespace, ctx: Context) -> int:
    loaded = load_layered(args.config)
    overrides = {"bot.state_dir": "--state-dir"} if args.state_dir is not None else {}
    print("# kbot's effective config. Layers, lowest first:")
    for layer in loaded.layers:
        print(f"#   {layer.kind:8} {layer.path}")
    print("inherit = false  # what follows is the whole config")
    note = _origin_note(loaded, overrides) if args.origin else None
    print(render_toml(ctx.config, note), end="")
    return EXIT_OK


# -- check ---------------------------------------------------------------------------------


class CheckStatus(Enum):
    OK = "ok"
    SKIPPED = "skipped"
    CONFIG = "config"  # the config is wrong: exit 2
    UNREACHABLE = "unreachable"  # something it names does not answer: exit 3


@dataclass(frozen=True)
class CheckResult:
    what: str
    status: CheckStatus
    detail: str


def exit_code(results: list[CheckResult]) -> int:
    statuses = {r.status for r in results}
    if CheckStatus.CONFIG in statuses:
        return EXIT_USER_ERROR
    if CheckStatus.UNREACHABLE in statuses:
        return EXIT_INFRA_ERROR
    return EXIT_OK


def _git_env() -> dict[str, str]:
    return proc.clean_env({"GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"})


def _heads(out: str, prefix: str) -> set[str]:
    return {ref.removeprefix(prefix) for ref in out.split() if ref.startswith(prefix)}


def check_tree(config: Config, tree: TreeSection, *, offline: bool,
               timeout_s: float) -> list[CheckResult]:
    what = f"tree {tree.name}"
    results: list[CheckResult] = []
    cache = str(config.cache_dir)
    if tree.reference:
        ref = Path(tree.reference.replace("{cache_dir}", cache)).expanduser()
        if not ((ref / ".git").exists() or (ref / "HEAD").is_file()):
            results.append(CheckResult(f"{what} reference", CheckStatus.CONFIG,
                                       f"{ref} is not a git repository: the first mirror "
                                       "would download everything"))
        else:
            results.append(CheckResult(f"{what} reference", CheckStatus.OK, str(ref)))
    if tree.path:
        src = Path(tree.path.replace("{cache_dir}", cache)).expanduser()
        if not src.exists() and tree.path.startswith("{cache_dir}"):
            return [*results, CheckResult(what, CheckStatus.SKIPPED,
                                          f"{src} not made yet (kbot makes it: the linux-6.1 "
                                          "import on the first `kbot demo`)")]
        if not ((src / ".git").exists() or (src / "HEAD").is_file()):
            return [*results, CheckResult(what, CheckStatus.CONFIG,
                                          f"{src} is not a git repository")]
        res = proc.run(["git", "for-each-ref", "--format=%(refname)", "refs/heads"], cwd=src,
                       env=_git_env(), timeout=timeout_s)
        heads, where = _heads(res.stdout, "refs/heads/"), str(src)
    elif offline:
        return [*results, CheckResult(what, CheckStatus.SKIPPED, f"{tree.url} (--offline)")]
    else:
        try:
            res = proc.run(["git", "ls-remote", "--heads", tree.url], env=_git_env(),
                           timeout=timeout_s)
        except InfraError as exc:
            return [*results, CheckResult(what, CheckStatus.UNREACHABLE, str(exc))]
        if not res.ok:
            return [*results, CheckResult(what, CheckStatus.UNREACHABLE,
                                          f"git ls-remote {tree.url}: " + (
                                              f"no answer within {timeout_s:g}s"
                                              if res.timed_out else
                                              (res.stderr.strip().splitlines() or ["failed"])[-1]
                                          ))]
        heads, where = _heads(res.stdout, "refs/heads/"), tree.url
    missing = [b for b in tree.branches if b not in heads]
    if missing:
        return [*results, CheckResult(what, CheckStatus.CONFIG,
                                      f"{where} has no branch {', '.join(missing)}")]
    return [*results, CheckResult(what, CheckStatus.OK,
                                  f"{where} ({', '.join(tree.branches)})")]


def check_plans(config: Config) -> list[CheckResult]:
    from bot.vm.plan import load_plan

    wanted = {config.vm.plan: "vm.plan"}
    for lst in config.lists:
        if lst.plan:
            wanted.setdefault(lst.plan, f"list {lst.name}")
    results = []
    for plan, who in wanted.items():
        try:
            loaded = load_plan(plan)
        except UserError as exc:
            results.append(CheckResult(f"plan ({who})", CheckStatus.CONFIG, str(exc)))
            continue
        results.append(CheckResult(f"plan ({who})", CheckStatus.OK,
                                   f"{loaded.name}: {len(loaded.sets)} test set(s)"))
    return results


def check_archive(config: Config, *, offline: bool, timeout_s: float) -> list[CheckResult]:
    from bot.intake.client import ArchiveClient, ArchiveHTTPError

    if offline:
        return [CheckResult("archive", CheckStatus.SKIPPED, f"{config.archive.base_url} "
                            "(--offline)")]
    if not config.lists:
        return [CheckResult("archive", CheckStatus.SKIPPED, "no [[lists]] to read")]
    # One try per list within the check's timeout: check says whether it answers now.
    section = dataclasses.replace(config.archive, retries=0,
                                  timeout_s=min(config.archive.timeout_s, timeout_s))
    results = []
    with ArchiveClient(section) as client:
        for lst in config.lists:
            what = f"archive list {lst.name}"
            try:
                entries = client.new_atom(lst.name)
            except ArchiveHTTPError as exc:
                status = CheckStatus.CONFIG if exc.status == 404 else CheckStatus.UNREACHABLE
                results.append(CheckResult(what, status, str(exc)))
                continue
            except InfraError as exc:
                results.append(CheckResult(what, CheckStatus.UNREACHABLE, str(exc)))
                continue
            results.append(CheckResult(what, CheckStatus.OK, f"{client.list_url(lst.name)} "
                                       f"({len(entries)} recent messages)"))
    return results


def check_smtp(config: Config, *, offline: bool,
               env: dict[str, str] | None = None) -> list[CheckResult]:
    cfg = config.report.smtp
    if config.report.delivery != "smtp":
        return [CheckResult("smtp", CheckStatus.SKIPPED, "report.delivery is "
                            f"{config.report.delivery!r}")]
    if not cfg.host:
        return [CheckResult("smtp", CheckStatus.CONFIG,
                            "report.delivery = smtp but report.smtp.host is empty")]
    where = f"{cfg.host}:{cfg.port} ({cfg.security})"
    if offline:
        return [CheckResult("smtp", CheckStatus.SKIPPED, f"{where} (--offline)")]
    env = dict(os.environ) if env is None else env
    creds = ("login as $" + cfg.username_env if env.get(cfg.username_env) and
             env.get(cfg.password_env) else f"no login (${cfg.username_env} / "
             f"${cfg.password_env} not both set)")
    server: smtplib.SMTP | None = None
    try:
        if cfg.security == "ssl":
            server = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_s,
                                      context=ssl.create_default_context())
        else:
            server = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
        server.ehlo_or_helo_if_needed()
        if cfg.security == "starttls":
            if not server.has_extn("starttls"):
                return [CheckResult("smtp", CheckStatus.UNREACHABLE,
                                    f"{where}: the server does not offer STARTTLS")]
            server.starttls(context=ssl.create_default_context())
            server.ehlo()
        name = (server.ehlo_resp or b"").decode("utf-8", "replace").splitlines()[:1]
    except (OSError, smtplib.SMTPException) as exc:
        return [CheckResult("smtp", CheckStatus.UNREACHABLE,
                            f"{where}: {exc or type(exc).__name__}")]
    finally:
        if server is not None:
            try:
                server.quit()
            except (OSError, smtplib.SMTPException):
                server.close()
    return [CheckResult("smtp", CheckStatus.OK,
                        f"{where} answers EHLO ({' '.join(name) or 'no name'}); {creds}")]


def check_commands(config: Config) -> list[CheckResult]:
    cmd = config.commands
    if not cmd.enabled:
        return [CheckResult("commands", CheckStatus.SKIPPED, "commands.enabled = false")]
    if not cmd.allow:
        return [CheckResult("commands", CheckStatus.CONFIG,
                            "commands.enabled = true but commands.allow is empty: nobody "
                            "may send a command")]
    dkim = f"; DKIM required for {', '.join(cmd.require_dkim)}" if cmd.require_dkim else ""
    return [CheckResult("commands", CheckStatus.OK,
                        f"{len(cmd.allow)} allowed sender(s){dkim}")]


def check_sandbox(config: Config) -> list[CheckResult]:
    from bot.build.sandbox import Sandbox

    with tempfile.TemporaryDirectory(prefix="kbot-check-") as tmp:
        sandbox = Sandbox.for_build(config.build, writable=(Path(tmp),))
        try:
            sandbox.probe()
        except InfraError as exc:
            return [CheckResult("build sandbox", CheckStatus.UNREACHABLE, str(exc))]
    notes = "; ".join(sandbox.notes())
    return [CheckResult("build sandbox", CheckStatus.OK,
                        f"{config.build.bwrap} starts" + (f" ({notes})" if notes else ""))]


def run_checks(config: Config, *, offline: bool = False,
               timeout_s: float = DEFAULT_CHECK_TIMEOUT_S) -> list[CheckResult]:
    results: list[CheckResult] = []
    if not config.trees:
        results.append(CheckResult("trees", CheckStatus.CONFIG, "no [[trees]] configured"))
    for tree in config.trees:
        results += check_tree(config, tree, offline=offline, timeout_s=timeout_s)
    results += check_plans(config)
    results += check_archive(config, offline=offline, timeout_s=timeout_s)
    results += check_smtp(config, offline=offline)
    results += check_commands(config)
    results += check_sandbox(config)
    return results


def _check(args: argparse.Namespace, ctx: Context) -> int:
    results = run_checks(ctx.config, offline=args.offline, timeout_s=args.timeout)
    for line in columns([(r.status.value, r.what, r.detail) for r in results]):
        print(line)
    code = exit_code(results)
    print({EXIT_OK: "all good", EXIT_USER_ERROR: "config errors (exit 2)",
           EXIT_INFRA_ERROR: "unreachable (exit 3)"}[code])
    return code


def register(sub: Any) -> None:
    p = sub.add_parser("config", help="show or check the effective config (all layers)")
    cmds = p.add_subparsers(dest="config_command", metavar="show|check")
    cmds.required = True
    show = cmds.add_parser("show", help="the effective config as TOML, secrets masked")
    show.add_argument("--origin", action="store_true",
                      help="annotate each key with the file (layer) it came from")
    show.set_defaults(func=_show)
    check = cmds.add_parser("check", help="check trees, plans, archive, SMTP, sandbox")
    check.add_argument("--offline", action="store_true",
                       help="skip what needs the network (url trees, archive, SMTP)")
    check.add_argument("--timeout", type=float, default=DEFAULT_CHECK_TIMEOUT_S,
                       help="seconds for each network check (default %(default)s)")
    check.set_defaults(func=_check)
