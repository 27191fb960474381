"""Multiboot v1 (core/boot/multiboot.py): header detection, ELF and a.out-kludge loading of tiny synthetic
kernels, the boot information structure and the 32-bit entry state."""
from __future__ import annotations

import struct

import pytest

from core import platform
from core.boot.e820 import build_e820
from core.boot.errors import BootError
from core.boot.multiboot import boot_multiboot, find_header, is_multiboot, load_multiboot
from core.memory import GuestMemory

MiB = 1 << 20
MAGIC = 0x1BADB002
INFO = platform.MULTIBOOT_INFO_ADDR


def mb_header(flags: int, kludge: tuple[int, int, int, int, int] | None = None) -> bytes:
    check = (-(MAGIC + flags)) & 0xFFFF_FFFF
    out = struct.pack("<III", MAGIC, flags, check)
    if kludge is not None:
        out += struct.pack("<IIIII", *kludge)
    return out


CODE = b"\xfa\xf4\xeb\xfd"          # cli; hlt; jmp $-1


def elf32_kernel(paddr: int = 0x10_0000, vaddr: int | None = None, bss: int = 0x2000, flags: int = 0x3,
                 entry_offset: int = 12) -> bytes:
    """An ELF32 i386 executable: one PT_LOAD at paddr holding the Multiboot header then code, plus .bss."""
    vaddr = paddr if vaddr is None else vaddr
    seg = mb_header(flags) + CODE
    offset = 0x1000
    ehdr = struct.pack("<4sBBBBB7sHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, 0, b"\0" * 7, 2, 3, 1,
                       vaddr + entry_offset, 52, 0, 0, 52, 32, 1, 0, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, offset, vaddr, paddr, len(seg), len(seg) + bss, 7, 0x1000)
    image = bytearray(offset) + seg
    image[:52] = ehdr
    image[52:84] = phdr
    return bytes(image)


def aout_kernel(load_addr: int = 0x20_0000, header_offset: int = 0x40, bss: int = 0x3000,
                extra: bytes = b"DATA" * 100, load_end: bool = True) -> tuple[bytes, int]:
    """A flat binary with the a.out kludge: returns (image, entry address)."""
    body = bytearray(header_offset)
    header_addr = load_addr + header_offset
    code_off = header_offset + 32
    entry = load_addr + code_off
    size = code_off + len(CODE) + len(extra)
    end = load_addr + size if load_end else 0
    body += mb_header(0x1_0003, (header_addr, load_addr, end, load_addr + size + bss, entry))
    body += CODE + extra
    return bytes(body), entry


@pytest.fixture
def mem():
    m = GuestMemory(64 * MiB)
    yield m
    m.close()


def test_header_detection():
    assert is_multiboot(elf32_kernel())
    img = bytearray(elf32_kernel())
    img[0x1008] ^= 1                                    # checksum off by one
    assert not is_multiboot(bytes(img))
    late = bytes(8192) + mb_header(0)
    assert not is_multiboot(late)
    assert is_multiboot(bytes(8192 - 12) + mb_header(0))
    misaligned = bytes(2) + mb_header(0)
    assert not is_multiboot(misaligned)
    assert not is_multiboot(b"") and not is_multiboot(b"\x02\xb0\xad\x1b")
    hdr = find_header(aout_kernel()[0])
    assert hdr.offset == 0x40 and hdr.load_addr == 0x20_0000


def test_elf_kernel_loaded_and_info_filled(mem):
    kernel = elf32_kernel()
    mem.fill(0x10_0000 + 16, 0x2000, 0x55)               # stale bytes where .bss goes
    initrd = bytes(range(256)) * 40
    boot = boot_multiboot(mem, kernel, "root=/dev/ram0 loglevel=3", initrd, "kernel.elf", "initrd.img")
    st = boot.cpu_state
    assert boot.description == "Multiboot ELF"
    assert mem.read(0x10_0000, 16) == kernel[0x1000:0x1010]
    assert mem.read(0x10_0000 + 16, 0x2000) == bytes(0x2000)
    assert st.rip == 0x10_0000 + 12
    assert st.regs["rax"] == 0x2BADB002 and st.regs["rbx"] == INFO

    flags, mem_lower, mem_upper = struct.unpack("<III", mem.read(INFO, 12))
    assert flags & 1 and flags & (1 << 2) and flags & (1 << 3) and flags & (1 << 6) and flags & (1 << 9)
    assert mem_lower == 639 and mem_upper == (64 * MiB - MiB) // 1024
    cmdline = mem.read_u32(INFO + 16)
    assert mem.read(cmdline, 26) == b"root=/dev/ram0 loglevel=3\0"
    mods_count, mods_addr = struct.unpack("<II", mem.read(INFO + 20, 8))
    assert mods_count == 1
    mod_start, mod_end, mod_string, _ = struct.unpack("<IIII", mem.read(mods_addr, 16))
    assert mod_start % 4096 == 0 and mod_start >= 0x10_0000 + 16 + 0x2000 and mod_end == mod_start + len(initrd)
    assert mem.read(mod_start, len(initrd)) == initrd
    assert mem.read(mod_string, 11) == b"initrd.img\0"
    name = mem.read_u32(INFO + 64)
    assert mem.read(name, 6) == b"Vireo\0"

    mmap_length, mmap_addr = struct.unpack("<II", mem.read(INFO + 44, 8))
    entries, off = [], 0
    while off < mmap_length:
        size, base, length, etype = struct.unpack("<IQQI", mem.read(mmap_addr + off, 24))
        assert size == 20
        entries.append((base, length, etype))
        off += size + 4
    assert entries == [(e.addr, e.size, e.type) for e in build_e820(mem)]
    assert (0x10_0000, 63 * MiB, 1) in entries


