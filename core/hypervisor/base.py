"""The interface every CPU backend implements (KVM in kvm.py, the unicorn software CPU in software.py).

An Accelerator is one VM's CPU side: it maps the board's guest RAM (no copies) and creates vCPUs. A Vcpu runs
guest code on the calling thread until something the Machine must see happens, dispatching port I/O and MMIO to
the board's buses itself. Interrupt controllers are the board's (core/board.py), except where the accelerator has
its own (`provides_interrupt_controllers`: KVM's in-kernel PIC pair, I/O APIC, local APICs and PIT); then the
board's interrupt lines and MSIs go to it, otherwise the board connects the accelerator's local APICs to its own
controllers through the APIC bus (connect_apic_bus).

Register state crosses the interface as CpuState, a backend-neutral mirror of the architectural state (Intel SDM
vol. 3, ch. 2-3: segment registers with their hidden descriptor caches, descriptor-table registers, control
registers, EFER).
"""
from __future__ import annotations

import enum
import os
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.bus import MmioBus, PortIoBus
from core.memory import GuestMemory
from core.timers import TimerQueue

if TYPE_CHECKING:
    from core.devices.apic_bus import ApicBus


def fault_line(where: str, exc: BaseException) -> str:
    """A device-model or helper exception as the one line a crash reason is: where, the exception, and the
    innermost frame of ours it came from (the full traceback goes to the VM's log, not into the reason)."""
    frames = traceback.extract_tb(exc.__traceback__)
    at = ""
    if frames:
        last = frames[-1]
        at = f" (at {os.path.basename(last.filename)}:{last.lineno})"
    text = " ".join(str(exc).split())
    return f"{where}: {type(exc).__name__}: {text}{at}" if text else f"{where}: {type(exc).__name__}{at}"


class AcceleratorUnavailable(Exception):
    """The requested backend cannot run on this host (message says why and what to do)."""


class ExitReason(enum.Enum):
    KICKED = "kicked"          # kick() was called: the Machine has a request (pause, stop, reset, power-off)
    SHUTDOWN = "shutdown"      # triple fault / shutdown condition: the VM resets or is marked crashed
    HALTED = "halted"          # HLT with interrupts disabled and nothing can wake the CPU
    ERROR = "error"            # the backend cannot continue (internal error, unsupported instruction); see detail


@dataclass
class VcpuExit:
    reason: ExitReason
    detail: str = ""


@dataclass
class Segment:
    """A segment register with its hidden descriptor cache (SDM vol. 3, 3.4.3)."""

    selector: int = 0
    base: int = 0
    limit: int = 0xFFFF
    type: int = 3          # 4-bit type field: 3 = read/write accessed data, 0xB = exec/read accessed code
    present: bool = True
    dpl: int = 0
    db: bool = False       # default operation size (32-bit) / big
    s: bool = True         # code/data (True) or system segment (False)
    l: bool = False        # 64-bit code segment  # noqa: E741
    g: bool = False        # 4 KiB granularity
    avl: bool = False
    unusable: bool = False


@dataclass
class DescriptorTable:
    base: int = 0
    limit: int = 0xFFFF


GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


@dataclass
class CpuState:
    """Architectural state of one x86 CPU; defaults are the state after RESET/INIT at the reset vector's
    segment (SDM vol. 3, table 9-1), except CS:IP which loaders set."""

    regs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GPR_NAMES, 0))
    rip: int = 0xFFF0
    rflags: int = 0x2
    cs: Segment = field(default_factory=lambda: Segment(selector=0xF000, base=0xFFFF0000, type=0xB))
    ds: Segment = field(default_factory=Segment)
    es: Segment = field(default_factory=Segment)
    fs: Segment = field(default_factory=Segment)
    gs: Segment = field(default_factory=Segment)
    ss: Segment = field(default_factory=Segment)
    tr: Segment = field(default_factory=lambda: Segment(type=0xB, s=False))
    ldt: Segment = field(default_factory=lambda: Segment(type=0x2, s=False))
    gdt: DescriptorTable = field(default_factory=DescriptorTable)
    idt: DescriptorTable = field(default_factory=DescriptorTable)
    cr0: int = 0x60000010
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    cr8: int = 0
    efer: int = 0
    apic_base: int = 0xFEE00900   # enabled, BSP; backends clear BSP for APs
    msrs: dict[int, int] = field(default_factory=dict)   # extra MSRs to load (e.g. IA32_MISC_ENABLE)


class Vcpu(ABC):
    """One virtual CPU. run() is called on that vCPU's own thread; kick() from any thread."""

    index: int

    @abstractmethod
    def set_state(self, state: CpuState) -> None: ...

    @abstractmethod
    def get_state(self) -> CpuState: ...

    @abstractmethod
    def run(self) -> VcpuExit:
        """Run guest code until the Machine must act. HLT with interrupts enabled waits inside run()
        for the next interrupt (or a kick); port I/O and MMIO are dispatched to the buses inside run()."""

    @abstractmethod
    def kick(self) -> None:
        """Make a concurrent or the next run() return KICKED soon. Thread-safe; cleared when run() returns."""

    def reset_to_wait_for_sipi(self) -> None:
        """Application processors start halted until the BSP sends INIT/SIPI (SDM vol. 3, 8.4)."""


