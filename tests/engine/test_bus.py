"""Port-I/O and MMIO buses: dispatch, conflicts, and unclaimed accesses reading as all ones."""
import pytest

from core.bus import BusConflictError, MmioBus, PortIoBus


class Recorder:
    def __init__(self):
        self.writes = []

    def io_read(self, port, size):
        return 0x1234_5678 + port

    def io_write(self, port, size, value):
        self.writes.append((port, size, value))

    def mmio_read(self, addr, size):
        return addr & 0xFF

    def mmio_write(self, addr, size, value):
        self.writes.append((addr, size, value))


def test_port_dispatch_masks_to_access_size():
    bus, dev = PortIoBus(), Recorder()
    bus.register(0x3F8, 8, dev)
    assert bus.read(0x3F8, 1) == (0x1234_5678 + 0x3F8) & 0xFF
    bus.write(0x3FF, 2, 0x1_ABCD)
    assert dev.writes == [(0x3FF, 2, 0xABCD)]


def test_unclaimed_ports_read_ones_and_are_counted():
    bus = PortIoBus()
    assert bus.read(0x1234, 1) == 0xFF
    assert bus.read(0x1234, 4) == 0xFFFF_FFFF
    bus.write(0x1234, 1, 0)
    assert (bus.unhandled_reads, bus.unhandled_writes) == (2, 1)


def test_overlapping_claims_are_refused():
    bus = PortIoBus()
    bus.register(0x60, 1, Recorder())
    with pytest.raises(BusConflictError):
        bus.register(0x5F, 2, Recorder())
    mmio = MmioBus()
    mmio.register(0xFEC00000, 0x1000, Recorder())
    with pytest.raises(BusConflictError):
        mmio.register(0xFEC00800, 0x1000, Recorder())


def test_mmio_lookup_by_range():
    mmio, a, b = MmioBus(), Recorder(), Recorder()
    mmio.register(0xFEE00000, 0x1000, a)
    mmio.register(0xFEC00000, 0x100, b)
    mmio.write(0xFEE00300, 4, 5)
    mmio.write(0xFEC00010, 4, 6)
    assert a.writes == [(0xFEE00300, 4, 5)] and b.writes == [(0xFEC00010, 4, 6)]
    assert mmio.read(0xFEC00100, 4) == 0xFFFF_FFFF    # just past b's range
    assert mmio.unhandled_reads == 1
    mmio.unregister(0xFEC00000)
    assert mmio.find(0xFEC00010) is None
