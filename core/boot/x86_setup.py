"""The CPU state a direct-boot loader hands over: a GDT in guest memory, identity-mapped page tables, and the
matching CpuState (segment caches, control registers, EFER) for

- the Linux 64-bit boot protocol (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"): long mode, paging on,
  a GDT with __BOOT_CS = 0x10 (64-bit code) and __BOOT_DS = 0x18, an identity map covering the kernel, the zero
  page and the command line, interrupts off;
- Multiboot v1 (Multiboot 0.6.96, 3.2 "Machine state"): flat 32-bit protected mode, paging off, CS a 4 GiB
  read/execute segment at 0, the data segments 4 GiB read/write at 0, EFLAGS.IF and VM clear;
- the Linux 32-bit boot protocol (boot.rst, "32-bit Boot Protocol"), for kernels without a 64-bit entry: the
  same flat protected mode with __BOOT_CS = 0x10 and __BOOT_DS = 0x18.

Descriptor formats are Intel SDM vol. 3, 3.4.5 (segment descriptors), 7.2.3 (64-bit TSS descriptor), and 4.5
(4-level paging, 2 MiB pages). Both states carry a usable busy TSS in TR because VMX refuses to enter a guest
whose TR is unusable (SDM vol. 3, 26.3.1.2), and the software CPU wants the same architectural state.
"""
from __future__ import annotations

import struct

from core import platform
from core.hypervisor.base import CpuState, DescriptorTable, Segment
from core.memory import GuestMemory

CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10

# Access-byte types (SDM vol. 3, table 3-1 and 3-2).
TYPE_CODE_XR_ACCESSED = 0xB
TYPE_DATA_RW_ACCESSED = 0x3
TYPE_TSS_BUSY = 0xB

BOOT_CS, BOOT_DS, BOOT_TSS = 0x10, 0x18, 0x20     # Linux's __BOOT_CS and __BOOT_DS, both protocols
FLAT_CS_32, FLAT_DS_32, FLAT_TSS_32 = 0x08, 0x10, 0x18

TSS_ADDR = platform.BOOT_GDT_ADDR + 0x40
TSS_LIMIT = 0x67                       # the 104-byte 32/64-bit TSS, no I/O permission bitmap
FLAT_LIMIT = 0xFFFF_FFFF

PTE_PRESENT, PTE_WRITE, PTE_PS = 1 << 0, 1 << 1, 1 << 7
IDENTITY_MAP_GIB = 4
PAGE_TABLES_SIZE = 0x1000 * (2 + IDENTITY_MAP_GIB)   # PML4 + PDPT + one page directory per GiB


def descriptor(seg: Segment) -> bytes:
    """The 8-byte GDT descriptor whose hidden cache is `seg` (its limit is the byte-granular effective one)."""
    limit = seg.limit >> 12 if seg.g else seg.limit
    access = (seg.type & 0xF) | (int(seg.s) << 4) | ((seg.dpl & 3) << 5) | (int(seg.present) << 7)
    flags = (int(seg.avl) | (int(seg.l) << 1) | (int(seg.db) << 2) | (int(seg.g) << 3))
    base = seg.base & 0xFFFF_FFFF
    return struct.pack("<HHBBBB", limit & 0xFFFF, base & 0xFFFF, (base >> 16) & 0xFF, access,
                       ((limit >> 16) & 0xF) | (flags << 4), base >> 24)


def system_descriptor_64(seg: Segment) -> bytes:
    """A 16-byte long-mode system descriptor (TSS/LDT): the legacy 8 bytes plus base bits 63:32."""
    return descriptor(seg) + struct.pack("<II", seg.base >> 32, 0)


def code64_segment() -> Segment:
    return Segment(selector=BOOT_CS, base=0, limit=FLAT_LIMIT, type=TYPE_CODE_XR_ACCESSED, present=True,
                   dpl=0, db=False, s=True, l=True, g=True)


def flat_data_segment(selector: int) -> Segment:
    return Segment(selector=selector, base=0, limit=FLAT_LIMIT, type=TYPE_DATA_RW_ACCESSED, present=True,
                   dpl=0, db=True, s=True, l=False, g=True)


def code32_segment() -> Segment:
    return Segment(selector=FLAT_CS_32, base=0, limit=FLAT_LIMIT, type=TYPE_CODE_XR_ACCESSED, present=True,
                   dpl=0, db=True, s=True, l=False, g=True)


def tss_segment(selector: int) -> Segment:
    return Segment(selector=selector, base=TSS_ADDR, limit=TSS_LIMIT, type=TYPE_TSS_BUSY, present=True,
                   dpl=0, db=False, s=False, l=False, g=False)


