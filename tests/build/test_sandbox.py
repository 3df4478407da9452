"""The build sandbox for real (bubblewrap): what a build step of an untrusted patch can reach,
its limits, the same build as an ordinary user, and a sandbox that cannot start (an ERROR,
never a FAIL, never stored; the next build builds for real)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot import proc
from bot.build.kernel import BuildStatus, KernelBuilder
from bot.build.sandbox import Limits, Sandbox
from bot.config import BuildSection
from bot.errors import InfraError
from tests.build.fake_kernel import FRAGMENT, commit, make_fake_kernel

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "kbot-test-secret-d41d8cd9"

# Run by the fake kernel's bzImage recipe, inside the sandbox: tries everything a hostile
# Makefile would, and writes what happened as JSON into the "bzImage".
SPY = r'''
import json, os, socket, sys
cfg = json.load(open(sys.argv[1]))
out = {"env": dict(os.environ), "home": sorted(os.listdir(os.environ.get("HOME", "/")))}
s = socket.socket()
s.settimeout(5)
try:
    s.connect(("127.0.0.1", cfg["port"]))
    out["connect"] = "connected"
except OSError as exc:
    out["connect"] = type(exc).__name__
out["pw_home_exists"] = os.path.exists(cfg["pw_home"])
lines = open("/proc/net/dev").read().splitlines()[2:]
out["ifaces"] = sorted(ln.split(":")[0].strip() for ln in lines)
for name, path in cfg["read"].items():
    try:
        with open(path) as fh:
            out[name] = fh.read()
    except OSError as exc:
        out[name] = type(exc).__name__
for name, path in cfg["write"].items():
    try:
        with open(path, "w") as fh:
            fh.write("x")
        out[name] = "written"
    except OSError as exc:
        out[name] = type(exc).__name__
print(json.dumps(out))
'''


def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "operator-home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text(SECRET)
    monkeypatch.setenv("HOME", str(home))
    return home


def builder_for(tmp_path: Path, **section: object) -> KernelBuilder:
    frag = tmp_path / "kvm.config"
    frag.write_text(FRAGMENT)
    return KernelBuilder(
        tmp_path / "cache", BuildSection(timeout_s=120, **section),  # type: ignore[arg-type]
        [frag], ccache=False, jobs=2,
    )


def test_a_build_step_reaches_no_network_no_secret_and_writes_only_its_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = fake_home(tmp_path, monkeypatch)
    monkeypatch.setenv("KBOT_SMTP_PASSWORD", SECRET)
    monkeypatch.setenv("KBOT_ANY_TOKEN", SECRET)
    repo = tmp_path / "linux"
    make_fake_kernel(repo)
    builder = builder_for(tmp_path)
    slot = builder.slot_dir(repo)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # it answers outside
    cfg = {
        "port": port,
        "pw_home": pwd.getpwuid(os.getuid()).pw_dir,
        "read": {"ssh_key": str(home / ".ssh" / "id_ed25519"), "shadow": "/etc/shadow"},
        "write": {
            "git_dir": str(repo / ".git" / "kbot-probe"),
            "etc": "/etc/kbot-probe",
            "cache_dir": str(tmp_path / "cache" / "kbot-probe"),
            "store": str(tmp_path / "cache" / "build" / "kbot-probe"),
            "slot": str(slot / "kbot-probe"),
            "root": "/kbot-probe",
            "ccache": str(builder.ccache_dir / "kbot-probe"),  # allowed
            "src": str(slot / "src" / "kbot-probe"),  # allowed (the worktree)
        },
    }
    spy = commit(repo, {
        "spy.py": SPY, "spy.json": json.dumps(cfg),
        "Makefile": (repo / "Makefile").read_text().replace(
            "@cat $(OBJS) > $@", "@python3 $(srctree)/spy.py $(srctree)/spy.json > $@"),
    }, "spy on the build")
    try:
        r = builder.build(repo, spy, progress=lambda s: None)
    finally:
        listener.close()
    assert r.status is BuildStatus.PASS, r.summary()
    assert r.artifacts.bzimage is not None
    seen = json.loads(r.artifacts.bzimage.read_text())
    # No network: the loopback port that answers outside does not answer inside.
    assert seen["connect"] != "connected"
    assert seen["ifaces"] == ["lo"]
    # No secrets: not in the environment, HOME is a private empty dir, the operator's files
    # are not there (nor root-only /etc files, when root runs kbot).
    assert SECRET not in json.dumps(seen["env"])
    assert seen["env"]["HOME"] != str(home) and seen["home"] == []
    assert seen["ssh_key"] == "FileNotFoundError"
    assert not seen["pw_home_exists"]  # the operator's real home (/root, /home/u) is not there
    assert "root:" not in seen["shadow"]
    # Writes: only the worktree, the O= dirs and ccache's dir reach the host. (A path under
    # /tmp can be written inside: into the sandbox's private /tmp, gone with it.)
    for name in ("git_dir", "etc", "cache_dir", "store", "slot", "root"):
        assert not Path(cfg["write"][name]).exists(), name
        if not cfg["write"][name].startswith("/tmp/"):
            assert seen[name] == "OSError", name
    assert seen["git_dir"] == "OSError"  # read-only bind (EROFS), though under /tmp here
    assert seen["ccache"] == "written" and seen["src"] == "written"


def test_memory_limit_stops_a_big_allocation(tmp_path: Path) -> None:
    alloc = ["python3", "-c", "b = bytearray(768 * 1024 * 1024); print(len(b))"]
    small = Sandbox(writable=(tmp_path,), limits=Limits(memory_mb=256))
    res = proc.run(alloc, sandbox=small, cwd=tmp_path, timeout=60)
    assert res.returncode != 0 and "MemoryError" in res.stderr
    roomy = Sandbox(writable=(tmp_path,), limits=Limits(memory_mb=2048))
    assert proc.run(alloc, sandbox=roomy, cwd=tmp_path, timeout=60).stdout == "805306368\n"


def test_timeout_kills_everything_in_the_sandbox(tmp_path: Path) -> None:
    marker = f"313.{os.getpid()}"  # a sleep argument nobody else uses
    res = proc.run(["sh", "-c", f"sleep {marker} & sleep {marker}"], timeout=1,
                   sandbox=Sandbox(writable=(tmp_path,)), cwd=tmp_path)
    assert res.timed_out

    def lingering() -> list[str]:
        found = []
        for p in Path("/proc").iterdir():
            try:
                if marker.encode() in (p / "cmdline").read_bytes():
                    found.append(p.name)
            except OSError:
                continue
        return found

    for _ in range(100):
        if not lingering():
            break
        time.sleep(0.1)
    assert lingering() == []


def test_a_step_stopped_by_a_limit_is_an_error_not_a_fail(tmp_path: Path) -> None:
    repo = tmp_path / "linux"
    make_fake_kernel(repo)
    big = commit(repo, {"Makefile": (repo / "Makefile").read_text().replace(
        "@cat $(OBJS) > $@", "@head -c 3000000 /dev/zero > $@")}, "a 3 MB bzImage")
    b = builder_for(tmp_path, max_file_mb=1)
    r = b.build(repo, big, progress=lambda s: None)
    assert r.status is BuildStatus.ERROR and "File size limit exceeded" in r.message
    assert b.lookup(repo, big) is None
    assert builder_for(tmp_path).build(repo, big, progress=lambda s: None).ok


# --- a sandbox that cannot start ----------------------------------------------------------

def fake_bwrap(tmp_path: Path, kind: str) -> Path:
    """A `bwrap` that fails to start the way the real one does: `eperm` says what bwrap says
    when unprivileged user namespaces are off; `real` is the real bwrap, failing on a bind
    whose source does not exist; `bzimage` fails only for the bzImage step (the probe and the
    config steps start)."""
    real = shutil.which("bwrap")
    assert real is not None
    script = {
        "eperm": "echo 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n",
        "real": f'exec {real} --bind /nonexistent/kbot /nonexistent/kbot "$@"\n',
        "bzimage": (
            'case "$*" in *bzImage*) '
            "echo 'bwrap: Can'\\''t mount proc on /newroot/proc: Operation not permitted' >&2;"
            f' exit 1;; esac\nexec {real} "$@"\n'
        ),
    }[kind]
    path = tmp_path / f"bwrap-{kind}"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("kind", ["eperm", "real", "bzimage"])
def test_sandbox_that_cannot_start_is_an_error_never_stored_then_a_real_build(
    tmp_path: Path, kind: str
) -> None:
    repo = tmp_path / "linux"
    base = make_fake_kernel(repo)
    broken = builder_for(tmp_path, bwrap=str(fake_bwrap(tmp_path, kind)))
    r = broken.build(repo, base, progress=lambda s: None)
    assert r.status is BuildStatus.ERROR, r.summary()
    assert "build sandbox did not start" in r.message and "bwrap:" in r.message
    assert r.failed_step == ("bzImage" if kind == "bzimage" else "sandbox")
    if kind == "eperm":
        assert "user namespaces" in r.message  # the hint
    # Nothing stored: no lookup finds it, no entry exists, and a rebuild is not served.
    assert broken.lookup(repo, base) is None
    assert list(broken.store.entries.glob("*/*/result.json")) == []
    again = broken.build(repo, base, progress=lambda s: None)
    assert again.status is BuildStatus.ERROR and not again.cached
    # The sandbox fixed, the same cache: a real build that passes, then a cached one.
    fixed = builder_for(tmp_path)
    ok = fixed.build(repo, base, progress=lambda s: None)
    assert ok.status is BuildStatus.PASS and not ok.cached, ok.summary()
    assert ok.artifacts.bzimage is not None and ok.artifacts.bzimage.stat().st_size > 0
    assert fixed.build(repo, base, progress=lambda s: None).cached


def test_a_sandbox_failure_keeps_the_slot_incremental(tmp_path: Path) -> None:
    """Nothing ran in out/, so the next build of the slot is still incremental."""
    repo = tmp_path / "linux"
    base = make_fake_kernel(repo)
    assert builder_for(tmp_path).build(repo, base, progress=lambda s: None).ok
    c1 = commit(repo, {"kernel/fork.c": "int fork_me(void)\n{\n\treturn 3;\n}\n"}, "c1")
    broken = builder_for(tmp_path, bwrap=str(fake_bwrap(tmp_path, "bzimage")))
    assert broken.build(repo, c1, progress=lambda s: None).status is BuildStatus.ERROR
    r = builder_for(tmp_path).build(repo, c1, progress=lambda s: None)
    assert r.ok and r.artifacts.log is not None
    compiled = [ln.split()[-1] for ln in r.artifacts.log.read_text().splitlines()
                if ln.startswith("  CC ")]
    assert compiled == ["kernel/fork.o"]


def test_probe_names_the_reason(tmp_path: Path) -> None:
    sb = Sandbox(writable=(tmp_path,), bwrap=str(fake_bwrap(tmp_path, "eperm")))
    with pytest.raises(InfraError, match="setting up uid map: Permission denied.*namespaces"):
        sb.probe()
    with pytest.raises(InfraError, match="not found"):
        Sandbox(writable=(tmp_path,), bwrap=str(tmp_path / "no-bwrap")).probe()
    Sandbox(writable=(tmp_path,)).probe()


# --- an ordinary user ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def build_user() -> Iterator[str]:
    """An unprivileged user: ourselves when not root, else a throwaway one."""
    if os.geteuid() != 0:
        yield pwd.getpwuid(os.getuid()).pw_name
        return
    if shutil.which("useradd") is None or shutil.which("runuser") is None:
        pytest.skip("root without useradd/runuser: cannot make an unprivileged user")
    name = f"kbot-t{os.getpid()}"
    proc.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
             timeout=60, check=True)
    try:
        yield name
    finally:
        proc.run(["userdel", name], timeout=60)


USER_SCRIPT = r'''
import json, sys
from pathlib import Path
from bot import proc
from bot.build.kernel import KernelBuilder
from bot.build.sandbox import Limits, Sandbox
from bot.config import BuildSection

work = Path(sys.argv[1])
b = KernelBuilder(work / "cache", BuildSection(timeout_s=120), [work / "kvm.config"],
                  ccache=True, jobs=2)
r = b.build(work / "linux", "HEAD", progress=lambda s: None)
again = b.build(work / "linux", "HEAD", progress=lambda s: None)
fork = (
    "import os, time\n"
    "n = 0\n"
    "for _ in range(200):\n"
    "    try:\n"
    "        pid = os.fork()\n"
    "    except OSError:\n"
    "        break\n"
    "    if pid == 0:\n"
    "        time.sleep(5)\n"
    "        os._exit(0)\n"
    "    n += 1\n"
    "print(n)\n"
)
forked = proc.run(["python3", "-c", fork], timeout=60, cwd=work,
                  sandbox=Sandbox(writable=(work,), limits=Limits(procs=20)))
print(json.dumps({"status": r.status.value, "summary": r.summary(), "cached": again.cached,
                  "forks": forked.stdout.strip(), "ccache": sorted(
                      p.name for p in (work / "cache" / "ccache").iterdir())}))
'''


def test_the_same_build_works_as_an_ordinary_user(build_user: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="kbot-user-"))
    try:
        make_fake_kernel(work / "linux")
        (work / "kvm.config").write_text(FRAGMENT)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8",
               "PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
        argv = ["-c", USER_SCRIPT, str(work)]
        if os.geteuid() == 0:
            # The venv's interpreter may live under /root: the system one reads bot/ fine.
            python = shutil.which("python3", path="/usr/bin:/bin")
            if python is None:
                pytest.skip("no system python3 for the unprivileged user")
            proc.run(["chown", "-R", f"{build_user}:", str(work)], timeout=60, check=True)
            cmd = ["runuser", "-u", build_user, "--", "env", "-i",
                   *(f"{k}={v}" for k, v in env.items()), python, *argv]
            res = proc.run(cmd, timeout=240, cwd=work)
        else:
            res = proc.run([sys.executable, *argv], timeout=240, cwd=work,
                           env=env)
        assert res.ok, res.describe()
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert out["status"] == "pass", out["summary"]
        assert out["cached"] is True
        assert out["ccache"]  # ccache wrote into kbot's own ccache dir, through the sandbox
        # RLIMIT_NPROC, counted in the sandbox's user namespace, stops the fork loop.
        assert 0 < int(out["forks"]) < 20
    finally:
        shutil.rmtree(work, ignore_errors=True)
