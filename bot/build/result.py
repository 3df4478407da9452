"""What a build is: its status (PASS, FAIL = the patch's fault, ERROR = kbot could not build),
its stored artifacts and its diagnostics. Values only; bot/build/kernel.py makes them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from bot.build.diagnostics import Diagnostic, Severity, new_against


class BuildStatus(Enum):
    PASS = "pass"
    FAIL = "fail"  # the tree does not build: the patch's fault
    ERROR = "error"  # kbot could not build it (timeout, tool missing, disk full): infra


@dataclass(frozen=True)
class BuildArtifacts:
    bzimage: Path | None
    selftests_dir: Path | None  # binaries at their Makefile paths: x86_64/state_test, ...
    config: Path | None  # the effective .config
    log: Path | None


@dataclass(frozen=True)
class BuildResult:
    status: BuildStatus
    rev: str  # the commit asked for (another commit with the same tree may have built it)
    tree_id: str
    config_fingerprint: str
    key: str  # the artifact store key
    duration_s: float  # of the build that made the entry (0.0 never: a cached entry keeps it)
    artifacts: BuildArtifacts
    diagnostics: tuple[Diagnostic, ...] = ()  # every kernel warning/error of this tree
    # The selftests' own (6.1.192's dirty_log_test and steal_time always fail to build: those
    # errors live here, next to missing_selftests, not in `errors`).
    selftest_diagnostics: tuple[Diagnostic, ...] = ()
    new_warnings: tuple[Diagnostic, ...] = ()  # against `parent_rev`'s result
    parent_rev: str | None = None
    selftests: tuple[str, ...] = ()
    missing_selftests: tuple[str, ...] = ()  # in the Makefile but not built (make -k)
    config_dropped: tuple[str, ...] = ()  # requested options that olddefconfig did not keep
    failed_step: str = ""  # config | bzImage | selftests | ""
    message: str = ""  # one line for a report when not PASS
    cached: bool = False  # served from the artifact store, nothing was built
    toolchain: str = ""
    build_seconds: float = 0.0  # what this call spent building (0 when cached)

    @property
    def ok(self) -> bool:
        return self.status is BuildStatus.PASS

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity is Severity.WARNING)

    def new_warnings_against(self, parent: BuildResult) -> tuple[Diagnostic, ...]:
        mine = self.diagnostics + self.selftest_diagnostics
        theirs = parent.diagnostics + parent.selftest_diagnostics
        return new_against(mine, theirs, Severity.WARNING)

    def summary(self) -> str:
        head = f"{self.rev[:12]} {self.status.value.upper()}"
        if self.cached:
            head += " (cached)"
        else:
            head += f" in {self.build_seconds:.1f}s"
        parts = [head]
        if self.status is not BuildStatus.PASS and self.message:
            parts.append(self.message)
        if self.new_warnings:
            parts.append(f"{len(self.new_warnings)} new warning(s)")
        if self.missing_selftests:
            parts.append(f"selftests missing: {', '.join(self.missing_selftests)}")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value, "rev": self.rev, "tree_id": self.tree_id,
            "config_fingerprint": self.config_fingerprint, "key": self.key,
            "duration_s": self.duration_s, "build_seconds": self.build_seconds,
            "cached": self.cached, "toolchain": self.toolchain,
            "artifacts": {
                k: (str(v) if v is not None else None)
                for k, v in vars(self.artifacts).items()
            },
            "diagnostics": [d.to_json() for d in self.diagnostics],
            "selftest_diagnostics": [d.to_json() for d in self.selftest_diagnostics],
            "new_warnings": [d.to_json() for d in self.new_warnings],
            "parent_rev": self.parent_rev,
            "selftests": list(self.selftests),
            "missing_selftests": list(self.missing_selftests),
            "config_dropped": list(self.config_dropped),
            "failed_step": self.failed_step, "message": self.message,
        }
