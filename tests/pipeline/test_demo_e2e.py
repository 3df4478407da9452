"""The whole chain on real parts: loopback public-inbox -> watcher -> apply on linux 6.1 ->
incremental builds -> QEMU TCG (nested SVM) and Bochs (nested VMX) -> verdict -> threaded
reports in the outbox; and a second run records and reports nothing twice."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from bot.build.kernel import BuildResult
from bot.pipeline.demo import run_demo
from bot.state import Store

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(2400)]


def test_demo_names_the_first_bad_patch_and_reports_once(
    base_build: BuildResult, seed_mbox: Path, tmp_path: Path
) -> None:
    assert base_build.ok  # the shared cold build: the demo's base is then an incremental one
    state = tmp_path / "state"
    lines: list[str] = []
    config, outcomes = run_demo(state, lines.append)
    by_title = {o.title.split(" ", 1)[1]: o for o in outcomes}
    assert set(by_title) == {
        "KVM: nSVM: nested state flags cleanups",
        "KVM: nVMX: Fix migration of nested guests when eVMCS is in use",
    }, lines

    demo = by_title["KVM: nSVM: nested state flags cleanups"]
    assert demo.status == "done", demo.error
    assert demo.result is not None and demo.result.apply.ok
    assert demo.result.apply.base.rule.value == "base-commit footer"
    verdict = demo.result.verdict
    assert verdict is not None
    assert verdict.first_bad_patch == 2, [(t.test, t.kind, t.note) for t in verdict.tests]
    new = {t.test for t in verdict.tests if t.kind.value == "new"}
    assert "state_test [qemu-tcg]" in new
    # Nested VMX ran for real under Bochs and is untouched by an SVM-only series.
    passing = {t.test for t in verdict.tests if t.kind.value == "pass"}
    assert {"evmcs_test [bochs]", "vmx_set_nested_state_test [bochs]",
            "state_test [bochs]"} <= passing

    seed = by_title["KVM: nVMX: Fix migration of nested guests when eVMCS is in use"]
    assert seed.result is not None and not seed.result.apply.ok
    assert seed.result.apply.failed_index == 1

    with Store.in_state_dir(state) as store:
        reports = {r.kind: r for r in store.reports()}
        assert set(reports) == {"regression", "series", "apply-failure"}
        assert all(r.status == "sent" for r in reports.values())  # delivered to the outbox
        patch2 = demo.result.series.patches[1].message_id
        mail = email.message_from_bytes(reports["regression"].raw, policy=email.policy.default)
        assert mail["In-Reply-To"] == f"<{patch2}>"
        assert mail["Subject"] == "Re: [PATCH 2/3] KVM: nSVM: Tighten the nested state flags check"
        body = mail.get_content()
        assert "state_test" in body and "Reported-by: kbot <kbot@localhost>" in body
        # The reproduce section names the exact command that reruns the failing step.
        root = demo.result.series.cover
        assert root is not None
        assert f"test-series {root.message_id} --tree linux-6.1 --list kvm" in body
        count = len(store.reports())

    # Restart: the same threads again are neither recorded nor reported twice.
    _, again = run_demo(state, lines.append)
    assert again == []
    with Store.in_state_dir(state) as store:
        assert len(store.reports()) == count
    outbox = list((state / "outbox").rglob("*"))
    assert len([p for p in outbox if p.is_file() and p.parent.name == "new"]) == count
