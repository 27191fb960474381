"""Guest-physical memory: anonymous mmap-backed RAM and the one bounds-checked API into it.

Every guest-physical access by the loader, a device or a backend goes through GuestMemory: a range that is not
entirely inside RAM raises GuestMemoryError (a guest-level fault for that VM), never touches host memory.

Layout (as on a PC, cf. the e820 map the loader reports): RAM starts at 0; if it is larger than the 32-bit PCI
hole start (3 GiB) the rest is placed above 4 GiB. One mmap backs all of it so KVM slots and unicorn mappings
share the same pages with no copies.
"""
from __future__ import annotations

import ctypes
import mmap
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

PCI_HOLE_START = 0xC000_0000
HIGH_MEMORY_START = 0x1_0000_0000
PAGE_SIZE = 4096
# The legacy VGA window: RAM backs it in the mmap, but CPU backends leave it unmapped so the guest's accesses
# reach the VGA device model on the MMIO bus (e820 marks 0x9FC00-0xFFFFF reserved, so the OS never uses it).
VGA_HOLE = (0xA_0000, 0x2_0000)
# With PC firmware the hole reaches 1 MiB: 0xC0000-0xFFFFF is shadow RAM or ROM as the i440FX's PAM registers say,
# mapped piece by piece by core/boot/firmware.py.
FIRMWARE_HOLE = (0xA_0000, 0x6_0000)


class GuestMemoryError(Exception):
    """A guest-physical access fell outside RAM."""


@dataclass(frozen=True)
class MemoryRegion:
    """A contiguous piece of guest RAM: guest-physical start, size, and offset inside the backing mmap."""

    gpa: int
    size: int
    offset: int

    @property
    def end(self) -> int:
        return self.gpa + self.size


WriteListener = Callable[[int, int], None]


class GuestMemory:
    """Guest RAM. Sizes are bytes; addresses are guest-physical."""

    def __init__(self, size: int) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"guest memory size must be a positive multiple of 4096, got {size}")
        self.size = size
        self._mmap = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._buf = memoryview(self._mmap)
        self._anchor = ctypes.c_char.from_buffer(self._mmap)
        self.host_base = ctypes.addressof(self._anchor)
        low = min(size, PCI_HOLE_START)
        self.regions: list[MemoryRegion] = [MemoryRegion(0, low, 0)]
        if size > low:
            self.regions.append(MemoryRegion(HIGH_MEMORY_START, size - low, low))
        self._listeners: list[WriteListener] = []
        self._listener_lock = threading.Lock()
        self.cpu_hole = VGA_HOLE        # what cpu_mappings leaves out; FIRMWARE_HOLE for a machine with firmware

    # -- layout ---------------------------------------------------------------------------------------------
    def cpu_mappings(self) -> list[MemoryRegion]:
        """The pieces of RAM a CPU backend maps for direct guest access: `regions` minus `cpu_hole` (the VGA window,
        and with firmware the shadow area up to 1 MiB)."""
        hole_start, hole_len = self.cpu_hole
        hole_end = hole_start + hole_len
        out: list[MemoryRegion] = []
        for r in self.regions:
            if r.gpa < hole_end and hole_start < r.end:
                if r.gpa < hole_start:
                    out.append(MemoryRegion(r.gpa, hole_start - r.gpa, r.offset))
                if hole_end < r.end:
                    out.append(MemoryRegion(hole_end, r.end - hole_end, r.offset + (hole_end - r.gpa)))
            else:
                out.append(r)
        return out

    def host_address(self, region: MemoryRegion) -> int:
        """Host virtual address of a region's first byte (for KVM memory slots and unicorn mem_map_ptr)."""
        return self.host_base + region.offset

    def _offset(self, gpa: int, length: int) -> int:
        if length < 0 or gpa < 0:
            raise GuestMemoryError(f"bad guest-physical access at {gpa:#x} length {length}")
        for r in self.regions:
            if r.gpa <= gpa and gpa + length <= r.end:
                return r.offset + (gpa - r.gpa)
        raise GuestMemoryError(f"guest-physical access outside RAM: {gpa:#x}+{length:#x}")

    def contains(self, gpa: int, length: int = 1) -> bool:
        try:
            self._offset(gpa, length)
        except GuestMemoryError:
            return False
        return True

    # -- change notification (software CPU code-cache invalidation) ----------------------------------------
    def add_write_listener(self, listener: WriteListener) -> None:
        """Call listener(gpa, length) after every write made through this API (not by a running vCPU)."""
        with self._listener_lock:
            self._listeners.append(listener)

    def remove_write_listener(self, listener: WriteListener) -> None:
        with self._listener_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _notify(self, gpa: int, length: int) -> None:
        for listener in self._listeners:
            listener(gpa, length)

    # -- access ---------------------------------------------------------------------------------------------
    def read(self, gpa: int, length: int) -> bytes:
        off = self._offset(gpa, length)
        return bytes(self._buf[off:off + length])

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        length = len(data)
        off = self._offset(gpa, length)
        self._buf[off:off + length] = data
        if self._listeners:
            self._notify(gpa, length)

    def fill(self, gpa: int, length: int, value: int = 0) -> None:
        off = self._offset(gpa, length)
        ctypes.memset(self.host_base + off, value, length)
        if self._listeners:
            self._notify(gpa, length)

    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy view of guest RAM (read/write). Writes through it do not notify listeners:
        call notify_written() afterwards if the range may hold code."""
        off = self._offset(gpa, length)
        return self._buf[off:off + length]

    def notify_written(self, gpa: int, length: int) -> None:
        self._offset(gpa, length)
        if self._listeners:
            self._notify(gpa, length)

    def read_u8(self, gpa: int) -> int:
        return self._buf[self._offset(gpa, 1)]

    def read_u16(self, gpa: int) -> int:
        return struct.unpack_from("<H", self._buf, self._offset(gpa, 2))[0]

    def read_u32(self, gpa: int) -> int:
        return struct.unpack_from("<I", self._buf, self._offset(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        return struct.unpack_from("<Q", self._buf, self._offset(gpa, 8))[0]

    def write_u8(self, gpa: int, value: int) -> None:
        self.write(gpa, bytes((value & 0xFF,)))

    def write_u16(self, gpa: int, value: int) -> None:
        self.write(gpa, struct.pack("<H", value & 0xFFFF))

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, struct.pack("<I", value & 0xFFFF_FFFF))

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, struct.pack("<Q", value & 0xFFFF_FFFF_FFFF_FFFF))

    def close(self) -> None:
        """Release the mapping. Backends must have unmapped it first."""
        self._buf.release()
        del self._anchor
        try:
            self._mmap.close()
        except BufferError:
            pass  # a backend still holds an export; the pages go when the process does
