"""Device memory mapped as guest RAM (Accelerator.map_ram / unmap_ram), on KVM (a memory slot of its own, KVM API
doc 4.35) and on the software CPU (unicorn's memory map, changed at the next block boundary): requested from a
port-I/O exit on the vCPU thread as the PCI bus does when the guest programs a framebuffer BAR. While mapped the
guest's accesses go straight to the memory; after unmap_ram they trap to the MMIO handler again."""
from __future__ import annotations

import ctypes
import mmap
import struct

import pytest

from core.hypervisor.base import CpuState, Segment
from tests.helpers.accel import ACCELS, require_accel, require_guest
from tests.helpers.software_guest import Rig, assemble, boot_sector_state

pytestmark = pytest.mark.parametrize("accel", ACCELS)

MAP_PORT, UNMAP_PORT = 0x600, 0x601


class MapPorts:
    """MAP_PORT maps `size` bytes of `host` at `gpa`, UNMAP_PORT unmaps them: from inside the vCPU's exit."""

    def __init__(self, accel, gpa: int, host: int, size: int) -> None:
        self.accel, self.gpa, self.host, self.size = accel, gpa, host, size

    def io_read(self, port: int, size: int) -> int:
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == MAP_PORT:
            self.accel.map_ram(self.gpa, self.host, self.size)
        else:
            self.accel.unmap_ram(self.gpa)


class Fallback:
    """The MMIO handler the PCI bus keeps for the BAR: reaches the same memory, records that it was used."""

    def __init__(self, buf: mmap.mmap, base: int) -> None:
        self.buf, self.base = buf, base
        self.accesses: list[tuple[str, int, int]] = []

    def mmio_read(self, addr: int, size: int) -> int:
        self.accesses.append(("r", addr, size))
        return int.from_bytes(self.buf[addr - self.base:addr - self.base + size], "little")

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.accesses.append(("w", addr, size))
        self.buf[addr - self.base:addr - self.base + size] = value.to_bytes(size, "little")


