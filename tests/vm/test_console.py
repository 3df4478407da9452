"""Fast tier: kernel report titles for the kinds our recorded runs did not produce. The snippets
keep the exact line shapes 6.1 prints (lib/bug.c, arch/x86/mm/fault.c, traps.c, kasan, watchdog,
rcu, hung_task)."""

from __future__ import annotations

import pytest

from bot.vm.console import scan, source_path, strip_console
from bot.vm.model import SignatureKind

GPF = (
    "[   12.000001] general protection fault, probably for non-canonical address "
    "0xdffffc0000000001: 0000 [#1] PREEMPT SMP\n"
) + """\
[   12.000002] CPU: 0 PID: 140 Comm: state_test Not tainted 6.1.192+ #1
[   12.000003] RIP: 0010:nested_svm_vmexit+0x1a2/0x4c0
[   12.000004] Code: 48 8b 45 00
[   12.000005] Call Trace:
[   12.000006]  <TASK>
[   12.000007]  svm_leave_nested+0x40/0x60
[   12.000008]  </TASK>
[   12.000009] ---[ end trace 0000000000000000 ]---
"""

NULL = """\
[    5.1] BUG: kernel NULL pointer dereference, address: 0000000000000008
[    5.2] #PF: supervisor read access in kernel mode
[    5.3] Oops: 0000 [#1] SMP
[    5.4] RIP: 0010:vmx_get_nested_state.isra.0+0x51/0x2d0
[    5.5] ---[ end trace 0000000000000000 ]---
"""

KBUG = """\
[    7.1] ------------[ cut here ]------------
[    7.2] kernel BUG at arch/x86/kvm/svm/nested.c:1650!
[    7.3] invalid opcode: 0000 [#1] SMP
[    7.4] RIP: 0010:svm_set_nested_state+0x3f1/0x420
[    7.5] ---[ end trace 0000000000000000 ]---
[    7.6] Kernel panic - not syncing: Fatal exception
"""

KASAN = """\
[    9.1] ==================================================================
[    9.2] BUG: KASAN: use-after-free in nested_vmx_vmexit+0x2a/0x1e0
[    9.3] Read of size 8 at addr ffff888004a3c010 by task evmcs_test/151
"""

SOFT = """\
[   40.1] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [vmx_preemption_:170]
[   40.2] Modules linked in:
[   40.3] RIP: 0010:kvm_vcpu_block+0x80/0xa0
"""

RCU = """\
[   60.1] rcu: INFO: rcu_sched self-detected stall on CPU
[   60.2] rcu: 	0-....: (21000 ticks this GP) idle=7c4c/1/0x4000000000000000
[   60.3] RIP: 0010:vcpu_enter_guest+0x9a1/0x1200
"""

HUNG = """\
[  130.1] INFO: task state_test:133 blocked for more than 120 seconds.
[  130.2]       Not tainted 6.1.192+ #1
[  130.3] Call Trace:
[  130.4]  <TASK>
[  130.5]  __schedule+0x2e4/0x8e0
[  130.6]  schedule+0x5e/0xd0
[  130.7]  kvm_vcpu_ioctl+0x3c1/0x6c0
[  130.8]  </TASK>
"""


@pytest.mark.parametrize(("text", "kind", "title", "where"), [
    (GPF, SignatureKind.GPF, "general protection fault in nested_svm_vmexit", None),
    (NULL, SignatureKind.NULL_DEREF,
     "BUG: kernel NULL pointer dereference in vmx_get_nested_state", None),
    (KASAN, SignatureKind.KASAN, "KASAN: use-after-free Read in nested_vmx_vmexit", None),
    (SOFT, SignatureKind.SOFT_LOCKUP, "BUG: soft lockup in kvm_vcpu_block", None),
    (RCU, SignatureKind.RCU_STALL, "INFO: rcu detected stall in vcpu_enter_guest", None),
    (HUNG, SignatureKind.HUNG_TASK, "INFO: task hung in kvm_vcpu_ioctl", None),
])
def test_titles(text: str, kind: SignatureKind, title: str, where: str | None) -> None:
    lines = text.splitlines()
    sigs = scan(lines)
    assert [(s.kind, s.title, s.location) for s in sigs] == [(kind, title, where)]
    assert strip_console(lines[sigs[0].console_line - 1]) == sigs[0].report[0]


def test_kernel_bug_then_panic_are_two_signatures() -> None:
    sigs = scan(KBUG.splitlines())
    assert [(s.kind, s.title, s.location) for s in sigs] == [
        (SignatureKind.BUG, "kernel BUG in svm_set_nested_state",
         "arch/x86/kvm/svm/nested.c:1650"),
        (SignatureKind.PANIC, "kernel panic: Fatal exception", None),
    ]


def test_init_markers_and_test_output_are_not_reports() -> None:
    text = ("[ 1.0] kbot: OUT BUG: this is the test's own output\n"
            "[ 1.1] kbot: OUT WARNING: CPU: 0 PID: 1 at fake.c:1 fake+0x1/0x2\n")
    assert scan(text.splitlines()) == []


def test_strip_console() -> None:
    assert strip_console("[   12.345678] hello\r\n") == "hello"
    assert strip_console("[    1.000000] [    T1] x") == "x"
    assert strip_console("no stamp") == "no stamp"


@pytest.mark.parametrize(("raw", "want"), [
    ("../src/arch/x86/kvm/vmx/nested.c", "arch/x86/kvm/vmx/nested.c"),
    ("/home/me/linux/virt/kvm/kvm_main.c", "virt/kvm/kvm_main.c"),
    ("arch/x86/kvm/x86.c", "arch/x86/kvm/x86.c"),
    ("odd/place/file.c", "odd/place/file.c"),
])
def test_source_path(raw: str, want: str) -> None:
    assert source_path(raw) == want
