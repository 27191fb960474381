"""Linux direct boot (core/boot/linux.py): header validation, the zero page, e820, command line and initrd
placement, the 64-bit entry state, and host-side decompression, on synthetic bzImages and on Debian's kernel."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import pytest

from core import platform
from core.boot import linux
from core.boot.e820 import E820_RAM, E820_RESERVED
from core.boot.elf import parse_elf
from core.boot.errors import BootError
from core.boot.linux import BzImageHeader, boot_linux, load_linux, parse_bzimage
from core.memory import GuestMemory
from tests.helpers.runner import FIXTURES_OUT, in_ci

MiB = 1 << 20
ZP = platform.ZERO_PAGE_ADDR


# -- a synthetic bzImage ---------------------------------------------------------------------------------------

def synthetic_vmlinux(paddr: int = 0x100_0000, text: bytes = b"\x90" * 64 + b"\xf4", bss: int = 0x1000,
                      vaddr: int = 0xFFFF_FFFF_8100_0000, entry: int | None = None) -> bytes:
    """An ELF64 x86-64 executable with one PT_LOAD segment, laid out like vmlinux (virtual link address,
    physical p_paddr, e_entry physical)."""
    ehdr_size, phdr_size = 64, 56
    offset = 0x1000
    ehdr = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, b"\0" * 7, 2, 62, 1,
                       paddr if entry is None else entry, ehdr_size, 0, 0, ehdr_size, phdr_size, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 7, offset, vaddr, paddr, len(text), len(text) + bss, 0x200000)
    image = bytearray(offset + len(text))
    image[:len(ehdr)] = ehdr
    image[ehdr_size:ehdr_size + phdr_size] = phdr
    image[offset:] = text
    return bytes(image)


def synthetic_bzimage(*, version: int = 0x20F, loadflags: int = 0x01, xloadflags: int = 0x7F,
                      relocatable: bool = True, pref_address: int = 0x100_0000, init_size: int = 0x40_0000,
                      initrd_addr_max: int = 0x7FFF_FFFF, cmdline_size: int = 2047, kernel_alignment: int = 0x20_0000,
                      payload: bytes | None = None, setup_sects: int = 4) -> bytes:
    """A bzImage whose protected-mode part is a gzip'ed synthetic vmlinux with the build's size trailer, behind a
    real-mode header carrying the given fields (the setup code itself is never run by Vireo)."""
    if payload is None:
        elf = synthetic_vmlinux()
        payload = gzip.compress(elf, mtime=0) + struct.pack("<I", len(elf))
    setup_size = (setup_sects + 1) * 512
    payload_offset = 0x100
    pm = bytearray(payload_offset) + payload
    pm += bytes(-len(pm) % 16)
    img = bytearray(setup_size) + pm
    header_end = 0x268
    struct.pack_into("<B", img, 0x1F1, setup_sects)
    struct.pack_into("<I", img, 0x1F4, len(pm) // 16)
    struct.pack_into("<H", img, 0x1FE, 0xAA55)
    img[0x200] = 0xEB
    img[0x201] = header_end - 0x202
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, version)
    kv = 0x400
    img[kv + 0x200:kv + 0x200 + 24] = b"6.99.0-synthetic (test)\0"
    struct.pack_into("<H", img, 0x20E, kv)
    img[0x211] = loadflags
    struct.pack_into("<I", img, 0x214, 0x10_0000)
    struct.pack_into("<I", img, 0x22C, initrd_addr_max)
    struct.pack_into("<I", img, 0x230, kernel_alignment)
    img[0x234] = int(relocatable)
    img[0x235] = 21
    struct.pack_into("<H", img, 0x236, xloadflags)
    struct.pack_into("<I", img, 0x238, cmdline_size)
    struct.pack_into("<II", img, 0x248, payload_offset, len(payload))
    struct.pack_into("<Q", img, 0x258, pref_address)
    struct.pack_into("<I", img, 0x260, init_size)
    return bytes(img)


def e820_of(memory: GuestMemory) -> list[tuple[int, int, int]]:
    n = memory.read_u8(ZP + 0x1E8)
    return [struct.unpack("<QQI", memory.read(ZP + 0x2D0 + 20 * i, 20)) for i in range(n)]


def read_cstring(memory: GuestMemory, addr: int, limit: int = 4096) -> bytes:
    return memory.read(addr, limit).split(b"\0", 1)[0]


@pytest.fixture
def mem512():
    m = GuestMemory(512 * MiB)
    yield m
    m.close()


# -- the real kernel -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_kernel() -> bytes:
    candidates = [os.environ.get("VIREO_TEST_KERNEL"), FIXTURES_OUT / "vmlinuz-amd64", FIXTURES_OUT / "vmlinuz"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c).read_bytes()
    reason = ("Debian amd64 kernel not found (set VIREO_TEST_KERNEL or build tests/fixtures/out/vmlinuz-amd64 "
              "with tests/fixtures/build.py)")
    if in_ci():
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


def test_real_kernel_header(real_kernel):
    hdr = parse_bzimage(real_kernel, "vmlinuz")
    assert isinstance(hdr, BzImageHeader)
    assert hdr.version >= 0x20F and hdr.protocol.startswith("2.")
    assert hdr.xloadflags & linux.XLF_KERNEL_64 and hdr.loadflags & linux.LOADED_HIGH
    assert hdr.relocatable and hdr.kernel_alignment == 0x20_0000
    assert hdr.pref_address == 0x100_0000            # CONFIG_PHYSICAL_START
    assert hdr.initrd_addr_max == 0x7FFF_FFFF
    assert hdr.cmdline_size >= 2047
    assert hdr.init_size > 16 * MiB
    assert hdr.kernel_version.split(".")[0].isdigit()
    assert hdr.setup_size + hdr.protected_mode_size <= len(real_kernel)
    pm = real_kernel[hdr.setup_size:]
    assert linux.payload_format(pm[hdr.payload_offset:]) in ("xz", "gzip", "zstd", "lzma", "bzip2", "lz4", "lzo")


def test_zero_page_against_real_kernel(real_kernel, mem512):
    initrd = os.urandom(3 * MiB + 123)
    boot = boot_linux(mem512, real_kernel, initrd, "console=ttyS0 quiet", 0xE0000, kernel_name="vmlinuz")
    hdr = parse_bzimage(real_kernel, "vmlinuz")
    zp = mem512.read(ZP, 4096)
    # The setup header is the kernel's own, except the fields a loader owns.
    owned = {0x210, 0x214, 0x215, 0x216, 0x217} | set(range(0x218, 0x220)) | set(range(0x228, 0x22C))
    for off in range(0x1F1, hdr.header_end):
        if off not in owned:
            assert zp[off] == real_kernel[off], f"setup header byte {off:#x} differs"
    assert zp[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", zp, 0x1FE)[0] == 0xAA55
    assert zp[0x210] == 0xFF
    assert struct.unpack_from("<I", zp, 0x228)[0] == platform.CMDLINE_ADDR
    assert read_cstring(mem512, platform.CMDLINE_ADDR) == b"console=ttyS0 quiet"
    assert struct.unpack_from("<Q", zp, 0x070)[0] == 0xE0000          # protocol 2.14+: acpi_rsdp_addr
    image, size = struct.unpack_from("<II", zp, 0x218)
    assert size == len(initrd) and image == boot.initrd_addr and image % 4096 == 0
    assert mem512.read(image, len(initrd)) == initrd
    assert image + size <= hdr.initrd_addr_max + 1
    # Kept clear of what the kernel occupies while it decompresses and runs.
    k_start, k_end = boot.kernel_range
    assert k_start == hdr.pref_address and k_end == hdr.pref_address + hdr.init_size
    assert image >= k_end or image + size <= k_start
    # No video: screen_info all zero (orig_video_isVGA, lines, cols).
    assert zp[:0x40] == bytes(0x40)
    assert zp[0x1EF] == 0
    # The protected-mode code at pref_address (relocatable, aligned, fits) and entered at +0x200.
    pm = real_kernel[hdr.setup_size:hdr.setup_size + hdr.protected_mode_size]
    assert mem512.read(hdr.pref_address, 4096) == pm[:4096]
    assert boot.cpu_state.rip == hdr.pref_address + 0x200
    assert boot.cpu_state.regs["rsi"] == ZP
    assert "bzImage protocol 2." in boot.description and hdr.kernel_version.split(" ")[0] in boot.description


def test_real_kernel_decompressed_on_host(real_kernel, mem512):
    hdr = parse_bzimage(real_kernel, "vmlinuz")
    pm = real_kernel[hdr.setup_size:hdr.setup_size + hdr.protected_mode_size]
    payload = pm[hdr.payload_offset:hdr.payload_offset + hdr.payload_length]
    fmt, vmlinux = linux.decompress_payload(payload, "vmlinuz")
    if vmlinux is None:
        pytest.skip(f"this host cannot unpack the kernel's {fmt} payload")
    assert len(vmlinux) == struct.unpack("<I", payload[-4:])[0]
    elf = parse_elf(vmlinux, "vmlinux")
    assert elf.elf_class == 64 and elf.machine == 62
    entry = elf.physical_entry()
    # startup_64 is the first thing in .text, at the physical start (CONFIG_PHYSICAL_START) of the image.
    assert entry == hdr.pref_address == elf.low
    text = min(elf.segments, key=lambda s: s.paddr)
    assert text.vaddr >= 0xFFFF_FFFF_8000_0000 and text.paddr <= entry < text.paddr + text.memsz

    initrd = os.urandom(2 * MiB)
    boot = boot_linux(mem512, real_kernel, initrd, "console=ttyS0", 0xE0000, decompress_on_host=True,
                      kernel_name="vmlinuz")
    assert boot.cpu_state.rip == entry
    assert "unpacked on the host" in boot.description and fmt in boot.description
    for seg in elf.segments:
        assert mem512.read(seg.paddr, 256) == vmlinux[seg.offset:seg.offset + 256]
        tail = seg.paddr + seg.filesz - 256
        assert mem512.read(tail, 256) == vmlinux[seg.offset + seg.filesz - 256:seg.offset + seg.filesz]
    k_start, k_end = boot.kernel_range
    assert k_start == elf.low and k_end >= max(elf.high, elf.low + hdr.init_size)
    assert boot.initrd_addr >= k_end or boot.initrd_addr + len(initrd) <= k_start


def test_real_kernel_needs_more_memory_than_32_mib(real_kernel):
    m = GuestMemory(32 * MiB)
    try:
        with pytest.raises(BootError, match=r"kernel vmlinuz needs \d+ MiB .*--memory"):
            load_linux(m, real_kernel, None, "", None, kernel_name="vmlinuz")
    finally:
        m.close()


# -- header validation -----------------------------------------------------------------------------------------

def test_synthetic_header_parses():
    hdr = parse_bzimage(synthetic_bzimage(), "bz")
    assert hdr.version == 0x20F and hdr.protocol == "2.15"
    assert hdr.setup_sects == 4 and hdr.setup_size == 2560
    assert hdr.header_end == 0x268
    assert hdr.kernel_version == "6.99.0-synthetic (test)"


def test_setup_sects_zero_means_four():
    img = bytearray(synthetic_bzimage())
    img[0x1F1] = 0
    assert parse_bzimage(bytes(img), "bz").setup_size == 5 * 512


@pytest.mark.parametrize("mutate,needle", [
    (lambda b: b.__setitem__(slice(0x202, 0x206), b"XXXX"), "not a Linux bzImage"),
    (lambda b: struct.pack_into("<H", b, 0x206, 0x204), "protocol 2.04"),
    (lambda b: b.__setitem__(0x211, 0), "zImage"),
    (lambda b: struct.pack_into("<I", b, 0x230, 0x30_0000), "kernel_alignment"),
    (lambda b: struct.pack_into("<I", b, 0x1F4, 0x10_0000), "truncated"),
    (lambda b: struct.pack_into("<I", b, 0x24C, 0x10_0000), "payload"),
])
def test_bad_headers_are_one_line_errors(mutate, needle):
    img = bytearray(synthetic_bzimage())
    mutate(img)
    with pytest.raises(BootError) as exc:
        parse_bzimage(bytes(img), "broken.bin")
    msg = str(exc.value)
    assert "broken.bin" in msg and needle in msg and "\n" not in msg


def test_truncated_file():
    with pytest.raises(BootError, match="truncated"):
        parse_bzimage(synthetic_bzimage()[:0x230], "short")


# -- the zero page ---------------------------------------------------------------------------------------------

def test_e820_512_mib(mem512):
    load_linux(mem512, synthetic_bzimage(), None, "", 0xE0000)
    e820 = e820_of(mem512)
    assert e820[0] == (0, platform.EBDA_START, E820_RAM)
    assert e820[1] == (platform.EBDA_START, 0x10_0000 - platform.EBDA_START, E820_RESERVED)
    assert e820[2] == (0x10_0000, 512 * MiB - 0x10_0000, E820_RAM)
    reserved = {(a, t) for a, _, t in e820[3:]}
    assert (platform.IOAPIC_BASE, E820_RESERVED) in reserved and (platform.LAPIC_BASE, E820_RESERVED) in reserved
    # Sorted, non-overlapping, and the ACPI tables' area is reserved rather than usable.
    for (a, s, _), (b, _, _) in zip(e820, e820[1:], strict=False):
        assert a + s <= b
    assert any(a <= platform.ACPI_TABLES_ADDR < a + s and t == E820_RESERVED for a, s, t in e820)


def test_e820_high_memory():
    m = GuestMemory(3 * 1024 * MiB + 512 * MiB)
    try:
        load_linux(m, synthetic_bzimage(), None, "", None)
        e820 = e820_of(m)
        ram = [(a, s) for a, s, t in e820 if t == E820_RAM]
        assert ram == [(0, platform.EBDA_START), (0x10_0000, 0xC000_0000 - 0x10_0000), (1 << 32, 512 * MiB)]
        assert sum(s for _, s in ram) == m.size - (0x10_0000 - platform.EBDA_START)
        # Legacy alt_mem_k: KiB from 1 MiB to the first hole.
        assert m.read_u32(ZP + 0x1E0) == (0xC000_0000 - 0x10_0000) // 1024
    finally:
        m.close()


def test_cmdline_placement_and_limit(mem512):
    cmd = "console=ttyS0 " + "x" * 2000
    load_linux(mem512, synthetic_bzimage(cmdline_size=2047), None, cmd, None)
    assert mem512.read_u32(ZP + 0x228) == platform.CMDLINE_ADDR
    assert read_cstring(mem512, platform.CMDLINE_ADDR) == cmd.encode()
    with pytest.raises(BootError, match=r"k\.bin: the command line is 2048 bytes, longer than the 2047"):
        load_linux(mem512, synthetic_bzimage(cmdline_size=2047), None, "y" * 2048, None, kernel_name="k.bin")
    # Exactly cmdline_size (which excludes the NUL) is fine.
    load_linux(mem512, synthetic_bzimage(cmdline_size=255), None, "z" * 255, None)
    assert read_cstring(mem512, platform.CMDLINE_ADDR) == b"z" * 255


def test_acpi_rsdp_only_from_protocol_2_14(mem512):
    load_linux(mem512, synthetic_bzimage(version=0x20E), None, "", 0xE0000)
    assert mem512.read_u64(ZP + 0x70) == 0xE0000
    load_linux(mem512, synthetic_bzimage(version=0x20D), None, "", 0xE0000)
    assert mem512.read_u64(ZP + 0x70) == 0


def test_initrd_placed_high_below_initrd_addr_max():
    m = GuestMemory(1024 * MiB)
    try:
        initrd = bytes(range(256)) * 4096 + b"tail"
        boot = boot_linux(m, synthetic_bzimage(initrd_addr_max=0x1FFF_FFFF), initrd, "", None)
        addr = m.read_u32(ZP + 0x218)
        assert addr == boot.initrd_addr and m.read_u32(ZP + 0x21C) == len(initrd)
        assert addr % 4096 == 0
        assert addr + len(initrd) <= 0x2000_0000 and addr + len(initrd) > 0x2000_0000 - 4096
        assert m.read(addr, len(initrd)) == initrd
        # Without the cap it goes to the top of RAM.
        boot = boot_linux(m, synthetic_bzimage(), initrd, "", None)
        assert m.size - 4096 < boot.initrd_addr + len(initrd) <= m.size
    finally:
        m.close()


def test_initrd_goes_below_the_kernel_when_it_must():
    # 64 MiB of RAM; the kernel runs at 16 MiB and needs 40 MiB from there: 8 MiB left on top, 15 below.
    m = GuestMemory(64 * MiB)
    try:
        bz = synthetic_bzimage(init_size=40 * MiB)
        boot = boot_linux(m, bz, b"\1" * (12 * MiB), "", None)
        assert boot.kernel_range == (16 * MiB, 56 * MiB)
        assert 1 * MiB <= boot.initrd_addr and boot.initrd_addr + 12 * MiB <= 16 * MiB
        boot = boot_linux(m, bz, b"\1" * (7 * MiB), "", None)
        assert boot.initrd_addr >= 56 * MiB
    finally:
        m.close()


def test_initrd_too_big():
    m = GuestMemory(64 * MiB)
    try:
        with pytest.raises(BootError) as exc:
            load_linux(m, synthetic_bzimage(), b"\0" * (70 * MiB), "", None, initrd_name="big.img")
        assert str(exc.value).startswith("initrd big.img (70 MiB) does not fit in 64 MiB of guest memory")
        assert "give more --memory" in str(exc.value)
    finally:
        m.close()


def test_non_relocatable_kernel_loads_at_1_mib(mem512):
    boot = boot_linux(mem512, synthetic_bzimage(relocatable=False), None, "", None)
    assert boot.cpu_state.rip == 0x10_0000 + 0x200
    assert mem512.read_u32(ZP + 0x214) == 0x10_0000
    # It moves itself to pref_address and needs init_size there.
    assert boot.kernel_range == (0x10_0000, 0x100_0000 + 0x40_0000)


def test_kernel_runtime_region_must_fit():
    m = GuestMemory(18 * MiB)
    try:
        # A relocatable kernel still runs at pref_address (16 MiB) at the lowest, and needs init_size from there.
        with pytest.raises(BootError, match="needs 20 MiB"):
            load_linux(m, synthetic_bzimage(), None, "", None)
        boot = boot_linux(m, synthetic_bzimage(init_size=1 * MiB), None, "", None)
        assert boot.cpu_state.rip == 0x100_0000 + 0x200
    finally:
        m.close()


# -- the 64-bit entry state ------------------------------------------------------------------------------------

def _descriptor(memory: GuestMemory, gdt: int, selector: int) -> dict:
    raw = memory.read_u64(gdt + (selector & ~7))
    limit = (raw & 0xFFFF) | ((raw >> 32) & 0xF0000)
    flags = (raw >> 52) & 0xF
    return {"base": ((raw >> 16) & 0xFFFFFF) | (((raw >> 56) & 0xFF) << 24), "type": (raw >> 40) & 0xF,
            "s": (raw >> 44) & 1, "dpl": (raw >> 45) & 3, "p": (raw >> 47) & 1, "l": (flags >> 1) & 1,
            "db": (flags >> 2) & 1, "g": (flags >> 3) & 1,
            "limit": (limit << 12 | 0xFFF) if flags & 8 else limit}


def _translate(memory: GuestMemory, cr3: int, vaddr: int) -> int | None:
    """Walk 4-level paging (2 MiB or 4 KiB leaves) as the CPU would."""
    table = cr3 & ~0xFFF
    for level, shift in enumerate((39, 30, 21, 12)):
        entry = memory.read_u64(table + ((vaddr >> shift) & 0x1FF) * 8)
        if not entry & 1:
            return None
        if level in (1, 2) and entry & 0x80:
            return (entry & 0xF_FFFF_FFE0_0000 & ~((1 << shift) - 1)) | (vaddr & ((1 << shift) - 1))
        table = entry & 0xF_FFFF_FFFF_F000
    return table | (vaddr & 0xFFF)


def test_long_mode_entry_state(mem512):
    st = load_linux(mem512, synthetic_bzimage(), None, "", None)
    assert st.cr0 & 0x8000_0001 == 0x8000_0001 and st.cr0 & 0x30 == 0x30     # PG, PE, ET, NE
    assert st.cr4 & 0x20 and st.efer & 0x500 == 0x500                           # PAE, LME|LMA
    assert st.rflags == 2 and st.regs["rsi"] == ZP
    assert 0 < st.regs["rsp"] <= platform.BOOT_STACK_TOP
    assert (st.cs.selector, st.cs.l, st.cs.db, st.cs.type, st.cs.dpl, st.cs.present, st.cs.g, st.cs.s) == \
        (0x10, True, False, 0xB, 0, True, True, True)
    for seg in (st.ds, st.es, st.ss, st.fs, st.gs):
        assert (seg.selector, seg.base, seg.limit, seg.type, seg.present, seg.s) == \
            (0x18, 0, 0xFFFF_FFFF, 0x3, True, True)
    assert st.tr.type == 0xB and not st.tr.s and st.tr.present and not st.tr.unusable and st.tr.limit >= 0x67
    # The GDT in memory says the same as the segment caches (boot.rst: __BOOT_CS 0x10, __BOOT_DS 0x18).
    assert st.gdt.base == platform.BOOT_GDT_ADDR and st.gdt.limit >= 0x2F
    cs = _descriptor(mem512, st.gdt.base, 0x10)
    assert (cs["type"], cs["s"], cs["p"], cs["l"], cs["db"], cs["dpl"]) == (0xB, 1, 1, 1, 0, 0)
    ds = _descriptor(mem512, st.gdt.base, 0x18)
    assert (ds["type"], ds["s"], ds["p"], ds["base"], ds["limit"]) == (0x3, 1, 1, 0, 0xFFFF_FFFF)
    tss = _descriptor(mem512, st.gdt.base, 0x20)
    assert (tss["type"], tss["s"], tss["p"], tss["base"]) == (0xB, 0, 1, st.tr.base)
    assert mem512.read_u32(st.gdt.base + 0x28) == st.tr.base >> 32
    # Identity map of the first 4 GiB, rooted at BOOT_PML4_ADDR.
    assert st.cr3 == platform.BOOT_PML4_ADDR
    for addr in (0, ZP, platform.CMDLINE_ADDR, st.rip, 0x1234_5678, 0xFEE0_0000, 0xFFFF_FFFF):
        assert _translate(mem512, st.cr3, addr) == addr
    assert _translate(mem512, st.cr3, 1 << 32) is None


# -- host-side decompression on synthetic payloads -------------------------------------------------------------

def test_decompress_on_host_gzip(mem512):
    text = bytes(range(200)) + b"\xf4"
    elf = synthetic_vmlinux(paddr=0x100_0000, text=text, bss=0x3000)
    payload = gzip.compress(elf) + struct.pack("<I", len(elf))
    mem512.fill(0x100_0000 + len(text), 0x3000, 0xAA)        # stale memory where .bss goes
    boot = boot_linux(mem512, synthetic_bzimage(payload=payload), b"I" * 5000, "", None, decompress_on_host=True)
    assert boot.cpu_state.rip == 0x100_0000
    assert mem512.read(0x100_0000, len(text)) == text
    assert mem512.read(0x100_0000 + len(text), 0x3000) == bytes(0x3000)
    assert "gzip vmlinux unpacked on the host" in boot.description


def test_entry_given_virtually_is_translated(mem512):
    elf = synthetic_vmlinux(entry=0xFFFF_FFFF_8100_0010)
    payload = gzip.compress(elf) + struct.pack("<I", len(elf))
    st = load_linux(mem512, synthetic_bzimage(payload=payload), None, "", None, decompress_on_host=True)
    assert st.rip == 0x100_0010


def test_unsupported_payload_falls_back_to_bzimage_entry(mem512):
    payload = b"\x02\x21\x4c\x18" + os.urandom(1000)         # lz4 legacy frame: no decoder in the stdlib
    boot = boot_linux(mem512, synthetic_bzimage(payload=payload), None, "", None, decompress_on_host=True)
    assert boot.cpu_state.rip == 0x100_0000 + 0x200
    assert "lz4" in boot.description and "in-guest" in boot.description


def test_corrupt_payload_is_a_boot_error(mem512):
    elf = synthetic_vmlinux()
    payload = bytearray(gzip.compress(elf) + struct.pack("<I", len(elf)))
    payload[20:40] = bytes(20)
    with pytest.raises(BootError, match="bad.bin: its gzip payload is corrupt"):
        load_linux(mem512, synthetic_bzimage(payload=bytes(payload)), None, "", None, decompress_on_host=True,
                   kernel_name="bad.bin")


@pytest.mark.parametrize("fmt", ["xz", "lzma", "bzip2"])
def test_stdlib_payload_formats(fmt):
    import bz2
    import lzma
    elf = synthetic_vmlinux()
    packed = {"xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
              "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
              "bzip2": bz2.compress}[fmt](elf)
    got_fmt, out = linux.decompress_payload(packed + struct.pack("<I", len(elf)), "k")
    assert got_fmt == fmt and out == elf


# -- kernels without a 64-bit entry: the 32-bit boot protocol ------------------------------------------------

def test_32bit_protocol_entry(mem512):
    bz = synthetic_bzimage(xloadflags=0x04)
    boot = boot_linux(mem512, bz, None, "console=ttyS0", 0xE0000, decompress_on_host=True)
    st = boot.cpu_state
    assert "32-bit entry" in boot.description
    hdr = parse_bzimage(bz, "bz")
    assert not hdr.has_64bit_entry
    assert st.rip == 0x100_0000 and mem512.read(0x100_0000, 64) == bz[hdr.setup_size:hdr.setup_size + 64]
    assert st.cr0 & 1 and not st.cr0 & (1 << 31) and st.efer == 0 and st.cr4 == 0
    assert st.regs["rsi"] == ZP and st.regs["rbp"] == st.regs["rdi"] == st.regs["rbx"] == 0
    assert (st.cs.selector, st.cs.db, st.cs.l, st.cs.type, st.cs.limit) == (0x10, True, False, 0xB, 0xFFFF_FFFF)
    for seg in (st.ds, st.es, st.ss):
        assert (seg.selector, seg.db, seg.type, seg.limit) == (0x18, True, 0x3, 0xFFFF_FFFF)
    cs = _descriptor(mem512, st.gdt.base, 0x10)
    ds = _descriptor(mem512, st.gdt.base, 0x18)
    assert (cs["type"], cs["db"], cs["l"], cs["limit"]) == (0xB, 1, 0, 0xFFFF_FFFF)
    assert (ds["type"], ds["db"], ds["limit"]) == (0x3, 1, 0xFFFF_FFFF)
    tr = _descriptor(mem512, st.gdt.base, st.tr.selector)
    assert tr["type"] == 0xB and tr["s"] == 0 and st.tr.selector > 0x18
    assert mem512.read_u32(ZP + 0x228) == platform.CMDLINE_ADDR and mem512.read_u8(ZP + 0x210) == 0xFF


def test_real_32bit_kernel_header(mem512):
    path = FIXTURES_OUT / "vmlinuz-686"
    if not path.is_file():
        if in_ci():
            pytest.fail(f"CI: Debian i386 kernel not found at {path}", pytrace=False)
        pytest.skip(f"Debian i386 kernel not found at {path}")
    data = path.read_bytes()
    hdr = parse_bzimage(data, "vmlinuz-686")
    assert not hdr.has_64bit_entry and hdr.relocatable
    boot = boot_linux(mem512, data, b"x" * 4096, "console=ttyS0", 0xE0000, kernel_name="vmlinuz-686")
    assert boot.cpu_state.rip == boot.kernel_range[0] == hdr.pref_address
    assert boot.cpu_state.cs.selector == 0x10 and not boot.cpu_state.efer
