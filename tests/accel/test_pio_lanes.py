"""Data lanes (core/pio_lanes.py): string port I/O on a device's data port served from the device's buffer, under
both accelerators -- the bytes the guest gets and gives are exactly the device's, only the access that ends a
block reaches the device's Python handler, and ports without a lane (or the other direction) are untouched."""
from __future__ import annotations

import pytest

from core.hypervisor.base import CpuState, Segment
from core.pio_lanes import CAPACITY, PioLaneTable
from tests.helpers.accel import require_accel
from tests.helpers.software_guest import DONE_PORT, Rig, assemble

DATA_PORT = 0x1F0
BLOCK = 512


class BlockDevice:
    """A data port moving numbered 512-byte blocks, in either direction, the way a disk controller does."""

    def __init__(self, lane) -> None:
        self.lane = lane
        self.served = 0          # blocks the guest has read
        self.calls = 0           # accesses that reached Python
        self.written: list[bytes] = []
        self.plain_writes: list[int] = []

    def block(self, n: int) -> bytes:
        return bytes((n * 7 + i) & 0xFF for i in range(BLOCK))

    def start_read(self) -> None:
        self.lane.offer_read(self.block(self.served))

    def start_write(self) -> None:
        self.lane.expect_write(BLOCK)

    def io_read(self, port: int, size: int) -> int:
        self.calls += 1
        value = self.lane.take(size)
        if self.lane.is_open and self.lane.remaining == 0:
            self.served += 1
            self.start_read()
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        self.calls += 1
        if not self.lane.is_open:
            self.plain_writes.append(value)
            return
        self.lane.put(size, value)
        if self.lane.remaining == 0:
            self.written.append(bytes(self.lane.written()))
            self.start_write()


def _run(accel: str, source: str, setup) -> tuple[Rig, BlockDevice]:
    require_accel(accel)
    rig = Rig(accel=accel, memory_bytes=1 << 20)
    dev = BlockDevice(rig.pio.lanes.lane(DATA_PORT))
    rig.pio.register(DATA_PORT, 1, dev)
    setup(rig, dev)
    rig.memory.write(0x7C00, assemble(source + f"\n mov ${DONE_PORT}, %dx\n out %al, %dx\n hlt\n", 16, 0x7C00))
    rig.run(CpuState(rip=0x7C00, cs=Segment(selector=0, base=0, type=0xB)), timeout=60)
    assert rig.done
    return rig, dev


@pytest.mark.parametrize("accel", ["software", "kvm"])
@pytest.mark.parametrize("insn,size", [("insw", 2), ("insl", 4), ("insb", 1)])
def test_rep_ins_reads_the_device_blocks_with_one_python_call_per_block(accel: str, insn: str, size: int) -> None:
    blocks = 5
    src = f"""
.code16
    mov $0x1000, %ax
    mov %ax, %es
    xor %di, %di
    mov $0x1f0, %dx
    mov ${blocks * BLOCK // size}, %cx
    cld
    rep {insn}
"""
    rig, dev = _run(accel, src, lambda rig, dev: dev.start_read())
    got = rig.memory.read(0x10000, blocks * BLOCK)
    assert got == b"".join(dev.block(n) for n in range(blocks))
    assert dev.served == blocks
    assert dev.calls == blocks          # only the access ending each block


@pytest.mark.parametrize("accel", ["software", "kvm"])
def test_rep_outs_fills_write_blocks_and_single_accesses_work(accel: str) -> None:
    src = """
.code16
    xor %ax, %ax
    mov %ax, %ds
    mov $0x8000, %si
    mov $0x1f0, %dx
    mov $512, %cx
    cld
    rep outsw
    mov $0xBEEF, %ax
    out %ax, %dx
    in %dx, %ax
    mov %ax, 0x9000
"""
    payload = bytes((i * 13 + 5) & 0xFF for i in range(2 * BLOCK))

    def setup(rig, dev):
        rig.memory.write(0x8000, payload)
        dev.start_write()
    rig, dev = _run(accel, src, setup)
    assert dev.written == [payload[:BLOCK], payload[BLOCK:]]
    # A lone OUT goes into the next write block; an IN on a write lane reaches the device (reads as ones).
    assert bytes(dev.lane.written()) == (0xBEEF).to_bytes(2, "little")
    assert rig.memory.read(0x9000, 2) == b"\xff\xff"


def test_lane_bounds_and_directions() -> None:
    table = PioLaneTable()
    lane = table.lane(0x170)
    assert table.lane(0x170) is lane
    with pytest.raises(ValueError):
        lane.offer_read(b"")
    with pytest.raises(ValueError):
        lane.offer_read(bytes(CAPACITY + 1))
    lane.offer_read(b"\x01\x02\x03")
    assert lane.take_bulk(2, 10) == b"\x01\x02"  # the item reaching the end is left to the device
    assert lane.take_bulk(2, 10) == b""
    assert lane.take(2) == 0xFF03                # past the end reads as ones
    lane.put(2, 0x1234)                          # a read lane ignores writes
    lane.expect_write(4)
    assert lane.put_bulk(b"\xaa\xbb\xcc\xdd\xee\xff", 2) == 1
    assert lane.take(2) == 0xFFFF                # a write lane gives nothing to read
    lane.close()
    assert not lane.is_open and lane.remaining == 0
    for port in (1, 2, 3):
        table.lane(port)
    with pytest.raises(ValueError):
        table.lane(4)
