"""Hostile virtqueues against the real virtio-pci + virtio-blk stack, a real GuestMemory and a real image.

A seeded random "driver" fills the descriptor table, the rings and the request headers with a mix of sane and
hostile values: addresses outside RAM or wrapping past 2^64, huge lengths, `next` loops, indirect tables that
nest, are misaligned or point at themselves, available indices that jump, heads out of range, sectors past the
end of the disk, unknown request types, queues re-programmed with bad addresses. After every notification the
device must have either served requests (each used entry naming a real head and no more bytes than the chain
could hold) or set DEVICE_NEEDS_RESET, after which the driver resets it and carries on. No exception may reach
the caller, the image may not grow past its size, and the disk must still work at the end.
"""
from __future__ import annotations

import random
import struct

import pytest

from core.bus import MmioBus, PortIoBus
from core.devices.pci import PciBus
from core.devices.virtio.blk import S_OK, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES, VirtioBlk
from core.devices.virtio.pci import STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1, VirtioPciDevice
from core.memory import GuestMemory
from core.storage import create_image, open_image

RAM = 2 << 20
BAR4 = 0xFE00_0000
DESC, AVAIL, USED = 0x1000, 0x3000, 0x4000
QSIZE = 64
DISK = 1 << 20
DATA_AREA = (0x10000, RAM - 0x10000)


