"""Config: the embedded default loads; every error names file, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import DEFAULT_CONFIG, load_config, parse_config
from bot.errors import ConfigError


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
