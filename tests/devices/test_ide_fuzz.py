"""Hypothesis throws random register traffic at the PIIX3 IDE function with an ATA disk, a CD-ROM with a disc and
an empty one: task-file writes, commands (known opcodes and any byte), device control with SRST and nIEN, data
port reads and writes of every width, ATAPI packets of known and random opcodes, bus-master register writes and
PRD tables whose regions lie inside RAM, across its end, far outside it or at 4 GiB, configuration writes that
turn decoding and bus mastering on and off, and media changes.

Whatever happens, nothing may escape to the caller (the vCPU), the worker must not fail, the PIO window must stay
inside the channel's buffer, the disk image may not grow, and every guest-memory access the controller makes goes
through GuestMemory's bounds checks: the RAM wrapper here counts an access outside RAM that was not turned into
the bus master's error bit.
"""
from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.devices.ide import AtaDisk, AtapiCdrom
from core.devices.ide.channel import BUF_SIZE
from core.storage import open_image
from tests.helpers.ide import BM_BASE, CMD_BASE, IdeRig, make_image

RAM = 1 << 20
TABLE = 0x8000
DISK_BYTES = 256 * 512
ATA_OPS = [0x00, 0x08, 0x10, 0x20, 0x21, 0x24, 0x25, 0x29, 0x30, 0x34, 0x35, 0x39, 0x40, 0x42, 0x90, 0x91, 0xA0,
           0xA1, 0xC4, 0xC5, 0xC6, 0xC8, 0xCA, 0xE0, 0xE1, 0xE5, 0xE7, 0xEA, 0xEC, 0xEF]
SCSI_OPS = [0x00, 0x03, 0x12, 0x1A, 0x1B, 0x1E, 0x25, 0x28, 0x43, 0x46, 0x4A, 0x51, 0x5A, 0xA8, 0xBB, 0xBD]
ADDRESSES = st.one_of(st.integers(0, RAM - 1), st.integers(RAM - 0x2000, RAM + 0x2000),
                      st.sampled_from([0xFFFF_FFFE, 0xFEE0_0000, 0x1_0000]), st.integers(0, 0xFFFF_FFFF))

OPS = st.one_of(
    st.tuples(st.just("reg"), st.integers(0, 1), st.integers(1, 6), st.integers(0, 255)),
    st.tuples(st.just("cmd"), st.integers(0, 1), st.one_of(st.sampled_from(ATA_OPS), st.integers(0, 255)),
              st.integers(0, 1)),
    st.tuples(st.just("ctl"), st.integers(0, 1), st.sampled_from([0x00, 0x02, 0x04, 0x06, 0x80, 0xFF])),
    st.tuples(st.just("in"), st.integers(0, 1), st.sampled_from([1, 2, 4]), st.integers(1, 1200)),
    st.tuples(st.just("out"), st.integers(0, 1), st.sampled_from([1, 2, 4]), st.binary(min_size=1, max_size=700)),
    st.tuples(st.just("packet"), st.integers(0, 1),
              st.tuples(st.one_of(st.sampled_from(SCSI_OPS), st.integers(0, 255)), st.binary(min_size=11,
                                                                                              max_size=11)),
              st.tuples(st.integers(0, 1), st.integers(0, 0xFFFF))),
    st.tuples(st.just("bm"), st.integers(0, 15), st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFF_FFFF)),
    st.tuples(st.just("start"), st.integers(0, 1), st.booleans(), st.integers(0, 3)),
    st.tuples(st.just("prd"), st.integers(0, 7), ADDRESSES, st.tuples(st.integers(0, 0xFFFF), st.booleans())),
    st.tuples(st.just("cfg"), st.sampled_from([0x04, 0x40, 0x42, 0x20]), st.sampled_from([2, 4]),
              st.sampled_from([0, 1, 5, 7, 0x8000, 0xFFFF, 0xC001, 0xFFFF_FFFF])),
    st.tuples(st.just("port"), st.sampled_from([*range(0x1F0, 0x1F8), 0x3F6, *range(0x170, 0x178), 0x376,
                                                *range(BM_BASE, BM_BASE + 16)]),
              st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFF_FFFF)),
    st.tuples(st.just("media"), st.booleans(), st.just(0), st.just(0)),
    # Whole DMA commands, so transfers happen often: the command, then the engine with one of the tables.
    st.tuples(st.just("ata_dma"), st.sampled_from([0xC8, 0xCA, 0x25, 0x35]),
              st.tuples(st.integers(0, 16), st.integers(0, 260)), st.tuples(st.booleans(), st.integers(0, 3))),
    st.tuples(st.just("ata_pio"), st.sampled_from([0x20, 0x24, 0xC4, 0x30, 0x34, 0xC5, 0xEC]),
              st.tuples(st.integers(0, 4), st.integers(0, 260)), st.tuples(st.sampled_from([2, 4]),
                                                                           st.integers(0, 1100))),
    st.tuples(st.just("cd_dma"), st.sampled_from([0x28, 0xA8, 0x12, 0x43, 0x46]),
              st.tuples(st.integers(0, 70), st.integers(0, 8)), st.tuples(st.booleans(), st.integers(0, 3))),
)


