"""`kbot config show` (effective TOML, origins, secrets masked) and `kbot config check` on a
good and a broken setup: real git repositories, a real public-inbox, a real SMTP server."""

from __future__ import annotations

import dataclasses
import subprocess
import tomllib
from pathlib import Path

import pytest

import bot.config as config_module
from bot.cli import main
from bot.config import load_layered, parse_config
from bot.config_cli import MASK, is_secret, render_toml
from bot.intake.local_inbox import LocalInbox
from tests.fixtures.smtp import SmtpSink, free_port

pytestmark = pytest.mark.timeout(120)


@dataclasses.dataclass(frozen=True)
class _Smtp:
    password_env: str = "KBOT_SMTP_PASSWORD"
    username_env: str = "KBOT_SMTP_USER"
    password: str = ""  # an empty secret is shown: it says "not set"


@dataclasses.dataclass(frozen=True)
class _Future:
    """A config with the kinds of keys a later kbot may grow."""

    api_token: str = "tok-123456"
    client_secret: tuple[str, ...] = ("s3cr3t-a", "s3cr3t-b")
    smtp_password: str = "hunter2"
    name: str = "kbot"
    smtp: _Smtp = dataclasses.field(default_factory=_Smtp)


def test_secrets_are_masked_and_env_names_are_shown() -> None:
    text = render_toml(_Future())
    for secret in ("tok-123456", "s3cr3t-a", "s3cr3t-b", "hunter2"):
        assert secret not in text
    assert f'api_token = "{MASK}"' in text
    assert f'client_secret = ["{MASK}", "{MASK}"]' in text
    assert 'password_env = "KBOT_SMTP_PASSWORD"' in text  # the name of a variable, shown
    assert 'password = ""' in text and 'name = "kbot"' in text
    assert (is_secret("report.smtp.password_env"), is_secret("x.GitHub_Token")) == (False, True)


