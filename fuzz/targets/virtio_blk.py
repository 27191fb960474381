"""virtqueues (core/devices/virtio/queue.py, virtio 1.1 section 2.6 split rings) under virtio-pci (4.1) and
virtio-blk requests (5.2.6), against a real GuestMemory and a qcow2 image: a hostile driver's descriptors, rings,
indirect tables, request headers and register writes must end as served requests or DEVICE_NEEDS_RESET, never as
an exception reaching the vCPU, a logged device-model failure, a used entry naming a head outside the ring, or a
disk that grew."""
from __future__ import annotations

import os
import random
import struct

from core.storage import create_image, open_image
from fuzz.harness import Program, scratch_dir, target, untraced

DISK = 1 << 20
REGIONS = (0x10000, 0x20000, 0x30000, 0x18000)
_dir = scratch_dir("vblk")
_path = os.path.join(_dir, "disk.qcow2")

DESC_RAW, DESC, HEADER, PUSH, NOTIFY, MEM, SETUP, COMMON = range(8)
INTERESTING_ADDR = (0, 0x1000, 0x3000, 0x4000, (2 << 20) - 1, 2 << 20, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_F000,
                    0xFFFF_FFFF_FFFF_FFFF)


def _desc(i: int, region: int, off: int, length: int, flags: int, nxt: int) -> bytes:
    return bytes([DESC, i, region, flags, nxt]) + struct.pack("<HI", off, length)


def _seeds() -> list[bytes]:
    def request(rtype: int, head: int, n: int, data_flags: int) -> bytes:
        return (bytes([HEADER, 0]) + struct.pack("<IIQ", rtype, 0, 3)
                + _desc(head, 0, 0, 16, 1, head + 1) + _desc(head + 1, 1, 0, n, 1 | data_flags, head + 2)
                + _desc(head + 2, 2, 0, 1, 2, 0) + bytes([PUSH, head, 0]))
    out = b"".join(request(t, 3 * i, n, f) for i, (t, n, f) in enumerate(
        ((0, 512, 2), (1, 1024, 0), (4, 0, 0), (8, 20, 2), (11, 16, 0), (13, 16, 0))))
    indirect = (bytes([MEM, 3, 0, 0, 48]) + struct.pack("<QIHH", 0x10000, 16, 1, 1)
                + struct.pack("<QIHH", 0x20000, 512, 3, 2) + struct.pack("<QIHH", 0x30000, 1, 2, 0)
                + _desc(0, 3, 0, 48, 4, 0) + bytes([HEADER, 0]) + struct.pack("<IIQ", 0, 0, 1) + bytes([PUSH, 0, 0]))
    return [out + bytes([NOTIFY]), indirect + bytes([NOTIFY]), request(0, 0, 512, 2) + bytes([NOTIFY, SETUP, 1])]


class _Rig:
    def __init__(self, image, seed: int) -> None:  # noqa: ANN001
        from tests.devices.test_virtio_fuzz import FuzzDriver
        self.d = FuzzDriver(image, random.Random(seed))
        self.d.setup()


@target("virtio_blk", allowed=(), seeds=_seeds, max_len=2048, hang_seconds=10.0)
def fuzz_virtio_blk(data: bytes) -> None:
    """A driver program: descriptors (raw and region-relative), request headers, available entries, notifies,
    memory writes, queue set-ups with hostile addresses and sizes, common-configuration writes."""
    from core.devices.virtio.pci import STATUS_NEEDS_RESET
    from tests.devices.test_virtio_fuzz import AVAIL, QSIZE, USED
    from tests.devices.test_virtio_fuzz import DESC as DESC_AT
    if not os.path.exists(_path):
        create_image(_path, "qcow2", DISK)
    p = Program(data)
    with open_image(_path, fmt="qcow2") as image:
        with untraced():
            rig = _Rig(image, data[0] if data else 0)
        d = d_ = rig.d
        mem = d.mem
        avail_idx = 0
        last_used = 0

        def notify() -> None:
            nonlocal last_used, avail_idx
            d_.mmio.write(d_.notify_at, 2, 0)
            if not d_.dev.wait_idle(5):
                raise AssertionError("virtio-blk still busy 5 s after a notify")
            if d_.status() & STATUS_NEEDS_RESET:
                d_.setup()
                avail_idx = last_used = 0
                return
            used_idx = mem.read_u16(USED + 2)
            for k in range((used_idx - last_used) & 0xFFFF):
                head, _ = struct.unpack("<II", mem.read(USED + 4 + 8 * ((last_used + k) % QSIZE), 8))
                if head >= QSIZE:
                    raise AssertionError(f"used entry names head {head}, outside the {QSIZE}-entry ring")
            last_used = used_idx

        try:
            while p.more():
                op = p.u8() % 8
                if op == DESC_RAW:
                    i = p.u8() % QSIZE
                    addr = p.choice(INTERESTING_ADDR) if p.u8() & 1 else p.uint(8)
                    mem.write(DESC_AT + 16 * i, struct.pack("<Q", addr) + p.take(8))
                elif op == DESC:
                    i, region, flags, nxt = p.u8() % QSIZE, p.u8() % 4, p.u8() & 7, p.u8()
                    off, length = p.uint(2), p.uint(4)
                    mem.write(DESC_AT + 16 * i, struct.pack("<QIHH", REGIONS[region] + off, length, flags, nxt))
                elif op == HEADER:
                    region = p.u8() % 4
                    mem.write(REGIONS[region], p.take(16))
                elif op == PUSH:
                    head, jump = p.u8(), p.u8()
                    mem.write_u16(AVAIL + 4 + 2 * (avail_idx % QSIZE), head if head < 200 else p.uint(2))
                    avail_idx = (avail_idx + 1 + (jump if jump > 250 else 0)) & 0xFFFF
                    mem.write_u16(AVAIL + 2, avail_idx)
                elif op == NOTIFY:
                    notify()
                elif op == MEM:
                    region, off, n = p.u8() % 4, p.uint(2), p.u8()
                    mem.write(REGIONS[region] + off, p.take(n))
                elif op == SETUP:
                    kind = p.u8()
                    if kind & 1:
                        d.setup(desc=p.choice(INTERESTING_ADDR) & ~15, avail=p.choice(INTERESTING_ADDR) & ~1,
                                used=p.choice(INTERESTING_ADDR) & ~3, size=p.choice((QSIZE, 0, 3, 1 << 15, 255)))
                        d.dev.wait_idle(5)
                    if d.status() & STATUS_NEEDS_RESET or not d.status() & 4 or not kind & 1:
                        d.setup()
                    avail_idx = last_used = 0
                else:
                    reg, size = p.u8() % 0x38, p.choice((1, 2, 4))
                    d.mmio.write(d.common + reg, size, p.uint(4) & ((1 << (8 * size)) - 1))
            notify()
            if image.size != DISK:
                raise AssertionError(f"the disk's size changed to {image.size}")
        finally:
            d.dev.wait_idle(5)
            d.dev.close()
            d.mem.close()
