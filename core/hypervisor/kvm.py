"""The KVM backend: guest code runs on the host CPU through /dev/kvm (Documentation/virt/kvm/api.rst).

A KvmAccelerator is one KVM VM: guest RAM registered as memory slots (no copies), KVM's in-kernel interrupt
controllers (8259A pair, I/O APIC, one local APIC per vCPU; api.rst KVM_CREATE_IRQCHIP) and PIT (KVM_CREATE_PIT2,
with port 0x61 too), and the GSI routing a PC has: ISA IRQ n reaches PIC pin n and I/O APIC pin n,
except IRQ 0 which reaches I/O APIC pin 2 (the interrupt source override the MADT announces, ACPI 6.4 5.2.12.5).
Because those devices live in the kernel, guest accesses to ports 0x20-0x21, 0x40-0x43, 0x61, 0xA0-0xA1,
0x4D0-0x4D1 and to the LAPIC/I/O APIC pages never reach the Python buses (see IN_KERNEL_PORTS).

Its vCPUs are kvm_vcpu's KvmVcpu (KVM_RUN on their own threads), with kvm_cpuid's CPUID table.

Power-on reset: KVM has no "reset the VM" call, so the state KVM gives a fresh VM and fresh vCPUs (LAPIC, FPU,
XCR0, debug registers, pending events, PIC/I-O APIC/PIT) is captured at creation and written back by
reset_platform(), as a machine reset would re-initialise the hardware (SDM vol. 3, 9.1 "Initialization overview").
"""
from __future__ import annotations

import ctypes
import errno
import os
import threading

from core.bus import MmioBus, PortIoBus
from core.hypervisor import kvm_abi as abi
from core.hypervisor.base import (
    Accelerator,
    AcceleratorUnavailable,
)
from core.hypervisor.hostcaps import KVM_DEVICE, REQUIRED_CAPS
from core.hypervisor.kvm_cpuid import CpuidEntry
from core.hypervisor.kvm_vcpu import KvmVcpu, _install_kick_signal
from core.memory import GuestMemory
from core.timers import TimerQueue

# Where KVM keeps the pages it needs for real mode without unrestricted guest (Intel VT-x; api.rst
# KVM_SET_TSS_ADDR, KVM_SET_IDENTITY_MAP_ADDR): four pages ending at 0xFF000000, clear of RAM (which stops at the
# 3 GiB PCI hole), of the I/O APIC and LAPIC pages and of a firmware image of up to 16 MiB below 4 GiB.
IDENTITY_MAP_ADDR = 0xFEFF_C000
TSS_ADDR = 0xFEFF_D000     # three pages

IN_KERNEL_PORTS = ((0x20, 2), (0xA0, 2), (0x4D0, 2), (0x40, 4), (0x61, 1))


def _retry_eintr(fd: int, request: int, arg: object = None) -> int:
    while True:
        try:
            return abi.ioctl(fd, request, arg)   # type: ignore[arg-type]
        except InterruptedError:
            continue


