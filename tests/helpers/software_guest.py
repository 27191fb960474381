"""Tiny guests driven on an accelerator without a Machine: assemble a guest with GNU as, run it on the software CPU
(the default) or KVM with a debug port that records what the guest writes and a port that ends the run.

    rig = Rig(accel="kvm", memory_bytes=512 << 10)    # or Rig() for the software CPU with 16 MiB
    rig.memory.write(0x7C00, assemble(SOURCE, 16, 0x7C00))
    ex = rig.run(state)        # HALTED / SHUTDOWN / ... or, after a write to DONE_PORT, KICKED with rig.done set
"""
from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from core.bus import MmioBus, PortIoBus
from core.hypervisor.base import CpuState, DescriptorTable, ExitReason, Segment, VcpuExit
from core.memory import GuestMemory
from core.timers import TimerQueue

DEBUG_PORT = 0xE9
DONE_PORT = 0x510      # a write ends rig.run(): KVM's in-kernel LAPIC keeps a HLT inside the kernel, so no exit


def assemble(source: str, bits: int, base: int) -> bytes:
    """Assemble `source` (AT&T syntax) and link it as a flat image loaded at `base`; return the bytes."""
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("GNU as/ld (binutils) not installed")
    with tempfile.TemporaryDirectory() as d:
        obj, binary = Path(d) / "g.o", Path(d) / "g.bin"
        arch, emul = ("--32", "elf_i386") if bits in (16, 32) else ("--64", "elf_x86_64")
        subprocess.run(["as", arch, "-o", str(obj), "-"], input=source.encode(), check=True, capture_output=True)
        subprocess.run(["ld", "-m", emul, "-Ttext", hex(base), "--oformat", "binary", "-o", str(binary), str(obj)],
                       check=True, capture_output=True)
        return binary.read_bytes()


class DebugPort:
    """Port 0xE9: every byte written is recorded (the Bochs/QEMU debug-console convention)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.words: list[int] = []

    def io_read(self, port: int, size: int) -> int:
        return 0xE9

    def io_write(self, port: int, size: int, value: int) -> None:
        if size == 1:
            self.out.append(value)
        else:
            self.words.append(value)


class DonePort:
    """DONE_PORT: a write marks the run done and kicks the vCPU from inside its own run()."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.vcpu = None

    def io_read(self, port: int, size: int) -> int:
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        self.done.set()
        self.vcpu.kick()


class Rig:
    """One VM without a Machine: memory, buses, timers, the debug and done ports, the accelerator `accel`
    ("software" or "kvm"; the test skips itself first when the host cannot run it, see tests.helpers.accel) and the
    interrupt controllers a board gives it: `interrupts` takes interrupt lines and MSIs, `controllers` are the
    board's models (None on KVM, whose controllers are in the kernel)."""

    def __init__(self, mem_mib: int = 16, cpus: int = 1, accel: str = "software",
                 memory_bytes: int | None = None) -> None:
        from core.board import wire_interrupt_controllers
        from core.hypervisor.select import create_accelerator
        self.memory = GuestMemory(memory_bytes if memory_bytes is not None else mem_mib << 20)
        self.pio = PortIoBus()
        self.mmio = MmioBus()
        self.timers = TimerQueue(name="test-timers")
        self.debug = DebugPort()
        self.pio.register(DEBUG_PORT, 1, self.debug)
        self._done = DonePort()
        self.pio.register(DONE_PORT, 1, self._done)
        self.accel = create_accelerator(accel, self.memory, self.pio, self.mmio, cpus, self.timers)
        self.controllers = wire_interrupt_controllers(self.accel, self.pio, self.mmio, self.timers)
        self.interrupts = self.controllers or self.accel
        self.vcpus = [self.accel.create_vcpu(i) for i in range(cpus)]

    @property
    def done(self) -> bool:
        """Whether the guest wrote DONE_PORT."""
        return self._done.done.is_set()

    def run(self, state: CpuState, timeout: float = 10.0, vcpu: int = 0) -> VcpuExit:
        """Run until the vCPU exits for a reason other than a kick, or the guest writes DONE_PORT; a watchdog
        kicks it after `timeout`."""
        v = self.vcpus[vcpu]
        v.set_state(state)
        self._done.vcpu = v
        result: list[VcpuExit] = []
        expired = threading.Event()
        timer = threading.Timer(timeout, lambda: (expired.set(), v.kick()))
        timer.start()
        try:
            while True:
                ex = v.run()
                if ex.reason != ExitReason.KICKED or expired.is_set() or self.done:
                    result.append(ex)
                    break
        finally:
            timer.cancel()
        return result[0]

    def close(self) -> None:
        self.accel.close()
        self.timers.stop()
        self.memory.close()