@pytest.fixture(scope="module")
def images():
    with tempfile.TemporaryDirectory() as d:
        make_image(os.path.join(d, "disk.raw"), DISK_BYTES).close()
        make_image(os.path.join(d, "disc.iso"), 64 * 2048, fill=b"ISO9660!").close()
        yield os.path.join(d, "disk.raw"), os.path.join(d, "disc.iso")


def _apply(rig: IdeRig, cd: AtapiCdrom, disc_path: str, op: tuple) -> None:
    kind, a, b, c = (*op, None)[:4]
    if kind == "reg":
        rig.outb(a, b, c)
    elif kind == "cmd":
        rig.select(a, c)
        rig.outb(a, 7, b)
    elif kind == "ctl":
        rig.control(a, b)
    elif kind == "in":
        for _ in range(c):
            rig.pio.read(CMD_BASE[a], b)
    elif kind == "out":
        rig.write_data(a, c.ljust(-(-len(c) // b) * b, b"\0"), width=b)
    elif kind == "packet":
        (opcode, rest), (dma, limit) = b, c
        rig.command(a, 0, 0xA0, feature=dma, lba=limit << 8)
        rig.write_data(a, bytes((opcode,)) + rest)
    elif kind == "bm":
        rig.pio.write(BM_BASE + a, b, c & ((1 << (8 * b)) - 1))
    elif kind == "start":
        rig.dma(a, TABLE + 64 * c, to_memory=b)
    elif kind == "prd":
        count, eot = c
        for base in (TABLE, TABLE + 64, TABLE + 128, TABLE + 192):
            rig.mem.write(base + 8 * a, (b & 0xFFFF_FFFF).to_bytes(4, "little")
                          + (count | (0x8000_0000 if eot else 0)).to_bytes(4, "little"))
    elif kind == "cfg":
        rig.cfg_write(a, b, c & ((1 << (8 * b)) - 1))
    elif kind == "port":
        rig.pio.write(a, b, c & ((1 << (8 * b)) - 1)) if c & 1 else rig.pio.read(a, b)
    elif kind == "ata_dma":
        count, lba = b
        rig.command(0, 0, a, count=count, lba=lba, lba48=a in (0x25, 0x35))
        rig.dma(0, TABLE + 64 * c[1], to_memory=c[0])
    elif kind == "ata_pio":
        count, lba = b
        width, words = c
        rig.command(0, 0, a, count=count, lba=lba, lba48=a in (0x24, 0x34))
        for _ in range(words):
            if a in (0x30, 0x34, 0xC5):
                rig.pio.write(CMD_BASE[0], width, 0x5A5A5A5A & ((1 << (8 * width)) - 1))
            else:
                rig.pio.read(CMD_BASE[0], width)
    elif kind == "cd_dma":
        lba, count = b
        rig.command(1, 0, 0xA0, feature=1, lba=0xFFFE << 8)
        rig.write_data(1, bytes((a, 0)) + lba.to_bytes(4, "big") + bytes((0, 0, count, 0, 0, 0)))
        rig.dma(1, TABLE + 64 * c[1], to_memory=c[0])
    elif kind == "media":
        old = cd.change_medium(open_image(disc_path, "raw", read_only=True) if a else None)
        if old is not None:
            old.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=60))
def test_random_register_traffic_never_escapes_the_controller(images, ops):
    disk_path, disc_path = images
    disk = open_image(disk_path)
    cd = AtapiCdrom(open_image(disc_path, "raw", read_only=True))
    rig = IdeRig({0: AtaDisk(disk), 2: cd, 3: AtapiCdrom(None)}, ram=RAM)
    real_offset = rig.mem._offset
    caught: list[int] = []

    def offset(gpa: int, length: int) -> int:
        try:
            return real_offset(gpa, length)
        except Exception:
            caught.append(gpa)
            raise

    rig.mem._offset = offset
    for i, base in enumerate((TABLE, TABLE + 64, TABLE + 128, TABLE + 192)):    # sane tables to start from
        rig.prd_table(base, [(0x20000 + 0x1000 * i, 0x1000 * (i + 1))])
    try:
        for op in ops:
            _apply(rig, cd, disc_path, op)
            for channel in rig.ide.channels:
                assert 0 <= channel.pos <= BUF_SIZE + 8
                assert channel.rd_end <= BUF_SIZE and channel.wr_end <= BUF_SIZE
        for channel in rig.ide.channels:
            assert channel.worker().wait_idle(10)
            assert channel.worker().failures == 0
        # An access outside RAM is allowed only as the bus master's error (PRD outside RAM), which the engine
        # counts; every one the wrapper saw must be one of those.
        assert len(caught) <= sum(ch.bm.stats["errors"] for ch in rig.ide.channels)
        assert os.path.getsize(disk_path) == DISK_BYTES
        # The controller still answers: SRST, then IDENTIFY on the disk.
        rig.cfg_write(0x04, 2, 5)
        rig.cfg_write(0x40, 2, 0x8000)
        rig.control(0, 0x04)
        rig.control(0, 0x00)
        rig.command(0, 0, 0xEC)
        assert len(rig.read_data(0, 512)) == 512 and rig.status(0) & 0x40
    finally:
        rig.close()
        disk.close()
        if cd.backend is not None:
            cd.backend.close()

