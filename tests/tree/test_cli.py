"""`kbot apply` and `kbot build` end to end on the fake kernel, from a `git format-patch` mbox."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bot.cli import main
from tests.build.fake_kernel import FRAGMENT, commit, git, make_fake_kernel

pytestmark = pytest.mark.timeout(120)


def write_config(tmp_path: Path, repo: Path) -> Path:
    (tmp_path / "kvm.config").write_text(FRAGMENT)
    cfg = tmp_path / "kbot.toml"
    cfg.write_text(
        f'schema = 1\ninherit = false\n[bot]\ncache_dir = "{tmp_path / "cache"}"\n'
        f'[[trees]]\nname = "fake"\npath = "{repo}"\n'
        '[build]\nfragments = ["kvm.config"]\nccache = false\ntimeout_s = 120\n'
    )
    return cfg


def format_patch(repo: Path, base: str, out: Path) -> Path:
    mbox = subprocess.run(  # noqa: S603 - git format-patch, as a contributor would
        ["git", "format-patch", "--stdout", "--thread", "--cover-letter", f"--base={base}",
         f"{base}..HEAD"], cwd=repo, check=True, capture_output=True, text=True,
    ).stdout
    out.write_text(mbox)
    return out


def test_apply_and_build_a_series_from_an_mbox(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "linux"
    base = make_fake_kernel(repo)
    git(repo, "checkout", "-q", "-b", "work")
    commit(repo, {"kernel/fork.c": "int fork_me(void)\n{\n\treturn 3;\n}\n"}, "KVM: clean")
    commit(repo, {"arch/x86/kvm/x86.c": "int kvm_x86_init(void)\n{\n\tint w;\n\treturn 0;\n}\n"},
           "KVM: x86: warn")
    commit(repo, {"arch/x86/kvm/x86.c": "int kvm_x86_init(void)\n{\n\treturn 0 +;\n}\n"},
           "KVM: x86: break")
    mbox = format_patch(repo, base, tmp_path / "series.mbox")
    git(repo, "checkout", "-q", "master")
    cfg = write_config(tmp_path, repo)
    code = main(["-c", str(cfg), "apply", str(mbox), "--tree", "fake", "--build", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1  # applied, and a build failed
    assert doc["status"] == "applied" and doc["base"]["rule"] == "base-commit footer"
    assert [c["title"] for c in doc["commits"]] == ["KVM: clean", "KVM: x86: warn",
                                                     "KVM: x86: break"]
    builds = doc["builds"]
    assert [b["status"] for b in builds] == ["pass", "pass", "pass", "fail"]
    assert [len(b["new_warnings"]) for b in builds[1:3]] == [0, 1]
    assert builds[2]["new_warnings"][0]["file"] == "arch/x86/kvm/x86.c"
    err = builds[3]["diagnostics"]
    assert any(d["severity"] == "error" and d["file"] == "arch/x86/kvm/x86.c" and d["line"] == 3
               for d in err)

    # `kbot build` of the same commits comes from the store; a range prints a table.
    last = doc["commits"][-1]["sha"]
    code = main(["-c", str(cfg), "build", "--tree", "fake", "--rev", f"{base}..{last}"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert out.count("cached") == 4 and "FAIL" in out and ">> arch/x86/kvm/x86.c:3:" in out


def test_apply_conflict_exit_code_and_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "linux"
    base = make_fake_kernel(repo)
    git(repo, "checkout", "-q", "-b", "work")
    commit(repo, {"kernel/fork.c": "int fork_me(void)\n{\n\treturn 3;\n}\n"}, "KVM: one")
    mbox = format_patch(repo, base, tmp_path / "s.mbox")
    git(repo, "checkout", "-q", "master")
    commit(repo, {"kernel/fork.c": "int fork_me(void)\n{\n\treturn 9;\n}\n"}, "upstream")
    cfg = write_config(tmp_path, repo)
    code = main(["-c", str(cfg), "apply", str(mbox), "--tree", str(repo), "--base", "master"])
    out, err = capsys.readouterr()
    assert code == 3, err
    assert "DOES NOT APPLY (kernel/fork.c)" in out and "git am says:" in out


def test_build_rejects_unknown_rev(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "linux"
    make_fake_kernel(repo)
    cfg = write_config(tmp_path, repo)
    assert main(["-c", str(cfg), "build", "--tree", str(repo), "--rev", "nope"]) == 2
    assert "no commit 'nope'" in capsys.readouterr().err


def test_build_with_an_extra_fragment_is_another_store_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "linux"
    make_fake_kernel(repo)
    cfg = write_config(tmp_path, repo)
    extra = tmp_path / "extra.config"
    extra.write_text("CONFIG_NOT_IN_KCONFIG=y\n")
    assert main(["-c", str(cfg), "build", "--tree", "fake", "--rev", "master", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["-c", str(cfg), "build", "--tree", "fake", "--rev", "master",
                 "--config", str(extra), "--json"]) == 0
    more = json.loads(capsys.readouterr().out)
    assert more["key"] != plain["key"] and not more["cached"]
    assert more["config_fingerprint"] != plain["config_fingerprint"]
    assert "CONFIG_NOT_IN_KCONFIG=y (got unset)" in more["config_dropped"]


def test_apply_refuses_an_unsafe_series_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A C-quoted `..` path (git's own quoting) is a refusal naming the path and the rule, not
    the conflict `git am` would report."""
    repo = tmp_path / "linux"
    base = make_fake_kernel(repo)
    mbox = tmp_path / "evil.mbox"
    mbox.write_text(
        "From 1111111111111111111111111111111111111111 Mon Sep 17 00:00:00 2001\n"
        "From: Mallory <m@example.org>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n"
        "Subject: [PATCH] KVM: x86: innocent\nMessage-ID: <evil@example.org>\n\n"
        "Nothing to see.\n---\n"
        'diff --git "a/\\056\\056/outside.c" "b/\\056\\056/outside.c"\n'
        "new file mode 100644\nindex 0000000..1111111\n--- /dev/null\n"
        '+++ "b/\\056\\056/outside.c"\n@@ -0,0 +1 @@\n+int x;\n'
        f"\nbase-commit: {base}\n"
    )
    cfg = write_config(tmp_path, repo)
    code = main(["-c", str(cfg), "apply", str(mbox), "--tree", "fake"])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "rejected before applying:" in out
    assert "patch 1: ../outside.c: '..' in path" in out
    assert "DOES NOT APPLY" not in out and not (tmp_path / "outside.c").exists()
