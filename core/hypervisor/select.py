"""Choosing and creating a VM's CPU backend: `kvm`, `software`, or `auto` (KVM where the host has hardware
virtualization, else the software CPU — and say why)."""
from __future__ import annotations

from dataclasses import dataclass

from core.bus import MmioBus, PortIoBus
from core.hypervisor.base import Accelerator, AcceleratorUnavailable
from core.memory import GuestMemory
from core.timers import TimerQueue

ACCEL_NAMES = ("auto", "kvm", "software")


@dataclass(frozen=True)
class AccelChoice:
    name: str          # "kvm" or "software"
    reason: str        # why (shown to the user when auto chose, or as a warning)
    warning: str = ""  # e.g. --accel kvm on a software-only KVM


def choose_accelerator(requested: str) -> AccelChoice:
    """Resolve `requested` (auto/kvm/software) against this host. Raises AcceleratorUnavailable with a one-line
    message when the explicit choice cannot work here."""
    if requested not in ACCEL_NAMES:
        raise AcceleratorUnavailable(f"unknown accelerator {requested!r}: use one of {', '.join(ACCEL_NAMES)}")
    if requested == "software":
        return AccelChoice("software", "requested")
    from core.hypervisor.hostcaps import kvm_status  # the KVM probe (and its ioctl tables) only when KVM may run

    status = kvm_status()
    if requested == "kvm":
        if not status.usable:
            raise AcceleratorUnavailable(f"--accel kvm: {status.reason}; use --accel software or auto")
        warning = "" if status.hardware else f"warning: {status.reason}"
        return AccelChoice("kvm", "requested", warning)
    if status.usable and status.hardware:
        return AccelChoice("kvm", "auto: /dev/kvm offers hardware virtualization")
    return AccelChoice("software", f"auto: {status.reason}; using the software CPU")


def create_accelerator(name: str, memory: GuestMemory, pio: PortIoBus, mmio: MmioBus, num_cpus: int,
                       timers: TimerQueue) -> Accelerator:
    if name == "kvm":
        from core.hypervisor.kvm import KvmAccelerator
        return KvmAccelerator(memory, pio, mmio, num_cpus, timers)
    if name == "software":
        try:
            from core.hypervisor.software import SoftwareAccelerator
        except ModuleNotFoundError as exc:
            if exc.name != "unicorn":
                raise                  # a broken Vireo install is a bug to see, not an accelerator to do without
            raise AcceleratorUnavailable("the software CPU needs the Python module unicorn 2.1.4 "
                                         "(pip install unicorn==2.1.4), or use the kvm accelerator") from exc
        from core.hypervisor.software_parallel import parallel_requested
        if parallel_requested(num_cpus):            # 2+ vCPUs unless VIREO_PARALLEL_VCPUS=0 (docs/software-cpu.md)
            from core.hypervisor.software_parallel import ParallelSoftwareAccelerator
            return ParallelSoftwareAccelerator(memory, pio, mmio, num_cpus, timers)
        return SoftwareAccelerator(memory, pio, mmio, num_cpus, timers)
    raise AcceleratorUnavailable(f"unknown accelerator {name!r}")
