"""The whole chain on real parts: loopback public-inbox -> watcher -> apply on linux 6.1 ->
incremental builds -> QEMU TCG (nested SVM) and Bochs (nested VMX) -> verdict -> threaded
reports in the outbox; and a second run records and reports nothing twice."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from bot.build.kernel import BuildResult
from bot.pipeline.demo import BAD_PATCH, BAD_TEST, run_demo
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
        "KVM: nVMX: nested state cleanups",
        "KVM: nVMX: Fix migration of nested guests when eVMCS is in use",
    }, lines

    demo = by_title["KVM: nVMX: nested state cleanups"]
    assert demo.status == "done", demo.error
    assert demo.result is not None and demo.result.apply.ok
    assert demo.result.apply.base.rule.value == "base-commit footer"
    verdict = demo.result.verdict
    assert verdict is not None
    tests = [(t.test, t.kind.value, t.first_bad_patch, t.note) for t in verdict.tests]
    # The seed's bug class, found where it is: nested VMX under Bochs, at patch 3, and only
    # after the culprit and its parent were run again (never from a single run).
    assert verdict.first_bad_patch == BAD_PATCH, tests
    evmcs = next(t for t in verdict.tests if t.test == BAD_TEST)
    assert evmcs.kind.value == "new" and evmcs.first_bad_patch == BAD_PATCH, tests
    assert evmcs.confidence >= config.bisect.confidence
    assert evmcs.patches[BAD_PATCH - 1].runs >= 2 and evmcs.patches[BAD_PATCH - 2].runs >= 2
    # Nothing else broke: nested SVM under TCG and the other VMX tests pass on every patch.
    passing = {t.test for t in verdict.tests if t.kind.value == "pass"}
    assert {"state_test [qemu-tcg]", "vmx_set_nested_state_test [bochs]",
            "state_test [bochs]"} <= passing, tests

    seed = by_title["KVM: nVMX: Fix migration of nested guests when eVMCS is in use"]
    assert seed.result is not None and not seed.result.apply.ok
    assert seed.result.apply.failed_index == 1

    with Store.in_state_dir(state) as store:
        rows = store.reports()
        assert all(r.status == "sent" for r in rows)  # delivered to the outbox
        regressions = [r for r in rows if r.kind == "regression"]
        assert len(regressions) == 1, [(r.kind, r.subject) for r in rows]
        patch3 = demo.result.series.patches[BAD_PATCH - 1]
        mail = email.message_from_bytes(regressions[0].raw, policy=email.policy.default)
        assert mail["In-Reply-To"] == f"<{patch3.message_id}>"
        assert mail["Subject"] == (
            "Re: [PATCH 3/4] KVM: nVMX: Don't report eVMCS in KVM_GET_NESTED_STATE")
        body = mail.get_content()
        assert "evmcs_test" in body and "Reported-by: kbot <kbot@localhost>" in body
        assert "KVM_SET_NESTED_STATE" in body  # the test's own assertion, quoted
        # The real seed thread gets its answer too: threaded under its patch 1/4.
        seed_root = seed.result.series.patches[0].message_id
        answers = [r for r in rows if r.kind == "apply-failure"]
        assert len(answers) == 1
        seed_mail = email.message_from_bytes(answers[0].raw, policy=email.policy.default)
        assert seed_mail["In-Reply-To"] == f"<{seed_root}>"
        count = len(rows)

    # Restart: the same threads again are neither recorded nor reported twice.
    _, again = run_demo(state, lines.append)
    assert again == []
    with Store.in_state_dir(state) as store:
        assert len(store.reports()) == count
    outbox = list((state / "outbox").rglob("*"))
    assert len([p for p in outbox if p.is_file() and p.parent.name == "new"]) == count