def _host(buf: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


# -- real mode, right above 512 KiB of RAM ----------------------------------------------------------------------
DEV, DEV_SIZE = 0x9_0000, 0x1_0000
REAL_MODE = """
        .code16
        mov $0x9000, %ax
        mov %ax, %es
        mov $0x600, %dx
        out %al, %dx              # map_ram
        jmp 1f                    # the software CPU applies a new mapping at the next block boundary
1:      movl $0x11223344, %es:0x10
        movl %es:0x10, %eax
        mov %eax, 0x6000
        mov $0x601, %dx
        out %al, %dx              # unmap_ram
        jmp 2f
2:      movl $0x55667788, %es:0x20
        mov $0x510, %dx
        out %al, %dx              # done
        jmp .
"""


def test_map_ram_from_an_exit_then_unmap(accel: str) -> None:
    require_guest(accel, "realmode16")
    rig = Rig(accel=accel, memory_bytes=512 * 1024)
    buf = mmap.mmap(-1, DEV_SIZE)
    try:
        fallback = Fallback(buf, DEV)
        rig.mmio.register(DEV, DEV_SIZE, fallback)
        rig.pio.register(MAP_PORT, 2, MapPorts(rig.accel, DEV, _host(buf), DEV_SIZE))
        rig.memory.write(0x7C00, assemble(REAL_MODE, 16, 0x7C00))
        ex = rig.run(boot_sector_state())
        assert rig.done, ex.detail
        assert buf[0x10:0x14] == struct.pack("<I", 0x11223344)       # straight into the memory, no exit
        assert rig.memory.read_u32(0x6000) == 0x11223344
        assert fallback.accesses == [("w", DEV + 0x20, 4)]             # after unmap_ram: the handler again
        assert buf[0x20:0x24] == struct.pack("<I", 0x55667788)
    finally:
        rig.close()


# -- 32-bit paging, a BAR high in the 4 GiB space seen through a 4 MiB page ----------------------------------------
BAR = 0xE000_0000
BAR_SIZE = 0x40_0000          # one 4 MiB page in the guest's page tables
VIRT = 0x4000_0000            # where the guest sees the BAR; virtual BAR itself is not mapped
PAGE_DIR = 0x10_0000
CODE = 0x1000

PAGED = f"""
    .code32
    mov $0x22, %al
    out %al, $0xE9
    mov $0x600, %dx
    out %al, %dx              # map_ram from the hook
    jmp 1f                    # a block boundary: the software CPU's slice ends and the mapping is applied
1:  movl $0x11223344, {VIRT + 0x10:#x}
    movl {VIRT + 0x10:#x}, %eax
    mov %eax, 0x8000
    mov $0x601, %dx
    out %al, %dx              # unmap_ram from the hook
    jmp 2f
2:  movl $0x55667788, {VIRT + 0x20:#x}
    mov $0x33, %al
    out %al, $0xE9
    mov $0x510, %dx
    out %al, %dx              # done
    hlt
"""


def _paged_state() -> CpuState:
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


def test_map_ram_from_an_exit_with_paging_on_keeps_the_vcpu_state(accel: str) -> None:
    """The guest addresses the BAR through a page whose virtual address is not the BAR's physical one, so
    translating the physical address through the guest's MMU would fault; CR2 and paging survive the change."""
    require_guest(accel, "pmode32")      # 32-bit paging, which kvm_pvm drops (CR0.PG stays clear): PVM_CANNOT
    rig = Rig(accel=accel, mem_mib=16)
    buf = mmap.mmap(-1, BAR_SIZE)
    try:
        fallback = Fallback(buf, BAR)
        rig.mmio.register(BAR, BAR_SIZE, fallback)
        rig.pio.register(MAP_PORT, 2, MapPorts(rig.accel, BAR, _host(buf), BAR_SIZE))
        pd = bytearray(4096)             # 0-4 MiB identity (code, data, tables), VIRT -> BAR
        struct.pack_into("<I", pd, 0, 0x0000_0083)
        struct.pack_into("<I", pd, (VIRT >> 22) * 4, BAR | 0x83)
        rig.memory.write(PAGE_DIR, bytes(pd))
        rig.memory.write(CODE, assemble(PAGED, 32, CODE))
        ex = rig.run(_paged_state())
        assert rig.done, ex.detail
        assert bytes(rig.debug.out) == b"\x22\x33"
        # While mapped, the guest's accesses went straight to the memory, not through the MMIO handler...
        assert buf[0x10:0x14] == struct.pack("<I", 0x11223344)
        assert rig.memory.read_u32(0x8000) == 0x11223344
        # ...and after unmap_ram they trap again.
        assert fallback.accesses == [("w", BAR + 0x20, 4)]
        assert buf[0x20:0x24] == struct.pack("<I", 0x55667788)
        state = rig.vcpus[0].get_state()
        assert state.cr2 == 0x1234_5678 and state.cr0 & 0x8000_0000
    finally:
        rig.close()


def test_map_ram_refuses_overlaps_and_reuses_the_range(accel: str) -> None:
    require_accel(accel)
    rig = Rig(accel=accel, mem_mib=16)
    buf = mmap.mmap(-1, 0x20_0000)
    host = _host(buf)
    try:
        acc = rig.accel
        for gpa, size in ((0x0, 0x10000),                 # RAM
                          (0xF0_0000, 0x20_0000),         # straddling RAM's end
                          (0xE000_0800, 0x10000)):        # not page-aligned
            with pytest.raises(ValueError):
                acc.map_ram(gpa, host, size)
        for _ in range(3):                                # a BAR moved back and forth
            acc.map_ram(0xE000_0000, host, 0x10000)
            with pytest.raises(ValueError):
                acc.map_ram(0xE000_8000, host, 0x10000)   # overlaps the device RAM
            acc.unmap_ram(0xE000_0000)
        acc.map_ram(0xE000_8000, host, 0x10000)           # the range is MMIO again, so it may be reused
        acc.unmap_ram(0xE000_8000)
        with pytest.raises(ValueError):
            acc.unmap_ram(0xE000_8000)                    # nothing mapped there any more
        if accel == "kvm":
            assert acc._next_slot <= len(rig.memory.cpu_mappings()) + 2     # slot ids are recycled, not used up
        else:
            with pytest.raises(ValueError):               # the software CPU maps device RAM below 4 GiB only
                acc.map_ram(0x1_0000_0000, host, 0x10000)
    finally:
        rig.close()


# -- read-only device RAM below 1 MiB (the firmware's ROM and locked shadow RAM) on the software CPU ------------------
SHADOW, SHADOW_SIZE = 0xC_0000, 0x4000
SHADOW_GUEST = """
        .code16
        mov $0xc000, %ax
        mov %ax, %es
        mov $0x600, %dx
        out %al, %dx              # map read-only
        jmp 1f
1:      movl $0x11223344, %es:0x10    # discarded; the write reaches the MMIO handler
        movl %es:0x14, %eax
        mov %eax, 0x6000          # reads the memory
        mov $0x603, %dx
        out %al, %dx              # probe the write-protection hook
        mov $0x601, %dx
        out %al, %dx              # unmap
        jmp 2f
2:      mov $0x602, %dx
        out %al, %dx              # map read-write
        jmp 3f
3:      movl $0x55667788, %es:0x20    # lands in the memory
        mov $0x603, %dx
        out %al, %dx              # probe again
        mov $0x510, %dx
        out %al, %dx              # done
        jmp .
"""


class ShadowPorts:
    """0x600 maps read-only, 0x601 unmaps, 0x602 maps read-write; 0x603 records whether the software CPU has its
    write-protection hook below 1 MiB (only while something there is read-only, so other stores stay fast)."""

    def __init__(self, accel, host: int) -> None:
        self.accel, self.host = accel, host
        self.hook_seen: list[bool] = []

    def io_read(self, port: int, size: int) -> int:
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == 0x600:
            self.accel.map_ram(SHADOW, self.host, SHADOW_SIZE, readonly=True)
        elif port == 0x601:
            self.accel.unmap_ram(SHADOW)
        elif port == 0x602:
            self.accel.map_ram(SHADOW, self.host, SHADOW_SIZE)
        else:
            self.hook_seen.append(self.accel._write_prot_low is not None)


def test_read_only_shadow_discards_writes_and_the_hook_follows_it(accel: str) -> None:
    if accel != "software":
        pytest.skip("the write-protection hook is the software CPU's")
    require_guest(accel, "realmode16")
    rig = Rig(accel=accel, memory_bytes=512 * 1024)
    buf = mmap.mmap(-1, SHADOW_SIZE)
    buf[0x14:0x18] = struct.pack("<I", 0xCAFEF00D)
    try:
        fallback = Fallback(mmap.mmap(-1, SHADOW_SIZE), SHADOW)      # where discarded writes are reported
        rig.mmio.register(SHADOW, SHADOW_SIZE, fallback)
        ports = ShadowPorts(rig.accel, _host(buf))
        rig.pio.register(0x600, 4, ports)
        assert rig.accel._write_prot_low is None                    # nothing read-only below 1 MiB yet
        rig.memory.write(0x7C00, assemble(SHADOW_GUEST, 16, 0x7C00))
        ex = rig.run(boot_sector_state())
        assert rig.done, ex.detail
        assert buf[0x10:0x14] == bytes(4)                           # the read-only store was discarded...
        assert ("w", SHADOW + 0x10, 4) in fallback.accesses         # ...and reached the bus
        assert rig.memory.read_u32(0x6000) == 0xCAFEF00D
        assert buf[0x20:0x24] == struct.pack("<I", 0x55667788)      # read-write: into the memory
        assert ports.hook_seen == [True, False]
    finally:
        rig.close()
