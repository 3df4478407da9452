"""Test plans as data (configs/testplans/<name>.toml) and the choice of backend per set.

A plan has sets; a set needs a CPU feature in the guest (vmx, svm or none) and lists its tests
with per-test timeouts and repetitions. `limits` name known emulator limits: `exclude` keeps a
test off a backend (it hangs the emulator), `expect-fail` runs it but marks a failure as the
emulator's, so it never counts as a regression.
"""

from __future__ import annotations

import enum
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.config import CONFIG_DIR
from bot.errors import ConfigError, UserError
from bot.vm.model import Backend, HostCaps

PLAN_DIR = CONFIG_DIR / "testplans"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")
MAX_TESTS = 256
MAX_TIMEOUT_S = 3600.0
MAX_REPETITIONS = 100


class Requires(enum.Enum):
    VMX = "vmx"
    SVM = "svm"
    NONE = "none"


class LimitAction(enum.Enum):
    EXCLUDE = "exclude"
    EXPECT_FAIL = "expect-fail"


@dataclass(frozen=True)
class TestSpec:
    __test__ = False  # not a pytest test class
    name: str  # the selftest binary's name, e.g. "state_test"
    timeout_s: float
    repetitions: int


@dataclass(frozen=True)
class KnownLimit:
    backend: Backend
    test: str
    action: LimitAction
    reason: str


@dataclass(frozen=True)
class TestSet:
    __test__ = False  # not a pytest test class
    name: str
    requires: Requires
    tests: tuple[TestSpec, ...]
    limits: tuple[KnownLimit, ...] = ()

    def limit_for(self, backend: Backend, test: str) -> KnownLimit | None:
        for lim in self.limits:
            if lim.backend is backend and lim.test == test:
                return lim
        return None

    def tests_for(self, backend: Backend) -> tuple[TestSpec, ...]:
        return tuple(
            t for t in self.tests
            if (lim := self.limit_for(backend, t.name)) is None
            or lim.action is not LimitAction.EXCLUDE
        )


@dataclass(frozen=True)
class TestPlan:
    __test__ = False  # not a pytest test class
    name: str
    description: str
    sets: tuple[TestSet, ...]
    source: Path

    def set_named(self, name: str) -> TestSet:
        for s in self.sets:
            if s.name == name:
                return s
        raise UserError(f"plan {self.name}: no set named {name!r}")


def _get(table: dict[str, Any], key: str, tp: type, path: str, dotted: str, default: Any) -> Any:
    if key not in table:
        if default is _REQUIRED:
            raise ConfigError(path, dotted, "required key missing")
        return default
    value = table[key]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(path, dotted, f"expected {tp.__name__}, got {value!r}")
    return value


_REQUIRED = object()