def test_flat_protected_mode_state(mem):
    st = load_multiboot(mem, elf32_kernel(), "", None, "k")
    assert st.cr0 & 1 and not st.cr0 & (1 << 31) and st.efer == 0 and st.cr4 == 0
    assert not st.rflags & (1 << 9) and not st.rflags & (1 << 17)       # IF and VM clear
    cs = st.cs
    assert (cs.selector, cs.base, cs.limit, cs.type, cs.db, cs.l, cs.present, cs.s) == \
        (0x08, 0, 0xFFFF_FFFF, 0xB, True, False, True, True)
    for seg in (st.ds, st.es, st.ss, st.fs, st.gs):
        assert (seg.selector, seg.base, seg.limit, seg.type, seg.db) == (0x10, 0, 0xFFFF_FFFF, 0x3, True)
    assert st.tr.type == 0xB and not st.tr.s and st.tr.present
    # The GDT in memory matches: code at 0x08, data at 0x10, both flat 4 GiB.
    code = mem.read_u64(st.gdt.base + 0x08)
    data = mem.read_u64(st.gdt.base + 0x10)
    assert code == 0x00CF_9B00_0000_FFFF and data == 0x00CF_9300_0000_FFFF
    assert st.gdt.limit + 1 >= 0x20
    # No module flag without an initrd.
    assert not mem.read_u32(INFO) & (1 << 3)


def test_higher_half_elf_entry_translated(mem):
    st = load_multiboot(mem, elf32_kernel(paddr=0x10_0000, vaddr=0xC010_0000), "", None, "hh")
    assert st.rip == 0x10_0000 + 12
    assert mem.read(0x10_0000, 4) == struct.pack("<I", MAGIC)


def test_aout_kludge_loading(mem):
    image, entry = aout_kernel()
    mem.fill(0x20_0000, 0x10000, 0x77)
    boot = boot_multiboot(mem, image, "", b"MOD" * 10, "flat.bin")
    assert boot.description == "Multiboot a.out kludge"
    assert boot.cpu_state.rip == entry
    assert mem.read(0x20_0000, len(image)) == image
    assert mem.read(0x20_0000 + len(image), 0x3000) == bytes(0x3000)
    assert boot.kernel_range == (0x20_0000, 0x20_0000 + len(image) + 0x3000)
    assert boot.module_addr >= boot.kernel_range[1] and boot.module_addr % 4096 == 0


def test_aout_kludge_with_header_not_at_start_of_file(mem):
    """load_addr < header_addr: the file's image starts header_addr - load_addr bytes before the header."""
    prefix = b"\xcc" * 0x200
    image, entry = aout_kernel(header_offset=0x40)
    blob = prefix + image          # the header now sits at file offset 0x240, the image at 0x200
    load_multiboot(mem, blob, "", None, "prefixed.bin")
    assert mem.read(0x20_0000, len(image)) == image


def test_aout_kludge_load_end_zero_means_whole_file(mem):
    image, _ = aout_kernel(load_end=False)
    load_multiboot(mem, image, "", None, "flat.bin")
    assert mem.read(0x20_0000, len(image)) == image


@pytest.mark.parametrize("mutate,needle", [
    (lambda: elf32_kernel(flags=0x3 | (1 << 5)), "requires Multiboot features"),
    (lambda: elf32_kernel(paddr=0x8000), "overlaps the boot loader's data"),
    (lambda: elf32_kernel(paddr=0xA8000), "overlaps the VGA window"),
    (lambda: elf32_kernel(paddr=0x800_0000), "outside the guest"),
    (lambda: bytes(64) + mb_header(0x3), "neither ELF"),
    (lambda: bytes(64) + mb_header(0x1_0003, (0x10_0000, 0x10_0100, 0, 0, 0x10_0000)), "load_addr"),
    (lambda: bytes(64) + mb_header(0x1_0003, (0x10_0040, 0x10_0000, 0x20_0000, 0, 0x10_0000)), "outside the file"),
])
def test_bad_kernels_are_one_line_errors(mem, mutate, needle):
    with pytest.raises(BootError) as exc:
        load_multiboot(mem, mutate(), "", None, "bad.krn")
    msg = str(exc.value)
    assert "bad.krn" in msg and needle in msg and "\n" not in msg


def test_initrd_too_big(mem):
    with pytest.raises(BootError, match=r"initrd big.img \(80 MiB\) does not fit in 64 MiB"):
        load_multiboot(mem, elf32_kernel(), "", bytes(80 * MiB), "k", "big.img")
