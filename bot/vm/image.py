"""Guest images: busybox + the plan's selftest binaries + an init that runs them.

The initramfs (newc cpio, gzip) is written here in Python, byte for byte reproducible, and cached
by the hash of everything that goes into it. Bochs has no `-kernel`, so for it the kernel and the
initramfs go on an isolinux ISO made by xorriso, cached by the same key plus the kernel's hash and
the command line.

The init reports through /dev/kmsg, not stdout: printk reaches the serial console synchronously,
while a tty buffer still draining at power-off is lost (Bochs drops it). Markers, one record each:

    kbot: INIT uptime=<s> release=<r> vendor=<v> vmx=<0|1> svm=<0|1> nested=<..> kvm=<0|1>
    kbot: BEGIN test=<name> rep=<n> timeout=<s> uptime=<s>
    kbot: OUT <one line of the test's output>
    kbot: END test=<name> rep=<n> rc=<exit code> uptime=<s> start=<s>
    kbot: DONE uptime=<s>
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot import proc
from bot.errors import InfraError, UserError

BUSYBOX = Path("/bin/busybox")
ISOLINUX_BIN = Path("/usr/lib/ISOLINUX/isolinux.bin")
LDLINUX_C32 = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
IMAGE_FORMAT = 1  # bump when the layout or init changes in a way the key does not see
MAX_BINARY_BYTES = 64 * 1024 * 1024
MAX_IMAGES = 24  # cached images kept per cache dir; the oldest go first
KMSG_LINE_MAX = 900  # /dev/kmsg refuses a write over ~1 KiB with EINVAL

INIT_SCRIPT = r"""#!/bin/sh
# kbot guest init: runs /kbot/plan (name timeout repetitions per line), reports each test through
# /dev/kmsg (survives power-off, see bot/vm/image.py), then powers off.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
echo on > /proc/sys/kernel/printk_devkmsg 2>/dev/null
K=/dev/kmsg
say() { echo "kbot: $*" > $K; }
up() { read u _ < /proc/uptime; echo $u; }
flag() { grep -q -w "$1" /proc/cpuinfo && echo 1 || echo 0; }
vendor=$(sed -n 's/^vendor_id[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
# Both vendor modules may be built in; only the one matching the CPU is active.
nested=none
P=/sys/module
[ "$(flag vmx)" = 1 ] && nested="kvm_intel:$(cat $P/kvm_intel/parameters/nested 2>/dev/null)"
[ "$(flag svm)" = 1 ] && nested="kvm_amd:$(cat $P/kvm_amd/parameters/nested 2>/dev/null)"
kvm=0; [ -c /dev/kvm ] && kvm=1
say "INIT uptime=$(up) release=$(uname -r) vendor=$vendor vmx=$(flag vmx) svm=$(flag svm)" \
  "nested=$nested kvm=$kvm"
cd /kbot/tests
while read name timeout reps; do
  r=1
  while [ $r -le $reps ]; do
    t0=$(up)
    say "BEGIN test=$name rep=$r timeout=$timeout uptime=$t0"
    { timeout -s KILL $timeout ./$name </dev/null 2>&1; echo $? > /tmp/rc; } |
      while IFS= read -r line; do echo "kbot: OUT ${line:0:__KMSG_MAX__}" > $K; done
    say "END test=$name rep=$r rc=$(cat /tmp/rc) uptime=$(up) start=$t0"
    r=$((r + 1))
  done
done < /kbot/plan
say "DONE uptime=$(up)"
sync
poweroff -f
""".replace("__KMSG_MAX__", str(KMSG_LINE_MAX))


@dataclass(frozen=True)
class GuestTest:
    """One line of the guest's plan: run `name` `repetitions` times, `timeout_s` each."""

    name: str
    timeout_s: int
    repetitions: int


@dataclass(frozen=True)
class GuestImage:
    initrd: Path
    key: str
    tests: tuple[GuestTest, ...]
    size_bytes: int
    cached: bool  # True when it came from the cache


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def plan_text(tests: Sequence[GuestTest]) -> str:
    return "".join(f"{t.name} {t.timeout_s} {t.repetitions}\n" for t in tests)


class _Cpio:
    """A newc archive built in memory: dirs, files, symlinks and device nodes, owned by root."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
               ) -> None:
        encoded = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self._parts.append(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
        self._parts.append(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        raw = b"".join(self._parts)
        return raw + b"\0" * (-len(raw) % 512)


def _read_binary(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_BINARY_BYTES:
        raise UserError(f"{path}: {size} bytes, over the {MAX_BINARY_BYTES} byte limit")
    return path.read_bytes()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _prune(root: Path, keep: int) -> None:
    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def find_selftest(selftests: Path, name: str) -> Path | None:
    """A selftest binary by name: DIR/name or DIR/x86_64/name (the kselftest output layout)."""
    for cand in (selftests / name, selftests / "x86_64" / name):
        if cand.is_file():
            return cand
    return None


def image_key(binaries: Mapping[str, Path], tests: Sequence[GuestTest],
              busybox: Path = BUSYBOX) -> str:
    h = hashlib.sha256()
    h.update(f"format {IMAGE_FORMAT}\n".encode())
    h.update(INIT_SCRIPT.encode())
    h.update(plan_text(tests).encode())
    h.update(_sha256_file(busybox).encode())
    for name in sorted({t.name for t in tests}):
        h.update(f"{name} {_sha256_file(binaries[name])}\n".encode())
    return h.hexdigest()[:32]


def build_initramfs(
    binaries: Mapping[str, Path], tests: Sequence[GuestTest], cache_dir: Path,
    busybox: Path = BUSYBOX,
) -> GuestImage:
    """The initramfs running `tests` (binaries by name), from the cache when it is there."""
    if not busybox.is_file():
        raise InfraError(f"{busybox} not found: install busybox-static")
    for t in tests:
        if t.name not in binaries or not binaries[t.name].is_file():
            raise UserError(f"selftest binary for {t.name} not found")
    key = image_key(binaries, tests, busybox)
    root = cache_dir / "vm-images"
    out = root / key / "initrd.gz"
    if out.is_file():
        os.utime(out.parent)
        return GuestImage(out, key, tuple(tests), out.stat().st_size, cached=True)
    archive = _Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "kbot", "kbot/tests"):
        archive.dir(d)
    archive.chardev("dev/console", 5, 1)
    archive.chardev("dev/null", 1, 3)
    archive.file("bin/busybox", _read_binary(busybox))
    archive.symlink("bin/sh", "busybox")  # system() in the selftests' assert path needs /bin/sh
    archive.file("init", INIT_SCRIPT.encode())
    archive.file("kbot/plan", plan_text(tests).encode(), mode=0o644)
    for name in sorted({t.name for t in tests}):
        archive.file(f"kbot/tests/{name}", _read_binary(binaries[name]))
    data = gzip.compress(archive.finish(), compresslevel=6, mtime=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, data)
    _prune(root, MAX_IMAGES)
    return GuestImage(out, key, tuple(tests), len(data), cached=False)


def build_iso(
    kernel: Path, image: GuestImage, cmdline: str, cache_dir: Path, timeout: float = 120.0
) -> Path:
    """A bootable isolinux ISO holding `kernel` and the initramfs (for Bochs), cached by content."""
    for need in (ISOLINUX_BIN, LDLINUX_C32):
        if not need.is_file():
            raise InfraError(f"{need} not found: install isolinux and syslinux-common")
    h = hashlib.sha256()
    h.update(f"{image.key}\n{_sha256_file(kernel)}\n{cmdline}\n".encode())
    key = h.hexdigest()[:32]
    root = cache_dir / "vm-isos"
    iso = root / key / "guest.iso"
    if iso.is_file():
        os.utime(iso.parent)
        return iso
    iso.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=iso.parent, prefix=".stage-") as tmp:
        stage = Path(tmp) / "iso"
        (stage / "isolinux").mkdir(parents=True)
        shutil.copyfile(ISOLINUX_BIN, stage / "isolinux" / "isolinux.bin")
        shutil.copyfile(LDLINUX_C32, stage / "isolinux" / "ldlinux.c32")
        (stage / "isolinux" / "isolinux.cfg").write_text(
            "DEFAULT kbot\nPROMPT 0\nTIMEOUT 0\nLABEL kbot\n  KERNEL /vmlinuz\n"
            f"  INITRD /initrd.gz\n  APPEND {cmdline}\n"
        )
        shutil.copyfile(kernel, stage / "vmlinuz")
        shutil.copyfile(image.initrd, stage / "initrd.gz")
        out = Path(tmp) / "guest.iso"
        proc.run(
            ["xorriso", "-as", "mkisofs", "-quiet", "-o", out, "-b", "isolinux/isolinux.bin",
             "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4",
             "-boot-info-table", "-R", stage],
            timeout=timeout, check=True, env=proc.clean_env(),
        )
        os.replace(out, iso)
    _prune(root, MAX_IMAGES)
    return iso


def guest_tests(entries: Iterable[tuple[str, float, int]]) -> tuple[GuestTest, ...]:
    """Plan entries (name, timeout, repetitions) as guest plan lines, merged by name."""
    seen: dict[str, GuestTest] = {}
    for name, timeout, reps in entries:
        t = GuestTest(name, max(1, round(timeout)), reps)
        if name in seen:  # a test in two sets (state_test): run it once, with the larger budget
            old = seen[name]
            t = GuestTest(name, max(old.timeout_s, t.timeout_s), max(old.repetitions, reps))
        seen[name] = t
    return tuple(seen.values())
