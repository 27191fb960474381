"""Port-I/O and MMIO buses: address ranges mapped to device handlers.

A device registers a range and receives (address, size[, value]) calls. An access nobody claims reads as all
ones (as on a PC's ISA/PCI bus) and is counted, never fatal.
"""
from __future__ import annotations

import bisect
import threading
from typing import Protocol

from core.pio_lanes import PioLaneTable


class PortIoDevice(Protocol):
    def io_read(self, port: int, size: int) -> int: ...
    def io_write(self, port: int, size: int, value: int) -> None: ...


class MmioDevice(Protocol):
    def mmio_read(self, addr: int, size: int) -> int: ...
    def mmio_write(self, addr: int, size: int, value: int) -> None: ...


class BusConflictError(Exception):
    """Two devices claimed overlapping ranges."""


_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}


class PortIoBus:
    """The 64 KiB x86 I/O port space. Lookup is one dict access per port."""

    def __init__(self) -> None:
        self._ports: dict[int, PortIoDevice] = {}
        self.lanes = PioLaneTable()     # data ports served without a Python call per access (core/pio_lanes.py)
        self.unhandled_reads = 0
        self.unhandled_writes = 0

    def register(self, base: int, length: int, device: PortIoDevice) -> None:
        ports = range(base, base + length)
        clash = [p for p in ports if p in self._ports]
        if clash:
            raise BusConflictError(f"I/O port {clash[0]:#x} already claimed by {self._ports[clash[0]]!r}")
        for p in ports:
            self._ports[p] = device

    def unregister(self, base: int, length: int) -> None:
        for p in range(base, base + length):
            self._ports.pop(p, None)

    def read(self, port: int, size: int) -> int:
        dev = self._ports.get(port)
        if dev is None:
            self.unhandled_reads += 1
            return _ONES[size]
        return dev.io_read(port, size) & _ONES[size]

    def write(self, port: int, size: int, value: int) -> None:
        dev = self._ports.get(port)
        if dev is None:
            self.unhandled_writes += 1
            return
        dev.io_write(port, size, value & _ONES[size])

    def read_string(self, port: int, size: int, count: int) -> bytes:
        """A string IN (REP INS) of `count` items: what the port's data lane serves in one copy, each item the
        lane leaves to the device (the one ending a block) through the device, and so on."""
        lane = self.lanes.get(port)
        if lane is None:
            return b"".join(self.read(port, size).to_bytes(size, "little") for _ in range(count))
        out = bytearray()
        while count:
            head = lane.take_bulk(size, count)
            out += head
            count -= len(head) // size
            if count:
                out += self.read(port, size).to_bytes(size, "little")
                count -= 1
        return bytes(out)

    def write_string(self, port: int, size: int, data: bytes | memoryview) -> None:
        """A string OUT (REP OUTS) of len(data) // size items, the data lane first (as read_string)."""
        lane = self.lanes.get(port)
        i, end = 0, len(data) - len(data) % size
        while i < end:
            if lane is not None:
                i += lane.put_bulk(data[i:end], size) * size
                if i >= end:
                    break
            self.write(port, size, int.from_bytes(data[i:i + size], "little"))
            i += size


class MmioBus:
    """Guest-physical MMIO ranges (outside RAM). Ranges are kept sorted for a bisect lookup."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ranges: list[tuple[int, int, MmioDevice]] = []
        self._lock = threading.Lock()
        self.unhandled_reads = 0
        self.unhandled_writes = 0

    def register(self, base: int, length: int, device: MmioDevice) -> None:
        with self._lock:
            for start, end, dev in self._ranges:
                if base < end and start < base + length:
                    raise BusConflictError(f"MMIO range {base:#x}+{length:#x} overlaps {dev!r} at {start:#x}")
            i = bisect.bisect(self._starts, base)
            self._starts.insert(i, base)
            self._ranges.insert(i, (base, base + length, device))

    def unregister(self, base: int) -> None:
        with self._lock:
            i = bisect.bisect_left(self._starts, base)
            if i < len(self._starts) and self._starts[i] == base:
                del self._starts[i]
                del self._ranges[i]

    def find(self, addr: int) -> tuple[int, int, MmioDevice] | None:
        i = bisect.bisect(self._starts, addr) - 1
        if i >= 0:
            start, end, dev = self._ranges[i]
            if addr < end:
                return start, end, dev
        return None

    def read(self, addr: int, size: int) -> int:
        hit = self.find(addr)
        if hit is None:
            self.unhandled_reads += 1
            return _ONES.get(size, 0)
        return hit[2].mmio_read(addr, size)

    def write(self, addr: int, size: int, value: int) -> None:
        hit = self.find(addr)
        if hit is None:
            self.unhandled_writes += 1
            return
        hit[2].mmio_write(addr, size, value)