class KvmAccelerator(Accelerator):
    """One KVM virtual machine. See the module docstring for what lives in the kernel."""

    name = "kvm"
    provides_interrupt_controllers = True

    def __init__(self, memory: GuestMemory, pio: PortIoBus, mmio: MmioBus, num_cpus: int,
                 timers: TimerQueue, device: str = KVM_DEVICE) -> None:
        super().__init__(memory, pio, mmio, num_cpus, timers)
        self.vcpus: dict[int, KvmVcpu] = {}
        self._closed = False
        self._irq_lock = threading.Lock()
        self._irq_level = abi.kvm_irq_level()
        self._slot_lock = threading.Lock()
        self._free_slots: list[int] = []
        self._device_slots: dict[int, tuple[int, int]] = {}     # gpa -> (slot, size) of map_ram mappings
        self._ioeventfds: dict[int, int] = {}       # gpa -> our duplicate of the eventfd (KVM's deassign needs one)
        self.kvm_fd = -1
        self.vm_fd = -1
        try:
            self.kvm_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise AcceleratorUnavailable(f"cannot open {device}: {exc.strerror}") from exc
        try:
            self._create_vm(device)
        except BaseException:
            self.close()
            raise

    def _check(self, cap: int) -> int:
        return abi.ioctl(self.kvm_fd, abi.KVM_CHECK_EXTENSION, cap)

    def _create_vm(self, device: str) -> None:
        version = abi.ioctl(self.kvm_fd, abi.KVM_GET_API_VERSION)
        if version != abi.KVM_API_VERSION:
            raise AcceleratorUnavailable(f"{device} speaks KVM API {version}, Vireo needs {abi.KVM_API_VERSION}")
        missing = [what for cap, what in REQUIRED_CAPS.items() if self._check(cap) <= 0]
        if missing:
            raise AcceleratorUnavailable(f"{device} lacks {', '.join(missing)}")
        max_vcpus = self._check(abi.KVM_CAP_MAX_VCPUS) or self._check(abi.KVM_CAP_NR_VCPUS) or 4
        if self.num_cpus > max_vcpus:
            raise AcceleratorUnavailable(f"KVM here allows at most {max_vcpus} vCPUs, {self.num_cpus} requested")
        self.vm_fd = _retry_eintr(self.kvm_fd, abi.KVM_CREATE_VM, 0)
        abi.ioctl(self.vm_fd, abi.KVM_SET_TSS_ADDR, TSS_ADDR)
        if self._check(abi.KVM_CAP_SET_IDENTITY_MAP_ADDR) > 0:
            addr = ctypes.c_uint64(IDENTITY_MAP_ADDR)
            abi.ioctl(self.vm_fd, abi.KVM_SET_IDENTITY_MAP_ADDR, addr)
        abi.ioctl(self.vm_fd, abi.KVM_CREATE_IRQCHIP)
        self._set_gsi_routing()
        pit = abi.kvm_pit_config()
        pit.flags = abi.KVM_PIT_SPEAKER_DUMMY
        abi.ioctl(self.vm_fd, abi.KVM_CREATE_PIT2, pit)
        max_slots = self._check(abi.KVM_CAP_NR_MEMSLOTS) or 32
        # RAM minus the legacy VGA window, so accesses there exit to the VGA model as MMIO.
        mappings = self.memory.cpu_mappings()
        if len(mappings) > max_slots:
            raise AcceleratorUnavailable(f"KVM here offers {max_slots} memory slots")
        for slot, region in enumerate(mappings):
            r = abi.kvm_userspace_memory_region()
            r.slot, r.flags = slot, 0
            r.guest_phys_addr, r.memory_size = region.gpa, region.size
            r.userspace_addr = self.memory.host_address(region)
            abi.ioctl(self.vm_fd, abi.KVM_SET_USER_MEMORY_REGION, r)
        self._next_slot, self._max_slots = len(mappings), max_slots
        # The state KVM gives a new VM's PIC pair, I/O APIC and PIT is their power-on state.
        self._irqchip_power_on = []
        for chip_id in (abi.KVM_IRQCHIP_PIC_MASTER, abi.KVM_IRQCHIP_PIC_SLAVE, abi.KVM_IRQCHIP_IOAPIC):
            chip = abi.kvm_irqchip()
            chip.chip_id = chip_id
            abi.ioctl(self.vm_fd, abi.KVM_GET_IRQCHIP, chip)
            self._irqchip_power_on.append(chip)
        self._pit_power_on = abi.kvm_pit_state2()
        abi.ioctl(self.vm_fd, abi.KVM_GET_PIT2, self._pit_power_on)
        self.vcpu_mmap_size = abi.ioctl(self.kvm_fd, abi.KVM_GET_VCPU_MMAP_SIZE)
        self.supported_cpuid = self._get_supported_cpuid()
        self.msr_indices = self._get_msr_index_list()
        self.has_xcrs = self._check(abi.KVM_CAP_XCRS) > 0
        self.has_debugregs = self._check(abi.KVM_CAP_DEBUGREGS) > 0
        self.has_vcpu_events = self._check(abi.KVM_CAP_VCPU_EVENTS) > 0
        self.has_signal_msi = self._check(abi.KVM_CAP_SIGNAL_MSI) > 0
        self.has_readonly_mem = self._check(abi.KVM_CAP_READONLY_MEM) > 0
        self.has_ioeventfd = self._check(abi.KVM_CAP_IOEVENTFD) > 0
        self.supports_readonly_mapping = self.has_readonly_mem
        _install_kick_signal()

    def _set_gsi_routing(self) -> None:
        """ISA IRQs 0-15 to the PIC pair; GSIs 1-23 to the same I/O APIC pins, and ISA IRQ 0 (the PIT, which KVM
        raises as GSI 0) to pin 2, matching the MADT's interrupt source override. GSI 2 (the cascade) has no
        route."""
        routes: list[tuple[int, int, int]] = []
        for irq in range(16):
            if irq == 2:
                continue
            chip = abi.KVM_IRQCHIP_PIC_MASTER if irq < 8 else abi.KVM_IRQCHIP_PIC_SLAVE
            routes.append((irq, chip, irq & 7))
        for gsi in range(abi.KVM_IOAPIC_NUM_PINS):
            if gsi == 2:
                continue
            routes.append((gsi, abi.KVM_IRQCHIP_IOAPIC, 2 if gsi == 0 else gsi))
        table = abi.routing_buffer(len(routes))
        for entry, (gsi, chip, pin) in zip(table.entries, routes, strict=True):
            entry.gsi = gsi
            entry.type = abi.KVM_IRQ_ROUTING_IRQCHIP
            entry.u.irqchip.irqchip = chip
            entry.u.irqchip.pin = pin
        abi.ioctl(self.vm_fd, abi.KVM_SET_GSI_ROUTING, table)

    def _get_supported_cpuid(self) -> list[CpuidEntry]:
        n = 128
        while True:
            buf = abi.cpuid_buffer(n)
            try:
                abi.ioctl(self.kvm_fd, abi.KVM_GET_SUPPORTED_CPUID, buf)
            except OSError as exc:
                if exc.errno == errno.E2BIG and n < 4096:
                    n *= 2
                    continue
                raise
            return [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                    for e in buf.entries[:buf.nent]]

    def _get_msr_index_list(self) -> set[int]:
        probe = abi.msr_list_buffer(0)
        try:
            abi.ioctl(self.kvm_fd, abi.KVM_GET_MSR_INDEX_LIST, probe)
        except OSError as exc:
            if exc.errno != errno.E2BIG:
                raise
        buf = abi.msr_list_buffer(probe.nmsrs)
        abi.ioctl(self.kvm_fd, abi.KVM_GET_MSR_INDEX_LIST, buf)
        return set(buf.indices[:buf.nmsrs])

    # -- Accelerator interface ----------------------------------------------------------------------------
    def set_irq(self, gsi: int, level: bool) -> None:
        """ISA IRQ/GSI numbering as routed in _set_gsi_routing (0-15 ISA IRQs, 16-23 I/O APIC pins)."""
        with self._irq_lock:
            self._irq_level.irq = gsi
            self._irq_level.level = 1 if level else 0
            abi.ioctl(self.vm_fd, abi.KVM_IRQ_LINE, self._irq_level)

    def send_msi(self, address: int, data: int) -> None:
        """Deliver a message-signalled interrupt (PCI 3.0, 6.8; the address/data format of SDM vol. 3, 10.11)
        to the in-kernel local APICs (api.rst KVM_SIGNAL_MSI). Callable from any thread; usable as a PCI
        device's MSI sink."""
        if not self.has_signal_msi:
            raise AcceleratorUnavailable("this KVM cannot inject MSIs (no KVM_CAP_SIGNAL_MSI)")
        msi = abi.kvm_msi()
        msi.address_lo, msi.address_hi = address & 0xFFFF_FFFF, address >> 32
        msi.data = data & 0xFFFF_FFFF
        abi.ioctl(self.vm_fd, abi.KVM_SIGNAL_MSI, msi)

    def create_vcpu(self, index: int) -> KvmVcpu:
        if not 0 <= index < self.num_cpus:
            raise ValueError(f"vCPU index {index} out of range for {self.num_cpus} vCPUs")
        if index in self.vcpus:
            raise ValueError(f"vCPU {index} already exists")
        vcpu = KvmVcpu(self, index)
        self.vcpus[index] = vcpu
        return vcpu

    # -- device memory as RAM (a framebuffer BAR) ------------------------------------------------------------
    supports_ram_mapping = True

    def map_ram(self, gpa: int, host_addr: int, size: int, readonly: bool = False) -> None:
        """A memory slot of its own (KVM API doc 4.35, KVM_SET_USER_MEMORY_REGION). KVM updates slots while vCPUs
        run, so this takes effect at once from any thread; KVM refuses overlaps with other slots (EEXIST).
        `readonly`: KVM_MEM_READONLY (KVM_CAP_READONLY_MEM), guest writes exit as MMIO writes to the bus."""
        if readonly and not self.has_readonly_mem:
            raise ValueError("this KVM has no read-only memory slots (KVM_CAP_READONLY_MEM)")
        if size <= 0 or (gpa | host_addr | size) & 0xFFF:
            raise ValueError(f"device RAM {gpa:#x}+{size:#x} must be page-aligned")
        with self._slot_lock:
            if gpa in self._device_slots:
                raise ValueError(f"device RAM is already mapped at {gpa:#x}")
            if self._free_slots:
                slot = self._free_slots.pop()
            elif self._next_slot < self._max_slots:
                slot, self._next_slot = self._next_slot, self._next_slot + 1
            else:
                raise ValueError("no free KVM memory slot")
            try:
                self._set_slot(slot, gpa, size, host_addr, abi.KVM_MEM_READONLY if readonly else 0)
            except OSError as exc:
                self._free_slots.append(slot)
                raise ValueError(f"KVM refused device RAM at {gpa:#x}+{size:#x}: {exc.strerror}") from exc
            self._device_slots[gpa] = (slot, size)

    def unmap_ram(self, gpa: int) -> None:
        """Deleting a slot is setting its size to 0; the range exits as MMIO again."""
        with self._slot_lock:
            if gpa not in self._device_slots:
                raise ValueError(f"no device RAM mapped at {gpa:#x}")
            slot, _ = self._device_slots.pop(gpa)
            self._set_slot(slot, gpa, 0, 0)
            self._free_slots.append(slot)

    def add_ioeventfd(self, gpa: int, fd: int) -> None:
        """KVM signals the eventfd itself for a 2-byte write to `gpa`: no exit (api.rst 4.59 KVM_IOEVENTFD)."""
        if not self.has_ioeventfd:
            raise NotImplementedError("this KVM has no ioeventfds (KVM_CAP_IOEVENTFD)")
        with self._slot_lock:
            if gpa in self._ioeventfds:
                raise ValueError(f"an ioeventfd is already bound at {gpa:#x}")
            dup = os.dup(fd)
            try:
                self._ioeventfd(gpa, dup, 0)
            except OSError:
                os.close(dup)
                raise
            self._ioeventfds[gpa] = dup

    def remove_ioeventfd(self, gpa: int) -> None:
        with self._slot_lock:
            dup = self._ioeventfds.pop(gpa, None)
            if dup is None:
                raise ValueError(f"no ioeventfd is bound at {gpa:#x}")
            try:
                self._ioeventfd(gpa, dup, abi.KVM_IOEVENTFD_FLAG_DEASSIGN)
            finally:
                os.close(dup)

    def _ioeventfd(self, gpa: int, fd: int, flags: int) -> None:
        arg = abi.kvm_ioeventfd()
        arg.addr, arg.len, arg.fd, arg.flags = gpa, 2, fd, flags
        abi.ioctl(self.vm_fd, abi.KVM_IOEVENTFD, arg)

    def _set_slot(self, slot: int, gpa: int, size: int, host_addr: int, flags: int = 0) -> None:
        r = abi.kvm_userspace_memory_region()
        r.slot, r.flags = slot, flags
        r.guest_phys_addr, r.memory_size, r.userspace_addr = gpa, size, host_addr
        abi.ioctl(self.vm_fd, abi.KVM_SET_USER_MEMORY_REGION, r)

    def reset_platform(self) -> None:
        """Power-on state for the PIC pair, I/O APIC, PIT and every vCPU's hidden state (LAPIC, FPU, XCR0, debug
        registers, pending events, MSRs); the BSP runnable at the reset vector, APs waiting for INIT/SIPI.
        Call with every vCPU stopped (outside run())."""
        for chip in self._irqchip_power_on:
            abi.ioctl(self.vm_fd, abi.KVM_SET_IRQCHIP, chip)
        abi.ioctl(self.vm_fd, abi.KVM_SET_PIT2, self._pit_power_on)
        for vcpu in self.vcpus.values():
            vcpu.power_on_reset()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for vcpu in self.vcpus.values():
            vcpu.close()
        self.vcpus.clear()
        for fd in list(self._ioeventfds.values()) + [self.vm_fd, self.kvm_fd]:
            if fd >= 0:
                os.close(fd)
        self._ioeventfds.clear()
        self.vm_fd = self.kvm_fd = -1