def _write_tss(memory: GuestMemory) -> None:
    tss = bytearray(TSS_LIMIT + 1)
    # I/O map base past the limit: no permission bitmap, so ring 3 port access faults (never used at boot).
    struct.pack_into("<H", tss, 0x66, TSS_LIMIT + 1)
    memory.write(TSS_ADDR, tss)


def write_identity_page_tables(memory: GuestMemory) -> int:
    """Identity-map the first 4 GiB with 2 MiB pages at BOOT_PML4_ADDR; returns the CR3 value."""
    pml4 = platform.BOOT_PML4_ADDR
    pdpt = pml4 + 0x1000
    first_pd = pdpt + 0x1000
    memory.fill(pml4, PAGE_TABLES_SIZE, 0)
    memory.write_u64(pml4, pdpt | PTE_PRESENT | PTE_WRITE)
    pdpt_entries = b"".join(struct.pack("<Q", (first_pd + i * 0x1000) | PTE_PRESENT | PTE_WRITE)
                            for i in range(IDENTITY_MAP_GIB))
    memory.write(pdpt, pdpt_entries)
    pds = b"".join(struct.pack("<Q", (i << 21) | PTE_PRESENT | PTE_WRITE | PTE_PS)
                   for i in range(512 * IDENTITY_MAP_GIB))
    memory.write(first_pd, pds)
    return pml4


def long_mode_state(memory: GuestMemory, entry: int, boot_params: int) -> CpuState:
    """Write the GDT, TSS and page tables and return the state for a Linux 64-bit entry point."""
    cs, ds, tr = code64_segment(), flat_data_segment(BOOT_DS), tss_segment(BOOT_TSS)
    gdt = bytes(16) + descriptor(cs) + descriptor(ds) + system_descriptor_64(tr)
    memory.write(platform.BOOT_GDT_ADDR, gdt)
    _write_tss(memory)
    cr3 = write_identity_page_tables(memory)
    state = CpuState()
    state.rip = entry
    state.rflags = 0x2
    state.regs["rsi"] = boot_params
    state.regs["rsp"] = platform.BOOT_STACK_TOP
    state.cs = cs
    state.ds, state.es, state.ss = (flat_data_segment(BOOT_DS) for _ in range(3))
    state.fs, state.gs = flat_data_segment(BOOT_DS), flat_data_segment(BOOT_DS)
    state.tr = tr
    state.gdt = DescriptorTable(platform.BOOT_GDT_ADDR, len(gdt) - 1)
    state.idt = DescriptorTable(0, 0)
    state.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG
    state.cr3 = cr3
    state.cr4 = CR4_PAE
    state.efer = EFER_LME | EFER_LMA
    return state


def flat_protected_mode_state(memory: GuestMemory, entry: int, cs_selector: int = FLAT_CS_32,
                              ds_selector: int = FLAT_DS_32) -> CpuState:
    """Write the GDT and TSS and return flat 32-bit protected mode with paging off: Multiboot's machine state
    with the default selectors, Linux's 32-bit boot protocol with __BOOT_CS 0x10 / __BOOT_DS 0x18."""
    if cs_selector % 8 or ds_selector % 8 or cs_selector == ds_selector or 0 in (cs_selector, ds_selector):
        raise ValueError("code and data need distinct non-null GDT selectors")
    cs = code32_segment()
    cs.selector = cs_selector
    tss_selector = max(cs_selector, ds_selector) + 8
    tr = tss_segment(tss_selector)
    gdt = bytearray(tss_selector + 8)
    gdt[cs_selector:cs_selector + 8] = descriptor(cs)
    gdt[ds_selector:ds_selector + 8] = descriptor(flat_data_segment(ds_selector))
    gdt[tss_selector:tss_selector + 8] = descriptor(tr)
    memory.write(platform.BOOT_GDT_ADDR, gdt)
    _write_tss(memory)
    state = CpuState()
    state.rip = entry
    state.rflags = 0x2
    state.regs["rsp"] = platform.BOOT_STACK_TOP
    state.cs = cs
    state.ds, state.es, state.ss = (flat_data_segment(ds_selector) for _ in range(3))
    state.fs, state.gs = flat_data_segment(ds_selector), flat_data_segment(ds_selector)
    state.tr = tr
    state.gdt = DescriptorTable(platform.BOOT_GDT_ADDR, len(gdt) - 1)
    state.idt = DescriptorTable(0, 0)
    state.cr0 = CR0_PE | CR0_ET | CR0_NE
    state.cr3 = 0
    state.cr4 = 0
    state.efer = 0
    return state
