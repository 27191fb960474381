"""Data lanes: string port I/O (REP INSW/OUTSW) on a device's data port without a Python call per access.

A disk controller moves a sector block through one data port, two bytes per access (ATA/ATAPI-6, 9.4 and 9.5:
PIO data-in and data-out), and firmware and boot loaders read kernels and initrds this way: tens of millions of
accesses. A device that has a block ready *offers* it on a lane: the lane holds the bytes in a buffer of fixed
capacity that lives as long as the bus, and the accelerator serves accesses to the lane's port straight from that
buffer (the software CPU with a native hook in front of its Python one, KVM by copying a whole string exit at
once). The last access of the block is never served by the lane: it reaches the device's Python handler as usual,
which takes it with `take`/`put` and then does what ends the block (status, interrupt, the next block).

Directions: a read lane answers IN and lets OUT through to the device; a write lane collects OUT and lets IN
through. A closed lane answers nothing.

Layout shared with the native hooks (core/hypervisor/uc_native.py `pio_in_hook_code`, `pio_out_hook_code`):

    struct table { u64 fallback_in; u64 fallback_out; struct lane lanes[LANES]; }
    struct lane  { u32 key; u32 pos; u32 end; u32 pad; u64 buffer; }

`key` is the port for a read lane, the port | 0x10000 for a write lane, and 0xFFFFFFFF when closed; a native hook
serves an access when the key matches and pos + size < end, advancing pos. Every field the hooks trust is
written by this module only: `end` never exceeds the buffer's capacity and the buffer's address never changes,
so a racing access can at worst see a stale byte of the device's own buffer, never memory outside it.
"""
from __future__ import annotations

import ctypes
import threading
from ctypes import c_uint32, c_uint64

LANES = 4
CAPACITY = 128 * 1024          # the largest block a data port moves: 128 sectors of ATA READ MULTIPLE, 64 KiB ATAPI
CLOSED = 0xFFFF_FFFF
WRITE_KEY = 0x1_0000


class _Lane(ctypes.Structure):
    _fields_ = [("key", c_uint32), ("pos", c_uint32), ("end", c_uint32), ("pad", c_uint32), ("buffer", c_uint64)]


class _Table(ctypes.Structure):
    _fields_ = [("fallback_in", c_uint64), ("fallback_out", c_uint64), ("lanes", _Lane * LANES)]


class PioLane:
    """One lane: a device's data port with its buffer. Only the owning device calls the methods, on whatever
    thread it handles the port on."""

    def __init__(self, lane: _Lane, port: int) -> None:
        self._lane = lane
        self.port = port
        self._buffer = (ctypes.c_ubyte * CAPACITY)()
        self.view = memoryview(self._buffer).cast("B")
        lane.key = CLOSED
        lane.end = 0
        lane.pos = 0
        lane.buffer = ctypes.addressof(self._buffer)

    # -- state ------------------------------------------------------------------------------------------
    @property
    def pos(self) -> int:
        """Bytes of the block already moved."""
        return self._lane.pos

    @property
    def end(self) -> int:
        return self._lane.end

    @property
    def is_open(self) -> bool:
        return self._lane.key != CLOSED

    @property
    def remaining(self) -> int:
        return self._lane.end - self._lane.pos if self.is_open else 0

    def close(self) -> None:
        self._lane.key = CLOSED         # first: no hook serves the lane from here on
        self._lane.end = 0
        self._lane.pos = 0

    # -- offering a block --------------------------------------------------------------------------------
    def offer_read(self, data: bytes | bytearray | memoryview) -> None:
        """Make `data` the block the guest reads from the port (at most CAPACITY bytes)."""
        n = len(data)
        if not 0 < n <= CAPACITY:
            raise ValueError(f"a data lane block is 1..{CAPACITY} bytes, not {n}")
        self.close()
        self.view[:n] = data
        self._lane.pos = 0
        self._lane.end = n
        self._lane.key = self.port

    def expect_write(self, length: int) -> None:
        """Collect the next `length` bytes the guest writes to the port (read them with `written`)."""
        if not 0 < length <= CAPACITY:
            raise ValueError(f"a data lane block is 1..{CAPACITY} bytes, not {length}")
        self.close()
        self._lane.end = length
        self._lane.key = self.port | WRITE_KEY

    def written(self) -> memoryview:
        """The bytes collected so far in a write block."""
        return self.view[:self._lane.pos]

    # -- the accesses the hooks leave to the device -------------------------------------------------------
    def take(self, size: int) -> int:
        """The next `size` bytes of a read block as an integer (little-endian), advancing; bytes past the end
        of the block read as ones (the device then decides what the access means)."""
        lane = self._lane
        pos, end = lane.pos, lane.end
        if lane.key != self.port or pos >= end:
            return (1 << (8 * size)) - 1
        chunk = bytes(self.view[pos:min(pos + size, end)])
        lane.pos = min(pos + size, end)
        return int.from_bytes(chunk.ljust(size, b"\xff"), "little")

    def put(self, size: int, value: int) -> None:
        """Store the next `size` bytes of a write block, advancing (bytes past the end are dropped)."""
        lane = self._lane
        pos, end = lane.pos, lane.end
        if lane.key != self.port | WRITE_KEY or pos >= end:
            return
        n = min(size, end - pos)
        self.view[pos:pos + n] = value.to_bytes(size, "little")[:n]
        lane.pos = pos + n

    def take_bulk(self, size: int, count: int) -> bytes:
        """For a string access of `count` items: the bytes the lane can serve without ending its block (all
        items but the one that would reach the end), advancing. Used by accelerators that see the whole string
        at once (KVM)."""
        lane = self._lane
        if lane.key != self.port:
            return b""
        pos = lane.pos
        items = min(count, max(0, (lane.end - pos - 1) // size))
        if items <= 0:
            return b""
        n = items * size
        data = bytes(self.view[pos:pos + n])
        lane.pos = pos + n
        return data

    def put_bulk(self, data: bytes | memoryview, size: int) -> int:
        """Store what a string OUT of `len(data) // size` items can without ending the block; return the
        number of items stored."""
        lane = self._lane
        if lane.key != self.port | WRITE_KEY:
            return 0
        pos = lane.pos
        items = min(len(data) // size, max(0, (lane.end - pos - 1) // size))
        if items <= 0:
            return 0
        n = items * size
        self.view[pos:pos + n] = data[:n]
        lane.pos = pos + n
        return items


class PioLaneTable:
    """The lanes of one machine's port space (PortIoBus.lanes)."""

    def __init__(self) -> None:
        self._table = _Table()
        self._lock = threading.Lock()
        self._by_port: dict[int, PioLane] = {}
        for lane in self._table.lanes:
            lane.key = CLOSED

    @property
    def address(self) -> int:
        """Where the native hooks find the table (their user-data pointer)."""
        return ctypes.addressof(self._table)

    def set_fallbacks(self, io_in: int, io_out: int) -> None:
        """The C callbacks a native hook hands every access it does not serve to."""
        self._table.fallback_in = io_in
        self._table.fallback_out = io_out

    def lane(self, port: int) -> PioLane:
        """The lane of `port`, created closed on first use; ValueError when all LANES are taken."""
        with self._lock:
            found = self._by_port.get(port)
            if found is not None:
                return found
            if len(self._by_port) >= LANES:
                raise ValueError(f"no free data lane for port {port:#x}: {LANES} are in use")
            lane = PioLane(self._table.lanes[len(self._by_port)], port)
            self._by_port[port] = lane
            return lane

    def get(self, port: int) -> PioLane | None:
        return self._by_port.get(port)
