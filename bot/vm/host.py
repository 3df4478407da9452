"""Host capability probe: which backends can run the plan's VMX and SVM sets here.

KVM is usable for a normal guest only when the CPU exposes VMX or SVM to us and the matching
kvm_intel/kvm_amd module is loaded with a /dev/kvm we can open. A /dev/kvm that exists without
either flag (a nested VM without virtualization extensions, or a paravirt-only KVM such as
kvm_pvm) cannot boot a normal guest, so QEMU would fail there: probe, do not try.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from bot.vm.model import HostCaps

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12


def _cpuinfo(root: Path) -> tuple[str, str, set[str]]:
    vendor = model = ""
    flags: set[str] = set()
    try:
        text = (root / "proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return vendor, model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return vendor, model, flags


def _param(root: Path, module: str, name: str) -> str:
    try:
        return (root / "sys/module" / module / "parameters" / name).read_text().strip()
    except OSError:
        return ""


def _kvm_api(dev: Path) -> tuple[bool, str]:
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return False, f"cannot open {dev}: {exc.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return False, f"{dev}: KVM_GET_API_VERSION failed: {exc.strerror}"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return False, f"{dev}: KVM API version {version}, want {KVM_API_VERSION}"
    return True, f"{dev}: KVM API {version}"


def probe(root: Path = Path("/")) -> HostCaps:
    """Look at this host (or a fake root, for tests) without starting anything."""
    vendor, model, flags = _cpuinfo(root)
    vmx, svm = "vmx" in flags, "svm" in flags
    nested_vmx = _param(root, "kvm_intel", "nested").upper() in ("Y", "1")
    nested_svm = _param(root, "kvm_amd", "nested").upper() in ("Y", "1")
    dev = root / "dev/kvm"
    notes: list[str] = []
    if not dev.exists():
        kvm_usable, detail = False, "no /dev/kvm"
    elif not (vmx or svm):
        kvm_usable = False
        detail = "/dev/kvm exists but the CPU exposes neither vmx nor svm: no normal KVM guest"
    elif not ((root / "sys/module/kvm_intel").exists() or (root / "sys/module/kvm_amd").exists()):
        kvm_usable, detail = False, "neither kvm_intel nor kvm_amd is loaded"
    else:
        kvm_usable, detail = _kvm_api(dev)
    if "hypervisor" in flags:
        notes.append("host is itself a virtual machine")
    return HostCaps(
        cpu_vendor=vendor,
        cpu_model=model,
        vmx=vmx,
        svm=svm,
        kvm_usable=kvm_usable,
        kvm_detail=detail,
        nested_vmx=nested_vmx,
        nested_svm=nested_svm,
        qemu=shutil.which("qemu-system-x86_64"),
        bochs=shutil.which("bochs"),
        xorriso=shutil.which("xorriso"),
        cpus=os.cpu_count() or 1,
        notes=tuple(notes),
    )
