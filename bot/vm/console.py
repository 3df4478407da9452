"""Kernel console scanner: oopses, WARNINGs, panics, KASAN, lockups and stalls as short titles.

Titles follow syzbot's shapes ("WARNING in vmx_get_nested_state", "general protection fault in
foo", "BUG: kernel NULL pointer dereference in foo", "KASAN: use-after-free Read in foo",
"INFO: rcu detected stall in foo", "kernel panic: <message>") so that the same bug gets the same
title from run to run, and a report can say where it was (file:line when the kernel names it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bot.vm.model import ConsoleSignature, SignatureKind

MAX_REPORT_LINES = 80
_TS = re.compile(r"^\[\s*\d+\.\d+\]\s?(?:\[\s*[TC]\d+\]\s?)?")
_FUNC = r"([A-Za-z_][\w.]*?)(?:\.(?:isra|constprop|part|cold)\.\d+)*"

_WARN = re.compile(rf"^WARNING: (?:CPU: \d+ PID: \d+ )?at (\S+?):(\d+) {_FUNC}\+0x")
_WARN_BARE = re.compile(r"^WARNING: CPU: \d+ PID: \d+ at (\S+?):(\d+)")
_KBUG = re.compile(r"^kernel BUG at (\S+?):(\d+)!")
_NULL = re.compile(r"^BUG: kernel NULL pointer dereference")
_PF = re.compile(r"^BUG: unable to handle (?:page fault|kernel paging request)")
_GPF = re.compile(r"^general protection fault")
_KASAN = re.compile(r"^BUG: KASAN: ([\w-]+) in " + _FUNC + r"(?:\+0x|\s|$)")
_KASAN_ACCESS = re.compile(r"^(Read|Write) of size \d+")
_UBSAN = re.compile(r"^UBSAN: ([\w -]+?) in (\S+?):(\d+)")
_SOFT = re.compile(r"^(?:watchdog: )?BUG: soft lockup - CPU#\d+ stuck")
_HARD = re.compile(r"^(?:watchdog: )?Watchdog detected hard LOCKUP on cpu")
_RCU = re.compile(r"^(?:rcu: )?INFO: rcu_\w+ (?:self-)?detected stalls? on CPUs?")
_HUNG = re.compile(r"^INFO: task \S+:\d+ blocked for more than \d+ seconds")
_BUG_OTHER = re.compile(r"^BUG: ([^:]+?)(?: at (\S+?):(\d+))?(?:[:,]|$)")
_PANIC = re.compile(r"^Kernel panic - not syncing: (.*?)\s*\]?$")
_RIP = re.compile(rf"^RIP: [0-9a-f]{{4}}:{_FUNC}\+0x")
_FRAME = re.compile(rf"^\s*(?:\? )?{_FUNC}\+0x[0-9a-f]+/0x[0-9a-f]+")
_END = re.compile(r"^---\[ end (?:trace|Kernel panic)")
_SCHED_FRAMES = {"__schedule", "schedule", "schedule_timeout", "schedule_preempt_disabled",
                 "io_schedule", "__mutex_lock", "mutex_lock", "wait_for_completion",
                 "__wait_for_common", "rwsem_down_read_slowpath", "rwsem_down_write_slowpath",
                 "dump_stack_lvl", "dump_stack", "panic", "__warn", "report_bug"}


# Top-level folders of a kernel tree: a report's path is cut back to start at one of them, so an
# O= build (`../src/arch/...`) or an absolute source path gives the same file as the tree.
_TOP_DIRS = {"arch", "block", "certs", "crypto", "drivers", "fs", "include", "init", "io_uring",
             "ipc", "kernel", "lib", "mm", "net", "rust", "samples", "scripts", "security",
             "sound", "tools", "usr", "virt"}


def source_path(path: str) -> str:
    """A source path from a kernel report, relative to the top of the kernel tree."""
    parts = path.split("/")
    if parts[0] in _TOP_DIRS:
        return path
    for i, part in enumerate(parts[:-1]):
        if part in _TOP_DIRS:
            return "/".join(parts[i:])
    return path


def strip_console(line: str) -> str:
    """One console line without the CR, printk timestamp and caller id."""
    return _TS.sub("", line.rstrip("\r\n").replace("\r", ""), count=1)


@dataclass
class _Open:
    kind: SignatureKind
    title_fmt: str  # "{func}" is filled in from RIP or the first useful frame
    function: str | None
    file: str | None
    line: int | None
    during_test: str | None
    console_line: int
    lines: list[str] = field(default_factory=list)
    access: str = ""  # KASAN Read/Write


def _literal(text: str) -> str:
    """Console text put into a title format: its braces are not format fields (a panic
    message with a `{` made str.format() raise)."""
    return text.replace("{", "{{").replace("}", "}}")


def _line_no(digits: str | None) -> int | None:
    """A report's source line number; None when there is no plausible one (a console may show
    any digits, and int() raises ValueError on a number of over 4300 of them)."""
    if digits is None or not digits.isascii() or len(digits) > 9:
        return None
    return int(digits)


def _start(text: str) -> tuple[SignatureKind, str, str | None, str | None, int | None] | None:
    """(kind, title format, function, file, line) when `text` opens a kernel report."""
    if m := _WARN.match(text):
        return (SignatureKind.WARNING, "WARNING in {func}", m.group(3), m.group(1),
                _line_no(m.group(2)))
    if m := _WARN_BARE.match(text):
        return SignatureKind.WARNING, "WARNING in {func}", None, m.group(1), _line_no(m.group(2))
    if m := _KBUG.match(text):
        return SignatureKind.BUG, "kernel BUG in {func}", None, m.group(1), _line_no(m.group(2))
    if _NULL.match(text):
        return (SignatureKind.NULL_DEREF, "BUG: kernel NULL pointer dereference in {func}",
                None, None, None)
    if _PF.match(text):
        return (SignatureKind.PAGE_FAULT, "BUG: unable to handle kernel paging request in {func}",
                None, None, None)
    if _GPF.match(text):
        return SignatureKind.GPF, "general protection fault in {func}", None, None, None
    if m := _KASAN.match(text):
        return (SignatureKind.KASAN, f"KASAN: {m.group(1)} {{access}}in {{func}}", m.group(2),
                None, None)
    if m := _UBSAN.match(text):
        return (SignatureKind.UBSAN, f"UBSAN: {_literal(m.group(1))} in {{func}}", None, m.group(2),
                _line_no(m.group(3)))
    if _SOFT.match(text):
        return SignatureKind.SOFT_LOCKUP, "BUG: soft lockup in {func}", None, None, None
    if _HARD.match(text):
        return SignatureKind.HARD_LOCKUP, "BUG: hard lockup in {func}", None, None, None
    if _RCU.match(text):
        return SignatureKind.RCU_STALL, "INFO: rcu detected stall in {func}", None, None, None
    if _HUNG.match(text):
        return SignatureKind.HUNG_TASK, "INFO: task hung in {func}", None, None, None
    if m := _PANIC.match(text):
        # The first sentence: "No working init found.  Try passing init= ..." -> its cause.
        msg = re.split(r"\.\s", m.group(1), maxsplit=1)[0].rstrip(".")
        return SignatureKind.PANIC, f"kernel panic: {_literal(msg[:100])}", None, None, None
    if m := _BUG_OTHER.match(text):
        file, line = m.group(2), _line_no(m.group(3))
        title = f"BUG: {_literal(m.group(1).strip())} in {{func}}"
        return SignatureKind.BUG, title, None, file, line
    return None


class ConsoleScanner:
    """Feed console lines in order; `signatures` holds every finished report."""

    def __init__(self) -> None:
        self.signatures: list[ConsoleSignature] = []
        self._open: _Open | None = None

    def feed(self, lineno: int, raw: str, during_test: str | None) -> None:
        text = strip_console(raw)
        started = _start(text)
        if started is not None and self._open is not None:
            # A panic right after an oops ("Fatal exception") is its own signature.
            self._close()
        if started is not None:
            kind, fmt, func, file, line = started
            self._open = _Open(kind, fmt, func, file, line, during_test, lineno, [text])
            if kind is SignatureKind.PANIC:
                self._close()
            return
        cur = self._open
        if cur is None:
            return
        if text.startswith("kbot: ") or len(cur.lines) >= MAX_REPORT_LINES:
            self._close()
            return
        cur.lines.append(text)
        if cur.kind is SignatureKind.KASAN and not cur.access and (m := _KASAN_ACCESS.match(text)):
            cur.access = m.group(1)
        if cur.function is None and (m := _RIP.match(text)):
            cur.function = m.group(1)
        if _END.match(text):
            self._close()

    def _close(self) -> None:
        cur, self._open = self._open, None
        if cur is None:
            return
        func = cur.function
        if func is None:
            # No RIP line (hung task, some stalls): the first frame outside the scheduler.
            for text in cur.lines[1:]:
                m = _FRAME.match(text)
                if m and m.group(1) not in _SCHED_FRAMES:
                    func = m.group(1)
                    break
        title = cur.title_fmt.format(func=func or "?", access=f"{cur.access} " if cur.access
                                     else "")
        if func is None and title.endswith(" in ?"):
            title = title[: -len(" in ?")]
        self.signatures.append(ConsoleSignature(
            kind=cur.kind, title=title, function=func,
            file=source_path(cur.file) if cur.file else None, line=cur.line,
            during_test=cur.during_test, console_line=cur.console_line,
            report=tuple(cur.lines),
        ))

    def finish(self) -> list[ConsoleSignature]:
        self._close()
        return self.signatures


def scan(lines: list[str]) -> list[ConsoleSignature]:
    """Every kernel report in a console log (without test attribution)."""
    scanner = ConsoleScanner()
    for i, line in enumerate(lines, 1):
        scanner.feed(i, line, None)
    return scanner.finish()
