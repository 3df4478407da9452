"""Emulator command lines, one builder per backend behind one interface.

Each backend writes the guest's serial console to a file (`-serial file:` for QEMU, `com1:
mode=file` for Bochs), so both give the parser the same thing and the progress reporter can tail
it. The argv a backend returns is the exact reproducer printed in reports.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bot.errors import InfraError
from bot.vm.image import GuestImage, build_iso
from bot.vm.model import Backend

# Both emulators: an HPET clocksource makes hyperv_clock and kvm_clock_test fail, so pin the TSC.
# printk.devkmsg=on: init's markers go through /dev/kmsg, which is rate limited by default.
# panic=-1 reboot=t: a panic resets the guest at once by triple fault; QEMU (-no-reboot) and Bochs
# (reset_on_triple_fault=0, panic: action=fatal) then exit instead of booting again.
BASE_CMDLINE = (
    "console=ttyS0,115200 clocksource=tsc tsc=reliable printk.devkmsg=on panic=-1 reboot=t "
    "rdinit=/init"
)
BOCHS_BIOS = Path("/usr/share/bochs/BIOS-bochs-latest")
BOCHS_VGABIOS = Path("/usr/share/vgabios/vgabios.bin")
BOCHS_CPU_MODEL = "corei7_haswell_4770"  # the model that boots and exposes VMX+EPT+VPID
BOCHS_IPS = 20_000_000  # measured: 28-30 s per boot plus three tests; 200M was twice as slow
BOCHS_MAX_MEMORY_MB = 512


@dataclass(frozen=True)
class Launch:
    argv: tuple[str, ...]
    console: Path  # where the guest's serial console goes
    files: tuple[Path, ...]  # config files written for this run (bochsrc, rc file)


class BackendImpl(Protocol):
    @property
    def backend(self) -> Backend: ...

    @property
    def slowdown(self) -> float:
        """Guest-time to wall-time factor for the limits: emulated clocks may run slow."""
        ...

    def launch(self, kernel: Path, image: GuestImage, workdir: Path, cache_dir: Path,
               memory_mb: int) -> Launch: ...

    def clean_exit(self, returncode: int | None) -> bool: ...


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise InfraError(f"{tool} not found: install {package}")
    return path


@dataclass(frozen=True)
class Qemu:
    backend: Backend
    slowdown: float = 1.5

    def launch(self, kernel: Path, image: GuestImage, workdir: Path, cache_dir: Path,
               memory_mb: int) -> Launch:
        qemu = _need("qemu-system-x86_64", "qemu-system-x86")
        console = workdir / "console.log"
        accel = ["-accel", "kvm", "-cpu", "host"] if self.backend is Backend.QEMU_KVM else [
            "-accel", "tcg", "-cpu", "max"]
        argv = (
            qemu, *accel, "-m", str(memory_mb), "-smp", "1", "-nodefaults", "-display", "none",
            "-no-reboot", "-monitor", "none", "-serial", f"file:{console}",
            "-kernel", str(kernel), "-initrd", str(image.initrd), "-append", BASE_CMDLINE,
        )
        return Launch(argv, console, ())

    def clean_exit(self, returncode: int | None) -> bool:
        return returncode == 0


@dataclass(frozen=True)
class Bochs:
    backend: Backend = Backend.BOCHS
    slowdown: float = 2.5  # measured: guest uptime 18 s over 34 s of wall time

    def launch(self, kernel: Path, image: GuestImage, workdir: Path, cache_dir: Path,
               memory_mb: int) -> Launch:
        bochs = _need("bochs", "bochs and bochsbios")
        for f, pkg in ((BOCHS_BIOS, "bochsbios"), (BOCHS_VGABIOS, "vgabios")):
            if not f.is_file():
                raise InfraError(f"{f} not found: install {pkg}")
        _need("xorriso", "xorriso")
        iso = build_iso(kernel, image, BASE_CMDLINE, cache_dir)
        console = workdir / "console.log"
        rc = workdir / "bochs.rc"
        # Debian's bochs is built with the debugger: it stops at a prompt unless told "c".
        rc.write_text("c\n")
        rc_file = workdir / "bochsrc"
        megs = min(memory_mb, BOCHS_MAX_MEMORY_MB)
        rc_file.write_text(
            f"megs: {megs}\n"
            f"romimage: file={BOCHS_BIOS}\n"
            f"vgaromimage: file={BOCHS_VGABIOS}\n"
            f"cpu: model={BOCHS_CPU_MODEL}, ips={BOCHS_IPS}, reset_on_triple_fault=0\n"
            f'ata0-master: type=cdrom, path="{iso}", status=inserted\n'
            "boot: cdrom\n"
            # Debian's build has no nogui; rfb without waiting for a client is the headless one.
            'display_library: rfb, options="timeout=0"\n'
            f'com1: enabled=1, mode=file, dev="{console}"\n'
            f'log: "{workdir / "bochs.log"}"\n'
            "panic: action=fatal\n"
            "error: action=report\n"
            "info: action=ignore\n"
            "debug: action=ignore\n"
            "mouse: enabled=0\n"
        )
        argv = (bochs, "-q", "-f", str(rc_file), "-rc", str(rc))
        return Launch(argv, console, (rc_file, rc))

    def clean_exit(self, returncode: int | None) -> bool:
        # Bochs ends an ACPI power-off with "soft power off" and exit status 1.
        return returncode in (0, 1)


def backend_impl(backend: Backend) -> BackendImpl:
    if backend is Backend.BOCHS:
        return Bochs()
    return Qemu(backend)
