"""The one subprocess runner: timeouts kill the whole group, output is bounded and logged."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from bot import proc
from bot.build.sandbox import Sandbox
from bot.errors import InfraError, ProcTimeout


def test_captures_stdout_stderr_and_exit_code(tmp_path: Path) -> None:
    res = proc.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10, cwd=tmp_path)
    assert res.returncode == 3
    assert res.stdout == "out\n"
    assert res.stderr == "err\n"
    assert not res.ok


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # The shell starts a grandchild that would outlive a kill of the leader alone.
    script = f"sleep 300 & echo $! > {pidfile}; wait"
    start = time.monotonic()
    res = proc.run(["sh", "-c", script], timeout=1, cwd=tmp_path)
    assert res.timed_out
    assert time.monotonic() - start < 15
    child = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(child, 0)
            time.sleep(0.1)


def test_check_raises_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(ProcTimeout):
        proc.run(["sleep", "5"], timeout=0.5, check=True)
    with pytest.raises(InfraError, match="exited 1"):
        proc.run(["false"], timeout=5, check=True)
    with pytest.raises(InfraError, match="command not found"):
        proc.run(["/nonexistent/kbot-tool"], timeout=5)


def test_log_file_and_line_callback(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "step.log"
    lines: list[str] = []
    proc.run(["printf", "a\\nb\\n"], timeout=5, log_path=log, on_line=lines.append)
    text = log.read_text()
    assert text.startswith("$ printf")
    assert "a\nb\n" in text and "# exit 0" in text
    assert lines == ["a", "b"]


def test_output_in_memory_is_bounded(tmp_path: Path) -> None:
    res = proc.run(["sh", "-c", "yes x | head -c 200000"], timeout=10, capture_limit=1000)
    assert res.truncated
    assert len(res.stdout) <= 1000


def test_log_file_is_bounded_and_says_so(tmp_path: Path) -> None:
    log = tmp_path / "step.log"
    log.write_text("x" * 500)  # an earlier step's output counts against the bound
    res = proc.run(["sh", "-c", "yes line | head -n 100000"], timeout=10, log_path=log,
                   log_limit=4000)
    assert res.ok and res.log_truncated and res.stdout.count("line\n") == 100000
    text = log.read_text()
    assert text.startswith("x" * 500 + "$ sh -c")
    assert "log limit of 4000 bytes reached" in text
    assert len(text) < 4000 + 200  # the bound, plus the note and the exit line
    assert text.splitlines()[-1].startswith("# exit 0")


def test_sandbox_runs_in_an_empty_network_namespace(tmp_path: Path) -> None:
    res = proc.run(["cat", "/proc/net/dev"], timeout=10, sandbox=Sandbox(writable=(tmp_path,)))
    assert res.ok, res.describe()
    ifaces = {line.split(":")[0].strip() for line in res.stdout.splitlines()[2:]}
    assert ifaces == {"lo"}


def test_sandbox_that_does_not_start_raises_and_a_failing_command_does_not(
    tmp_path: Path
) -> None:
    real = shutil.which("bwrap")
    assert real is not None
    broken = tmp_path / "bwrap"
    # The real bwrap, failing to set up (a bind source that does not exist): exit 1, as make
    # can exit, but it never started the command.
    broken.write_text(f"#!/bin/sh\nexec {real} --bind /nonexistent/kbot /x \"$@\"\n")
    broken.chmod(0o755)
    log = tmp_path / "step.log"
    with pytest.raises(proc.SandboxStartError, match="did not start.*Can't find source path"):
        proc.run(["true"], timeout=10, log_path=log,
                 sandbox=Sandbox(writable=(tmp_path,), bwrap=str(broken)))
    assert "the sandbox did not start" in log.read_text()
    # The command's own exit 1 (with bwrap-like words) is a result, not a start failure.
    res = proc.run(["sh", "-c", "echo 'bwrap: fake' >&2; exit 1"], timeout=10,
                   sandbox=Sandbox(writable=(tmp_path,)))
    assert res.returncode == 1 and not res.ok


def test_clean_env_drops_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBOT_SMTP_PASSWORD", "hunter2")
    env = proc.clean_env({"ARCH": "x86_64"})
    assert "KBOT_SMTP_PASSWORD" not in env
    assert env["ARCH"] == "x86_64"
    res = proc.run(["env"], timeout=5, env=env)
    assert "hunter2" not in res.stdout
