"""Compiler and linker messages out of a kbuild log, as typed values.

Builds run make with `-Otarget`, so each target's echo line (`  CC      arch/x86/kvm/x86.o`) and
the compiler's messages for it arrive together even under -j. That lets a log be split into
translation units: an incremental build recompiles only some of them, and the warnings of a tree
are the previous tree's warnings with the rebuilt units replaced (see `merge_units`).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class Severity(Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Diagnostic:
    file: str  # relative to the source tree when it lies inside it
    line: int
    column: int  # 0 when the tool gave none
    severity: Severity
    message: str
    flag: str = ""  # e.g. "-Wunused-variable"
    unit: str = ""  # the target being built when it was printed, e.g. "arch/x86/kvm/x86.o"

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Identity across commits: patches move lines, so the line number is not part of it."""
        return (self.file, self.severity.value, self.message, self.flag)

    def __str__(self) -> str:
        col = f"{self.column}:" if self.column else ""
        flag = f" [{self.flag}]" if self.flag else ""
        return f"{self.file}:{self.line}:{col} {self.severity.value}: {self.message}{flag}"

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file, "line": self.line, "column": self.column,
            "severity": self.severity.value, "message": self.message, "flag": self.flag,
            "unit": self.unit,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> Diagnostic:
        return cls(
            file=str(d["file"]), line=int(str(d["line"])), column=int(str(d["column"])),
            severity=Severity(str(d["severity"])), message=str(d["message"]),
            flag=str(d.get("flag", "")), unit=str(d.get("unit", "")),
        )


_GCC = re.compile(
    r"^(?P<file>[^\s:][^:\n]*):(?P<line>\d+):(?:(?P<col>\d+):)?\s+"
    r"(?P<sev>warning|error|fatal error):\s+(?P<msg>.*?)"
    r"(?:\s+\[(?P<flag>-W[^\]]+)\])?\s*$"
)
# `ld: arch/x86/kvm/x86.o: in function `foo': x86.c:(.text+0x1): undefined reference to `bar'`
_LD_UNDEF = re.compile(r"^(?:\S*ld(?:\.bfd)?): (?P<obj>[^:]+):.*?(?P<msg>undefined reference .*)$")
# kbuild's quiet echo: two spaces, a short verb, spaces, the target.
_ECHO = re.compile(r"^  (?P<verb>[A-Z][A-Z0-9_\-]{0,9})\s+(?:\[M\]\s+)?(?P<target>\S+)\s*$")
GLOBAL_UNIT = "<link>"


def relative_path(raw: str, *, srctree: Path, objtree: Path) -> str:
    """A compiler path (absolute, or relative to the objtree where kbuild runs gcc) made
    relative to the source tree; paths outside it are returned normalised but absolute."""
    p = Path(raw)
    absolute = p if p.is_absolute() else objtree / p
    norm = Path(os.path.normpath(absolute))
    for root in (srctree, objtree):
        try:
            return norm.relative_to(os.path.normpath(root)).as_posix()
        except ValueError:
            continue
    return norm.as_posix()


def parse_line(line: str, *, srctree: Path, objtree: Path, unit: str = "") -> Diagnostic | None:
    m = _GCC.match(line)
    if m:
        sev = Severity.WARNING if m["sev"] == "warning" else Severity.ERROR
        flag = m["flag"] or ""
        if flag.startswith("-Werror="):
            flag = "-W" + flag[len("-Werror="):]
        return Diagnostic(
            file=relative_path(m["file"], srctree=srctree, objtree=objtree),
            line=int(m["line"]), column=int(m["col"] or 0), severity=sev,
            message=m["msg"], flag=flag, unit=unit,
        )
    m = _LD_UNDEF.match(line)
    if m:
        return Diagnostic(
            file=relative_path(m["obj"], srctree=srctree, objtree=objtree), line=0, column=0,
            severity=Severity.ERROR, message=m["msg"], unit=unit or GLOBAL_UNIT,
        )
    return None


@dataclass(frozen=True)
class LogScan:
    """What one build log says: the units (re)built, and the diagnostics of each."""

    units: Mapping[str, tuple[Diagnostic, ...]]

    @property
    def diagnostics(self) -> tuple[Diagnostic, ...]:
        return tuple(d for ds in self.units.values() for d in ds)


class LogScanner:
    """Feed it lines as they come (progress callbacks); read `.result()` at the end."""

    def __init__(self, srctree: Path, objtree: Path) -> None:
        self.srctree = srctree
        self.objtree = objtree
        self._units: dict[str, list[Diagnostic]] = {}
        self._current = ""
        self._pending: list[Diagnostic] = []  # messages printed before any echo line
        self.lines = 0

    def feed(self, line: str) -> None:
        self.lines += 1
        echo = _ECHO.match(line)
        if echo:
            self._current = echo["target"]
            self._units.setdefault(self._current, [])
            return
        diag = parse_line(line, srctree=self.srctree, objtree=self.objtree, unit=self._current)
        if diag is None:
            return
        if self._current:
            self._units[self._current].append(diag)
        else:
            self._pending.append(diag)

    def result(self) -> LogScan:
        units = {k: tuple(dict.fromkeys(v)) for k, v in self._units.items()}
        if self._pending:
            units[GLOBAL_UNIT] = units.get(GLOBAL_UNIT, ()) + tuple(self._pending)
        return LogScan(units)


def scan_text(text: str, srctree: Path, objtree: Path) -> LogScan:
    scanner = LogScanner(srctree, objtree)
    for line in text.splitlines():
        scanner.feed(line)
    return scanner.result()


def merge_units(
    previous: Mapping[str, tuple[Diagnostic, ...]], rebuilt: Mapping[str, tuple[Diagnostic, ...]]
) -> dict[str, tuple[Diagnostic, ...]]:
    """The diagnostics of a tree after an incremental build: units it rebuilt replace theirs."""
    merged = dict(previous)
    merged.update(rebuilt)
    return {k: v for k, v in merged.items() if v}


def new_against(
    current: Iterable[Diagnostic], parent: Iterable[Diagnostic], severity: Severity
) -> tuple[Diagnostic, ...]:
    """Diagnostics of `severity` in current that the parent did not have (as a multiset: a
    second copy of an old warning is new). A header warning seen from several units counts once."""
    seen: Counter[tuple[str, str, str, str]] = Counter()
    for key, _line in dict.fromkeys((d.key, d.line) for d in parent if d.severity is severity):
        seen[key] += 1
    out: list[Diagnostic] = []
    done: set[tuple[tuple[str, str, str, str], int]] = set()
    for d in current:
        if d.severity is not severity or (d.key, d.line) in done:
            continue
        done.add((d.key, d.line))
        if seen[d.key] > 0:
            seen[d.key] -= 1
        else:
            out.append(d)
    return tuple(out)
