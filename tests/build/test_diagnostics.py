"""Parsing compiler/linker output and telling new warnings from old ones."""

from __future__ import annotations

from pathlib import Path

from bot.build.diagnostics import (
    Diagnostic,
    Severity,
    merge_units,
    new_against,
    parse_line,
    scan_text,
)

SRC = Path("/cache/build/slots/x/src")
OUT = Path("/cache/build/slots/x/out")


def d(file: str, line: int, msg: str = "unused variable 'x'", sev: Severity = Severity.WARNING,
      flag: str = "-Wunused-variable") -> Diagnostic:
    return Diagnostic(file, line, 5, sev, msg, flag)


def test_gcc_lines_with_absolute_and_relative_paths() -> None:
    w = parse_line(
        f"{SRC}/arch/x86/kvm/vmx/nested.c:6512:13: warning: unused variable 'x' "
        "[-Wunused-variable]", srctree=SRC, objtree=OUT)
    assert w == Diagnostic("arch/x86/kvm/vmx/nested.c", 6512, 13, Severity.WARNING,
                           "unused variable 'x'", "-Wunused-variable")
    e = parse_line("../src/arch/x86/kvm/x86.c:10:2: error: expected ';' before '}' token",
                   srctree=SRC, objtree=OUT)
    assert e is not None and (e.file, e.line, e.column, e.severity) == (
        "arch/x86/kvm/x86.c", 10, 2, Severity.ERROR)
    werror = parse_line(f"{SRC}/a.c:1:1: error: unused variable 'y' [-Werror=unused-variable]",
                        srctree=SRC, objtree=OUT)
    assert werror is not None and werror.flag == "-Wunused-variable"
    fatal = parse_line(f"{SRC}/a.c:3: fatal error: foo.h: No such file or directory",
                       srctree=SRC, objtree=OUT)
    assert fatal is not None and (fatal.column, fatal.severity) == (0, Severity.ERROR)
    ld = parse_line("ld: vmlinux.o: in function `foo': undefined reference to `bar'",
                    srctree=SRC, objtree=OUT)
    assert ld is not None and ld.severity is Severity.ERROR and ld.file == "vmlinux.o"
    assert parse_line("  CC      arch/x86/kvm/x86.o", srctree=SRC, objtree=OUT) is None
    assert parse_line("make[2]: *** [scripts/Makefile.build:250: x.o] Error 1",
                      srctree=SRC, objtree=OUT) is None


def test_log_is_split_into_units() -> None:
    log = (
        "  CC      arch/x86/kvm/x86.o\n"
        f"{SRC}/arch/x86/kvm/x86.c:5:9: warning: unused variable 'a' [-Wunused-variable]\n"
        "  CC      kernel/fork.o\n"
        "  AR      kernel/built-in.a\n"
    )
    scan = scan_text(log, SRC, OUT)
    assert set(scan.units) == {"arch/x86/kvm/x86.o", "kernel/fork.o", "kernel/built-in.a"}
    assert [x.unit for x in scan.diagnostics] == ["arch/x86/kvm/x86.o"]
    # A rebuild of x86.o without the warning drops it; other units keep theirs.
    merged = merge_units({"arch/x86/kvm/x86.o": scan.units["arch/x86/kvm/x86.o"],
                          "kernel/fork.o": (d("kernel/fork.c", 1),)},
                         {"arch/x86/kvm/x86.o": ()})
    assert list(merged) == ["kernel/fork.o"]


def test_new_warnings_ignore_line_moves_and_header_repeats() -> None:
    parent = (d("a.c", 10), d("h.h", 3), d("h.h", 3))
    moved = (d("a.c", 14), d("h.h", 3), d("h.h", 3), d("h.h", 3))
    assert new_against(moved, parent, Severity.WARNING) == ()
    extra = (*moved, d("a.c", 20))
    assert new_against(extra, parent, Severity.WARNING) == (d("a.c", 20),)
    other = (d("a.c", 10, "unused variable 'z'"),)
    assert new_against(other, parent, Severity.WARNING) == other
