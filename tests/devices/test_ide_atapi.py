"""The ATAPI CD-ROM on the PIIX3 IDE function, driven with PACKET commands as SeaBIOS (PIO, byte count 2048) and
Linux's sr/libata (PIO and DMA) drive it: IDENTIFY PACKET DEVICE, the SCSI/MMC commands and their data, the byte
count limit splitting PIO data, CHECK CONDITION with the sense REQUEST SENSE returns, an empty drive, and a media
change seen as UNIT ATTENTION and a GET EVENT STATUS NOTIFICATION media event."""
from __future__ import annotations

import os
import struct

import pytest

from core.devices.ide import AtapiCdrom
from core.devices.ide.defs import DRDY, DRQ, ERR
from tests.helpers.ide import IdeRig, make_image

BLOCKS = 300
TABLE = 0x1000
CH = 1                                     # the CD-ROM on the secondary master, as the board places it


class Cd:
    """A rig with one CD-ROM and helpers to run a packet command to the end."""

    def __init__(self, image) -> None:
        self.drive = AtapiCdrom(image, serial="CD-1")
        self.rig = IdeRig({2: self.drive})

    def send(self, cdb: bytes, limit: int = 0xFFFE, dma: bool = False) -> None:
        rig = self.rig
        rig.command(CH, 0, 0xA0, feature=1 if dma else 0, lba=limit << 8)
        status = rig.status(CH)
        assert status & DRQ and rig.inb(CH, 2) & 0x03 == 0x01          # C/D: the packet is wanted
        rig.write_data(CH, cdb.ljust(12, b"\0"))

    def run(self, cdb: bytes, limit: int = 0xFFFE) -> tuple[bytes, list[int], int]:
        """PIO: (data, chunk sizes, final status)."""
        self.send(cdb, limit)
        rig, data, chunks = self.rig, b"", []
        while (status := rig.status(CH)) & DRQ:
            assert rig.inb(CH, 2) & 0x03 == 0x02                         # I/O: data to the host
            n = rig.inb(CH, 4) | rig.inb(CH, 5) << 8
            chunks.append(n)
            data += rig.read_data(CH, n)
        assert rig.inb(CH, 2) & 0x03 == 0x03                             # completion
        return data, chunks, status

    def sense(self) -> tuple[int, int, int]:
        data, _, status = self.run(bytes((0x03, 0, 0, 0, 18)))
        assert not status & ERR
        return data[2] & 0x0F, data[12], data[13]


@pytest.fixture
def disc(tmp_path):
    image = make_image(tmp_path / "disc.iso", BLOCKS * 2048, read_only=True)
    with open(tmp_path / "disc.iso", "r+b") as f:
        f.write(os.urandom(BLOCKS * 2048))
    yield image
    image.close()


@pytest.fixture
def cd(disc):
    cd = Cd(disc)
    yield cd
    cd.rig.close()


def test_identify_packet_device_and_the_signature(cd):
    rig = cd.rig
    rig.command(CH, 0, 0xEC)                                            # IDENTIFY DEVICE: aborted, signature
    assert rig.status(CH) & ERR and (rig.inb(CH, 4), rig.inb(CH, 5)) == (0x14, 0xEB)
    rig.command(CH, 0, 0xA1)
    w = struct.unpack("<256H", rig.read_data(CH, 512))
    assert w[0] == 0x85C0 and w[49] & 0x0300 == 0x0300 and w[82] & 0x10
    assert not rig.status(CH) & (DRQ | ERR)


def test_inquiry_capacity_and_reads_by_pio_follow_the_byte_count_limit(cd, disc):
    data, chunks, _ = cd.run(bytes((0x12, 0, 0, 0, 36)))
    assert data[0] == 0x05 and data[1] & 0x80 and data[8:16] == b"VIREO   " and len(data) == 36
    data, _, _ = cd.run(bytes((0x25,)))
    assert struct.unpack(">II", data) == (BLOCKS - 1, 2048)
    cdb = bytes((0x28, 0, 0, 0, 0, 10, 0, 0, 3))                        # READ(10): 3 blocks at LBA 10
    data, chunks, status = cd.run(cdb, limit=2048)                      # SeaBIOS: one block a DRQ
    assert chunks == [2048] * 3 and data == disc.read(10 * 2048, 3 * 2048) and status & DRDY
    data, chunks, _ = cd.run(cdb, limit=0x1001)                         # an odd limit: even chunks, then the rest
    assert chunks == [4096, 2048] and data == disc.read(10 * 2048, 3 * 2048)
    data, chunks, _ = cd.run(bytes((0xA8, 0, 0, 0, 0, 0, 0, 0, 0, 100)), limit=0xFFFE)   # READ(12), 200 KiB
    assert sum(chunks) == 100 * 2048 and max(chunks) <= 0xFFFE and data == disc.read(0, 100 * 2048)


