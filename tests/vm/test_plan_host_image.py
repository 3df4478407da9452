"""Fast tier: test plans (data, validation, backend choice), the host probe on a fake root, the
guest image builder (real newc archive read back by cpio(1)), emulator command lines."""

from __future__ import annotations

import gzip
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from bot import proc
from bot.errors import ConfigError, UserError
from bot.vm.backends import BASE_CMDLINE, backend_impl
from bot.vm.host import probe
from bot.vm.image import GuestTest, build_initramfs, find_selftest, guest_tests, plan_text
from bot.vm.model import Backend, HostCaps
from bot.vm.plan import LimitAction, Requires, choose_backend, load_plan, parse_plan
from bot.vm.runner import RunOptions, _groups, hard_limit, run_plan

NO_KVM = HostCaps(
    cpu_vendor="AuthenticAMD", cpu_model="AMD EPYC", vmx=False, svm=False, kvm_usable=False,
    kvm_detail="no /dev/kvm", nested_vmx=False, nested_svm=False, qemu="/usr/bin/qemu",
    bochs="/usr/bin/bochs", xorriso="/usr/bin/xorriso", cpus=2,
)
INTEL_KVM = replace(NO_KVM, cpu_vendor="GenuineIntel", vmx=True, kvm_usable=True,
                    kvm_detail="ok", nested_vmx=True)
AMD_KVM = replace(NO_KVM, svm=True, kvm_usable=True, kvm_detail="ok", nested_svm=True)


def test_shipped_plan() -> None:
    plan = load_plan("nested-state")
    vmx, svm = plan.set_named("vmx"), plan.set_named("svm")
    assert vmx.requires is Requires.VMX and svm.requires is Requires.SVM
    assert {"vmx_set_nested_state_test", "evmcs_test", "state_test"} <= {t.name for t in vmx.tests}
    assert "vmx_preemption_timer_test" not in {t.name for t in vmx.tests_for(Backend.BOCHS)}
    assert "vmx_preemption_timer_test" in {t.name for t in vmx.tests_for(Backend.QEMU_KVM)}
    for name in ("svm_nested_soft_inject_test", "nested_exceptions_test"):
        lim = svm.limit_for(Backend.QEMU_TCG, name)
        assert lim is not None and lim.action is LimitAction.EXPECT_FAIL
        assert svm.limit_for(Backend.QEMU_KVM, name) is None


@pytest.mark.parametrize(("text", "key"), [
    ('name = "p"\n', "sets"),
    ('name = "p"\nbogus = 1\n[[sets]]\nname="s"\ntests=["a"]\n', "bogus"),
    ('name = "p"\n[[sets]]\nname="s"\nrequires="arm"\ntests=["a"]\n', "sets[0].requires"),
    ('name = "p"\n[[sets]]\nname="s"\ntests=[{name="a", timeout_s=0}]\n',
     "sets[0].tests[0].timeout_s"),
    ('name = "p"\n[[sets]]\nname="s"\ntests=["a", "a"]\n', "sets[0].tests[1].name"),
    ('name = "p"\n[[sets]]\nname="s"\ntests=["../../bin/sh"]\n', "sets[0].tests[0].name"),
    ('name = "p"\n[[sets]]\nname="s"\ntests=["a"]\n[[sets.limits]]\nbackend="bochs"\n'
     'test="b"\naction="exclude"\nreason="r"\n', "sets[0].limits[0].test"),
    ('name = "p"\n[[sets]]\nname="s"\ntests=["a"]\n[[sets.limits]]\nbackend="vbox"\n'
     'test="a"\naction="exclude"\nreason="r"\n', "sets[0].limits[0].backend"),
    ('name = "p"\n[[sets]\n', "(syntax)"),
])
def test_bad_plans_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_plan(text, Path("bad.toml"))
    assert info.value.key == key and info.value.path == "bad.toml"


def test_unknown_plan_lists_known_ones() -> None:
    with pytest.raises(UserError, match="nested-state"):
        load_plan("no-such-plan")


@pytest.mark.parametrize(("host", "want"), [
    (NO_KVM, {"vmx": Backend.BOCHS, "svm": Backend.QEMU_TCG}),
    (INTEL_KVM, {"vmx": Backend.QEMU_KVM, "svm": Backend.QEMU_TCG}),
    (AMD_KVM, {"vmx": Backend.BOCHS, "svm": Backend.QEMU_KVM}),
])
def test_backend_choice(host: HostCaps, want: dict[str, Backend]) -> None:
    plan = load_plan("nested-state")
    got = {s.name: choose_backend(s, host, None) for s in plan.sets}
    assert {k: v.backend for k, v in got.items()} == want
    assert all(c.reason for c in got.values())
    forced = {s.name: choose_backend(s, host, Backend.QEMU_TCG).backend for s in plan.sets}
    assert set(forced.values()) == {Backend.QEMU_TCG}
    groups = _groups(plan, host, None)
    assert sorted(g.backend.value for g in groups) == sorted({b.value for b in want.values()})
    assert len(_groups(plan, host, Backend.QEMU_TCG)) == 1