def _check_keys(table: dict[str, Any], known: set[str], path: str, prefix: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(
                path, f"{prefix}.{key}" if prefix else key,
                f"unknown key (known: {', '.join(sorted(known))})",
            )


def _name(value: str, path: str, dotted: str) -> str:
    if not _NAME_RE.match(value):
        raise ConfigError(path, dotted, f"{value!r} is not a valid test or set name")
    return value


def _enum(cls: type[enum.Enum], value: str, path: str, dotted: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in cls)
        raise ConfigError(path, dotted, f"{value!r} is not one of {choices}") from None


def parse_plan(text: str, source: Path) -> TestPlan:
    path = str(source)
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "(syntax)", str(exc)) from exc
    _check_keys(table, {"name", "description", "defaults", "sets"}, path, "")
    name = _name(_get(table, "name", str, path, "name", _REQUIRED), path, "name")
    description = _get(table, "description", str, path, "description", "")
    defaults = _get(table, "defaults", dict, path, "defaults", {})
    _check_keys(defaults, {"timeout_s", "repetitions"}, path, "defaults")
    d_timeout = _get(defaults, "timeout_s", float, path, "defaults.timeout_s", 120.0)
    d_reps = _get(defaults, "repetitions", int, path, "defaults.repetitions", 1)
    raw_sets = _get(table, "sets", list, path, "sets", _REQUIRED)
    sets: list[TestSet] = []
    total = 0
    for i, raw in enumerate(raw_sets):
        p = f"sets[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(path, p, "expected a table")
        _check_keys(raw, {"name", "requires", "tests", "limits"}, path, p)
        sname = _name(_get(raw, "name", str, path, f"{p}.name", _REQUIRED), path, f"{p}.name")
        requires = _enum(Requires, _get(raw, "requires", str, path, f"{p}.requires", "none"),
                         path, f"{p}.requires")
        tests: list[TestSpec] = []
        for j, t in enumerate(_get(raw, "tests", list, path, f"{p}.tests", _REQUIRED)):
            q = f"{p}.tests[{j}]"
            if isinstance(t, str):
                t = {"name": t}
            if not isinstance(t, dict):
                raise ConfigError(path, q, "expected a test name or a table")
            _check_keys(t, {"name", "timeout_s", "repetitions"}, path, q)
            spec = TestSpec(
                name=_name(_get(t, "name", str, path, f"{q}.name", _REQUIRED), path, f"{q}.name"),
                timeout_s=_get(t, "timeout_s", float, path, f"{q}.timeout_s", d_timeout),
                repetitions=_get(t, "repetitions", int, path, f"{q}.repetitions", d_reps),
            )
            if not 0 < spec.timeout_s <= MAX_TIMEOUT_S:
                raise ConfigError(path, f"{q}.timeout_s", f"must be in (0, {MAX_TIMEOUT_S:.0f}]")
            if not 1 <= spec.repetitions <= MAX_REPETITIONS:
                raise ConfigError(path, f"{q}.repetitions", f"must be in [1, {MAX_REPETITIONS}]")
            if any(x.name == spec.name for x in tests):
                raise ConfigError(path, f"{q}.name", f"duplicate test {spec.name!r}")
            tests.append(spec)
        limits: list[KnownLimit] = []
        for j, lim in enumerate(_get(raw, "limits", list, path, f"{p}.limits", [])):
            q = f"{p}.limits[{j}]"
            if not isinstance(lim, dict):
                raise ConfigError(path, q, "expected a table")
            _check_keys(lim, {"backend", "test", "action", "reason"}, path, q)
            test = _get(lim, "test", str, path, f"{q}.test", _REQUIRED)
            if test not in {t.name for t in tests}:
                raise ConfigError(path, f"{q}.test", f"{test!r} is not a test of set {sname}")
            limits.append(KnownLimit(
                backend=_enum(Backend, _get(lim, "backend", str, path, f"{q}.backend", _REQUIRED),
                              path, f"{q}.backend"),
                test=test,
                action=_enum(LimitAction, _get(lim, "action", str, path, f"{q}.action",
                                               _REQUIRED), path, f"{q}.action"),
                reason=_get(lim, "reason", str, path, f"{q}.reason", _REQUIRED),
            ))
        total += len(tests)
        if any(s.name == sname for s in sets):
            raise ConfigError(path, f"{p}.name", f"duplicate set {sname!r}")
        sets.append(TestSet(sname, requires, tuple(tests), tuple(limits)))
    if not sets:
        raise ConfigError(path, "sets", "a plan needs at least one set")
    if total > MAX_TESTS:
        raise ConfigError(path, "sets", f"{total} tests, at most {MAX_TESTS}")
    return TestPlan(name=name, description=description, sets=tuple(sets), source=source)


def load_plan(name_or_path: str | Path) -> TestPlan:
    """A plan by name (configs/testplans/<name>.toml) or by path to a .toml file."""
    p = Path(name_or_path)
    if p.suffix != ".toml":
        if not _NAME_RE.match(str(name_or_path)):
            raise UserError(f"{name_or_path!r} is not a plan name or a .toml path")
        p = PLAN_DIR / f"{name_or_path}.toml"
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        known = ", ".join(sorted(x.stem for x in PLAN_DIR.glob("*.toml")))
        raise UserError(
            f"cannot read test plan {p}: {exc.strerror} (known plans: {known})"
        ) from exc
    return parse_plan(text, p)


@dataclass(frozen=True)
class BackendChoice:
    backend: Backend
    reason: str


def choose_backend(test_set: TestSet, host: HostCaps, forced: Backend | None) -> BackendChoice:
    """The backend for one set on this host: forced, else KVM where the host can, else emulated."""
    if forced is not None:
        return BackendChoice(forced, f"--backend {forced.value} given")
    if test_set.requires is Requires.VMX:
        if host.kvm_usable and host.vmx and host.nested_vmx:
            return BackendChoice(Backend.QEMU_KVM, "host KVM on Intel with nested=Y")
        why = host.kvm_detail if not host.kvm_usable else "host has no nested VMX"
        return BackendChoice(Backend.BOCHS, f"set {test_set.name} needs VMX; {why}: Bochs "
                             "emulates VMX")
    if test_set.requires is Requires.SVM:
        if host.kvm_usable and host.svm and host.nested_svm:
            return BackendChoice(Backend.QEMU_KVM, "host KVM on AMD with nested=1")
        why = host.kvm_detail if not host.kvm_usable else "host has no nested SVM"
        return BackendChoice(Backend.QEMU_TCG, f"set {test_set.name} needs SVM; {why}: QEMU "
                             "TCG -cpu max emulates SVM")
    if host.kvm_usable:
        return BackendChoice(Backend.QEMU_KVM, "host KVM usable")
    return BackendChoice(Backend.QEMU_TCG, f"{host.kvm_detail}: QEMU TCG")