class Accelerator(ABC):
    """One VM's CPU side. Construction maps RAM."""

    name: str = "?"

    # Whether the PC's interrupt controllers are the accelerator's own (KVM's in-kernel irqchip and PIT). Then the
    # board sends interrupt lines and MSIs here (set_irq, send_msi); otherwise it builds them and calls
    # connect_apic_bus before the first create_vcpu.
    provides_interrupt_controllers: bool = False

    def __init__(self, memory: GuestMemory, pio: PortIoBus, mmio: MmioBus, num_cpus: int,
                 timers: TimerQueue) -> None:
        self.memory = memory
        self.pio = pio
        self.mmio = mmio
        self.num_cpus = num_cpus
        self.timers = timers

    def set_irq(self, gsi: int, level: bool) -> None:
        """Drive an interrupt line of the accelerator's own controllers: GSI 0-15 reach the PIC pair (ISA IRQs)
        and every GSI the I/O APIC. Callable from any thread."""
        raise NotImplementedError(f"the {self.name} backend has no interrupt controllers of its own")

    def send_msi(self, address: int, data: int) -> None:
        """Deliver a message-signalled interrupt to the accelerator's own local APICs. Callable from any thread."""
        raise NotImplementedError(f"the {self.name} backend has no interrupt controllers of its own")

    def connect_apic_bus(self, bus: ApicBus) -> None:
        """Join the local APICs of the vCPUs created from now on to the board's APIC bus (IPIs, I/O APIC messages,
        MSIs, the PIC on LINT0). Only for a backend without interrupt controllers of its own."""
        raise NotImplementedError(f"the {self.name} backend has its own interrupt controllers")

    @abstractmethod
    def create_vcpu(self, index: int) -> Vcpu:
        """Create vCPU `index` (0 is the bootstrap processor)."""

    # Whether map_ram/unmap_ram work. Callers (PciBus) check it and otherwise trap the range as MMIO.
    supports_ram_mapping: bool = False
    # Whether map_ram takes readonly=True (firmware ROM and shadow RAM need it: code runs from there).
    supports_readonly_mapping: bool = False

    def map_ram(self, gpa: int, host_addr: int, size: int, readonly: bool = False) -> None:
        """Make guest-physical [gpa, gpa + size) plain memory backed by host [host_addr, + size) (a device's
        memory, e.g. a framebuffer BAR; firmware ROM and shadow RAM): guest accesses there no longer exit. With
        `readonly` guest reads and instruction fetches use the memory and guest writes never change it: they
        reach the MMIO bus at their address instead (the device owning the range decides what they do).
        Callable from any thread, including a device callback on a vCPU thread; a backend may apply it at its
        next safe point, so the caller keeps an MMIO handler for the range that reaches the same memory.
        Page-aligned; raises ValueError if the range overlaps RAM or another mapping, NotImplementedError if
        unsupported."""
        raise NotImplementedError(f"the {self.name} backend cannot map device memory as RAM")

    def unmap_ram(self, gpa: int) -> None:
        """Undo map_ram at `gpa`: the range is MMIO again. ValueError if nothing is mapped there."""
        raise NotImplementedError(f"the {self.name} backend cannot map device memory as RAM")

    def add_ioeventfd(self, gpa: int, fd: int) -> None:
        """Ring the eventfd `fd` (write 1 to it) for a guest write of 2 bytes to guest-physical `gpa`, instead of
        an MMIO exit: a device's queue doorbell (core/devices/doorbell.py, KVM API doc 4.59 KVM_IOEVENTFD). Other
        widths still exit. The backend keeps its own reference to the eventfd. Raises NotImplementedError if
        unsupported, OSError or ValueError if refused."""
        raise NotImplementedError(f"the {self.name} backend has no ioeventfds")

    def remove_ioeventfd(self, gpa: int) -> None:
        """Undo add_ioeventfd at `gpa`: writes there exit as MMIO again."""
        raise NotImplementedError(f"the {self.name} backend has no ioeventfds")

    def ram_mappings_settled(self) -> bool:
        """Whether every map_ram/unmap_ram asked so far is in effect for the vCPUs. Reliable on a vCPU thread (a
        device callback): a backend that applies them late does so on that thread, between runs. A backend that
        applies them at once (KVM's memory slots) is always settled."""
        return True

    def reset_platform(self) -> None:
        """Bring what the accelerator owns back to its power-on state (the vCPUs' hidden state, local APICs, TSC;
        its own interrupt controllers and PIT if it has them). Call with every vCPU stopped."""

    def close(self) -> None:
        """Release kernel objects / emulator instances."""