def test_probe_fake_root(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(
        "vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse hypervisor\n")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/kvm").write_text("")
    caps = probe(tmp_path)
    assert caps.cpu_vendor == "AuthenticAMD" and not caps.svm and not caps.kvm_usable
    assert "neither vmx nor svm" in caps.kvm_detail
    assert caps.notes == ("host is itself a virtual machine",)
    (tmp_path / "proc/cpuinfo").write_text("vendor_id\t: GenuineIntel\nflags\t\t: fpu vmx\n")
    (tmp_path / "sys/module/kvm_intel/parameters").mkdir(parents=True)
    (tmp_path / "sys/module/kvm_intel/parameters/nested").write_text("Y\n")
    caps = probe(tmp_path)
    assert caps.vmx and caps.nested_vmx
    assert not caps.kvm_usable  # a plain file is not a KVM device: the ioctl fails
    assert "KVM_GET_API_VERSION" in caps.kvm_detail


def _fake_selftests(root: Path) -> Path:
    (root / "x86_64").mkdir(parents=True)
    for name in ("state_test", "evmcs_test"):
        (root / "x86_64" / name).write_bytes(b"\x7fELF fake " + name.encode())
    return root


def test_initramfs_contents_and_cache(tmp_path: Path) -> None:
    selftests = _fake_selftests(tmp_path / "kvm")
    tests = guest_tests([("state_test", 90, 1), ("evmcs_test", 60.4, 2), ("state_test", 120, 1)])
    assert tests == (GuestTest("state_test", 120, 1), GuestTest("evmcs_test", 60, 2))
    binaries = {t.name: p for t in tests if (p := find_selftest(selftests, t.name))}
    assert binaries["state_test"] == selftests / "x86_64" / "state_test"
    cache = tmp_path / "cache"
    img = build_initramfs(binaries, tests, cache)
    assert not img.cached and img.initrd.is_file()
    again = build_initramfs(binaries, tests, cache)
    assert again.cached and again.initrd == img.initrd and again.key == img.key
    # the archive is a real newc cpio: cpio(1) lists it
    raw = tmp_path / "initrd.cpio"
    raw.write_bytes(gzip.decompress(img.initrd.read_bytes()))
    if shutil.which("cpio") is None:
        pytest.fail("cpio(1) is needed to check the archive (Debian package cpio)")
    listing = proc.run(["cpio", "-it", "--quiet", "-F", str(raw)], timeout=30, check=True)
    names = set(listing.stdout.split())
    assert {"init", "bin/busybox", "bin/sh", "dev/console", "kbot/plan",
            "kbot/tests/state_test", "kbot/tests/evmcs_test"} <= names
    extract = tmp_path / "x"
    extract.mkdir()
    proc.run(["cpio", "-id", "--quiet", "--no-absolute-filenames", "-F", str(raw),
              "init", "kbot/plan", "kbot/tests/evmcs_test"], timeout=30, cwd=extract,
             check=True)
    assert (extract / "kbot/plan").read_text() == plan_text(tests) == (
        "state_test 120 1\nevmcs_test 60 2\n")
    assert (extract / "kbot/tests/evmcs_test").read_bytes() == b"\x7fELF fake evmcs_test"
    assert "/dev/kmsg" in (extract / "init").read_text()
    # a changed binary is a new image
    (selftests / "x86_64" / "evmcs_test").write_bytes(b"\x7fELF changed")
    changed = build_initramfs(binaries, tests, cache)
    assert not changed.cached and changed.key != img.key


def test_command_lines(tmp_path: Path) -> None:
    selftests = _fake_selftests(tmp_path / "kvm")
    tests = (GuestTest("state_test", 90, 1),)
    img = build_initramfs({"state_test": selftests / "x86_64/state_test"}, tests,
                          tmp_path / "cache")
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"kernel")
    tcg = backend_impl(Backend.QEMU_TCG).launch(kernel, img, tmp_path, tmp_path / "c", 1024)
    argv = list(tcg.argv)
    assert argv[argv.index("-accel") + 1] == "tcg" and argv[argv.index("-cpu") + 1] == "max"
    assert argv[argv.index("-append") + 1] == BASE_CMDLINE
    assert "clocksource=tsc tsc=reliable" in BASE_CMDLINE and "-no-reboot" in argv
    kvm = backend_impl(Backend.QEMU_KVM).launch(kernel, img, tmp_path, tmp_path / "c", 1024)
    assert list(kvm.argv)[list(kvm.argv).index("-cpu") + 1] == "host"
    assert hard_limit(backend_impl(Backend.BOCHS), tests, 100) > hard_limit(
        backend_impl(Backend.QEMU_TCG), tests, 100)
    assert backend_impl(Backend.BOCHS).clean_exit(1) and not backend_impl(
        Backend.QEMU_TCG).clean_exit(1)


def test_run_plan_rejects_missing_inputs(tmp_path: Path) -> None:
    opts = RunOptions(cache_dir=tmp_path / "c", work_dir=tmp_path / "w")
    plan = load_plan("nested-state")
    with pytest.raises(UserError, match="kernel image"):
        run_plan(tmp_path / "nope", tmp_path, plan, host=NO_KVM, options=opts)
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"k")
    with pytest.raises(UserError, match="none of plan nested-state"):
        run_plan(kernel, tmp_path, plan, Backend.QEMU_TCG, host=NO_KVM, options=opts)
