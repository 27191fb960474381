"""virtio-pci modern transport + split virtqueue + virtio-blk, driven the way Linux's virtio_pci drives them."""
import struct

import pytest

from core.bus import MmioBus, PortIoBus
from core.devices.pci import PciBus
from core.devices.virtio.blk import S_IOERR, S_OK, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES, VirtioBlk
from core.devices.virtio.pci import STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1, VirtioPciDevice
from core.memory import GuestMemory

BAR4 = 0xFE00_0000
DESC, AVAIL, USED = 0x10000, 0x11000, 0x12000
QSIZE = 16


class MemDisk:
    def __init__(self, size, read_only=False):
        self.data = bytearray(size)
        self.size = size
        self.read_only = read_only
        self.flushes = 0

    def read(self, off, n):
        return bytes(self.data[off:off + n])

    def readv(self, off, bufs):
        for b in bufs:
            b[:] = self.data[off:off + len(b)]
            off += len(b)

    def write(self, off, data):
        self.data[off:off + len(data)] = data

    def writev(self, off, bufs):
        for b in bufs:
            self.write(off, b)
            off += len(b)

    def flush(self):
        self.flushes += 1

    def discard(self, off, n):
        pass

    def write_zeroes(self, off, n):
        self.data[off:off + n] = bytes(n)


class Driver:
    """A minimal virtio driver: feature negotiation, one queue, requests built in guest RAM."""

    def __init__(self, disk, msi=None):
        self.mem = GuestMemory(4 << 20)
        self.pio, self.mmio, self.irqs = PortIoBus(), MmioBus(), []
        self.bus = PciBus(self.pio, self.mmio, lambda g, lvl: self.irqs.append((g, lvl)))
        self.bus.attach(self.pio)
        self.blk = VirtioBlk(disk, serial="VIREO-DISK-1")
        self.dev = VirtioPciDevice(self.blk, self.mem, msi_sink=msi)
        self.slot = self.bus.add(self.dev)
        self.cfg_write(0x20, BAR4)
        self.cfg_write(0x24, 0)
        self.cfg_write(0x04, 0x6, 2)
        self.next_buf = 0x20000
        self.avail_idx = 0

    def cfg_write(self, reg, val, size=4):
        self.pio.write(0xCF8, 4, 0x8000_0000 | self.slot << 11 | (reg & 0xFC))
        self.pio.write(0xCFC + (reg & 3), size, val)

    def cfg_read(self, reg, size=4):
        self.pio.write(0xCF8, 4, 0x8000_0000 | self.slot << 11 | (reg & 0xFC))
        return self.pio.read(0xCFC + (reg & 3), size)

    def caps(self):
        out, ptr = {}, self.cfg_read(0x34, 1)
        while ptr:
            cap_id = self.cfg_read(ptr, 1)
            if cap_id == 0x09:
                cfg_type = self.cfg_read(ptr + 3, 1)
                out[cfg_type] = self.cfg_read(ptr + 8)
            ptr = self.cfg_read(ptr + 1, 1)
        return out

    def setup(self):
        caps = self.caps()
        self.common, self.notify, self.isr, self.devcfg = BAR4 + caps[1], BAR4 + caps[2], BAR4 + caps[3], BAR4 + caps[4]
        w, r = self.mmio.write, self.mmio.read
        w(self.common + 0x14, 1, 0)
        w(self.common + 0x14, 1, 1 | 2)
        w(self.common + 0x00, 4, 1)
        assert r(self.common + 0x04, 4) & 1                      # VERSION_1 in the high word
        w(self.common + 0x08, 4, 1)
        w(self.common + 0x0C, 4, VIRTIO_F_VERSION_1 >> 32)
        w(self.common + 0x14, 1, 1 | 2 | 8)
        assert r(self.common + 0x14, 1) & 8
        w(self.common + 0x16, 2, 0)
        w(self.common + 0x18, 2, QSIZE)
        for off, addr in ((0x20, DESC), (0x28, AVAIL), (0x30, USED)):
            w(self.common + off, 4, addr)
            w(self.common + off + 4, 4, 0)
        w(self.common + 0x1C, 2, 1)
        w(self.common + 0x14, 1, 1 | 2 | 4 | 8)

    def buf(self, data_or_len):
        addr = self.next_buf
        n = data_or_len if isinstance(data_or_len, int) else len(data_or_len)
        if not isinstance(data_or_len, int):
            self.mem.write(addr, data_or_len)
        self.next_buf += (n + 15) & ~15
        return addr, n

    def submit(self, parts):
        """parts: list of (addr, len, writable). Returns nothing; call kick()."""
        head = self.avail_idx * 4 % QSIZE
        for i, (addr, n, wr) in enumerate(parts):
            flags = (1 if i + 1 < len(parts) else 0) | (2 if wr else 0)
            self.mem.write(DESC + 16 * (head + i), struct.pack("<QIHH", addr, n, flags, head + i + 1))
        self.mem.write_u16(AVAIL + 4 + 2 * (self.avail_idx % QSIZE), head)
        self.avail_idx += 1
        self.mem.write_u16(AVAIL + 2, self.avail_idx)
        return head

    def kick(self):
        self.mmio.write(self.notify, 2, 0)
        assert self.dev.wait_idle(10)         # requests are served on the device's worker thread

    def request(self, rtype, sector, data=None, read_len=0):
        hdr = self.buf(struct.pack("<IIQ", rtype, 0, sector))
        parts = [(*hdr, False)]
        if data is not None:
            parts.append((*self.buf(data), False))
        rd = self.buf(read_len) if read_len else None
        if rd:
            parts.append((*rd, True))
        status = self.buf(1)
        self.mem.write_u8(status[0], 0xFF)
        parts.append((*status, True))
        self.submit(parts)
        self.kick()
        return self.mem.read_u8(status[0]), (self.mem.read(rd[0], read_len) if rd else b"")


