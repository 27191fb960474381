"""The PIIX3 IDE function (core/devices/ide: ATA-6 task file and commands, ATAPI/MMC packets, the SFF-8038i bus
master and its PRD tables) with an ATA disk, a CD-ROM with a disc and an empty drive: hostile register traffic and
PRD tables may not raise to the vCPU, nor make the channel workers fail (they log a model bug), nor leave the PIO
window outside the channel's buffer, nor grow the disk."""
from __future__ import annotations

import os
import struct

from core.devices.ide import AtaDisk, AtapiCdrom
from core.devices.ide.channel import BUF_SIZE
from core.storage import open_image
from fuzz.harness import Program, scratch_dir, target, untraced

RAM = 1 << 20
TABLE = 0x8000
DISK_BYTES = 256 * 512
_dir = scratch_dir("ide")
_disk, _disc = os.path.join(_dir, "disk.raw"), os.path.join(_dir, "disc.iso")


def _images() -> None:
    if not os.path.exists(_disc):
        from tests.helpers.ide import make_image
        make_image(_disk, DISK_BYTES).close()
        make_image(_disc, 64 * 2048, fill=b"ISO9660!").close()


# op codes of the program (see fuzz_ide)
REG, CMD, CTL, DIN, DOUT, PACKET, BM, PRD, START, CFG, MEDIA = range(11)


def _op(code: int, *fields: int) -> bytes:
    return bytes([code]) + b"".join(struct.pack("<I", f) for f in fields)


def _seeds() -> list[bytes]:
    ident = _op(CMD, 0, 0xEC) + _op(DIN, 0x02, 256)
    read_dma = _op(CMD, 0, 0xC8) + _op(START, 0x01)
    write_pio = _op(CMD, 0, 0x30) + _op(DOUT, 0x02, 64)
    inquiry = _op(PACKET, 1, 0x12) + _op(DIN, 0x12, 48)
    read10 = _op(PACKET, 1, 0x28) + _op(START, 0x11)
    return [ident, read_dma, write_pio, inquiry, read10, _op(CMD, 0, 0x25) + _op(START, 0x00),
            _op(PACKET, 1, 0x43) + _op(DIN, 0x12, 200), _op(MEDIA, 0) + _op(PACKET, 1, 0x00) + _op(MEDIA, 1),
            _op(CTL, 0x04) + _op(CTL, 0) + ident]


@target("ide", allowed=(), seeds=_seeds, max_len=2048, hang_seconds=10.0)
def fuzz_ide(data: bytes) -> None:
    """IDE register programs: task file, commands, data port, ATAPI packets, bus master, PRD tables, media."""
    from tests.helpers.ide import BM_BASE, CMD_BASE, IdeRig
    _images()
    disk = open_image(_disk)
    cd = AtapiCdrom(open_image(_disc, "raw", read_only=True))
    with untraced():
        rig = IdeRig({0: AtaDisk(disk), 2: cd, 3: AtapiCdrom(None)}, ram=RAM)
    for i, base in enumerate((TABLE, TABLE + 64, TABLE + 128, TABLE + 192)):    # sane tables to start from
        rig.prd_table(base, [(0x20000 + 0x1000 * i, 0x1000 * (i + 1))])
    p = Program(data)
    try:
        while p.more():
            op = p.u8() % 11
            a = p.uint(4)
            ch = a & 1
            if op == REG:
                rig.outb(ch, 1 + (a >> 1) % 6, a >> 8 & 0xFF)
            elif op == CMD:
                rig.select(ch, a >> 1 & 1)
                rig.outb(ch, 7, p.uint(4) & 0xFF)
            elif op == CTL:
                rig.control(ch, a >> 1 & 0xFF)
            elif op == DIN:
                width = (1, 2, 4)[(a >> 4) % 3]
                for _ in range(p.uint(4) % 1100):
                    rig.pio.read(CMD_BASE[ch], width)
            elif op == DOUT:
                width = (1, 2, 4)[(a >> 4) % 3]
                for i in range(p.uint(4) % 600):
                    rig.pio.write(CMD_BASE[ch], width, (a + i) & ((1 << (8 * width)) - 1))
            elif op == PACKET:
                opcode = p.uint(4) & 0xFF
                rig.command(ch, a >> 1 & 1, 0xA0, feature=a >> 2 & 1, lba=(a >> 8 & 0xFFFF) << 8)
                rig.write_data(ch, bytes((opcode,)) + p.take(11))
            elif op == BM:
                size = (1, 2, 4)[(a >> 4) % 3]
                rig.pio.write(BM_BASE + (a >> 1) % 16, size, p.uint(4) & ((1 << (8 * size)) - 1))
            elif op == PRD:
                addr, count = p.uint(4), p.uint(4)
                rig.mem.write(TABLE + 8 * ((a >> 1) % 32), struct.pack("<II", addr, count))
            elif op == START:
                rig.dma(ch, TABLE + 64 * (a >> 1 & 3), to_memory=bool(a >> 4 & 1))
            elif op == CFG:
                size = (1, 2, 4)[(a >> 8) % 3]
                rig.cfg_write((0x04, 0x40, 0x42, 0x20, 0x3C)[(a >> 1) % 5], size,
                              p.uint(4) & ((1 << (8 * size)) - 1))
            else:
                old = cd.change_medium(open_image(_disc, "raw", read_only=True) if a & 2 else None)
                if old is not None:
                    old.close()
            for channel in rig.ide.channels:
                if not (0 <= channel.pos <= BUF_SIZE + 8 and channel.rd_end <= BUF_SIZE
                        and channel.wr_end <= BUF_SIZE):
                    raise AssertionError(f"PIO window outside the buffer: pos {channel.pos} rd_end "
                                         f"{channel.rd_end} wr_end {channel.wr_end}")
        for channel in rig.ide.channels:
            if not channel.worker().wait_idle(5):
                raise AssertionError("an IDE worker is still busy after 5 s")
            if channel.worker().failures:
                raise AssertionError(f"an IDE worker job failed ({channel.worker().failures})")
        if os.path.getsize(_disk) != DISK_BYTES:
            raise AssertionError("the disk image grew")
    finally:
        rig.close()
        disk.close()
        if cd.backend is not None:
            cd.backend.close()
