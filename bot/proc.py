"""The one place a subprocess starts.

Every child gets an argv list (never a shell), an explicit cwd (kbot never changes its own
directory), a timeout, and its own process group, so that on timeout or interrupt the whole tree
(make's children, an emulator's helpers) is killed, not just the leader. Output is streamed line by
line to an optional log file and callback (progress); both the copy in memory and the log file
are bounded. `sandbox=` runs the child in a build sandbox (bot.build.sandbox) instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from bot.errors import InfraError, ProcTimeout

if TYPE_CHECKING:
    from bot.build.sandbox import Sandbox

DEFAULT_CAPTURE_LIMIT = 8 * 1024 * 1024
DEFAULT_LOG_LIMIT = 64 * 1024 * 1024
# Longest piece read as one line: a child writing gigabytes without a newline must not make
# us hold them in memory while we wait for one.
LINE_LIMIT = 64 * 1024
KILL_GRACE_S = 5.0

# Variables a build or emulator may see. Everything else (tokens, SMTP passwords, proxies) stays
# out: patches are untrusted code and their Makefiles run with this environment.
SAFE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "TMPDIR", "CCACHE_DIR", "TZ")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment with only harmless variables from ours, plus `extra`."""
    env = {k: os.environ[k] for k in SAFE_ENV_KEYS if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


class SandboxStartError(InfraError):
    """The sandbox itself did not start, so the command never ran: kbot's problem, never the
    command's failure (a build must not be recorded as FAIL for it)."""


@dataclass(frozen=True)
class ProcResult:
    argv: tuple[str, ...]
    returncode: int
    duration_s: float
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: bool = False
    log_path: Path | None = None
    log_truncated: bool = False  # the log file reached its bound; later output not written

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        """One line naming the command and how it ended, for error messages."""
        how = "timed out" if self.timed_out else f"exited {self.returncode}"
        tail = (self.stderr or self.stdout).strip().splitlines()[-3:]
        return f"{' '.join(self.argv)}: {how}" + (": " + " | ".join(tail) if tail else "")


@dataclass
class _Sink:
    limit: int
    chunks: list[str] = field(default_factory=list)
    size: int = 0
    truncated: bool = False

    def add(self, line: str) -> None:
        if self.size + len(line) > self.limit:
            self.truncated = True
            return
        self.chunks.append(line)
        self.size += len(line)

    def text(self) -> str:
        return "".join(self.chunks)


class _Log:
    """The log file, bounded as a whole (earlier steps appended to it count): past `limit`
    bytes output is dropped and one line says so. The command line and exit lines are
    always written (they are short, and a log must say what ran)."""

    def __init__(self, path: Path, limit: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = path.open("ab")
        self.size = self.fh.tell()
        self.limit = limit
        self.full = False
        self.lock = threading.Lock()

    def write(self, data: bytes, *, always: bool = False) -> None:
        with self.lock:
            if always or self.size + len(data) <= self.limit:
                self.fh.write(data)
                self.size += len(data)
            elif not self.full:
                self.full = True
                self.fh.write(f"# log limit of {self.limit} bytes reached: "
                              "later output is not logged\n".encode())
            self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _cr_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Pieces ended by a newline or a carriage return, each at most LINE_LIMIT bytes: git
    rewrites its progress line with CR, and readline would hold every update back until
    LINE_LIMIT bytes of them had piled up."""
    buf = b""
    while chunk := os.read(stream.fileno(), LINE_LIMIT):
        *done, buf = re.split(rb"(?<=[\r\n])", buf + chunk)
        yield from done
        while len(buf) >= LINE_LIMIT:
            yield buf[:LINE_LIMIT]
            buf = buf[LINE_LIMIT:]
    if buf:
        yield buf


def _pump(
    stream: IO[bytes],
    sink: _Sink,
    log: _Log | None,
    on_line: Callable[[str], None] | None,
    split_cr: bool = False,
) -> None:
    pieces = _cr_lines(stream) if split_cr else iter(lambda: stream.readline(LINE_LIMIT), b"")
    for raw in pieces:
        line = raw.decode("utf-8", errors="replace")
        sink.add(line)
        if log is not None:
            log.write(raw)
        if on_line is not None:
            on_line(line.rstrip("\n"))
    stream.close()


def _read_status(fd: int) -> bool:
    """True when bwrap's --json-status-fd says the command was started (it reports an
    "exit-code" only for a command it exec'd)."""
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "exit-code" in doc:
            return True
    return False


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        # The leader may be gone while children linger in its group: SIGKILL the group anyway.
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    log_path: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    capture_limit: int = DEFAULT_CAPTURE_LIMIT,
    log_limit: int = DEFAULT_LOG_LIMIT,
    check: bool = False,
    sandbox: Sandbox | None = None,
    split_cr: bool = False,
) -> ProcResult:
    """Run argv to completion or until `timeout` seconds, then kill its process group.

    `sandbox` runs the child in that build sandbox (no network, no secrets, a read-only host,
    limits: bot.build.sandbox), with `env` (default: clean_env()) made private to it; a
    sandbox that does not start raises SandboxStartError, whatever `check` says, because the
    command never ran. `check=True` raises InfraError on a non-zero exit and ProcTimeout on a
    timeout; otherwise the caller reads the ProcResult. The log file gets at most `log_limit`
    bytes of output. `split_cr=True` also ends a line at a carriage return (progress output).
    """
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("empty argv")
    first = sandbox.bwrap if sandbox is not None else args[0]
    if shutil.which(first) is None and not Path(first).is_file():
        raise InfraError(f"command not found: {first}")
    # [read end, write end] of bwrap's status pipe; whoever closes one sets it to -1, so that
    # no descriptor is closed twice (the number may belong to another thread's file by then).
    status = [-1, -1]
    popen_args = args
    try:
        if sandbox is not None:
            status[:] = os.pipe()
            popen_args = sandbox.wrap(args, cwd=cwd, status_fd=status[1])
            env = sandbox.env(env if env is not None else clean_env())
        return _run(args, popen_args, timeout=timeout, cwd=cwd, env=env, input=input,
                    log_path=log_path, on_line=on_line, capture_limit=capture_limit,
                    log_limit=log_limit, check=check, sandbox=sandbox, status=status,
                    split_cr=split_cr)
    finally:
        for i, fd in enumerate(status):
            if fd != -1:
                os.close(fd)
                status[i] = -1


def _run(
    args: list[str], popen_args: list[str], *, timeout: float, cwd: Path | None,
    env: Mapping[str, str] | None, input: bytes | None, log_path: Path | None,
    on_line: Callable[[str], None] | None, capture_limit: int, log_limit: int, check: bool,
    sandbox: Sandbox | None, status: list[int], split_cr: bool = False,
) -> ProcResult:
    log: _Log | None = None
    if log_path is not None:
        log = _Log(log_path, log_limit)
        where = [f"cwd {cwd}"] if cwd else []
        where += ["in the build sandbox"] if sandbox is not None else []
        log.write(f"$ {' '.join(args)}{'  (' + '; '.join(where) + ')' if where else ''}\n"
                  .encode(), always=True)
    out, err = _Sink(capture_limit), _Sink(capture_limit)
    start = time.monotonic()
    timed_out = False
    try:
        proc = subprocess.Popen(  # noqa: S603 - argv list, never a shell
            popen_args,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=(status[1],) if status[1] != -1 else (),
        )
    except OSError as exc:
        if log is not None:
            log.close()
        raise InfraError(f"cannot start {popen_args[0]}: {exc}") from exc
    if status[1] != -1:
        os.close(status[1])  # bwrap holds its own copy: ours would keep the pipe open
        status[1] = -1
    assert proc.stdout is not None and proc.stderr is not None
    threads = [
        threading.Thread(target=_pump, args=(proc.stdout, out, log, on_line, split_cr),
                         daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, err, log, on_line, split_cr),
                         daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        if input is not None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(input)
                proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
    except BaseException:
        # KeyboardInterrupt or any error here: never leave the child tree running.
        _kill_group(proc)
        raise
    finally:
        for t in threads:
            t.join(timeout=KILL_GRACE_S)
        duration = time.monotonic() - start
        started = sandbox is None or timed_out or _read_status(status[0])
        if log is not None:
            tail = " (timed out, process group killed)" if timed_out else ""
            tail += "" if started else " (the sandbox did not start: the command never ran)"
            log.write(f"# exit {proc.returncode} after {duration:.1f}s{tail}\n".encode(),
                      always=True)
            log.close()
    if not started:
        assert sandbox is not None
        raise SandboxStartError(sandbox.start_failure(err.text() + out.text()))
    result = ProcResult(
        argv=tuple(args),
        returncode=proc.returncode if proc.returncode is not None else -1,
        duration_s=duration,
        stdout=out.text(),
        stderr=err.text(),
        timed_out=timed_out,
        truncated=out.truncated or err.truncated,
        log_path=log_path,
        log_truncated=log is not None and log.full,
    )
    if check:
        if timed_out:
            raise ProcTimeout(f"{' '.join(args)}: timed out after {timeout:.0f}s")
        if result.returncode != 0:
            raise InfraError(result.describe())
    return result


class Background:
    """A long-running child (a local server) in its own process group, with a lifetime limit.

    Made by `start_background`. `stop()` kills the whole group (SIGTERM, then SIGKILL after a
    grace period) and is idempotent; a watchdog does the same when `max_lifetime_s` runs out,
    so a forgotten server never outlives its test run by more than that.
    """

    def __init__(
        self, popen: subprocess.Popen[bytes], argv: tuple[str, ...], log_path: Path | None,
        max_lifetime_s: float,
    ) -> None:
        self._popen = popen
        self.argv = argv
        self.log_path = log_path
        self.pid = popen.pid
        self._lock = threading.Lock()
        self._watchdog = threading.Timer(max_lifetime_s, self.stop)
        self._watchdog.daemon = True
        self._watchdog.start()

    def alive(self) -> bool:
        return self._popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the leader only (e.g. SIGHUP to make a server reload)."""
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self) -> int:
        """Kill the process group and reap the leader; returns its exit status."""
        with self._lock:
            self._watchdog.cancel()
            if self._popen.returncode is None:
                _kill_group(self._popen)
            else:
                try:  # the leader exited on its own: children may linger in its group
                    os.killpg(self.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            return self._popen.returncode if self._popen.returncode is not None else -1

    def describe(self) -> str:
        tail = ""
        if self.log_path is not None and self.log_path.is_file():
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            tail = " | ".join(lines[-3:])
        state = "running" if self.alive() else f"exited {self._popen.returncode}"
        return f"{' '.join(self.argv)}: {state}" + (f": {tail}" if tail else "")

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_background(
    argv: Sequence[str | os.PathLike[str]],
    *,
    ready: Callable[[], bool],
    ready_timeout: float,
    max_lifetime_s: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    poll_s: float = 0.05,
) -> Background:
    """Start argv in the background and wait until `ready()` is true (e.g. a port answers).

    Output goes to `log_path` (or nowhere). If the child exits early or is not ready within
    `ready_timeout` seconds, its group is killed and InfraError names the command and the log
    tail. The child is killed anyway after `max_lifetime_s`.
    """
    args = tuple(os.fspath(a) for a in argv)
    if not args:
        raise ValueError("empty argv")
    if shutil.which(args[0]) is None and not Path(args[0]).is_file():
        raise InfraError(f"command not found: {args[0]}")
    out: IO[bytes] | int = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = log_path.open("ab")
    try:
        popen = subprocess.Popen(  # noqa: S603 - argv list, never a shell
            args,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise InfraError(f"cannot start {args[0]}: {exc}") from exc
    finally:
        if not isinstance(out, int):
            out.close()  # the child holds its own descriptor
    bg = Background(popen, args, log_path, max_lifetime_s)
    deadline = time.monotonic() + ready_timeout
    try:
        while True:
            if not bg.alive():
                raise InfraError(f"{bg.describe()} (exited before it was ready)")
            if ready():
                return bg
            if time.monotonic() > deadline:
                raise InfraError(f"{bg.describe()} (not ready after {ready_timeout:.0f}s)")
            time.sleep(poll_s)
    except BaseException:
        bg.stop()
        raise
