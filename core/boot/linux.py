"""Linux direct boot: a bzImage, an initrd and a command line loaded straight into guest RAM, entered at the
kernel's 64-bit entry point with a filled-in zero page, as Firecracker and QEMU's -kernel do.

Follows Documentation/arch/x86/boot.rst (the real-mode kernel header, "Details of header fields", "Loading the
rest of the kernel", "64-bit Boot Protocol") and Documentation/arch/x86/zero-page.rst (struct boot_params).
The real-mode setup code never runs: the loader does its job (e820 map, command line, initrd, ACPI RSDP pointer)
and the CPU starts in long mode at load address + 0x200 with RSI = the zero page. A kernel without a 64-bit
entry (XLF_KERNEL_64 clear: a 32-bit kernel) is entered per the "32-bit Boot Protocol" instead: flat protected
mode, paging off, at the load address, ESI = the zero page.

Host-side decompression: the bzImage's payload (payload_offset/payload_length, protocol 2.08) is the compressed
ELF vmlinux. With decompress_on_host the loader unpacks it here (gzip, xz, lzma, bzip2 from the standard library;
zstd when the `zstandard` module is present), copies its PT_LOAD segments to their physical addresses and enters
startup_64 directly, skipping the in-guest decompressor (which is slow on the software CPU). A payload in a
format not available here falls back to the ordinary bzImage entry.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from core import platform
from core.boot import vmlinux_cache
from core.boot.e820 import build_e820, extended_kib, low_ram_end
from core.boot.elf import EM_X86_64, ElfImage, is_elf, load_segments, parse_elf
from core.boot.errors import BootError, mib
from core.boot.files import cmdline_bytes as encode_cmdline
from core.boot.x86_setup import BOOT_CS, BOOT_DS, flat_protected_mode_state, long_mode_state
from core.hypervisor.base import CpuState
from core.memory import GuestMemory

__all__ = ["BootError", "BzImageHeader", "LinuxBoot", "boot_linux", "load_linux", "parse_bzimage"]

HDRS_MAGIC = b"HdrS"
MIN_PROTOCOL = 0x206          # cmdline_size, the 2.06 limit checks; everything before is pre-2.6.22
PROTOCOL_ACPI_RSDP = 0x20E    # boot_params.acpi_rsdp_addr is honoured from 2.14

LOADED_HIGH = 0x01            # loadflags bit 0: the protected-mode code is loaded at 0x100000 (bzImage)
XLF_KERNEL_64 = 0x01          # xloadflags bit 0: has the legacy 64-bit entry point at load address + 0x200
ENTRY_64_OFFSET = 0x200
LOADER_TYPE_UNDEFINED = 0xFF  # type_of_loader for a boot loader with no assigned id

# struct boot_params (zero-page.rst) and struct setup_header (boot.rst) offsets.
BP_ORIG_VIDEO_ISVGA = 0x00F
BP_ACPI_RSDP_ADDR = 0x070
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_ALT_MEM_K = 0x1E0
BP_E820_ENTRIES = 0x1E8
BP_SENTINEL = 0x1EF
BP_EDD_MBR_SIG_BUFFER = 0x290
BP_E820_TABLE = 0x2D0
E820_MAX_ENTRIES_ZEROPAGE = 128
HDR_START = 0x1F1
HDR_SETUP_SECTS = 0x1F1
HDR_SYSSIZE = 0x1F4
HDR_BOOT_FLAG = 0x1FE
HDR_JUMP = 0x200
HDR_HEADER = 0x202
HDR_VERSION = 0x206
HDR_KERNEL_VERSION = 0x20E
HDR_TYPE_OF_LOADER = 0x210
HDR_LOADFLAGS = 0x211
HDR_CODE32_START = 0x214
HDR_RAMDISK_IMAGE = 0x218
HDR_RAMDISK_SIZE = 0x21C
HDR_CMD_LINE_PTR = 0x228
HDR_INITRD_ADDR_MAX = 0x22C
HDR_KERNEL_ALIGNMENT = 0x230
HDR_RELOCATABLE = 0x234
HDR_MIN_ALIGNMENT = 0x235
HDR_XLOADFLAGS = 0x236
HDR_CMDLINE_SIZE = 0x238
HDR_PAYLOAD_OFFSET = 0x248
HDR_PAYLOAD_LENGTH = 0x24C
HDR_SETUP_DATA = 0x250
HDR_PREF_ADDRESS = 0x258
HDR_INIT_SIZE = 0x260
HDR_MIN_LENGTH = 0x264        # through init_size, which every protocol >= 2.10 kernel has

PAGE = 0x1000
ZERO_PAGE_SIZE = 0x1000


@dataclass(frozen=True)
class BzImageHeader:
    """The fields of a bzImage's setup header the loader uses (boot.rst, "The real-mode kernel header")."""

    version: int               # boot protocol, e.g. 0x20F for 2.15
    setup_sects: int           # 512-byte sectors of real-mode setup code after the boot sector
    syssize: int               # protected-mode code size in 16-byte paragraphs
    loadflags: int
    xloadflags: int
    code32_start: int
    initrd_addr_max: int       # highest address the initrd may occupy (its last byte)
    kernel_alignment: int
    relocatable: bool
    min_alignment: int         # log2 of the smallest alignment the kernel accepts
    cmdline_size: int          # longest command line, not counting the NUL
    payload_offset: int        # compressed vmlinux, relative to the protected-mode code
    payload_length: int
    pref_address: int
    init_size: int             # linear memory the kernel needs from its runtime start, for decompression and bss
    header_end: int            # file offset just past the setup header (0x202 + the jump's displacement)
    kernel_version: str

    @property
    def setup_size(self) -> int:
        """Bytes of boot sector + real-mode setup: where the protected-mode code starts in the file."""
        return (self.setup_sects + 1) * 512

    @property
    def protected_mode_size(self) -> int:
        return self.syssize * 16

    @property
    def has_64bit_entry(self) -> bool:
        """XLF_KERNEL_64: entered in long mode at load address + 0x200; otherwise the 32-bit protocol applies."""
        return bool(self.xloadflags & XLF_KERNEL_64)

    @property
    def protocol(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"


def _u8(data: bytes, off: int) -> int:
    return data[off]


def _u16(data: bytes, off: int) -> int:
    return struct.unpack_from("<H", data, off)[0]


def _u32(data: bytes, off: int) -> int:
    return struct.unpack_from("<I", data, off)[0]


def _u64(data: bytes, off: int) -> int:
    return struct.unpack_from("<Q", data, off)[0]


def is_bzimage(data: bytes) -> bool:
    return len(data) >= HDR_HEADER + 4 and data[HDR_HEADER:HDR_HEADER + 4] == HDRS_MAGIC


def parse_bzimage(data: bytes, name: str, file_size: int | None = None) -> BzImageHeader:
    """Read and validate the setup header; BootError (one line naming `name`) for anything Vireo cannot boot.
    `file_size`: the whole file's size when `data` holds only its start (a probe reads the header, not the
    kernel); the sizes the header promises are checked against it."""
    size = len(data) if file_size is None else file_size
    if not is_bzimage(data):
        raise BootError(f"{name} is not a Linux bzImage (no 'HdrS' signature at offset 0x202)")
    if len(data) < HDR_VERSION + 2:
        raise BootError(f"{name} is truncated: its setup header is cut off at {len(data)} bytes")
    version = _u16(data, HDR_VERSION)
    if version < MIN_PROTOCOL:
        raise BootError(f"{name} uses Linux boot protocol {version >> 8}.{version & 0xFF:02d}; Vireo needs 2.06 "
                        f"or later (kernel 2.6.22+)")
    if len(data) < HDR_MIN_LENGTH + 4:
        raise BootError(f"{name} is truncated: its setup header is cut off at {len(data)} bytes")
    header_end = HDR_HEADER + data[HDR_JUMP + 1]
    loadflags = _u8(data, HDR_LOADFLAGS)
    if not loadflags & LOADED_HIGH:
        raise BootError(f"{name} is a zImage (loaded low at 0x10000); Vireo boots bzImages only — rebuild with "
                        f"'make bzImage'")
    xloadflags = _u16(data, HDR_XLOADFLAGS) if version >= 0x20C else 0
    setup_sects = _u8(data, HDR_SETUP_SECTS) or 4    # 0 means 4 for compatibility (boot.rst)
    syssize = _u32(data, HDR_SYSSIZE)
    setup_size = (setup_sects + 1) * 512
    pm_size = syssize * 16
    # syssize is rounded up to a paragraph; more trailing bytes (e.g. an appended signature) are harmless.
    if syssize == 0 or setup_size + pm_size > size + 15:
        raise BootError(f"{name} is truncated: the header promises {setup_size + pm_size} bytes, the file has "
                        f"{size}")
    kernel_alignment = _u32(data, HDR_KERNEL_ALIGNMENT)
    if kernel_alignment == 0 or kernel_alignment & (kernel_alignment - 1):
        raise BootError(f"{name} has an invalid kernel_alignment {kernel_alignment:#x} (not a power of two)")
    init_size = _u32(data, HDR_INIT_SIZE) if version >= 0x20A else 0
    if init_size == 0:
        init_size = pm_size * 4     # pre-2.10 kernels: the decompressor's classic worst case
    pref_address = _u64(data, HDR_PREF_ADDRESS) if version >= 0x20A else platform.KERNEL_LOAD_ADDR
    payload_offset = _u32(data, HDR_PAYLOAD_OFFSET) if version >= 0x208 else 0
    payload_length = _u32(data, HDR_PAYLOAD_LENGTH) if version >= 0x208 else 0
    if payload_offset + payload_length > pm_size:
        raise BootError(f"{name} has a corrupt header: its payload runs past the protected-mode code")
    kernel_version = ""
    kv = _u16(data, HDR_KERNEL_VERSION)
    if kv and kv + 0x200 < setup_size:
        raw = data[kv + 0x200:min(setup_size, kv + 0x200 + 256)].split(b"\0", 1)[0]
        kernel_version = raw.decode("ascii", "replace")
    return BzImageHeader(
        version=version, setup_sects=setup_sects, syssize=syssize, loadflags=loadflags, xloadflags=xloadflags,
        code32_start=_u32(data, HDR_CODE32_START), initrd_addr_max=_u32(data, HDR_INITRD_ADDR_MAX),
        kernel_alignment=kernel_alignment, relocatable=bool(_u8(data, HDR_RELOCATABLE)),
        min_alignment=_u8(data, HDR_MIN_ALIGNMENT), cmdline_size=_u32(data, HDR_CMDLINE_SIZE),
        payload_offset=payload_offset, payload_length=payload_length, pref_address=pref_address,
        init_size=init_size, header_end=min(header_end, BP_EDD_MBR_SIG_BUFFER), kernel_version=kernel_version)


# -- the compressed payload -------------------------------------------------------------------------------------

def payload_format(payload: bytes) -> str:
    """Name the compressor of a bzImage payload from its magic bytes (scripts/Makefile.lib's cmd_* outputs)."""
    if payload[:2] == b"\x1f\x8b":
        return "gzip"
    if payload[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if payload[:3] == b"\x5d\x00\x00":
        return "lzma"
    if payload[:3] == b"BZh":
        return "bzip2"
    if payload[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if payload[:4] == b"\x89LZO":
        return "lzo"
    if payload[:4] == b"\x02\x21\x4c\x18":
        return "lz4"
    if is_elf(payload):
        return "none"
    return "unknown"


def _zstd_decompress(payload: bytes, limit: int) -> bytes | None:
    try:
        import zstandard  # optional: not in the standard library
    except ImportError:
        return None
    # A stream reader never allocates what a frame header claims; read in pieces up to the bound.
    reader = zstandard.ZstdDecompressor().stream_reader(payload, read_across_frames=False)
    parts, total = [], 0
    while total <= limit:
        part = reader.read(min(1 << 22, limit + 1 - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def _bounded(decoder: object, payload: bytes, limit: int) -> bytes:
    """Run a standard-library stream decoder (zlib/lzma/bz2 decompressobj) for at most limit + 1 bytes of output:
    a payload that unpacks to more is a bomb or a corrupt kernel, found without holding what it would expand to."""
    return decoder.decompress(payload, limit + 1)   # type: ignore[attr-defined]


def decompress_payload(payload: bytes, name: str, limit: int = 1 << 30) -> tuple[str, bytes | None]:
    """(format, the vmlinux ELF) or (format, None) when this host cannot unpack the format.

    The kernel build appends the uncompressed size as a 32-bit little-endian word (size_append); each stream
    decoder stops at its own end marker, so those trailing bytes are left over, and they check the result.
    Nothing is unpacked past that size or past `limit` (the guest's RAM: a bigger vmlinux could not be loaded).
    """
    # The decoders are imported here: a machine booting through its firmware loads this module without a kernel.
    import bz2
    import lzma
    import zlib
    fmt = payload_format(payload)
    size_hint = _u32(payload, len(payload) - 4) if len(payload) >= 4 else 0
    if fmt not in ("none", "unknown", "lzo", "lz4") and size_hint > limit:
        raise BootError(f"{name}: its {fmt} payload says it unpacks to {mib(size_hint)}, more than the "
                        f"{mib(limit)} of guest memory; give more --memory")
    bound = min(size_hint, limit) if size_hint else limit
    try:
        if fmt == "gzip":
            out = _bounded(zlib.decompressobj(wbits=31), payload, bound)
        elif fmt in ("xz", "lzma"):
            out = _bounded(lzma.LZMADecompressor(lzma.FORMAT_XZ if fmt == "xz" else lzma.FORMAT_ALONE), payload,
                           bound)
        elif fmt == "bzip2":
            out = _bounded(bz2.BZ2Decompressor(), payload, bound)
        elif fmt == "zstd":
            out = _zstd_decompress(payload, bound)
        elif fmt == "none":
            out = payload
        else:
            out = None
    except (zlib.error, lzma.LZMAError, OSError, ValueError, EOFError) as exc:
        raise BootError(f"{name}: its {fmt} payload is corrupt ({exc}); re-download or rebuild the kernel") from exc
    if out is None:
        return fmt, None
    if fmt != "none" and len(out) > bound:
        raise BootError(f"{name}: its {fmt} payload unpacks to more than {mib(bound)} (the size it declares, or "
                        f"guest memory); the kernel file is corrupt or a decompression bomb")
    if fmt != "none" and size_hint and len(out) != size_hint:
        raise BootError(f"{name}: its {fmt} payload unpacks to {len(out)} bytes, the image says {size_hint}; "
                        f"the kernel file is corrupt")
    return fmt, out


_vmlinux_cache: dict[bytes, tuple[str, bytes | None]] = {}


def _decompress_cached(payload: bytes, name: str, limit: int) -> tuple[str, bytes | None]:
    """Keep the last unpacked kernel in memory (a VM that reboots loads the same one again) and every recent one
    on disk (the next run of the same kernel skips the ~0.6 s xz unpacking)."""
    import hashlib
    key = hashlib.sha256(payload).digest()
    hit = _vmlinux_cache.get(key)
    if hit is None:
        fmt = payload_format(payload)
        size_hint = _u32(payload, len(payload) - 4) if len(payload) >= 4 else 0
        cached = vmlinux_cache.load(key.hex(), fmt) if fmt != "none" else None
        if cached is not None and size_hint and len(cached) != size_hint:
            vmlinux_cache.discard(key.hex(), fmt)
            cached = None
        if cached is not None:
            hit = (fmt, cached)
        else:
            hit = decompress_payload(payload, name, limit)
            if hit[1] is not None and fmt != "none":
                vmlinux_cache.store(key.hex(), hit[0], hit[1])
        _vmlinux_cache.clear()
        _vmlinux_cache[key] = hit
    return hit


# -- placement ---------------------------------------------------------------------------------------------------

def _align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def _free_ranges(lo: int, hi: int, avoid: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[lo, hi) minus the avoided ranges, as sorted disjoint intervals."""
    free = [(lo, hi)]
    for a_start, a_end in avoid:
        nxt = []
        for f_start, f_end in free:
            if a_end <= f_start or a_start >= f_end:
                nxt.append((f_start, f_end))
                continue
            if f_start < a_start:
                nxt.append((f_start, a_start))
            if a_end < f_end:
                nxt.append((a_end, f_end))
        free = nxt
    return sorted(free)


def place_initrd(size: int, lo: int, hi: int, avoid: list[tuple[int, int]]) -> int | None:
    """The highest page-aligned address in [lo, hi) where `size` bytes fit clear of `avoid`, or None.

    High placement matches what boot loaders do (boot.rst: "as high as possible") and leaves low RAM to the
    kernel's early allocations.
    """
    for start, end in reversed(_free_ranges(lo, hi, avoid)):
        addr = (end - size) & ~(PAGE - 1)
        if addr >= start:
            return addr
    return None


@dataclass
class LinuxBoot:
    """What load_linux did: the entry state and a one-line description for the VM's details pane."""

    cpu_state: CpuState
    description: str
    kernel_range: tuple[int, int]
    initrd_addr: int | None


def boot_linux(memory: GuestMemory, kernel: bytes, initrd: bytes | None, cmdline: str, rsdp_addr: int | None,
               decompress_on_host: bool = False, kernel_name: str = "kernel",
               initrd_name: str = "initrd", screen_info: bytes | None = None) -> LinuxBoot:
    """load_linux, returning also how the kernel was loaded (see LinuxBoot). `screen_info` (0x40 bytes, struct
    screen_info) describes the display the firmware left, e.g. VGA text mode; None means no video."""
    hdr = parse_bzimage(kernel, kernel_name)
    low_end = low_ram_end(memory)
    total = memory.size >> 20
    if low_end < 2 * platform.KERNEL_LOAD_ADDR:
        raise BootError(f"{kernel_name}: {total} MiB of guest memory is too little for Linux; give more --memory")

    cmdline_bytes = encode_cmdline(cmdline, kernel_name)
    limit = min(hdr.cmdline_size, platform.CMDLINE_MAX - 1)
    if len(cmdline_bytes) > limit:
        raise BootError(f"{kernel_name}: the command line is {len(cmdline_bytes)} bytes, longer than the {limit} "
                        f"this kernel accepts; shorten it")

    pm_start = hdr.setup_size
    pm_image = memoryview(kernel)[pm_start:pm_start + hdr.protected_mode_size]

    # Where the kernel goes and what it will occupy once running.
    vmlinux: ElfImage | None = None
    vmlinux_data = b""
    fmt = ""
    if decompress_on_host and hdr.payload_length and hdr.has_64bit_entry:
        payload = bytes(pm_image[hdr.payload_offset:hdr.payload_offset + hdr.payload_length])
        fmt, unpacked = _decompress_cached(payload, kernel_name, low_end)
        if unpacked is not None:
            image = parse_elf(unpacked, f"{kernel_name} (unpacked vmlinux)")
            if image.elf_class == 64 and image.machine == EM_X86_64:
                vmlinux, vmlinux_data = image, unpacked
    if vmlinux is not None:
        run_start = vmlinux.low
        kernel_range = (run_start, max(vmlinux.high, run_start + hdr.init_size))
        if run_start < platform.KERNEL_LOAD_ADDR:
            raise BootError(f"{kernel_name}: its vmlinux loads at {run_start:#x}, below 1 MiB, over the boot "
                            f"structures; boot it without host decompression")
        load_addr = run_start
    else:
        load_addr = platform.KERNEL_LOAD_ADDR
        pref = hdr.pref_address
        # A relocatable kernel loaded where it will run skips the decompressor's move; it still needs init_size
        # from there, and must respect kernel_alignment.
        if (hdr.relocatable and pref >= platform.KERNEL_LOAD_ADDR and pref % hdr.kernel_alignment == 0
                and pref + hdr.init_size <= low_end):
            load_addr = pref
        if hdr.relocatable:
            run_start = max(_align_up(load_addr, hdr.kernel_alignment), pref)
        else:
            run_start = max(pref, load_addr)
        kernel_range = (min(load_addr, run_start),
                        max(load_addr + len(pm_image), run_start + hdr.init_size))

    # The initrd first: with both too big, "give more memory because of the initrd" is the more useful message.
    initrd_addr = None
    if initrd:
        top = min(hdr.initrd_addr_max + 1, low_end)
        initrd_addr = place_initrd(len(initrd), platform.KERNEL_LOAD_ADDR, top, [kernel_range])
        if initrd_addr is None:
            raise BootError(f"initrd {initrd_name} ({mib(len(initrd))}) does not fit in {total} MiB of guest "
                            f"memory; give more --memory")
    if kernel_range[1] > low_end:
        raise BootError(f"kernel {kernel_name} needs {mib(kernel_range[1])} of guest memory (it runs at "
                        f"{run_start >> 20} MiB and takes {mib(kernel_range[1] - run_start)} from there), the VM "
                        f"has {total} MiB; give more --memory")

    # The kernel.
    if vmlinux is not None:
        load_segments(memory, vmlinux_data, vmlinux, f"{kernel_name} (unpacked vmlinux)")
        entry = vmlinux.physical_entry()
        description = (f"Linux {hdr.kernel_version.split(' ')[0] or '?'}, bzImage protocol {hdr.protocol}, "
                       f"{fmt} vmlinux unpacked on the host")
    else:
        memory.write(load_addr, pm_image)
        # The 32-bit entry is the start of the protected-mode code (code32_start's default: its load address).
        entry = load_addr + ENTRY_64_OFFSET if hdr.has_64bit_entry else load_addr
        how = "" if hdr.has_64bit_entry else ", 32-bit entry"
        if decompress_on_host:
            how += f", {fmt or 'its'} payload left to the in-guest decompressor"
        description = f"Linux {hdr.kernel_version.split(' ')[0] or '?'}, bzImage protocol {hdr.protocol}{how}"

    if initrd:
        memory.write(initrd_addr, initrd)
    cmdline_area = cmdline_bytes + b"\0"
    memory.write(platform.CMDLINE_ADDR, cmdline_area)

    zero_page = build_zero_page(memory, kernel, hdr, load_addr=load_addr, cmdline_addr=platform.CMDLINE_ADDR,
                                initrd_addr=initrd_addr or 0, initrd_size=len(initrd) if initrd else 0,
                                rsdp_addr=rsdp_addr, screen_info=screen_info)
    memory.write(platform.ZERO_PAGE_ADDR, zero_page)
    if hdr.has_64bit_entry:
        state = long_mode_state(memory, entry, platform.ZERO_PAGE_ADDR)
    else:
        # boot.rst, 32-bit protocol: paging off, flat __BOOT_CS/__BOOT_DS, ESI = boot_params, EBP/EDI/EBX zero.
        state = flat_protected_mode_state(memory, entry, BOOT_CS, BOOT_DS)
        state.regs["rsi"] = platform.ZERO_PAGE_ADDR
    return LinuxBoot(state, description, kernel_range, initrd_addr)


def build_zero_page(memory: GuestMemory, kernel: bytes, hdr: BzImageHeader, *, load_addr: int,
                    cmdline_addr: int, initrd_addr: int, initrd_size: int, rsdp_addr: int | None,
                    screen_info: bytes | None = None) -> bytes:
    """struct boot_params for the 64-bit entry: the kernel's own setup header with the loader's fields filled in,
    the e820 map, and screen_info (all zero, i.e. no video, unless the machine has a display)."""
    bp = bytearray(ZERO_PAGE_SIZE)
    if screen_info is not None:
        if len(screen_info) != 0x40:
            raise ValueError("screen_info must be the 64-byte struct screen_info")
        bp[0:0x40] = screen_info
    bp[HDR_START:hdr.header_end] = kernel[HDR_START:hdr.header_end]
    if screen_info is None:
        bp[BP_ORIG_VIDEO_ISVGA] = 0
    bp[HDR_TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED
    struct.pack_into("<I", bp, HDR_CODE32_START, load_addr)
    struct.pack_into("<II", bp, HDR_RAMDISK_IMAGE, initrd_addr, initrd_size)
    struct.pack_into("<I", bp, HDR_CMD_LINE_PTR, cmdline_addr)
    struct.pack_into("<Q", bp, HDR_SETUP_DATA, 0)
    struct.pack_into("<III", bp, BP_EXT_RAMDISK_IMAGE, 0, 0, 0)
    if rsdp_addr is not None and hdr.version >= PROTOCOL_ACPI_RSDP:
        struct.pack_into("<Q", bp, BP_ACPI_RSDP_ADDR, rsdp_addr)
    struct.pack_into("<I", bp, BP_ALT_MEM_K, min(extended_kib(memory), 0xFFFF_FFFF))
    e820 = build_e820(memory)[:E820_MAX_ENTRIES_ZEROPAGE]
    bp[BP_E820_ENTRIES] = len(e820)
    for i, entry in enumerate(e820):
        struct.pack_into("<QQI", bp, BP_E820_TABLE + 20 * i, entry.addr, entry.size, entry.type)
    bp[BP_SENTINEL] = 0   # nonzero tells the kernel a loader copied stale fields; ours are all deliberate
    return bytes(bp)


def load_linux(memory: GuestMemory, kernel: bytes, initrd: bytes | None, cmdline: str, rsdp_addr: int | None,
               decompress_on_host: bool = False, kernel_name: str = "kernel",
               initrd_name: str = "initrd", screen_info: bytes | None = None) -> CpuState:
    """Load a bzImage (and initrd and command line) into `memory`; return the BSP's state at its entry: the
    64-bit one when the kernel has it (XLF_KERNEL_64), else the 32-bit protocol's."""
    return boot_linux(memory, kernel, initrd, cmdline, rsdp_addr, decompress_on_host, kernel_name,
                      initrd_name, screen_info).cpu_state
