"""Fast tier: `kbot vmtest` argument handling and the table / JSON renderings of a TestRun made
from a recorded console log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.cli import main
from bot.vm import parse
from bot.vm.image import GuestTest
from bot.vm.model import Backend, GuestInfo, TestRun
from bot.vm.render import runs_to_json, table

LOGS = Path(__file__).parent / "logs"


def _run_from_log(name: str) -> TestRun:
    log = LOGS / name
    p = parse.parse_console(log.read_text())
    expected = [GuestTest(t.name, int(t.timeout_s or 60), 1) for t in p.tests]
    limits = {"svm_nested_soft_inject_test": "TCG lacks NRIP save"}
    status, detail = parse.classify(p, False, 0, lambda rc: rc == 0)
    return TestRun(
        backend=Backend.QEMU_TCG, backend_reason="recorded", plan="nested-state",
        sets=("svm",), kernel=Path("/k/bzImage"), status=status, status_detail=detail,
        results=parse.results(p, expected, False, limits.get), signatures=p.signatures,
        guest=p.guest or GuestInfo(), command=("qemu-system-x86_64", "-append", "a b"),
        console_log=log, emulator_exit=0, duration_s=4.0, boot_s=p.boot_s,
    )


def test_table_and_json() -> None:
    run = _run_from_log("qemu-tcg-svm.log")
    text = table([run])
    assert "== qemu-tcg (svm): completed" in text
    assert "skip: Requirement not met: kvm_cpu_has(X86_FEATURE_VMX)" in text
    assert "known limit: TCG lacks NRIP save" in text
    assert "reproduce: qemu-system-x86_64 -append 'a b'" in text
    data = json.loads(json.dumps(runs_to_json([run])))
    (r,) = data["runs"]
    assert r["backend"] == "qemu-tcg" and r["status"] == "completed"
    assert r["infrastructure_problem"] is False
    by_name = {x["name"]: x for x in r["results"]}
    assert by_name["state_test"]["outcome"] == "PASS"
    assert by_name["vmx_set_nested_state_test"]["outcome"] == "SKIP"
    assert by_name["vmx_set_nested_state_test"]["skip_reason"].startswith("Requirement not met")
    soft = by_name["svm_nested_soft_inject_test"]
    assert soft["counts_as_failure"] is False and soft["assertion"]["line"] == 202
    assert by_name["evmcs_test"]["outcome"] == "SKIP"


def test_vmtest_bad_input_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    code = main(["vmtest", "--kernel", str(tmp_path / "none"), "--selftests", str(tmp_path)])
    assert code == 2
    assert "kernel image" in capsys.readouterr().err
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"k")
    code = main(["vmtest", "--kernel", str(kernel), "--selftests", str(tmp_path),
                 "--plan", "no-such-plan"])
    assert code == 2
    assert "known plans: nested-state" in capsys.readouterr().err