class FuzzDriver:
    def __init__(self, image, rng: random.Random) -> None:
        self.rng = rng
        self.mem = GuestMemory(RAM)
        self.pio, self.mmio = PortIoBus(), MmioBus()
        self.bus = PciBus(self.pio, self.mmio, lambda gsi, level: None)
        self.bus.attach(self.pio)
        self.msis: list[tuple[int, int]] = []
        self.blk = VirtioBlk(image, serial="fuzz")
        self.dev = VirtioPciDevice(self.blk, self.mem, msi_sink=lambda a, d: self.msis.append((a, d)))
        slot = self.bus.add(self.dev)
        self._cfg(slot, 0x20, BAR4)
        self._cfg(slot, 0x24, 0)
        self._cfg(slot, 0x04, 0x6)
        caps, ptr = {}, self._cfg_read(slot, 0x34) & 0xFF
        while ptr:
            word = self._cfg_read(slot, ptr)
            if word & 0xFF == 0x09:
                caps[(word >> 24) & 0xFF] = self._cfg_read(slot, ptr + 8)
            ptr = (word >> 8) & 0xFF
        self.common, self.notify_at = BAR4 + caps[1], BAR4 + caps[2]
        self.avail_idx = 0
        self.last_used = 0

    def _cfg(self, slot: int, reg: int, value: int) -> None:
        self.pio.write(0xCF8, 4, 0x8000_0000 | slot << 11 | reg)
        self.pio.write(0xCFC, 4, value)

    def _cfg_read(self, slot: int, reg: int) -> int:
        self.pio.write(0xCF8, 4, 0x8000_0000 | slot << 11 | (reg & 0xFC))
        return self.pio.read(0xCFC, 4) >> (8 * (reg & 3))

    def status(self) -> int:
        return self.mmio.read(self.common + 0x14, 1)

    def setup(self, desc: int = DESC, avail: int = AVAIL, used: int = USED, size: int = QSIZE) -> None:
        w = self.mmio.write
        w(self.common + 0x14, 1, 0)
        w(self.common + 0x14, 1, 3)
        w(self.common + 0x08, 4, 1)
        w(self.common + 0x0C, 4, VIRTIO_F_VERSION_1 >> 32)
        w(self.common + 0x08, 4, 0)
        w(self.common + 0x0C, 4, 1 << 28 | 1 << 29 if self.rng.random() < 0.5 else 1 << 28)
        w(self.common + 0x14, 1, 0xB)
        w(self.common + 0x16, 2, 0)
        w(self.common + 0x18, 2, size)
        for off, addr in ((0x20, desc), (0x28, avail), (0x30, used)):
            w(self.common + off, 4, addr & 0xFFFF_FFFF)
            w(self.common + off + 4, 4, addr >> 32)
        w(self.common + 0x1C, 2, 1)
        w(self.common + 0x14, 1, 0xF)
        self.mem.fill(AVAIL, 0x1000)
        self.mem.fill(USED, 0x1000)
        self.avail_idx = 0
        self.last_used = 0

    # -- hostile values ------------------------------------------------------------------------------------
    def addr(self) -> int:
        r = self.rng.random()
        if r < 0.6:
            return self.rng.randrange(*DATA_AREA)
        return self.rng.choice([RAM - 1, RAM, RAM + 4096, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_F000,
                                0xFFFF_FFFF_FFFF_FFFF, DESC, AVAIL, USED, 0, self.rng.getrandbits(64)])

    def length(self) -> int:
        r = self.rng.random()
        if r < 0.6:
            return self.rng.choice([1, 16, 511, 512, 4096, 8192, 65536])
        return self.rng.choice([0, 0xFFFF_FFFF, RAM, RAM - 0x10000, self.rng.getrandbits(32)])

    def flags(self) -> int:
        return self.rng.choice([0, 1, 2, 3, 4, 5, 6, 7, self.rng.getrandbits(16)])

    def descriptor(self, table_size: int) -> bytes:
        nxt = self.rng.choice([self.rng.randrange(table_size), self.rng.getrandbits(16)])
        return struct.pack("<QIHH", self.addr(), self.length(), self.flags(), nxt)

    def sane_request(self) -> int:
        """A well-formed request chain at a random head; returns the head."""
        head = self.rng.randrange(QSIZE - 3)
        rtype = self.rng.choice([T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES, 99])
        sector = self.rng.choice([0, 1, DISK // 512 - 1, DISK // 512, self.rng.getrandbits(64)])
        hdr_at, data_at, status_at = 0x10000, 0x20000, 0x30000
        self.mem.write(hdr_at, struct.pack("<IIQ", rtype, 0, sector))
        n = self.rng.choice([512, 4096, 1000])
        if rtype in (T_DISCARD, T_WRITE_ZEROES):
            self.mem.write(data_at, struct.pack("<QII", self.rng.randrange(DISK // 512), 8, self.rng.choice([0, 1, 2])))
            n = 16
        data_flags = 2 if rtype in (T_IN, T_GET_ID) else 0
        self.mem.write(DESC + 16 * head, struct.pack("<QIHH", hdr_at, 16, 1, head + 1))
        self.mem.write(DESC + 16 * (head + 1), struct.pack("<QIHH", data_at, n, 1 | data_flags, head + 2))
        self.mem.write(DESC + 16 * (head + 2), struct.pack("<QIHH", status_at, 1, 2, 0))
        return head

    def hostile_request(self) -> int:
        for i in range(QSIZE):
            if self.rng.random() < 0.3:
                self.mem.write(DESC + 16 * i, self.descriptor(QSIZE))
        if self.rng.random() < 0.3:
            # An indirect table somewhere in RAM (maybe overlapping the descriptor table itself).
            table = self.rng.choice([0x18000, DESC, 0x18008])
            count = self.rng.randrange(1, 40)
            for i in range(count):
                self.mem.write(table + 16 * i, self.descriptor(count))
            head = self.rng.randrange(QSIZE)
            length = self.rng.choice([16 * count, 16 * count + 3, 0, 16 * 40000])
            self.mem.write(DESC + 16 * head, struct.pack("<QIHH", table, length, 4 | self.rng.choice([0, 1]), 0))
            return head
        return self.rng.choice([self.rng.randrange(QSIZE), self.rng.getrandbits(16)])

    def step(self) -> None:
        heads = []
        for _ in range(self.rng.randrange(1, 6)):
            head = self.sane_request() if self.rng.random() < 0.7 else self.hostile_request()
            heads.append(head)
            self.mem.write_u16(AVAIL + 4 + 2 * (self.avail_idx % QSIZE), head)
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        idx = self.avail_idx if self.rng.random() < 0.9 else self.rng.getrandbits(16)
        self.mem.write_u16(AVAIL + 2, idx)
        self.mmio.write(self.notify_at, 2, self.rng.choice([0, 0, 0, 1, 0xFFFF]))
        self.dev.wait_idle()
        if self.status() & STATUS_NEEDS_RESET:
            self.setup()
            return
        used_idx = self.mem.read_u16(USED + 2)
        for k in range((used_idx - self.last_used) & 0xFFFF):
            head, written = struct.unpack("<II", self.mem.read(USED + 4 + 8 * ((self.last_used + k) % QSIZE), 8))
            assert head < QSIZE
            assert written <= RAM * QSIZE
        self.last_used = used_idx


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("seed", range(4))
def test_hostile_virtqueues_never_reach_the_host(tmp_path, fmt, seed):
    path = tmp_path / f"fuzz.{fmt}"
    create_image(str(path), fmt, DISK)
    rng = random.Random(seed)
    with open_image(str(path), fmt=fmt) as image:
        d = FuzzDriver(image, rng)
        d.setup()
        for _ in range(300):
            if rng.random() < 0.05:
                # Re-program the queue with hostile ring addresses or sizes: refused with NEEDS_RESET.
                d.setup(desc=d.addr() & ~15, avail=d.addr() & ~1, used=d.addr() & ~3,
                        size=rng.choice([QSIZE, 0, 3, 1 << 15, 1 << 16 - 1]))
                d.dev.wait_idle()
                if d.status() & STATUS_NEEDS_RESET or not d.status() & 4:
                    d.setup()
            d.step()
        d.dev.wait_idle()
        assert image.size == DISK
        # The device still serves a plain request after all that.
        d.setup()
        d.mem.write(0x10000, struct.pack("<IIQ", T_OUT, 0, 5))
        d.mem.write(0x20000, b"still alive!" * 40 + bytes(32))
        d.mem.write(DESC, struct.pack("<QIHH", 0x10000, 16, 1, 1) + struct.pack("<QIHH", 0x20000, 512, 1, 2)
                    + struct.pack("<QIHH", 0x30000, 1, 2, 0))
        d.mem.write_u16(AVAIL + 4, 0)
        d.mem.write_u16(AVAIL + 2, 1)
        d.mmio.write(d.notify_at, 2, 0)
        d.dev.wait_idle()
        assert d.mem.read_u8(0x30000) == S_OK
        assert image.read(5 * 512, 12) == b"still alive!"
    if fmt == "qcow2":
        from tests.helpers.storage import qemu_img
        qemu_img("check", path)