def test_read_by_dma(cd, disc):
    rig = cd.rig
    rig.prd_table(TABLE, [(0x20000, 0), (0x40000, 4096)])               # 64 KiB + 4 KiB
    cd.send(bytes((0x28, 0, 0, 0, 0, 5, 0, 0, 34)), dma=True)
    rig.dma(CH, TABLE, to_memory=True)
    assert rig.bm_in(CH, 2) & 0x07 == 0x04
    assert rig.inb(CH, 2) & 0x03 == 0x03 and not rig.status(CH) & (DRQ | ERR)
    assert rig.mem.read(0x20000, 0x10000) + rig.mem.read(0x40000, 4096) == disc.read(5 * 2048, 34 * 2048)
    rig.stop_dma(CH)
    rig.prd_table(TABLE, [(0x50000, 512)])                              # a short answer by DMA: INQUIRY
    cd.send(bytes((0x12, 0, 0, 0, 96)), dma=True)
    rig.dma(CH, TABLE, to_memory=True)
    assert rig.mem.read(0x50000, 36)[8:13] == b"VIREO" and rig.bm_in(CH, 2) & 0x05 == 0x05


def test_errors_are_check_conditions_with_sense(cd):
    _, _, status = cd.run(bytes((0xFF,)))
    assert status & ERR and cd.rig.inb(CH, 1) == 0x54                   # ILLEGAL REQUEST << 4 | ABRT
    assert cd.sense() == (0x05, 0x20, 0x00)
    assert cd.sense() == (0x00, 0x00, 0x00)                             # reported once
    _, _, status = cd.run(bytes((0x28, 0, 0, 0, 1, 0x2C, 0, 0, 1)))     # LBA 300: one past the end
    assert status & ERR and cd.sense() == (0x05, 0x21, 0x00)
    _, _, status = cd.run(bytes((0x5A, 0, 0xC0 | 0x2A, 0, 0, 0, 0, 0, 255)))   # saved values
    assert status & ERR and cd.sense() == (0x05, 0x39, 0x00)


def test_mode_sense_toc_configuration_and_disc_information(cd):
    data, _, _ = cd.run(bytes((0x5A, 0, 0x2A, 0, 0, 0, 0, 0, 255)))
    assert struct.unpack(">H", data[:2])[0] == len(data) - 2 and data[8] == 0x2A and data[8 + 6] & 0x08
    data, _, _ = cd.run(bytes((0x1A, 0, 0x3F, 0, 255)))
    assert data[0] == len(data) - 1 and {data[4], data[4 + 2 + data[5]]} == {0x01, 0x2A}
    data, _, _ = cd.run(bytes((0x43, 0, 0, 0, 0, 0, 0, 0, 255)))        # TOC, LBA form
    assert data[2:4] == b"\x01\x01" and data[6] == 1 and data[14] == 0xAA
    assert struct.unpack(">I", data[16:20])[0] == BLOCKS
    data, _, _ = cd.run(bytes((0x43, 0x02, 0, 0, 0, 0, 0, 0, 255)))     # MSF: track 1 at 00:02:00
    assert data[8:12] == b"\x00\x00\x02\x00"
    data, _, _ = cd.run(bytes((0x43, 0, 1, 0, 0, 0, 0, 0, 255)))        # session information
    assert data[:4] == b"\x00\x0a\x01\x01"
    data, _, _ = cd.run(bytes((0x43, 0x02, 2, 0, 0, 0, 0, 0, 255)))     # full TOC: A0, A1, A2, track 1
    assert [data[4 + 11 * i + 3] for i in range(4)] == [0xA0, 0xA1, 0xA2, 0x01]
    data, _, _ = cd.run(bytes((0x46, 0, 0, 0, 0, 0, 0, 0x10, 0)))
    assert struct.unpack(">H", data[6:8])[0] == 0x0008                  # current profile: CD-ROM
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    data, _, _ = cd.run(bytes((0x51, 0, 0, 0, 0, 0, 0, 0, 34)))
    assert len(data) == 34 and data[2] == 0x0E
    data, _, _ = cd.run(bytes((0xBD, 0, 0, 0, 0, 0, 0, 0, 0, 8)))
    assert len(data) == 8
    _, _, status = cd.run(bytes((0xBB, 0, 0xFF, 0xFF)))                 # SET CD SPEED
    assert not status & ERR


