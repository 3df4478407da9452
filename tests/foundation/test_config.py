"""Config: the embedded default loads; every error names file, key and problem."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import bot.config as config_module
from bot.config import (
    DEFAULT_CONFIG,
    Config,
    LoadedConfig,
    load_config,
    load_layered,
    parse_config,
    rule_for,
)
from bot.errors import ConfigError, UserError
from tests.conftest import REPO_ROOT


def test_embedded_default_config_loads() -> None:
    cfg = load_config()
    assert cfg.source == DEFAULT_CONFIG.resolve()
    kvm = cfg.list_named("kvm")
    assert "arch/x86/kvm/*" in kvm.files
    assert cfg.tree_named("kvm").default_branch == "queue"
    assert cfg.resolve(cfg.build.fragments[0]).is_file()


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[bot]\nemial = 'x@y'\n", "bot.emial", "unknown key"),
        ("[archive]\ntimeout_s = 'soon'\n", "archive.timeout_s", "expected a number"),
        ("[[lists]]\nfiles = []\n", "lists[0].name", "required key missing"),
        ("[vm]\nbackend = 'virtualbox'\n", "vm.backend", "not one of"),
        ("[[trees]]\nname = 't'\n", "trees[0]", "exactly one of url or path"),
        ("[[base_rules]]\ntree = 'nope'\nbranch = 'x'\n", "base_rules[0].tree", "no tree"),
        ("[bot]\nemail = 'no-at-sign'\n", "bot.email", "not an email"),
        ("[bisect]\nconfidence = 1.5\n", "bisect.confidence", "must be in"),
        ("[bot\n", "(syntax)", ""),
    ],
)
def test_errors_name_file_key_and_problem(text: str, key: str, problem: str) -> None:
    src = Path("/etc/kbot/bad.toml")
    with pytest.raises(ConfigError) as info:
        parse_config(text, src)
    assert info.value.key == key
    assert problem in info.value.problem
    assert str(info.value).startswith("/etc/kbot/bad.toml: ")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


# -- every value is checked when the config loads ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[archive]\ntimeout_s = 0\n", "archive.timeout_s", "must be > 0, got 0.0"),
        ("[build]\ntimeout_s = -5\n", "build.timeout_s", "must be > 0"),
        ("[report]\nconfirm_window_s = 0\n", "report.confirm_window_s", "must be > 0"),
        ("[vm]\nboot_timeout_s = nan\n", "vm.boot_timeout_s", "expected a finite number"),
        ("[archive]\nbackoff_s = inf\n", "archive.backoff_s", "expected a finite number"),
        ("[archive]\nmax_message_bytes = -1\n", "archive.max_message_bytes", "must be > 0"),
        ("[archive]\nretries = -1\n", "archive.retries", "must be >= 0"),
        ("[archive]\nsearch_page = 500\n", "archive.search_page", "must be in [1, 200]"),
        ("[build]\nmax_memory_mb = 0\n", "build.max_memory_mb", "must be > 0"),
        ("[vm]\nmemory_mb = 0\n", "vm.memory_mb", "must be > 0"),
        ("[bisect]\nmax_runs = 0\n", "bisect.max_runs", "must be > 0"),
        ("[report.smtp]\nport = 99999\n", "report.smtp.port", "not a TCP port (1..65535)"),
        ("[report.smtp]\nport = 0\n", "report.smtp.port", "not a TCP port"),
        ("[[lists]]\nname = 'kvm'\nsubject_patterns = ['KVM: (x86']\n",
         "lists[0].subject_patterns[0]", "is not a regular expression: missing ), unterminated"),
        ("[[lists]]\nname = 'kvm'\nsettle_s = -1\n", "lists[0].settle_s", "must be >= 0"),
        ("[[lists]]\nname = 'kvm'\naddress = 'kvm at vger'\n", "lists[0].address",
         "not an email address"),
        ("[[lists]]\nname = ''\n", "lists[0].name", "must not be empty"),
        ("[archive]\nbase_url = 'lore.kernel.org'\n", "archive.base_url",
         "not a URL with a scheme of http, https"),
        ("[archive]\nbase_url = 'https://'\n", "archive.base_url", "no host"),
        ("[archive]\nbase_url = 'https://lore.kernel.org:99999'\n", "archive.base_url",
         "is not a URL: Port out of range"),
        ("[report]\narchive_url = 'ftp://lore.kernel.org/kvm/'\n", "report.archive_url",
         "scheme of http, https"),
        ("[[trees]]\nname = 't'\nurl = 'https://git kernel org/x.git'\n", "trees[0].url",
         "white space"),
        ("[report]\nstaging_allowlist = ['me@example.org', '@example.com', 'you @x']\n",
         "report.staging_allowlist[2]", "not an address, @domain or address pattern"),
        ("[report]\nmin_bisect_confidence = 1.5\n", "report.min_bisect_confidence",
         "must be in [0.0, 1.0]"),
        ("[report]\nretry_backoff_s = 100\nretry_max_backoff_s = 10\n",
         "report.retry_max_backoff_s", "must be >= report.retry_backoff_s"),
        ("x = " + "[" * 5000 + "]" * 5000 + "\n", "(syntax)", "nested too deeply"),
    ],
)
def test_bad_values_are_config_errors_at_load(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("/etc/kbot/bad.toml"))
    assert (info.value.key, info.value.path) == (key, "/etc/kbot/bad.toml")
    assert problem in info.value.problem


def test_values_that_mean_something_at_zero_are_accepted() -> None:
    cfg = parse_config(
        "[archive]\nretries = 0\nsweep_stop_known = 0\nrt_overlap_s = 0\n"
        "[[lists]]\nname = 'kvm'\nsettle_s = 0\nsubject_patterns = ['^KVM: (x86|nVMX)']\n"
        "[[trees]]\nname = 't'\nurl = 'file:///srv/git/linux.git'\n"
        "[[trees]]\nname = 'u'\nurl = 'git://git.kernel.org/pub/scm/linux.git'\n"
        "[build]\njobs = 0\n[report.smtp]\nport = 465\n",
        Path("/etc/kbot/ok.toml"),
    )
    assert (cfg.archive.retries, cfg.lists[0].settle_s, cfg.build.jobs) == (0, 0.0, 0)


def _scalars(obj: object, prefix: str) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            out.extend(_scalars(value, key))
        elif isinstance(value, tuple):
            out.extend((f"{key}[{i}]", v) for i, v in enumerate(value))
        elif not isinstance(value, Path | bool):
            out.append((key, value))
    return out


@pytest.mark.parametrize("config", [None, "configs/demo.toml"])
def test_defaults_and_shipped_configs_pass_their_own_rules(config: str | None) -> None:
    """A setting someone adds (with its default) must satisfy the rule its name implies, or
    declare its own in bot.config._RULES."""
    cfg = load_config(REPO_ROOT / config if config else None)
    checked = 0
    for key, value in _scalars(Config(), "") + _scalars(cfg, ""):
        if check := rule_for(key, value):
            assert check(value) is None, (key, value)
            checked += 1
    assert checked > 30


def test_config_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "kbot.toml"
    path.write_bytes(b"[bot]\nname = 'k\xe9bot'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.problem) == (
        "(file)", "not UTF-8 text (line 2, byte 15: b'\\xe9')")


@pytest.mark.parametrize(
    ("content", "key"),
    [
        (b"[archive]\ntimeout_s = 0\n", "archive.timeout_s"),
        (b"[report.smtp]\nport = 99999\n", "report.smtp.port"),
        (b"[[lists]]\nname = 'kvm'\nsubject_patterns = ['(']\n", "lists[0].subject_patterns[0]"),
        (b"[archive]\nmax_download_bytes = -64\n", "archive.max_download_bytes"),
        (b"\xff\xfe[bot]\n", "(file)"),
    ],
)
def test_cli_names_file_and_key_in_one_line(tmp_path: Path, content: bytes, key: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_bytes(content)
    res = subprocess.run(  # noqa: S603 - the CLI as a user runs it
        [sys.executable, "-m", "bot.cli", "-c", str(cfg), "series", "show", "x@y"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(f"kbot: error: {cfg}: {key}: ")
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


# -- layers: default < /etc/kbot < ~/.config/kbot < $KBOT_CONFIG < -c ------------------------


@dataclasses.dataclass
class Stack:
    system: Path
    user: Path
    env_file: Path
    cli: Path
    env: dict[str, str]

    def load(self) -> LoadedConfig:
        return load_layered(self.cli, self.env)


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """Four layer files over the embedded default, each in its own folder, all empty."""
    system = tmp_path / "etc" / "kbot" / "config.toml"
    user = tmp_path / "xdg" / "kbot" / "config.toml"
    env_file = tmp_path / "envdir" / "kbot.toml"
    cli = tmp_path / "clidir" / "kbot.toml"
    for p in (system, user, env_file, cli):
        p.parent.mkdir(parents=True)
        p.write_text("")
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", system)
    return Stack(system, user, env_file, cli,
                 {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "KBOT_CONFIG": str(env_file)})


def test_each_layer_overrides_keys_not_sections(stack: Stack) -> None:
    stack.system.write_text('[archive]\nretries = 1\n[report.smtp]\nhost = "sys.example.org"\n'
                            'port = 2525\n')
    stack.user.write_text('[archive]\nretries = 2\n[report.smtp]\nhost = "user.example.org"\n')
    stack.env_file.write_text('[archive]\ntimeout_s = 7\n[bot]\nemail = "env@example.org"\n')
    stack.cli.write_text('[bot]\nemail = "cli@example.org"\n')
    loaded = stack.load()
    cfg = loaded.config
    assert [layer.kind for layer in loaded.layers] == ["default", "system", "user", "env", "cli"]
    assert cfg.archive.retries == 2  # user over system
    assert cfg.archive.timeout_s == 7.0  # env, the only one to set it
    assert cfg.archive.base_url == "https://lore.kernel.org"  # the default's, section kept
    assert (cfg.report.smtp.host, cfg.report.smtp.port) == ("user.example.org", 2525)
    assert cfg.bot.email == "cli@example.org" and cfg.bot.name == "kbot"
    assert cfg.list_named("kvm").files  # nothing replaced the default's lists
    who = {k: loaded.origins[k].path for k in
           ("archive.retries", "archive.timeout_s", "report.smtp.port", "bot.email", "bot.name")}
    assert who == {"archive.retries": str(stack.user), "archive.timeout_s": str(stack.env_file),
                   "report.smtp.port": str(stack.system), "bot.email": str(stack.cli),
                   "bot.name": str(DEFAULT_CONFIG)}
    assert "bot.owner" not in loaded.origins  # a built-in default: no file set it
    assert cfg.source == stack.cli.resolve()


def test_layers_that_do_not_exist_are_skipped_but_named_ones_must(stack: Stack) -> None:
    stack.system.unlink()
    stack.user.unlink()
    loaded = load_layered(None, {"XDG_CONFIG_HOME": str(stack.user.parent.parent)})
    assert [layer.kind for layer in loaded.layers] == ["default"]
    assert loaded.config == dataclasses.replace(load_config(), source=DEFAULT_CONFIG.resolve())
    stack.cli.unlink()
    with pytest.raises(ConfigError) as info:
        stack.load()
    assert (info.value.path, info.value.key) == (str(stack.cli), "(file)")


def test_arrays_of_tables_merge_by_name(stack: Stack) -> None:
    stack.system.write_text(
        '[[lists]]\nname = "kvm"\nsettle_s = 60\n'  # one setting of the default's list
        '[[lists]]\nname = "kvm-arm"\nfiles = ["arch/arm64/kvm/*"]\n'  # a new list
        '[[trees]]\nname = "linux-next"\nremove = true\n'  # drop a tree
        '[[base_rules]]\nname = "tip-x86"\nsubject_tags = ["x86/fpu:"]\n'  # change a rule
        '[[base_rules]]\nname = "mmu"\ntree = "kvm"\nbranch = "next"\n'  # a new rule...
        'subject_tags = ["KVM: x86/mmu"]\n'
        '[[base_rules]]\ntree = "kvm"\nbranch = "master"\nfiles = ["virt/kvm/*"]\n')  # unnamed
    stack.user.write_text('[[trees]]\nname = "kvm"\nreference = "/srv/git/linux"\n'
                          '[[trees]]\nname = "mine"\npath = "/srv/git/mine"\n')
    cfg = stack.load().config
    kvm = cfg.list_named("kvm")
    assert kvm.settle_s == 60 and "arch/x86/kvm/*" in kvm.files and kvm.tree == "kvm"
    assert [lst.name for lst in cfg.lists] == ["kvm", "kvm-arm"]
    assert [t.name for t in cfg.trees] == ["kvm", "tip", "mainline", "linux-6.1", "mine"]
    assert cfg.tree_named("kvm").reference == "/srv/git/linux"
    assert cfg.tree_named("kvm").url.endswith("/kvm.git")  # kept from the default
    # A layer's new rules are tried before those below it; a named one changes in place.
    assert [(r.name, r.branch) for r in cfg.base_rules] == [
        ("mmu", "next"), ("", "master"), ("tip-x86", "master")]
    assert cfg.base_rules[2].subject_tags == ("x86/fpu:",)
    assert cfg.base_rules[2].lists == ("kvm",)


def test_a_file_with_inherit_false_is_the_whole_config(stack: Stack) -> None:
    stack.user.write_text('[bot]\nname = "below"\n')
    stack.env_file.write_text('inherit = false\n[[trees]]\nname = "only"\npath = "/srv/x"\n')
    stack.cli.write_text('lists = []\n[bot]\nemail = "top@example.org"\n')
    loaded = stack.load()
    cfg = loaded.config
    assert [layer.kind for layer in loaded.layers] == ["env", "cli"]
    assert [t.name for t in cfg.trees] == ["only"] and cfg.lists == () == cfg.base_rules
    assert (cfg.bot.name, cfg.bot.email) == ("kbot", "top@example.org")


@pytest.mark.parametrize(
    ("layer", "text", "key", "problem"),
    [
        ("user", "[archive]\ntimeout_s = 0\n", "archive.timeout_s", "must be > 0"),
        # The default has list kvm: this entry is lists[1] of the merged config, lists[0] here.
        ("cli", '[[lists]]\nname = "x"\nsettle_s = -1\n', "lists[0].settle_s", "must be >= 0"),
        ("cli", '[[lists]]\nname = "x"\ntree = "nope"\n', "lists[0].tree", "no tree named"),
        ("system", '[[trees]]\nname = "kvm"\npath = "/srv/kvm"\n', "trees[0]",
         "exactly one of url or path"),
        ("env", '[[trees]]\nname = "gone"\nremove = true\n', "trees[0].name",
         "no trees entry named 'gone'"),
        ("env", '[[trees]]\nname = "kvm"\nremove = true\nurl = "https://x.org/k.git"\n',
         "trees[0].url", "takes only its name"),
        ("user", '[[lists]]\nname = "a"\n[[lists]]\nname = "a"\n', "lists[1].name",
         "a second lists entry named 'a'"),
        ("user", "inherit = 1\n", "inherit", "expected true or false"),
        ("env", "[bot\n", "(syntax)", ""),
    ],
)
def test_layer_errors_name_the_file_and_the_key_as_written_there(
    stack: Stack, layer: str, text: str, key: str, problem: str
) -> None:
    path: Path = getattr(stack, {"env": "env_file"}.get(layer, layer))
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        stack.load()
    assert (info.value.path, info.value.key) == (str(path), key)
    assert problem in info.value.problem


def test_relative_paths_resolve_against_the_file_that_set_them(stack: Stack) -> None:
    stack.system.write_text('[build]\nfragments = ["frags/a.config"]\n'
                            '[vm]\nplan = "plans/mine.toml"\n')
    stack.user.write_text('[bot]\ncache_dir = "cache"\n[[trees]]\nname = "mine"\npath = "src"\n'
                          '[[lists]]\nname = "kvm"\nplan = "nested-state"\n')
    cfg = stack.load().config
    assert cfg.build.fragments == (str(stack.system.parent / "frags/a.config"),)
    assert cfg.vm.plan == str(stack.system.parent / "plans/mine.toml")
    assert cfg.cache_dir == stack.user.parent / "cache"
    assert cfg.tree_named("mine").path == str(stack.user.parent / "src")
    assert cfg.list_named("kvm").plan == "nested-state"  # a plan name stays a name
    assert cfg.tree_named("linux-6.1").path == "{cache_dir}/linux-6.1"
    assert Path(cfg.resolve(load_config().build.fragments[0])).is_file()


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[[trees]]\nname = "t"\nurl = "https://x.org/t.git"\n'
         '[[lists]]\nname = "l"\nbranch = "master"\n', "lists[0].branch", "needs lists[].tree"),
        ('[[trees]]\nname = "t"\nurl = "https://x.org/t.git"\n'
         '[[lists]]\nname = "l"\ntree = "t"\nbranch = "queue"\n', "lists[0].branch",
         "not in trees 't' branches"),
        ('[[trees]]\nname = "t"\nurl = "https://x.org/t.git"\n'
         '[[base_rules]]\ntree = "t"\nbranch = "next"\n', "base_rules[0].branch", "not in"),
        ('[[trees]]\nname = "t"\npath = "/srv/t"\nreference = "/srv/linux"\n',
         "trees[0].reference", "only for url trees"),
        ("[commands]\nallow = ['kbot-admin at example.org']\n", "commands.allow[0]",
         "not an address or @domain"),
        ("[commands]\nrequire_dkim = ['example .org']\n", "commands.require_dkim[0]",
         "not a domain name"),
    ],
)
def test_list_tree_and_command_settings_are_checked(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("/etc/kbot/bad.toml"))
    assert (info.value.key, info.value.path) == (key, "/etc/kbot/bad.toml")
    assert problem in info.value.problem


def test_a_lists_plan_wins_over_the_global_one() -> None:
    cfg = parse_config('[vm]\nplan = "global"\n[[lists]]\nname = "a"\nplan = "mine"\n'
                       '[[lists]]\nname = "b"\n', Path("/etc/kbot/x.toml"))
    assert (cfg.plan_for("a"), cfg.plan_for("b"), cfg.plan_for(None)) == (
        "mine", "global", "global")


def test_a_series_job_loads_its_lists_plan(tmp_path: Path) -> None:
    """The job asks for the plan of the list the series came from (the one of vm.plan for
    another list): each path is missing, so the error names the plan that was asked for,
    before anything is applied."""
    from bot.intake.model import Patch, Person, Series
    from bot.pipeline.series_job import SeriesJob

    (tmp_path / "kbot.toml").write_text(
        'vm.plan = "global-plan.toml"\n[[lists]]\nname = "kvm"\nplan = "kvm-plan.toml"\n'
        '[[lists]]\nname = "other"\n')
    config = load_config(tmp_path / "kbot.toml")
    patch = Patch(index=1, total=1, message_id="p1@x", subject="[PATCH] KVM: x", title="KVM: x",
                  author=Person("A", "a@x"), date=None, commit_message="x\n", diff="",
                  files=("arch/x86/kvm/x86.c",), patch_id="", trailers=())
    series = Series(version=1, title="KVM: x", prefixes=("PATCH",), total=1, cover=None,
                    patches=(patch,), missing=())
    for list_name, plan in (("kvm", "kvm-plan.toml"), ("other", "global-plan.toml")):
        with pytest.raises(UserError, match="cannot read test plan") as info:
            SeriesJob(config, progress=lambda s: None).run(series, list_name=list_name)
        assert str(tmp_path / plan) in str(info.value)


# -- README: every key is documented, and nothing documented is gone ----------------------------


def _config_keys(cls: type, prefix: str = "") -> set[str]:
    import typing

    keys: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        tp = hints[f.name]
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            keys |= _config_keys(tp, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        elif args and dataclasses.is_dataclass(args[0]):
            keys |= _config_keys(args[0], f"{prefix}{f.name}[].")  # type: ignore[arg-type]
        else:
            keys.add(prefix + f.name)
    return keys


def _readme_keys() -> set[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    prefix: str | None = None
    for line in section.splitlines():
        if line.startswith("#### "):
            title = line[5:].strip()
            if title == "top level":
                prefix = ""
            elif title.startswith("[["):
                prefix = title.strip("[]") + "[]."
            else:
                prefix = title.strip("[]") + "."
        elif prefix is not None and line.startswith("| `"):
            keys.add(prefix + line.split("`")[1])
    return keys


def test_readme_documents_every_config_key() -> None:
    documented = _readme_keys()
    assert _config_keys(Config) - documented == set(), "keys missing from README.md"
    layer_switches = {"inherit"}
    assert documented - _config_keys(Config) - layer_switches == set(), \
        "README.md documents keys that do not exist"