def test_negotiation_and_config_space():
    d = Driver(MemDisk(1 << 20))
    d.setup()
    assert d.cfg_read(0x00) == 0x1042_1AF4
    assert d.mmio.read(d.devcfg, 8) == (1 << 20) // 512
    assert d.mmio.read(d.common + 0x12, 2) == 1


def test_write_read_flush_and_id_round_trip():
    disk = MemDisk(1 << 20)
    d = Driver(disk)
    d.setup()
    payload = bytes(range(256)) * 4
    assert d.request(T_OUT, 3, data=payload)[0] == S_OK
    assert disk.data[3 * 512:3 * 512 + 1024] == payload
    status, back = d.request(T_IN, 3, read_len=1024)
    assert (status, back) == (S_OK, payload)
    assert d.request(T_FLUSH, 0)[0] == S_OK and disk.flushes == 1
    status, ident = d.request(T_GET_ID, 0, read_len=20)
    assert ident.rstrip(b"\0") == b"VIREO-DISK-1"
    used_idx = d.mem.read_u16(USED + 2)
    assert used_idx == 4
    assert d.irqs and d.irqs[0][1] is True                 # INTx raised for completions
    assert d.mmio.read(d.isr, 1) == 1 and d.irqs[-1][1] is False   # reading the ISR deasserts it


def test_out_of_range_and_unsupported_requests_fail_only_that_request():
    d = Driver(MemDisk(64 * 512))
    d.setup()
    assert d.request(T_IN, 64, read_len=512)[0] == S_IOERR
    assert d.request(99, 0)[0] == S_UNSUPP
    assert d.request(T_WRITE_ZEROES, 0, data=struct.pack("<QII", 0, 1, 0x80))[0] == S_UNSUPP
    assert d.request(T_IN, 0, read_len=512)[0] == S_OK


def test_read_only_disk_refuses_writes():
    d = Driver(MemDisk(64 * 512, read_only=True))
    d.setup()
    assert d.request(T_OUT, 0, data=b"x" * 512)[0] == S_IOERR


@pytest.mark.parametrize("bad", ["loop", "outside_ram", "head_out_of_range"])
def test_hostile_rings_mark_device_needs_reset(bad):
    d = Driver(MemDisk(64 * 512))
    d.setup()
    if bad == "loop":
        d.mem.write(DESC, struct.pack("<QIHH", 0x20000, 16, 1, 1))
        d.mem.write(DESC + 16, struct.pack("<QIHH", 0x20000, 16, 1, 0))
        head = 0
    elif bad == "outside_ram":
        d.mem.write(DESC, struct.pack("<QIHH", 0xFFFF_FFFF_0000, 16, 0, 0))
        head = 0
    else:
        head = 500
    d.mem.write_u16(AVAIL + 4, head)
    d.mem.write_u16(AVAIL + 2, 1)
    d.kick()
    assert d.mmio.read(d.common + 0x14, 1) & STATUS_NEEDS_RESET
    d.mmio.write(d.common + 0x14, 1, 0)                      # the driver resets the device
    assert d.mmio.read(d.common + 0x14, 1) == 0


def test_msix_delivery_when_enabled():
    sent = []
    d = Driver(MemDisk(64 * 512), msi=lambda a, v: sent.append((a, v)))
    d.cfg_write(0x14, 0xFE10_0000)                         # BAR1: the MSI-X table
    d.setup()
    d.mmio.write(0xFE10_0000 + 16 * 1, 4, 0xFEE0_0000)
    d.mmio.write(0xFE10_0000 + 16 * 1 + 8, 4, 0x41)
    d.mmio.write(0xFE10_0000 + 16 * 1 + 12, 4, 0)
    d.mmio.write(d.common + 0x16, 2, 0)
    # the vector must be assigned before the queue is enabled, as Linux does; re-setup queue 0 via reset
    d.mmio.write(d.common + 0x14, 1, 0)
    d.setup()
    d.mmio.write(d.common + 0x1A, 2, 1)
    cap = d.cfg_read(0x34, 1)
    while d.cfg_read(cap, 1) != 0x11:
        cap = d.cfg_read(cap + 1, 1)
    d.cfg_write(cap + 2, 0x8000 | d.cfg_read(cap + 2, 2), 2)
    assert d.request(T_IN, 0, read_len=512)[0] == S_OK
    assert sent == [(0xFEE0_0000, 0x41)]


def test_flush_runs_on_the_worker_and_a_reset_waits_for_it():
    import threading

    release = threading.Event()

    class SlowFlushDisk(MemDisk):
        def flush(self):
            self.flush_thread = threading.current_thread()
            release.wait(10)                                       # an fsync that lasts until the test says
            self.flushes += 1

    disk = SlowFlushDisk(64 * 512)
    d = Driver(disk)
    d.setup()
    hdr = d.buf(struct.pack("<IIQ", T_FLUSH, 0, 0))
    status = d.buf(1)
    d.mem.write_u8(status[0], 0xFF)
    d.submit([(*hdr, False), (*status, True)])
    d.mmio.write(d.notify, 2, 0)
    assert disk.flushes == 0                                   # the notify exit does not wait for the fsync
    threading.Timer(0.1, release.set).start()
    d.mmio.write(d.common + 0x14, 1, 0)                        # driver reset while the flush is in flight
    assert disk.flushes == 1                                   # ...returns only after it finished
    assert disk.flush_thread is not threading.current_thread()
    assert d.mmio.read(d.common + 0x14, 1) == 0
    assert d.mem.read_u16(USED + 2) == 0                       # dropped: nothing touches the rings after a reset
