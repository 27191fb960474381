"""What this host can offer a VM's CPU: is /dev/kvm usable, and is it hardware virtualization?

/dev/kvm is probed as the KVM API document prescribes (Documentation/virt/kvm/api.rst: KVM_GET_API_VERSION must
return 12; KVM_CHECK_EXTENSION for each capability the KVM backend relies on). A KVM API that is not backed by
VT-x/AMD-V is recognised too: `kvm_pvm` (a software implementation of the KVM API running inside a VM, visible as
/sys/module/kvm_pvm) runs small guests correctly but cannot run a stock Linux kernel at a usable speed, so
`accel auto` prefers the software CPU there and says why.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from core.hypervisor import kvm_abi as abi

# VIREO_KVM_DEVICE points the engine at another KVM device node (a container's bind mount, or a test that needs
# a host without a usable KVM).
KVM_DEVICE = os.environ.get("VIREO_KVM_DEVICE", "/dev/kvm")
PVM_MODULE = "/sys/module/kvm_pvm"
HARDWARE_MODULES = ("/sys/module/kvm_intel", "/sys/module/kvm_amd")

# Capabilities KvmAccelerator cannot work without, with what each is for.
REQUIRED_CAPS = {
    abi.KVM_CAP_USER_MEMORY: "user memory slots",
    abi.KVM_CAP_SET_TSS_ADDR: "KVM_SET_TSS_ADDR",
    abi.KVM_CAP_EXT_CPUID: "KVM_GET_SUPPORTED_CPUID",
    abi.KVM_CAP_IRQCHIP: "in-kernel interrupt controllers",
    abi.KVM_CAP_IRQ_ROUTING: "GSI routing",
    abi.KVM_CAP_PIT2: "in-kernel PIT",
    abi.KVM_CAP_MP_STATE: "multiprocessor state",
    abi.KVM_CAP_IMMEDIATE_EXIT: "kvm_run.immediate_exit",
}

# core.hypervisor.select appends "; using the software CPU" when `auto` falls back for this reason.
PVM_REASON = "/dev/kvm is kvm_pvm, a software KVM that cannot run stock kernels"


@dataclass(frozen=True)
class KvmStatus:
    usable: bool      # the KVM backend can run guests here
    hardware: bool    # ... with VT-x/AMD-V underneath (False for kvm_pvm or when unusable)
    reason: str       # one line for the user: why not usable, or what kind of KVM this is


def kvm_status(device: str = KVM_DEVICE) -> KvmStatus:
    """Probe /dev/kvm without creating a VM."""
    if not os.path.exists(device):
        return KvmStatus(False, False, f"{device} does not exist (KVM module not loaded, or no virtualization "
                                       "support: enable VT-x/AMD-V in the firmware and load kvm_intel/kvm_amd)")
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return KvmStatus(False, False, f"cannot open {device}: permission denied (add your user to the "
                                           "'kvm' group and log in again)")
        return KvmStatus(False, False, f"cannot open {device}: {exc.strerror}")
    try:
        version = abi.ioctl(fd, abi.KVM_GET_API_VERSION)
        if version != abi.KVM_API_VERSION:
            return KvmStatus(False, False, f"{device} speaks KVM API version {version}, Vireo needs "
                                           f"{abi.KVM_API_VERSION}")
        missing = [what for cap, what in REQUIRED_CAPS.items() if abi.ioctl(fd, abi.KVM_CHECK_EXTENSION, cap) <= 0]
        if missing:
            return KvmStatus(False, False, f"{device} lacks capabilities Vireo needs: {', '.join(missing)}")
    except OSError as exc:
        return KvmStatus(False, False, f"{device} does not answer KVM ioctls: {exc.strerror}")
    finally:
        os.close(fd)
    if is_kvm_pvm():
        return KvmStatus(True, False, PVM_REASON)
    kind = next((Path(m).name for m in HARDWARE_MODULES if os.path.exists(m)), "kvm")
    return KvmStatus(True, True, f"/dev/kvm is hardware virtualization ({kind})")


def is_kvm_pvm() -> bool:
    return os.path.exists(PVM_MODULE)

