"""Just enough of an ELF reader to load an executable's PT_LOAD segments by physical address (System V ABI,
"Program Header"; ELF-64 Object File Format 1.5): used for the vmlinux inside a bzImage and for Multiboot ELF
kernels. Little-endian x86 (ELFCLASS32 / EM_386 and ELFCLASS64 / EM_X86_64) only.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from core.boot.errors import BootError, mib
from core.memory import GuestMemory

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
ET_EXEC = 2
EM_386, EM_X86_64 = 3, 62
PT_LOAD = 1


@dataclass(frozen=True)
class LoadSegment:
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int

    @property
    def end(self) -> int:
        return self.paddr + self.memsz


@dataclass(frozen=True)
class ElfImage:
    elf_class: int        # 32 or 64
    machine: int
    entry: int            # e_entry as written in the file (often a virtual address)
    segments: tuple[LoadSegment, ...]

    @property
    def low(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def high(self) -> int:
        return max(s.end for s in self.segments)

    def physical_entry(self) -> int:
        """e_entry as a physical address: translated through the segment whose virtual range holds it (a
        higher-half kernel links its entry virtually, as GRUB's Multiboot loader assumes), else taken as physical
        already (vmlinux links its entry as phys_startup_64, outside every segment's virtual range)."""
        for s in self.segments:
            if s.vaddr <= self.entry < s.vaddr + s.memsz:
                return s.paddr + (self.entry - s.vaddr)
        return self.entry


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def parse_elf(data: bytes, name: str) -> ElfImage:
    """Parse the header and PT_LOAD program headers, checking every offset against the file's size."""
    if len(data) < 52 or not is_elf(data):
        raise BootError(f"{name}: not an ELF file")
    elf_class, encoding = data[4], data[5]
    if encoding != ELFDATA2LSB:
        raise BootError(f"{name}: big-endian ELF; an x86 kernel must be little-endian")
    if elf_class == ELFCLASS32:
        e_type, e_machine, _, e_entry, e_phoff, _, _, _, e_phentsize, e_phnum = struct.unpack_from(
            "<HHIIIIIHHH", data, 16)
        ph_fmt, ph_size = "<IIIIIIII", 32
    elif elf_class == ELFCLASS64:
        if len(data) < 64:
            raise BootError(f"{name}: truncated ELF64 header")
        e_type, e_machine, _, e_entry, e_phoff, _, _, _, e_phentsize, e_phnum = struct.unpack_from(
            "<HHIQQQIHHH", data, 16)
        ph_fmt, ph_size = "<IIQQQQQQ", 56
    else:
        raise BootError(f"{name}: unknown ELF class {elf_class}")
    if e_type != ET_EXEC:
        raise BootError(f"{name}: ELF type {e_type} is not an executable (ET_EXEC); link the kernel statically")
    if e_machine not in (EM_386, EM_X86_64):
        raise BootError(f"{name}: ELF machine {e_machine} is not x86")
    if e_phentsize < ph_size or e_phnum == 0 or e_phoff + e_phnum * e_phentsize > len(data):
        raise BootError(f"{name}: ELF program headers are missing or run past the end of the file")
    segments = []
    for i in range(e_phnum):
        fields = struct.unpack_from(ph_fmt, data, e_phoff + i * e_phentsize)
        if elf_class == ELFCLASS32:
            p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz = fields[:6]
        else:
            p_type, _, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz = fields[:7]
        if p_type != PT_LOAD or p_memsz == 0:
            continue
        if p_filesz > p_memsz or p_offset + p_filesz > len(data):
            raise BootError(f"{name}: ELF segment {i} runs past the end of the file (truncated image?)")
        segments.append(LoadSegment(p_offset, p_vaddr, p_paddr, p_filesz, p_memsz))
    if not segments:
        raise BootError(f"{name}: ELF file has no loadable (PT_LOAD) segment")
    return ElfImage(32 if elf_class == ELFCLASS32 else 64, e_machine, e_entry, tuple(segments))


def load_segments(memory: GuestMemory, data: bytes, image: ElfImage, name: str) -> None:
    """Copy each segment to its physical address and zero its tail (.bss)."""
    for s in image.segments:
        if not memory.contains(s.paddr, s.memsz):
            raise BootError(f"{name}: ELF segment at {s.paddr:#x}-{s.end:#x} lies outside the guest's "
                            f"{mib(memory.size)} of RAM; give more --memory")
        if s.filesz:
            memory.write(s.paddr, memoryview(data)[s.offset:s.offset + s.filesz])
        if s.memsz > s.filesz:
            memory.fill(s.paddr + s.filesz, s.memsz - s.filesz, 0)
