"""The build sandbox: what a build step of an untrusted patch may see and do.

A build step (make and everything it starts) runs a patch's code, so it runs under bubblewrap
(`bwrap`, Debian's `bubblewrap`) in new user, mount, pid, network, ipc and uts namespaces, with
no capabilities and no way to make further user namespaces:

- no network: a fresh network namespace holding only a down loopback;
- no secrets: the caller's clean environment (bot.proc.clean_env) with HOME and TMPDIR in a
  private /tmp; of the host file system only the system directories (/usr, /etc, /opt and the
  merged-usr links) are mounted, read-only, so /home, /root, /run (daemon sockets), /var, the
  kbot state dir and the rest of the cache do not exist inside; /etc entries that "others" may
  not read (shadow, private keys) are masked, which matters when kbot runs as root;
- writes only where the build writes: the slot's worktree, its O= directories and ccache's
  directory, each bound at its own absolute path (kbuild records absolute paths, so they must
  be the same inside and outside); the repository and the object directories it borrows
  through alternates are read-only; /tmp and /dev/shm are small private tmpfs; the rest of the
  root is read-only;
- limits per step, set with prlimit(1) inside the sandbox: address space per process
  (RLIMIT_AS), the largest file (RLIMIT_FSIZE), processes (RLIMIT_NPROC: counted per user in
  the sandbox's own user namespace, so the operator's other processes do not count); the time
  limit and the kill of the whole process group are bot.proc's, the log size bound too.

Root: the kernel does not enforce RLIMIT_NPROC for uid 0, not even inside a user namespace
(measured here on 6.18), so a build run by root has no process limit: only the time limit ends
a fork bomb. Memory, file size and /tmp limits hold for root as well. Root also reads every
root-owned file in the mounted system directories that is readable by its owner and not
masked; run kbot as an ordinary user where that matters.

bwrap starts for root, and for any user where unprivileged user namespaces are allowed. When it
cannot start, that is kbot's problem, not the patch's: `probe()` raises InfraError with bwrap's
reason, and bot.proc.run raises SandboxStartError for a step whose sandbox did not start — told
apart from the command's own failure by bwrap's --json-status-fd, which reports an exit code
only for a command it did start.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot import proc
from bot.config import BuildSection
from bot.errors import InfraError

MIB = 1024 * 1024
SANDBOX_HOME = "/tmp/home"
# Top-level host directories a toolchain lives in. Merged-usr links (/bin -> usr/bin) are
# recreated as links, real directories are bound read-only.
SYSTEM_DIRS = ("usr", "etc", "opt", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
_USERNS_HINT = (
    " (unprivileged user namespaces disabled? see sysctl user.max_user_namespaces, "
    "kernel.unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_userns)"
)
_HINTS = (
    ("uid map", _USERNS_HINT),
    ("new namespace", _USERNS_HINT),
    ("Operation not permitted", _USERNS_HINT),
    ("Permission denied", _USERNS_HINT),
    ("execvp prlimit", " (prlimit from util-linux is missing)"),
)


@dataclass(frozen=True)
class Limits:
    """Per-step limits; see the module docstring for what each one bounds."""

    memory_mb: int = 4096
    procs: int = 4096
    file_mb: int = 4096
    tmp_mb: int = 1024

    @classmethod
    def from_section(cls, section: BuildSection) -> Limits:
        return cls(section.max_memory_mb, section.max_procs, section.max_file_mb,
                   section.max_tmp_mb)


def _clamped(kind: int, want: int) -> int:
    """`want`, or the hard limit we already run under if that is lower (an ordinary user
    cannot raise it, and prlimit would fail instead of starting the step)."""
    hard = resource.getrlimit(kind)[1]
    return want if hard == resource.RLIM_INFINITY else min(want, hard)


@functools.cache
def _masked_etc(etc: str = "/etc") -> tuple[tuple[str, bool], ...]:
    """(path, is_dir) of every entry under /etc that "others" may not read, topmost only."""
    out: list[tuple[str, bool]] = []

    def walk(d: str) -> None:
        try:
            entries = list(os.scandir(d))
        except OSError:
            return
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue  # the target is masked (or public) where it lives
            is_dir = stat.S_ISDIR(st.st_mode)
            if not st.st_mode & stat.S_IROTH or (is_dir and not st.st_mode & stat.S_IXOTH):
                out.append((e.path, is_dir))
            elif is_dir:
                walk(e.path)

    walk(etc)
    return tuple(out)


def git_read_paths(repo: Path) -> tuple[Path, ...]:
    """The repository and the object directories it borrows (alternates): what git inside
    the sandbox needs to read (kbuild's setlocalversion asks git about the worktree)."""
    repo = repo.resolve()
    paths = [repo]
    gitdir = repo if (repo / "HEAD").is_file() and (repo / "objects").is_dir() else repo / ".git"
    todo = [gitdir / "objects"]
    seen: set[Path] = set()
    while todo:
        objects = todo.pop()
        if objects in seen:
            continue
        seen.add(objects)
        try:
            lines = (objects / "info" / "alternates").read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            alt = (objects / line).resolve() if not os.path.isabs(line) else Path(line).resolve()
            if alt.is_dir():
                paths.append(alt)
                todo.append(alt)
    return tuple(dict.fromkeys(paths))


def _spellings(paths: Sequence[Path]) -> tuple[Path, ...]:
    """Each path as given (made absolute) and, when a symlink is on the way, resolved too:
    make is given the one, git and kbuild may record the other, and both must exist inside."""
    out: list[Path] = []
    for p in paths:
        out += [p.absolute(), p.resolve()]
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class Sandbox:
    """One build's sandbox: which host paths it may write and read, and its limits.

    `wrap` gives the argv that runs a command inside it, `env` the environment; bot.proc.run
    uses both when given `sandbox=`.
    """

    writable: tuple[Path, ...]
    readable: tuple[Path, ...] = ()
    limits: Limits = Limits()
    bwrap: str = "bwrap"

    @classmethod
    def for_build(
        cls, section: BuildSection, *, writable: Sequence[Path], readable: Sequence[Path] = (),
    ) -> Sandbox:
        extra = tuple(Path(p).expanduser() for p in section.sandbox_read)
        return cls(
            writable=_spellings(writable), readable=_spellings((*readable, *extra)),
            limits=Limits.from_section(section), bwrap=section.bwrap,
        )

    def wrap(self, argv: Sequence[str], *, cwd: Path | None, status_fd: int) -> list[str]:
        """bwrap's argv running `argv` in the sandbox, status JSON written to `status_fd`."""
        bwrap = shutil.which(self.bwrap) or self.bwrap
        args = [
            bwrap, "--die-with-parent", "--new-session",
            "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net",
            "--unshare-uts", "--unshare-cgroup-try", "--disable-userns", "--cap-drop", "ALL",
            "--hostname", "kbot",
        ]
        for name in SYSTEM_DIRS:
            host = Path("/") / name
            if host.is_symlink():
                args += ["--symlink", os.readlink(host), str(host)]
            elif host.is_dir():
                args += ["--ro-bind", str(host), str(host)]
        read_only_after = ["/dev", "/"]  # tmpfs that bwrap makes writable: made read-only
        for path, is_dir in _masked_etc():
            args += ["--tmpfs", path] if is_dir else ["--ro-bind", "/dev/null", path]
            read_only_after += [path] if is_dir else []
        tmp = str(self.limits.tmp_mb * MIB)
        args += [
            "--dev", "/dev", "--size", tmp, "--tmpfs", "/dev/shm", "--proc", "/proc",
            "--size", tmp, "--tmpfs", "/tmp", "--dir", SANDBOX_HOME,
        ]
        # Read-only first, then writable: a writable dir inside a read-only one stays writable.
        for p in self.readable:
            args += ["--ro-bind", str(p), str(p)]
        for p in self.writable:
            args += ["--bind", str(p), str(p)]
        for path in read_only_after:
            args += ["--remount-ro", path]
        if cwd is not None:
            args += ["--chdir", str(cwd)]
        args += ["--json-status-fd", str(status_fd), "--", "prlimit",
                 f"--as={_clamped(resource.RLIMIT_AS, self.limits.memory_mb * MIB)}",
                 f"--fsize={_clamped(resource.RLIMIT_FSIZE, self.limits.file_mb * MIB)}",
                 f"--nproc={_clamped(resource.RLIMIT_NPROC, self.limits.procs)}",
                 "--", *argv]
        return args

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` with HOME and TMPDIR private to the sandbox (never the operator's)."""
        return {**base, "HOME": SANDBOX_HOME, "TMPDIR": "/tmp"}

    def start_failure(self, output: str) -> str:
        """The error message for a sandbox that did not start, from bwrap's output."""
        lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
        reason = " | ".join([ln for ln in lines if ln.startswith("bwrap:")][-2:] or lines[-2:])
        hint = next((h for needle, h in _HINTS if needle in reason), "")
        return f"build sandbox did not start ({self.bwrap}): {reason or 'no output'}{hint}"

    def notes(self) -> tuple[str, ...]:
        """What this operator's sandbox does not enforce, for the build log."""
        if os.geteuid() == 0:
            return ("running as root: no process limit (the kernel ignores RLIMIT_NPROC for "
                    "uid 0); run kbot as an ordinary user for one",)
        return ()

    def probe(self, timeout: float = 60.0) -> None:
        """Run `true` in the sandbox; InfraError naming the reason when that cannot be done."""
        if shutil.which(self.bwrap) is None:
            raise InfraError(
                f"build sandbox: {self.bwrap} not found (install Debian's bubblewrap, or set "
                "build.bwrap)"
            )
        missing = [str(p) for p in (*self.readable, *self.writable) if not p.exists()]
        if missing:
            raise InfraError(f"build sandbox: paths to bind do not exist: {', '.join(missing)}")
        res = proc.run(["true"], sandbox=self, timeout=timeout, env=proc.clean_env())
        if not res.ok:
            raise InfraError(f"build sandbox: `true` failed inside it: {res.describe()}")