# -- a 64-bit long-mode set-up the guests share --------------------------------------------------------------
PML4, PDPT, PD, PT, GDT, TSS, IDT = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x7000
RSP0, IST1, USER_STACK = 0x80000, 0x90000, 0x70000


def boot_sector_state(rip: int = 0x7C00) -> CpuState:
    """Real mode entered the way a boot sector is: CS:IP = 0000:rip, the IVT at 0, a stack below 0x7000."""
    s = CpuState()
    s.cs = Segment(selector=0, base=0, limit=0xFFFF, type=0xB)
    s.rip = rip
    s.regs["rsp"] = 0x7000
    s.idt = DescriptorTable(0, 0x3FF)
    return s


def long_mode_setup(rig: Rig, code: bytes, pf_handler: int | None = None) -> CpuState:
    """Identity map of 0-16 MiB (user-accessible 2 MiB pages, 8-10 MiB in 4 KiB pages with 0x800000 absent),
    Linux's GDT layout, a TSS with RSP0 and IST1, an IDT with #PF on IST1."""
    mem = rig.memory
    mem.write_u64(PML4, PDPT | 7)
    mem.write_u64(PDPT, PD | 7)
    for i in range(8):
        mem.write_u64(PD + 8 * i, (i << 21) | 0x87)
    mem.write_u64(PD + 8 * 4, PT | 7)
    for i in range(512):
        mem.write_u64(PT + 8 * i, (0x800000 + (i << 12)) | 7)
    mem.write_u64(PT, 0)
    gdt = [0, 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF, 0x00CFFA000000FFFF, 0x00CFF2000000FFFF,
           0x00AFFA000000FFFF, 0, 0x0000890000000067 | (TSS & 0xFFFFFF) << 16, 0]
    mem.write(GDT, struct.pack(f"<{len(gdt)}Q", *gdt))
    mem.write_u64(TSS + 4, RSP0)
    mem.write_u64(TSS + 0x24, IST1)
    if pf_handler is not None:
        lo = (pf_handler & 0xFFFF) | 0x10 << 16 | 1 << 32 | 0x8E << 40 | ((pf_handler >> 16) & 0xFFFF) << 48
        mem.write(IDT + 14 * 16, struct.pack("<QQ", lo, pf_handler >> 32))
    mem.write(0x100000, code)
    s = CpuState()
    s.cs = Segment(selector=0x10, base=0, limit=0xFFFF_FFFF, type=0xB, l=True, g=True)
    for name in ("ds", "es", "ss", "fs", "gs"):
        setattr(s, name, Segment(selector=0x18, base=0, limit=0xFFFF_FFFF, type=3, db=True, g=True))
    s.gdt = DescriptorTable(GDT, len(gdt) * 8 - 1)
    s.idt = DescriptorTable(IDT, 256 * 16 - 1)
    s.cr0, s.cr3, s.cr4, s.efer = 0x8000_0011, PML4, 0x20, 0x500
    s.rip = 0x100000
    s.regs["rsp"] = RSP0
    return s
