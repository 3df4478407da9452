"""KernelBuilder on the fake kernel tree: statuses, diagnostics, new warnings, incremental
builds, the artifact store, selftests and config checks, in seconds."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from bot.build.diagnostics import Severity
from bot.build.kernel import BuildStatus, KernelBuilder
from bot.config import BuildSection
from tests.build.fake_kernel import FRAGMENT, commit, make_fake_kernel

pytestmark = pytest.mark.timeout(120)

WARN_NESTED = (
    "int nested_vmx_check(int state)\n{\n\tint unused_flag;\n\tif (state)\n\t\treturn 1;\n"
    "\treturn 0;\n}\n"
)
BROKEN_NESTED = "int nested_vmx_check(int state)\n{\n\treturn state +;\n}\n"


@pytest.fixture
def fake(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "linux"
    return repo, make_fake_kernel(repo)


@pytest.fixture
def builder(tmp_path: Path) -> KernelBuilder:
    frag = tmp_path / "kvm.config"
    frag.write_text(FRAGMENT)
    return KernelBuilder(
        tmp_path / "cache", BuildSection(timeout_s=60), [frag], ccache=False, jobs=2
    )


def lines_with(log: Path | None, needle: str) -> list[str]:
    assert log is not None
    return [line for line in log.read_text().splitlines()
            if needle in line and not line.startswith("#")]


def test_base_build_passes_with_artifacts_and_reports_what_is_missing(
    fake: tuple[Path, str], builder: KernelBuilder
) -> None:
    repo, base = fake
    r = builder.build(repo, base, progress=lambda s: None)
    assert r.status is BuildStatus.PASS, r.summary()
    assert r.rev == base and not r.cached
    assert r.artifacts.bzimage is not None and r.artifacts.bzimage.stat().st_size > 0
    assert r.artifacts.config is not None
    assert "CONFIG_KVM_INTEL=y" in r.artifacts.config.read_text()
    # The fake Kconfig does not know KVM_AMD: olddefconfig drops it and the result says so.
    assert r.config_dropped == ("CONFIG_KVM_AMD=y (got unset)",)
    assert r.selftests == ("x86_64/state_test",)
    assert r.missing_selftests == ("x86_64/broken_test",)
    assert r.artifacts.selftests_dir is not None
    binary = r.artifacts.selftests_dir / "x86_64/state_test"
    out = subprocess.run([binary], capture_output=True, text=True, check=True)  # noqa: S603
    assert out.stdout == "version 1\n"
    assert any(d.file.endswith("x86_64/broken_test.c") for d in r.selftest_diagnostics)
    assert r.errors == ()  # the selftest that never builds is not a kernel error


def test_same_tree_is_served_from_the_store(
    fake: tuple[Path, str], builder: KernelBuilder
) -> None:
    repo, base = fake
    first = builder.build(repo, base, progress=lambda s: None)
    t0 = time.monotonic()
    again = builder.build(repo, base, progress=lambda s: None)
    assert time.monotonic() - t0 < 5
    assert again.cached and again.key == first.key
    assert again.artifacts.bzimage == first.artifacts.bzimage
    # A commit with another message but the same tree is the same build.
    subprocess.run(["git", "-c", "user.name=T", "-c", "user.email=t@e", "commit", "-q",
                    "--allow-empty", "-m", "empty"], cwd=repo, check=True)
    same_tree = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                               text=True, check=True).stdout.strip()
    r = builder.build(repo, same_tree, progress=lambda s: None)
    assert r.cached and r.rev == same_tree and r.key == first.key


def test_warning_is_attributed_to_the_patch_that_adds_it(
    fake: tuple[Path, str], builder: KernelBuilder
) -> None:
    repo, base = fake
    builder.build(repo, base, progress=lambda s: None)
    c1 = commit(repo, {"kernel/fork.c": "int fork_me(void)\n{\n\treturn 3;\n}\n"}, "clean")
    c2 = commit(repo, {"arch/x86/kvm/vmx/nested.c": WARN_NESTED}, "warn")
    c3 = commit(repo, {"kernel/fork.c": "int fork_me(void)\n{\n\treturn 4;\n}\n"}, "clean again")
    r1, r2, r3 = (builder.build(repo, c, progress=lambda s: None) for c in (c1, c2, c3))
    assert [r.status for r in (r1, r2, r3)] == [BuildStatus.PASS] * 3
    assert r1.new_warnings == () and r3.new_warnings == ()
    (w,) = r2.new_warnings
    assert (w.file, w.line, w.severity, w.flag) == (
        "arch/x86/kvm/vmx/nested.c", 3, Severity.WARNING, "-Wunused-variable"
    )
    assert w.column > 0 and "unused_flag" in w.message
    assert r2.parent_rev == c1
    # c3 did not recompile nested.c, yet its tree still has the warning (carried over).
    assert [d.file for d in r3.warnings] == ["arch/x86/kvm/vmx/nested.c"]
    # Incremental: c3 recompiled only kernel/fork.o.
    assert [ln.split()[-1] for ln in lines_with(r3.artifacts.log, "  CC ")] == ["kernel/fork.o"]


def test_broken_patch_fails_with_file_and_line(
    fake: tuple[Path, str], builder: KernelBuilder
) -> None:
    repo, base = fake
    builder.build(repo, base, progress=lambda s: None)
    bad = commit(repo, {"arch/x86/kvm/vmx/nested.c": BROKEN_NESTED}, "break")
    r = builder.build(repo, bad, progress=lambda s: None)
    assert r.status is BuildStatus.FAIL and r.failed_step == "bzImage"
    assert r.artifacts.bzimage is None
    (e, *_) = r.errors
    assert (e.file, e.line) == ("arch/x86/kvm/vmx/nested.c", 3)
    assert "arch/x86/kvm/vmx/nested.c:3:" in r.message
    # A FAIL is a fact about the tree: stored, not rebuilt.
    again = builder.build(repo, bad, progress=lambda s: None)
    assert again.cached and again.status is BuildStatus.FAIL
    # The fix builds incrementally after the failure.
    fixed = commit(repo, {"arch/x86/kvm/vmx/nested.c": WARN_NESTED.replace(
        "\tint unused_flag;\n", "")}, "fix")
    assert builder.build(repo, fixed, progress=lambda s: None).status is BuildStatus.PASS


def test_uapi_change_rebuilds_selftests(fake: tuple[Path, str], builder: KernelBuilder) -> None:
    repo, base = fake
    builder.build(repo, base, progress=lambda s: None)
    c1 = commit(repo, {"include/uapi/linux/kvm_fake.h": "#define KVM_FAKE_VERSION 2\n"}, "uapi")
    r = builder.build(repo, c1, progress=lambda s: None)
    assert r.artifacts.selftests_dir is not None
    out = subprocess.run(  # noqa: S603
        [r.artifacts.selftests_dir / "x86_64/state_test"], capture_output=True, text=True,
        check=True,
    )
    assert out.stdout == "version 2\n"


def test_timeout_is_an_error_and_not_stored(
    fake: tuple[Path, str], tmp_path: Path
) -> None:
    repo, base = fake
    slow = commit(repo, {"kernel/slow.c": "int slow;\n", "Makefile": (repo / "Makefile")
                  .read_text().replace("@cat $(OBJS) > $@", "@sleep 30; cat $(OBJS) > $@")},
                  "slow link")
    frag = tmp_path / "kvm.config"
    frag.write_text(FRAGMENT)
    b = KernelBuilder(tmp_path / "cache2", BuildSection(timeout_s=4), [frag], ccache=False)
    t0 = time.monotonic()
    r = b.build(repo, slow, progress=lambda s: None)
    assert time.monotonic() - t0 < 20
    assert r.status is BuildStatus.ERROR and "timed out" in r.message
    assert b.lookup(repo, slow) is None


def test_build_sees_no_network_and_no_secrets(
    fake: tuple[Path, str], builder: KernelBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, _ = fake
    monkeypatch.setenv("KBOT_SMTP_PASSWORD", "hunter2")
    spy = commit(repo, {"Makefile": (repo / "Makefile").read_text().replace(
        "@cat $(OBJS) > $@", "@{ env; cat /proc/net/dev; } > $@")}, "spy on the build")
    r = builder.build(repo, spy, progress=lambda s: None)
    assert r.status is BuildStatus.PASS and r.artifacts.bzimage is not None
    seen = r.artifacts.bzimage.read_text()
    assert "hunter2" not in seen and "KBOT_SMTP_PASSWORD" not in seen
    interfaces = [ln.split(":")[0].strip() for ln in seen.splitlines() if ":" in ln
                  and ln.strip().split(":")[0].isidentifier()]
    assert "lo" in interfaces and set(interfaces) - {"lo"} == set()


def test_config_is_recomputed_only_when_kconfig_changes(
    fake: tuple[Path, str], builder: KernelBuilder
) -> None:
    repo, base = fake
    builder.build(repo, base, progress=lambda s: None)
    c1 = commit(repo, {"kernel/fork.c": "int fork_me(void)\n{\n\treturn 3;\n}\n"}, "code only")
    r1 = builder.build(repo, c1, progress=lambda s: None)
    assert lines_with(r1.artifacts.log, "tinyconfig") == []
    assert r1.config_dropped == ("CONFIG_KVM_AMD=y (got unset)",)
    c2 = commit(repo, {"Kconfig": (repo / "Kconfig").read_text() + "CONFIG_KVM_AMD\n"},
                "Kconfig: add KVM_AMD")
    r2 = builder.build(repo, c2, progress=lambda s: None)
    assert len(lines_with(r2.artifacts.log, "tinyconfig")) == 1
    assert r2.config_dropped == ()
    assert r2.artifacts.config is not None
    assert "CONFIG_KVM_AMD=y" in r2.artifacts.config.read_text()