def test_show_prints_the_effective_config_with_origins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    system = tmp_path / "etc" / "config.toml"
    system.parent.mkdir()
    system.write_text('[archive]\nretries = 1\n[[lists]]\nname = "kvm"\nsettle_s = 60\n')
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", system)
    user = tmp_path / "xdg-config" / "kbot" / "config.toml"  # conftest's XDG_CONFIG_HOME
    user.parent.mkdir(parents=True)
    user.write_text('[report.smtp]\nhost = "smtp.example.org"\n')
    cli = tmp_path / "kbot.toml"
    cli.write_text('[[lists]]\nname = "arm"\n')
    monkeypatch.setenv("KBOT_SMTP_PASSWORD", "hunter2")

    assert main(["-c", str(cli), "config", "show", "--origin"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert f"retries = 1  # system {system}\n" in out
    assert f'host = "smtp.example.org"  # user {user}\n' in out
    assert f"settle_s = 60.0  # system {system}\n" in out  # merged into the default's kvm list
    assert f'name = "arm"  # cli {cli} (lists[0].name)\n' in out  # lists[1] here, [0] there
    assert f"base_url = \"https://lore.kernel.org\"  # default {config_module.DEFAULT_CONFIG}" \
        in out
    assert 'owner = ""  # built in\n' in out
    # What it prints is TOML that loads back, standalone, as the same config.
    shown = tmp_path / "shown.toml"
    shown.write_text(out)
    tomllib.loads(out)
    again = parse_config(out, shown)
    assert dataclasses.replace(again, source=cli.resolve()) == load_layered(cli).config


# -- check ------------------------------------------------------------------------------------


def _repo(path: Path, branches: tuple[str, ...] = ("master",)) -> Path:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=T", "-c", "user.email=t@e", *args],  # noqa: S603
                       cwd=path, check=True, capture_output=True)

    path.mkdir(parents=True)
    git("init", "-q", "-b", branches[0])
    (path / "README").write_text("x\n")
    git("add", "README")
    git("commit", "-qm", "x")
    for b in branches[1:]:
        git("branch", b)
    return path


def _config(tmp_path: Path, body: str) -> Path:
    cfg = tmp_path / "kbot.toml"
    cfg.write_text(f'schema = 1\ninherit = false\n[bot]\ncache_dir = "{tmp_path / "cache"}"\n'
                   + body)
    return cfg


def _lines(out: str) -> dict[str, str]:
    """check's table as {what: status}."""
    rows = {}
    for line in out.splitlines()[:-1]:
        status, rest = line.split(maxsplit=1)
        what = rest.split("  ")[0].strip()
        rows[what] = status
    return rows


@pytest.mark.integration
def test_check_passes_on_a_working_setup(
    tmp_path: Path, local_inbox: LocalInbox, smtp_server: SmtpSink,
    capsys: pytest.CaptureFixture[str],
) -> None:
    local = _repo(tmp_path / "linux", ("master", "queue"))
    remote = _repo(tmp_path / "remote.git-src", ("master", "next"))
    cfg = _config(tmp_path, f"""
[archive]
base_url = "{local_inbox.base_url}"
retries = 0
[[lists]]
name = "kvm"
tree = "local"
branch = "queue"
[[trees]]
name = "local"
path = "{local}"
branches = ["master", "queue"]
[[trees]]
name = "remote"
url = "file://{remote}"
branches = ["master", "next"]
reference = "{local}"
[report]
delivery = "smtp"
[report.smtp]
host = "127.0.0.1"
port = {smtp_server.port}
security = "none"
timeout_s = 10
[commands]
enabled = true
allow = ["maintainer@example.org", "@kernel.org"]
""")
    code = main(["-c", str(cfg), "config", "check", "--timeout", "20"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert _lines(out) == {
        "tree local": "ok", "tree remote reference": "ok", "tree remote": "ok",
        "plan (vm.plan)": "ok", "archive list kvm": "ok", "smtp": "ok", "commands": "ok",
        "build sandbox": "ok",
    }, out
    assert out.endswith("all good\n")
    assert smtp_server.messages() == []  # EHLO only: nothing was sent


@pytest.mark.integration
def test_check_names_each_broken_part_and_exits_2_for_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = free_port()  # nothing listens there
    not_a_repo = tmp_path / "plain"
    not_a_repo.mkdir()
    local = _repo(tmp_path / "linux")
    cfg = _config(tmp_path, f"""
[[lists]]
name = "kvm"
plan = "no-such-plan"
[[trees]]
name = "missing"
path = "{tmp_path / 'nowhere'}"
[[trees]]
name = "plain"
path = "{not_a_repo}"
[[trees]]
name = "no-queue"
path = "{local}"
branches = ["master", "queue"]
[[trees]]
name = "gone"
url = "file://{tmp_path / 'gone.git'}"
[report]
delivery = "smtp"
[report.smtp]
host = "127.0.0.1"
port = {dead}
security = "none"
timeout_s = 5
[commands]
enabled = true
""")
    code = main(["-c", str(cfg), "config", "check", "--timeout", "20"])
    out = capsys.readouterr().out
    assert code == 2, out
    rows = _lines(out)
    assert {k: rows[k] for k in ("tree missing", "tree plain", "tree no-queue", "tree gone",
                                 "plan (list kvm)", "smtp", "commands")} == {
        "tree missing": "config", "tree plain": "config", "tree no-queue": "config",
        "tree gone": "unreachable", "plan (list kvm)": "config", "smtp": "unreachable",
        "commands": "config"}, out
    assert "has no branch queue" in out and "is not a git repository" in out
    assert f"127.0.0.1:{dead}" in out and "nobody may send a command" in out


@pytest.mark.integration
def test_check_exits_3_when_only_infrastructure_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = free_port()
    cfg = _config(tmp_path, f"""
[archive]
base_url = "http://127.0.0.1:{dead}"
[[lists]]
name = "kvm"
[[trees]]
name = "gone"
url = "file://{tmp_path / 'gone.git'}"
""")
    code = main(["-c", str(cfg), "config", "check", "--timeout", "10"])
    out = capsys.readouterr().out
    assert code == 3, out
    rows = _lines(out)
    assert (rows["tree gone"], rows["archive list kvm"]) == ("unreachable", "unreachable"), out
    # --offline skips exactly what needs the network: what is left is fine.
    assert main(["-c", str(cfg), "config", "check", "--offline"]) == 0
    rows = _lines(capsys.readouterr().out)
    assert (rows["tree gone"], rows["archive"]) == ("skipped", "skipped")
