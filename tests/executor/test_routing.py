"""Capabilities and routing: which queues a host serves, and where each set of a plan goes —
on one host (the local executor) and among the registered workers (the Celery executor, with
a real redis-server holding the registry)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import parse_config
from bot.errors import ConfigError, UserError
from bot.executor.base import host_routes
from bot.executor.registry import Registry, WorkerRecord
from bot.executor.worker import host_capabilities, parse_capabilities
from bot.vm.model import Backend, HostCaps
from bot.vm.plan import load_plan
from tests.executor.lab import RedisServer


def host(vendor: str = "GenuineIntel", *, kvm: bool = False, nested: bool = False,
         qemu: bool = True, bochs: bool = True) -> HostCaps:
    intel = vendor == "GenuineIntel"
    return HostCaps(vendor, "cpu", vmx=intel, svm=not intel, kvm_usable=kvm, kvm_detail="x",
                    nested_vmx=nested and intel, nested_svm=nested and not intel,
                    qemu="/usr/bin/qemu-system-x86_64" if qemu else None,
                    bochs="/usr/bin/bochs" if bochs else None,
                    xorriso="/usr/bin/xorriso" if bochs else None, cpus=4)


def test_a_host_serves_the_queues_its_probe_allows() -> None:
    assert host_capabilities(host()) == ("build", "vm-tcg", "vm-bochs")
    assert host_capabilities(host(kvm=True, nested=True)) == (
        "build", "vm-kvm-vmx", "vm-tcg", "vm-bochs")
    assert host_capabilities(host("AuthenticAMD", kvm=True, nested=True, bochs=False)) == (
        "build", "vm-kvm-svm", "vm-tcg")
    assert host_capabilities(host(kvm=True, nested=False, qemu=False, bochs=False)) == (
        "build",)


def test_capabilities_named_by_the_operator() -> None:
    assert parse_capabilities("build") == ("build",)
    assert parse_capabilities(" vm-tcg, build,vm-tcg ") == ("vm-tcg", "build")
    with pytest.raises(UserError, match="vm-kvm"):
        parse_capabilities("build,vm-kvm")
    with pytest.raises(UserError):
        parse_capabilities(" , ")


def test_one_host_routes_each_set_to_its_backend() -> None:
    plan = load_plan("nested-state")
    routes = host_routes(plan, host(), None)
    assert [(r.queue, r.backend, r.sets) for r in routes] == [
        ("vm-bochs", Backend.BOCHS, ("vmx",)), ("vm-tcg", Backend.QEMU_TCG, ("svm",))]
    routes = host_routes(plan, host(kvm=True, nested=True), None)
    assert [(r.queue, r.sets) for r in routes] == [("vm-kvm-vmx", ("vmx",)),
                                                   ("vm-tcg", ("svm",))]
    forced = host_routes(plan, host(), Backend.QEMU_TCG)
    assert [(r.queue, r.sets, r.forced) for r in forced] == [("vm-tcg", ("vmx", "svm"), True)]


def test_executor_config_is_checked(tmp_path: Path) -> None:
    src = tmp_path / "kbot.toml"

    def load(section: str) -> object:
        return parse_config(f"schema = 1\n[executor]\n{section}\n", src).executor

    assert load('kind = "celery"\nmax_boots = 0\nbuild_slots = 2') is not None
    for bad, key in (('kind = "k8s"', "executor.kind"),
                     ('broker_url = "http://127.0.0.1:6379"', "executor.broker_url"),
                     ("visibility_timeout_s = 0", "executor.visibility_timeout_s"),
                     ("max_boots = -1", "executor.max_boots")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load(bad)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield Registry(server.url, 5.0)
    finally:
        server.stop()


def register(registry: Registry, name: str, caps: tuple[str, ...]) -> None:
    now = time.time()
    registry.beat(WorkerRecord(name, "lab", 1, caps, caps, 1, 2, "test", now, now))


@pytest.mark.integration
def test_a_vmx_set_reaches_an_intel_kvm_worker_when_one_is_registered_and_bochs_otherwise(
    registry: Registry, tmp_path: Path
) -> None:
    from bot.executor.distributed import CeleryExecutor

    config = parse_config(f'schema = 1\n[bot]\ncache_dir = "{tmp_path / "cache"}"\n'
                          f'[executor]\nkind = "celery"\nbroker_url = "{registry.url}"\n',
                          tmp_path / "kbot.toml")
    plan = load_plan("nested-state")
    ex = CeleryExecutor(config)
    try:
        register(registry, "emulators", ("vm-tcg", "vm-bochs"))
        assert [(r.queue, r.sets) for r in ex.routes(plan, None)] == [
            ("vm-bochs", ("vmx",)), ("vm-tcg", ("svm",))]
        register(registry, "intel", ("vm-kvm-vmx",))
        routes = ex.routes(plan, None)
        assert [(r.queue, r.backend, r.sets) for r in routes] == [
            ("vm-kvm-vmx", Backend.QEMU_KVM, ("vmx",)), ("vm-tcg", Backend.QEMU_TCG, ("svm",))]
        register(registry, "amd", ("vm-kvm-svm",))
        assert [r.queue for r in ex.routes(plan, None)] == ["vm-kvm-vmx", "vm-kvm-svm"]
        registry.remove("intel")  # gone (or its entry expired): back to emulation
        assert [r.queue for r in ex.routes(plan, None)] == ["vm-bochs", "vm-kvm-svm"]
        # A backend the job names wins over what is registered.
        assert [r.queue for r in ex.routes(plan, Backend.BOCHS)] == ["vm-bochs"]
    finally:
        ex.close()
