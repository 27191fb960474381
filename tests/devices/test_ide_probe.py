"""Drive detection as SeaBIOS does it (src/hw/ata.c, ata_detect: its register sequence re-enacted here, not its
code), on every layout the board makes: wait for BSY to clear (a floating FFh bus means no drive), select the
device, check that Sector Count / Sector Number hold 55h/AAh and the device register reads back, reset the channel
with SRST once, try IDENTIFY PACKET DEVICE and fall back to IDENTIFY DEVICE when it is aborted (a zero status
meaning nothing is there), and skip device 1 when device 0's word 93 says it answers for it. Each layout must be
found exactly: disks as ATA, CD-ROMs as ATAPI, nothing else."""
from __future__ import annotations

import struct

import pytest

from core.devices.ide import AtaDisk, AtapiCdrom, drive_positions
from tests.helpers.ide import IdeRig, make_image

BSY, DRDY, DRQ, ERR = 0x80, 0x40, 0x08, 0x01


def _identify(rig: IdeRig, ch: int, slave: int, command: int) -> tuple[int, ...] | None:
    rig.control(ch, 0x0A)                                     # nIEN, as SeaBIOS's PIO commands do
    rig.outb(ch, 6, 0xB0 if slave else 0xA0)
    rig.outb(ch, 7, command)
    status = rig.status(ch)
    if status & BSY or status & ERR or not status & DRQ:
        return None
    words = struct.unpack("<256H", rig.read_data(ch, 512))
    if rig.status(ch) & (BSY | DRQ | ERR):
        return None
    return words


def seabios_detect(rig: IdeRig) -> dict[int, str]:
    found: dict[int, str] = {}
    for ch in (0, 1):
        did_reset = False
        for slave in (0, 1):
            if rig.status(ch) & BSY:
                continue                                      # floating (FFh): nothing on this channel
            newdh = 0xB0 if slave else 0xA0
            rig.outb(ch, 6, newdh)
            if rig.status(ch) & BSY:
                continue
            dh = rig.inb(ch, 6)
            rig.outb(ch, 2, 0x55)
            rig.outb(ch, 3, 0xAA)
            if (rig.inb(ch, 2), rig.inb(ch, 3), dh) != (0x55, 0xAA, newdh):
                continue
            if not did_reset:
                rig.control(ch, 0x0E)
                rig.control(ch, 0x0A)
                assert not rig.status(ch) & BSY
                rig.outb(ch, 6, newdh)
                did_reset = True
            words = _identify(rig, ch, slave, 0xA1)
            kind = "atapi"
            if words is None:
                if not rig.status(ch):
                    continue                                  # status 0: no device here
                assert rig.status(ch) & DRDY                 # SeaBIOS waits for RDY before IDENTIFY DEVICE
                words = _identify(rig, ch, slave, 0xEC)
                kind = "ata"
                if words is None:
                    continue
            found[2 * ch + slave] = kind
            if not slave and words[93] & 0xDF61 == 0x4041:
                break                                         # device 0 answers for an absent device 1
    return found


@pytest.mark.parametrize("disks,cdroms", [(1, 0), (0, 1), (1, 1), (2, 1), (3, 1), (4, 0), (1, 3), (0, 0), (2, 2)])
def test_seabios_finds_every_drive_and_nothing_else(tmp_path, disks, cdroms):
    disk_positions, cd_positions = drive_positions(disks, cdroms)
    drives, images = {}, []
    for i, position in enumerate(disk_positions):
        images.append(make_image(tmp_path / f"d{i}.raw", 1 << 20))
        drives[position] = AtaDisk(images[-1])
    for i, position in enumerate(cd_positions):
        images.append(make_image(tmp_path / f"c{i}.iso", 16 * 2048, read_only=True))
        drives[position] = AtapiCdrom(images[-1])
    rig = IdeRig(drives)
    try:
        expected = {p: "ata" for p in disk_positions} | {p: "atapi" for p in cd_positions}
        assert seabios_detect(rig) == expected
    finally:
        rig.close()
        for image in images:
            image.close()
