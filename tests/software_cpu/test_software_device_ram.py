"""Device memory mapped as guest RAM on the software CPU (SoftwareAccelerator.map_ram / unmap_ram): requested
from inside a port-I/O hook with paging on, as the PCI bus does when the guest programs a framebuffer BAR, and
applied at the next slice boundary without disturbing the vCPU's state (CR2, pending exceptions)."""
from __future__ import annotations

import ctypes
import mmap
import struct

from core.hypervisor.base import CpuState, ExitReason, Segment
from tests.helpers.software_guest import Rig, assemble

BAR = 0xE000_0000
BAR_SIZE = 0x40_0000          # one 4 MiB page in the guest's page tables
VIRT = 0x4000_0000            # where the guest sees the BAR; virtual BAR itself is not mapped
PAGE_DIR = 0x10_0000
CODE = 0x1000
MAP_PORT, UNMAP_PORT = 0x600, 0x601


class Fallback:
    """The MMIO handler the PCI bus keeps for the BAR: reaches the same memory, records that it was used."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.accesses: list[tuple[str, int]] = []

    def mmio_read(self, addr: int, size: int) -> int:
        self.accesses.append(("r", addr))
        return int.from_bytes(self.buf[addr - BAR:addr - BAR + size], "little")

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.accesses.append(("w", addr))
        self.buf[addr - BAR:addr - BAR + size] = value.to_bytes(size, "little")


class MapPorts:
    def __init__(self, accel, host: int) -> None:
        self.accel, self.host = accel, host

    def io_read(self, port: int, size: int) -> int:
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == MAP_PORT:
            self.accel.map_ram(BAR, self.host, BAR_SIZE)
        else:
            self.accel.unmap_ram(BAR)


GUEST = f"""
    .code32
    mov $0x22, %al
    out %al, $0xE9
    mov $0x600, %dx
    out %al, %dx              # map_ram from the hook
    jmp 1f                    # a block boundary: the slice ends and the mapping is applied
1:  movl $0x11223344, {VIRT + 0x10:#x}
    movl {VIRT + 0x10:#x}, %eax
    mov %eax, 0x8000
    mov $0x601, %dx
    out %al, %dx              # unmap_ram from the hook
    jmp 2f
2:  movl $0x55667788, {VIRT + 0x20:#x}
    mov $0x33, %al
    out %al, $0xE9
    hlt
"""


def _state() -> CpuState:
    s = CpuState()
    flat = dict(base=0, limit=0xFFFF_FFFF, db=True, g=True)
    s.cs = Segment(selector=0x08, type=0xB, **flat)
    for name in ("ds", "es", "ss", "fs", "gs"):
        setattr(s, name, Segment(selector=0x10, type=3, **flat))
    s.rip = CODE
    s.regs["rsp"] = 0x7000
    s.cr0 = 0x8000_0011          # PG | ET | PE
    s.cr3 = PAGE_DIR
    s.cr4 = 0x10                 # PSE: 4 MiB pages
    s.cr2 = 0x1234_5678          # must survive the memory-map change
    return s


def test_map_ram_from_a_hook_with_paging_on_then_unmap():
    rig = Rig(mem_mib=16)
    buf = mmap.mmap(-1, BAR_SIZE)
    host = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    try:
        fallback = Fallback(buf)
        rig.mmio.register(BAR, BAR_SIZE, fallback)
        rig.pio.register(MAP_PORT, 2, MapPorts(rig.accel, host))
        # Page directory: 0-4 MiB identity (code, data, tables), VIRT -> BAR; the virtual address BAR is unmapped,
        # so translating the physical BAR address through the guest's MMU would fault.
        pd = bytearray(4096)
        struct.pack_into("<I", pd, 0, 0x0000_0083)
        struct.pack_into("<I", pd, (VIRT >> 22) * 4, BAR | 0x83)
        rig.memory.write(PAGE_DIR, bytes(pd))
        rig.memory.write(CODE, assemble(GUEST, 32, CODE))
        ex = rig.run(_state())
        assert ex.reason == ExitReason.HALTED, ex.detail
        assert bytes(rig.debug.out) == b"\x22\x33"
        # While mapped, the guest's accesses went straight to the memory, not through the MMIO handler...
        assert buf[0x10:0x14] == struct.pack("<I", 0x11223344)
        assert rig.memory.read_u32(0x8000) == 0x11223344
        # ...and after unmap_ram they trap again.
        assert fallback.accesses == [("w", BAR + 0x20)]
        assert buf[0x20:0x24] == struct.pack("<I", 0x55667788)
        state = rig.vcpus[0].get_state()
        assert state.cr2 == 0x1234_5678 and state.cr0 & 0x8000_0000
    finally:
        rig.close()


def test_map_ram_refuses_ram_overlaps_and_ranges_above_4g():
    rig = Rig(mem_mib=16)
    buf = mmap.mmap(-1, 0x10000)
    host = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    try:
        acc = rig.accel
        for gpa in (0x0, 0xF0_0000, 0x1_0000_0000):              # RAM, straddling RAM's end, above 4 GiB
            try:
                acc.map_ram(gpa, host, 0x20_0000 if gpa == 0xF0_0000 else 0x10000)
            except ValueError:
                continue
            raise AssertionError(f"map_ram at {gpa:#x} was accepted")
        acc.map_ram(0xE000_0000, host, 0x10000)
        try:
            acc.map_ram(0xE000_8000, host, 0x10000)                # overlaps the first mapping
        except ValueError:
            pass
        else:
            raise AssertionError("overlapping device RAM was accepted")
        acc.unmap_ram(0xE000_0000)
        acc.map_ram(0xE000_8000, host, 0x10000)                    # the range is MMIO again, so it may be reused
    finally:
        rig.close()
