"""Multiboot v1 kernels (Multiboot Specification 0.6.96), booted the way QEMU's -kernel boots them.

The header (3.1.1-3.1.4) is a 32-bit aligned magic/flags/checksum triple in the first 8192 bytes. The image is
loaded either from its ELF program headers (PT_LOAD by physical address) or, when flag bit 16 is set, from the
header's address fields (the "a.out kludge": header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr).
The boot information structure (3.3) goes at platform.MULTIBOOT_INFO_ADDR with the memory sizes, the command
line, the same e820 map the Linux loader reports, the boot loader's name and the initrd as module 0; the CPU
starts in the state of 3.2: flat 32-bit protected mode, paging off, EAX = 0x2BADB002, EBX = the info address.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from core import platform
from core.boot.e820 import build_e820, conventional_kib, extended_kib, low_ram_end
from core.boot.elf import is_elf, load_segments, parse_elf
from core.boot.errors import BootError, mib
from core.boot.files import cmdline_bytes as encode_cmdline
from core.boot.x86_setup import flat_protected_mode_state
from core.hypervisor.base import CpuState
from core.memory import GuestMemory

HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
SEARCH_LIMIT = 8192

# Header flags (3.1.2): bits 0-15 are requirements the loader must honour or refuse the kernel.
MB_PAGE_ALIGN = 1 << 0
MB_MEMORY_INFO = 1 << 1
MB_VIDEO_MODE = 1 << 2
MB_AOUT_KLUDGE = 1 << 16
MB_KNOWN_REQUIRED = MB_PAGE_ALIGN | MB_MEMORY_INFO | MB_VIDEO_MODE

# Boot information flags (3.3).
INFO_MEMORY = 1 << 0
INFO_CMDLINE = 1 << 2
INFO_MODS = 1 << 3
INFO_MMAP = 1 << 6
INFO_LOADER_NAME = 1 << 9
INFO_SIZE = 0x74              # through the framebuffer fields, all of which stay zero

LOADER_NAME = b"Vireo\0"
PAGE = 0x1000
VGA_WINDOW_START, VGA_WINDOW_END = 0xA_0000, 0xC_0000

# The boot information page: the structure, then its strings and arrays.
INFO_ADDR = platform.MULTIBOOT_INFO_ADDR
LOADER_NAME_ADDR = INFO_ADDR + 0x80
MMAP_ADDR = INFO_ADDR + 0x100
MODS_ADDR = INFO_ADDR + 0x400
MOD_STRING_ADDR = INFO_ADDR + 0x440
INFO_PAGE_END = INFO_ADDR + PAGE

# Low memory the loader itself writes, and the VGA window that is not RAM; a kernel loaded there would be
# overwritten (or overwrite it). The rest of the BIOS area is RAM on the direct-boot board: QEMU's -kernel loads
# segments there (current binutils put a PT_LOAD holding only the ELF headers just below 1 MiB), and the ACPI
# tables are placed around the kernel's ranges (multiboot_ranges, build_acpi_tables).
_LOADER_AREAS = (
    (platform.BOOT_GDT_ADDR, platform.CMDLINE_ADDR + platform.CMDLINE_MAX, "the boot loader's data"),
    (VGA_WINDOW_START, VGA_WINDOW_END, "the VGA window"),
)


@dataclass(frozen=True)
class MultibootHeader:
    offset: int               # file offset of the magic
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


def find_header(data: bytes) -> MultibootHeader | None:
    """The first valid Multiboot header in the first 8192 bytes (32-bit aligned), or None."""
    if len(data) < 12:
        return None
    limit = min(len(data), SEARCH_LIMIT) - 12
    magic = struct.pack("<I", HEADER_MAGIC)
    pos = data.find(magic, 0, limit + 4)
    while 0 <= pos <= limit:
        if pos % 4 == 0:
            _, flags, check = struct.unpack_from("<III", data, pos)
            if (HEADER_MAGIC + flags + check) & 0xFFFF_FFFF == 0:
                fields = (0, 0, 0, 0, 0)
                if flags & MB_AOUT_KLUDGE and pos + 32 <= len(data):
                    fields = struct.unpack_from("<IIIII", data, pos + 12)
                return MultibootHeader(pos, flags, *fields)
        pos = data.find(magic, pos + 1, limit + 4)
    return None


def is_multiboot(data: bytes) -> bool:
    return find_header(data) is not None


def _check_clear_of_loader(start: int, end: int, name: str) -> None:
    for a_start, a_end, what in _LOADER_AREAS:
        if start < a_end and a_start < end:
            raise BootError(f"{name}: its image at {start:#x}-{end:#x} overlaps {what} at {a_start:#x}-{a_end:#x}; "
                            f"link the kernel at 1 MiB or above")


def multiboot_ranges(data: bytes, name: str) -> list[tuple[int, int]]:
    """The guest-physical ranges the kernel will occupy (ELF segments, or the a.out kludge's image and bss), so
    the loader can put its own tables elsewhere; [] when the header or image is unusable (boot_multiboot then
    says why)."""
    hdr = find_header(data)
    if hdr is None:
        return []
    if hdr.flags & MB_AOUT_KLUDGE:
        end = hdr.load_end_addr or hdr.load_addr + max(0, len(data) - hdr.offset + hdr.header_addr - hdr.load_addr)
        return [(hdr.load_addr, max(end, hdr.bss_end_addr))]
    if not is_elf(data):
        return []
    try:
        return [(seg.paddr, seg.end) for seg in parse_elf(data, name).segments]
    except BootError:
        return []


def _load_aout_kludge(memory: GuestMemory, data: bytes, hdr: MultibootHeader, name: str) -> tuple[int, int, int]:
    """Load per the header's address fields; returns (start, end incl. bss, entry)."""
    if hdr.offset + 32 > len(data):
        raise BootError(f"{name}: its Multiboot header is cut off before the address fields (flag bit 16)")
    if hdr.load_addr > hdr.header_addr:
        raise BootError(f"{name}: Multiboot load_addr {hdr.load_addr:#x} is above header_addr {hdr.header_addr:#x}")
    file_start = hdr.offset - (hdr.header_addr - hdr.load_addr)
    if file_start < 0:
        raise BootError(f"{name}: Multiboot header_addr/load_addr put the image start before the file's start")
    if hdr.load_end_addr == 0:
        size = len(data) - file_start
    else:
        size = hdr.load_end_addr - hdr.load_addr
        if size < 0 or file_start + size > len(data):
            raise BootError(f"{name}: Multiboot load_end_addr {hdr.load_end_addr:#x} lies outside the file "
                            f"({len(data)} bytes)")
    end = hdr.load_addr + size
    bss_end = max(end, hdr.bss_end_addr)
    if hdr.bss_end_addr and hdr.bss_end_addr < end:
        raise BootError(f"{name}: Multiboot bss_end_addr {hdr.bss_end_addr:#x} is below the loaded image's end")
    _check_clear_of_loader(hdr.load_addr, bss_end, name)
    if not memory.contains(hdr.load_addr, bss_end - hdr.load_addr):
        raise BootError(f"{name}: its image at {hdr.load_addr:#x}-{bss_end:#x} lies outside the guest's "
                        f"{mib(memory.size)} of RAM; give more --memory")
    memory.write(hdr.load_addr, memoryview(data)[file_start:file_start + size])
    if bss_end > end:
        memory.fill(end, bss_end - end, 0)
    return hdr.load_addr, bss_end, hdr.entry_addr


def _load_elf(memory: GuestMemory, data: bytes, name: str) -> tuple[int, int, int]:
    image = parse_elf(data, name)
    for seg in image.segments:
        _check_clear_of_loader(seg.paddr, seg.end, name)
    if image.high > 1 << 32:
        raise BootError(f"{name}: its ELF segments reach above 4 GiB; a Multiboot kernel runs without paging")
    load_segments(memory, data, image, name)
    entry = image.physical_entry()
    if entry >= 1 << 32:
        raise BootError(f"{name}: its entry point {entry:#x} is above 4 GiB")
    return image.low, image.high, entry


@dataclass
class MultibootBoot:
    cpu_state: CpuState
    description: str
    kernel_range: tuple[int, int]
    module_addr: int | None


def boot_multiboot(memory: GuestMemory, data: bytes, cmdline: str, initrd: bytes | None, name: str,
                   initrd_name: str = "initrd") -> MultibootBoot:
    """load_multiboot, also saying how it loaded the kernel (see MultibootBoot)."""
    hdr = find_header(data)
    if hdr is None:
        raise BootError(f"{name} is not a Multiboot kernel (no valid header in its first {SEARCH_LIMIT} bytes)")
    unknown = hdr.flags & 0xFFFF & ~MB_KNOWN_REQUIRED
    if unknown:
        raise BootError(f"{name} requires Multiboot features Vireo does not provide (header flags {unknown:#x})")
    if low_ram_end(memory) < 2 * platform.BIOS_AREA_END:
        raise BootError(f"{name}: {memory.size >> 20} MiB of guest memory is too little; give more --memory")
    cmdline_bytes = encode_cmdline(cmdline, name)
    if len(cmdline_bytes) >= platform.CMDLINE_MAX:
        raise BootError(f"{name}: the command line is {len(cmdline_bytes)} bytes; at most "
                        f"{platform.CMDLINE_MAX - 1} fit")

    if hdr.flags & MB_AOUT_KLUDGE:
        start, end, entry = _load_aout_kludge(memory, data, hdr, name)
        how = "Multiboot a.out kludge"
    elif is_elf(data):
        start, end, entry = _load_elf(memory, data, name)
        how = "Multiboot ELF"
    else:
        raise BootError(f"{name} has a Multiboot header but is neither ELF nor uses the address fields (bit 16)")

    info = bytearray(INFO_SIZE)
    flags = INFO_MEMORY | INFO_CMDLINE | INFO_MMAP | INFO_LOADER_NAME
    struct.pack_into("<II", info, 4, conventional_kib(memory), min(extended_kib(memory), 0xFFFF_FFFF))
    memory.write(platform.CMDLINE_ADDR, cmdline_bytes + b"\0")
    struct.pack_into("<I", info, 16, platform.CMDLINE_ADDR)

    module_addr = None
    if initrd is not None:
        # Modules go page-aligned after the kernel (header bit 0 asks for it; it costs nothing to always do).
        module_addr = (max(end, platform.BIOS_AREA_END) + PAGE - 1) & ~(PAGE - 1)
        if module_addr + len(initrd) > low_ram_end(memory):
            raise BootError(f"initrd {initrd_name} ({mib(len(initrd))}) does not fit in {memory.size >> 20} MiB "
                            f"of guest memory after the kernel; give more --memory")
        memory.write(module_addr, initrd)
        mod_string = initrd_name.encode("utf-8", "surrogateescape")[:INFO_PAGE_END - MOD_STRING_ADDR - 1] + b"\0"
        memory.write(MOD_STRING_ADDR, mod_string)
        memory.write(MODS_ADDR, struct.pack("<IIII", module_addr, module_addr + len(initrd), MOD_STRING_ADDR, 0))
        struct.pack_into("<II", info, 20, 1, MODS_ADDR)
        flags |= INFO_MODS

    # mmap entries (3.3): a size field that does not count itself, then base, length, type.
    mmap = b"".join(struct.pack("<IQQI", 20, e.addr, e.size, e.type) for e in build_e820(memory))
    if MMAP_ADDR + len(mmap) > MODS_ADDR:
        raise BootError(f"{name}: the memory map has too many entries for the Multiboot information page")
    memory.write(MMAP_ADDR, mmap)
    struct.pack_into("<II", info, 44, len(mmap), MMAP_ADDR)
    memory.write(LOADER_NAME_ADDR, LOADER_NAME)
    struct.pack_into("<I", info, 64, LOADER_NAME_ADDR)
    struct.pack_into("<I", info, 0, flags)
    memory.write(INFO_ADDR, info)

    state = flat_protected_mode_state(memory, entry)
    state.regs["rax"] = BOOTLOADER_MAGIC
    state.regs["rbx"] = INFO_ADDR
    return MultibootBoot(state, how, (start, end), module_addr)


def load_multiboot(memory: GuestMemory, data: bytes, cmdline: str, initrd: bytes | None, name: str,
                   initrd_name: str = "initrd") -> CpuState:
    """Load a Multiboot v1 kernel (and the initrd as module 0); return the BSP's state at its entry."""
    return boot_multiboot(memory, data, cmdline, initrd, name, initrd_name).cpu_state