def test_an_empty_drive_reports_no_medium(tmp_path):
    cd = Cd(None)
    _, _, status = cd.run(bytes((0x00,)))
    assert status & ERR and cd.sense() == (0x02, 0x3A, 0x00)
    _, _, status = cd.run(bytes((0x25,)))
    assert status & ERR
    data, _, status = cd.run(bytes((0x12, 0, 0, 0, 36)))                # INQUIRY works without a disc
    assert not status & ERR and data[0] == 0x05
    data, _, _ = cd.run(bytes((0x46, 0, 0, 0, 0, 0, 0, 0, 0xFF)))
    assert data[6:8] == b"\x00\x00"                                     # no current profile


def test_media_change_is_a_unit_attention_and_a_media_event(cd, tmp_path):
    gesn = bytes((0x4A, 0x01, 0, 0, 0x10, 0, 0, 0, 8))
    data, _, _ = cd.run(gesn)
    assert data[2] == 4 and data[4] & 0x0F == 0 and data[5] & 0x02     # no event, media present
    old = cd.drive.change_medium(None)
    data, _, _ = cd.run(gesn)
    assert data[4] & 0x0F == 3 and not data[5] & 0x02                   # MediaRemoval
    _, _, status = cd.run(bytes((0x00,)))
    assert status & ERR and cd.sense() == (0x02, 0x3A, 0x00)
    assert cd.drive.change_medium(old) is None
    data, _, _ = cd.run(gesn)
    assert data[4] & 0x0F == 2                                          # NewMedia
    _, _, status = cd.run(bytes((0x00,)))
    assert status & ERR and cd.sense() == (0x06, 0x28, 0x00)            # UNIT ATTENTION, once
    _, _, status = cd.run(bytes((0x00,)))
    assert not status & ERR


def test_the_guest_locks_and_ejects_the_tray(cd):
    _, _, status = cd.run(bytes((0x1E, 0, 0, 0, 1)))                   # PREVENT MEDIUM REMOVAL
    assert not status & ERR
    assert cd.drive.eject_request() is False                            # the button is refused ...
    data, _, _ = cd.run(bytes((0x4A, 0x01, 0, 0, 0x10, 0, 0, 0, 8)))
    assert data[4] & 0x0F == 1                                          # ... and the guest hears of it
    _, _, status = cd.run(bytes((0x1B, 0, 0, 0, 0x02)))                 # eject while locked
    assert status & ERR and cd.sense() == (0x05, 0x53, 0x02)
    cd.run(bytes((0x1E, 0, 0, 0, 0)))
    _, _, status = cd.run(bytes((0x1B, 0, 0, 0, 0x02)))
    assert not status & ERR
    _, _, status = cd.run(bytes((0x25,)))
    assert status & ERR and cd.sense()[0] == 0x02                      # the tray is open
    cd.run(bytes((0x1B, 0, 0, 0, 0x03)))                                # load
    data, _, status = cd.run(bytes((0x25,)))
    assert not status & ERR and struct.unpack(">I", data[:4])[0] == BLOCKS - 1


def test_device_reset_and_srst_keep_the_atapi_signature(cd):
    rig = cd.rig
    cd.send(bytes((0x28, 0, 0, 0, 0, 0, 0, 0, 50)), limit=2048)
    assert rig.status(CH) & DRQ
    rig.command(CH, 0, 0x08)                                            # DEVICE RESET, even mid-transfer
    assert not rig.alt_status(CH) & DRQ and (rig.inb(CH, 4), rig.inb(CH, 5)) == (0x14, 0xEB)
    data, _, _ = cd.run(bytes((0x25,)))
    assert struct.unpack(">I", data[:4])[0] == BLOCKS - 1
