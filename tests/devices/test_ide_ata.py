"""The PIIX3 IDE function and its ATA disks, driven through their registers as SeaBIOS and Linux drive them: the PCI
function (class, IDETIM decode, BAR4), device selection and absent devices, SRST and the signatures, IDENTIFY
DEVICE, PIO reads and writes (LBA28, LBA48, CHS, 16/32-bit data port, READ/WRITE MULTIPLE), and the ATA errors for
bad addresses, read-only images and failing I/O. DMA is in test_ide_dma.py, ATAPI in test_ide_atapi.py."""
from __future__ import annotations

import os
import struct

import pytest

from core.devices.ide import AtaDisk, AtapiCdrom, drive_positions
from core.devices.ide.defs import ABRT, BSY, DRDY, DRQ, ERR, IDNF, UNC
from core.storage.errors import ImageIOError
from tests.helpers.ide import IdeRig, make_image

SECTORS = 2048


@pytest.fixture
def disk(tmp_path):
    image = make_image(tmp_path / "d.raw", SECTORS * 512)
    image.write(0, os.urandom(SECTORS * 512))
    yield image
    image.close()


def identify(rig: IdeRig, ch: int, unit: int, cmd: int = 0xEC) -> tuple[int, ...]:
    rig.command(ch, unit, cmd)
    assert rig.status(ch) & DRQ
    data = rig.read_data(ch, 512)
    assert sum(data) & 0xFF == 0 and data[510] == 0xA5          # the integrity word
    return struct.unpack("<256H", data)


def test_the_pci_function_is_a_legacy_bus_master_ide_controller_decoding_only_when_enabled(disk):
    rig = IdeRig({0: AtaDisk(disk)}, configure=False)
    assert rig.cfg_read(0, 4) == 0x7010_8086
    assert rig.cfg_read(8, 4) >> 8 == 0x010180 and rig.cfg_read(0x3D, 1) == 0      # no PCI interrupt pin
    rig.cfg_write(0x20, 4, 0xFFFF_FFFF)
    assert rig.cfg_read(0x20, 4) == 0xFFFF_FFF1                                       # 16 I/O ports
    assert rig.status(0) == 0xFF                                 # nothing decodes 0x1F7 yet: the bus floats
    rig.cfg_write(0x04, 2, 1)
    assert rig.status(0) == 0xFF                                 # I/O on, but IDETIM decode still off
    rig.cfg_write(0x40, 2, 0x8000)
    assert rig.status(0) == DRDY | 0x10 and rig.cfg_read(0x41, 1) & 0x80
    assert rig.inb(1, 7) == 0xFF                                 # the secondary channel is still off
    rig.cfg_write(0x04, 2, 0)
    assert rig.status(0) == 0xFF


def test_direct_kernel_boot_setup_survives_a_reset(disk):
    rig = IdeRig({0: AtaDisk(disk)}, configure=False)
    rig.ide.configure_as_firmware()
    rig.bus.assign_resources(io_base=0xC000)
    assert rig.cfg_read(0x40, 4) == 0x8000_8000 and rig.cfg_read(0x3C, 1) == 14
    assert rig.status(0) == DRDY | 0x10
    rig.bus.reset()
    assert rig.cfg_read(0x40, 4) == 0x8000_8000 and rig.status(0) == DRDY | 0x10
    assert rig.cfg_read(0x20, 4) & ~3 == 0xC000


def test_absent_devices_read_as_absent_and_the_empty_channel_floats(disk):
    rig = IdeRig({0: AtaDisk(disk)})
    rig.select(0, 1)
    assert rig.status(0) == 0 and rig.alt_status(0) == 0       # no device 1: Status reads 00h
    rig.outb(0, 2, 0x55)
    assert rig.inb(0, 2) == 0x55                                # ... while registers echo (device 0 latches)
    rig.command(0, 1, 0xEC)
    assert rig.status(0) == 0                                   # a command to it is not executed
    assert all(rig.inb(1, r) == 0xFF for r in range(1, 8))      # no device on the secondary channel at all
    assert rig.alt_status(1) == 0xFF


def test_srst_gives_the_ata_and_atapi_signatures(disk, tmp_path):
    iso = make_image(tmp_path / "c.iso", 2048 * 16, read_only=True)
    rig = IdeRig({0: AtaDisk(disk), 1: AtapiCdrom(iso)})
    rig.outb(0, 2, 0x12)
    rig.control(0, 0x04 | 0x02)                                 # SRST (nIEN as SeaBIOS sets it)
    assert rig.alt_status(0) & BSY
    rig.control(0, 0x02)
    regs = [(rig.inb(0, 1), rig.inb(0, 2), rig.inb(0, 3), rig.inb(0, 4), rig.inb(0, 5)) for _ in range(1)]
    assert regs == [(0x01, 0x01, 0x01, 0x00, 0x00)] and rig.inb(0, 6) & 0x10 == 0     # device 0 selected
    assert rig.status(0) == DRDY | 0x10
    rig.select(0, 1)
    assert (rig.inb(0, 1), rig.inb(0, 2), rig.inb(0, 3), rig.inb(0, 4), rig.inb(0, 5)) == (1, 1, 1, 0x14, 0xEB)
    assert rig.status(0) == 0                                   # ATAPI: DRDY stays clear after reset
    rig.command(0, 0, 0x90)                                      # EXECUTE DEVICE DIAGNOSTIC: both again
    assert rig.inb(0, 1) == 0x01 and rig.inb(0, 4) == 0x00
    rig.select(0, 1)
    assert (rig.inb(0, 4), rig.inb(0, 5)) == (0x14, 0xEB)


def test_identify_device_describes_the_disk(disk, tmp_path):
    rig = IdeRig({0: AtaDisk(disk, serial="SN-123", model="VIREO HARDDISK")})
    w = identify(rig, 0, 0)
    assert rig.irqs.edges.get(14) == 1 and rig.status(0) == DRDY | 0x10       # one interrupt; no DRQ after
    assert w[0] == 0x0040 and w[49] & 0x0300 == 0x0300 and w[83] & 0x0400
    assert w[60] | w[61] << 16 == SECTORS and w[100] | w[101] << 16 == SECTORS
    model = b"".join(struct.pack(">H", x) for x in w[27:47]).decode().strip()
    serial = b"".join(struct.pack(">H", x) for x in w[10:20]).decode().strip()
    assert (model, serial) == ("VIREO HARDDISK", "SN-123")
    assert w[47] & 0xFF == 16 and w[63] & 0x07 == 0x07
    assert w[93] & 0xDF61 == 0x4041          # device 0 answers for the absent device 1: SeaBIOS skips probing it
    rig.command(0, 0, 0xA1)                  # IDENTIFY PACKET DEVICE: an ATA disk aborts it, status non-zero
    assert rig.status(0) == DRDY | 0x10 | ERR and rig.inb(0, 1) == ABRT


def test_identify_word_93_tells_seabios_a_device_1_exists(disk, tmp_path):
    iso = make_image(tmp_path / "c.iso", 2048 * 16, read_only=True)
    rig = IdeRig({0: AtaDisk(disk), 1: AtapiCdrom(iso)})
    assert identify(rig, 0, 0)[93] & 0xDF61 != 0x4041
    assert identify(rig, 0, 1, cmd=0xA1)[93] & 0x4100 == 0x4100


@pytest.mark.parametrize("width", [2, 4])
def test_pio_read_and_write_sectors_lba28(disk, width):
    rig = IdeRig({0: AtaDisk(disk)})
    rig.command(0, 0, 0x20, count=3, lba=100)
    got = b""
    for _ in range(3):
        assert rig.status(0) & (BSY | DRQ) == DRQ
        got += rig.read_data(0, 512, width)
    assert got == disk.read(100 * 512, 3 * 512) and rig.status(0) == DRDY | 0x10
    payload = os.urandom(2 * 512)
    rig.command(0, 0, 0x30, count=2, lba=7)
    edges = rig.irqs.edges.get(14, 0)
    rig.write_data(0, payload[:512], width)
    assert rig.irqs.edges[14] == edges + 1 and rig.status(0) & DRQ   # the next block is asked for
    rig.write_data(0, payload[512:], width)
    assert rig.status(0) == DRDY | 0x10 and rig.irqs.edges[14] == edges + 2
    assert disk.read(7 * 512, 1024) == payload


def test_lba48_count_zero_means_65536_and_reads_past_28_bits(tmp_path):
    big = make_image(tmp_path / "big.qcow2", (1 << 28) * 512 + 4096, fmt="qcow2")
    big.write((1 << 28) * 512, b"LBA48!" * 10)
    rig = IdeRig({0: AtaDisk(big)})
    rig.command(0, 0, 0x24, count=1, lba=1 << 28, lba48=True)
    assert rig.read_data(0, 512)[:12] == b"LBA48!LBA48!"
    rig.command(0, 0, 0x24, count=0, lba=1, lba48=True)                     # 65536 sectors
    rig.control(0, 0x80)                                                     # HOB: the high bytes
    assert (rig.inb(0, 2), rig.inb(0, 3)) == (0, 0)
    rig.control(0, 0)
    assert rig.status(0) & DRQ
    rig.command(0, 0, 0xEC)                                                  # ignored while DRQ is set
    assert rig.read_data(0, 512) == big.read(512, 512)
    rig.control(0, 0x04)                                                     # SRST abandons the transfer
    rig.control(0, 0)
    rig.command(0, 0, 0x24, count=9, lba=(1 << 28) + 1, lba48=True)         # past the end
    assert rig.status(0) & ERR and rig.inb(0, 1) == IDNF
    big.close()


def test_read_multiple_moves_the_block_size_set_by_set_multiple_mode(disk):
    rig = IdeRig({0: AtaDisk(disk)})
    rig.command(0, 0, 0xC6, count=3)                                         # not a power of two
    assert rig.status(0) & ERR and rig.inb(0, 1) == ABRT
    rig.command(0, 0, 0xC6, count=4)
    assert rig.status(0) == DRDY | 0x10
    rig.command(0, 0, 0xC4, count=6, lba=10)
    assert rig.status(0) & DRQ                                               # acknowledges the interrupt
    edges = rig.irqs.edges.get(14, 0)
    first = rig.read_data(0, 4 * 512, 4)                                     # one DRQ block of 4 sectors
    assert rig.irqs.edges[14] == edges + 1 and rig.status(0) & DRQ
    second = rig.read_data(0, 2 * 512)
    assert first + second == disk.read(10 * 512, 6 * 512) and not rig.status(0) & DRQ
    rig.command(0, 0, 0xC6, count=0)                                         # multiple off
    rig.command(0, 0, 0xC4, count=1, lba=0)
    assert rig.status(0) & ERR


def test_chs_addressing_follows_initialize_device_parameters(disk):
    rig = IdeRig({0: AtaDisk(disk)})
    rig.command(0, 0, 0x91, count=32, device=0xA0 | 3)                      # 4 heads, 32 sectors a track
    assert rig.status(0) == DRDY | 0x10
    # cylinder 2, head 1, sector 5: LBA (2 * 4 + 1) * 32 + 4 = 292
    rig.select(0, 0)
    for reg, value in ((2, 1), (3, 5), (4, 2), (5, 0), (6, 0xA0 | 1)):
        rig.outb(0, reg, value)
    rig.outb(0, 7, 0x20)
    assert rig.read_data(0, 512) == disk.read(292 * 512, 512)
    for reg, value in ((2, 1), (3, 0), (4, 0), (5, 0), (6, 0xA0)):            # sector 0 does not exist
        rig.outb(0, reg, value)
    rig.outb(0, 7, 0x20)
    assert rig.status(0) & ERR and rig.inb(0, 1) == IDNF


def test_errors_are_the_devices_never_exceptions(disk, tmp_path):
    ro = make_image(tmp_path / "ro.raw", 64 * 512, read_only=True)
    rig = IdeRig({0: AtaDisk(disk), 1: AtaDisk(ro)})
    rig.command(0, 1, 0x30, count=1, lba=0)                                  # write to a read-only image
    assert rig.status(0) & ERR and rig.inb(0, 1) == ABRT
    rig.command(0, 0, 0x20, count=2, lba=SECTORS - 1)                        # runs past the end
    assert rig.status(0) & ERR and rig.inb(0, 1) == IDNF
    rig.command(0, 0, 0x42, count=4, lba=8, lba48=True)                      # READ VERIFY EXT
    assert rig.status(0) == DRDY | 0x10
    rig.command(0, 0, 0xFE)                                                   # no such command
    assert rig.status(0) & ERR and rig.inb(0, 1) == ABRT

    def broken(offset, buf):
        raise ImageIOError("d.raw: read failed: Input/output error")

    disk.readinto = broken
    rig.command(0, 0, 0x20, count=1, lba=33)
    assert rig.status(0) & ERR and rig.inb(0, 1) == UNC
    assert (rig.inb(0, 3), rig.inb(0, 4)) == (33, 0)                         # the failing sector is reported
    ro.close()


def test_settings_commands(disk):
    rig = IdeRig({0: AtaDisk(disk)})
    rig.command(0, 0, 0xEF, feature=0x03, count=0x22)                        # MWDMA2
    assert rig.status(0) == DRDY | 0x10
    w = identify(rig, 0, 0)
    assert w[63] & 0x0400
    rig.command(0, 0, 0xEF, feature=0x03, count=0x47)                        # UDMA7 does not exist
    assert rig.status(0) & ERR
    rig.command(0, 0, 0xEF, feature=0x82)                                    # write cache off
    assert not identify(rig, 0, 0)[85] & 0x20
    rig.command(0, 0, 0xE0)                                                  # STANDBY IMMEDIATE
    rig.command(0, 0, 0xE5)
    assert rig.inb(0, 2) == 0x00
    rig.command(0, 0, 0xE1)                                                  # IDLE IMMEDIATE
    rig.command(0, 0, 0xE5)
    assert rig.inb(0, 2) == 0xFF and rig.status(0) == DRDY | 0x10


def test_flush_cache_runs_on_the_worker_and_interrupts_when_done(disk):
    rig = IdeRig({0: AtaDisk(disk)})
    flushed = []
    real = disk.flush
    disk.flush = lambda: (flushed.append(True), real())
    rig.command(0, 0, 0xEA)
    rig.ide.channels[0].worker().wait_idle(10)
    assert flushed and rig.status(0) == DRDY | 0x10 and rig.irqs.edges.get(14)


def test_interrupts_follow_nien_and_status_reads(disk):
    rig = IdeRig({0: AtaDisk(disk)})
    rig.control(0, 0x02)
    rig.command(0, 0, 0xE5)
    assert not rig.irqs.level.get(14)                                        # masked
    rig.control(0, 0x00)
    assert rig.irqs.level[14] and rig.bm_in(0, 2) & 0x04                     # pending: asserted once unmasked
    rig.alt_status(0)
    assert rig.irqs.level[14]                                                # Alternate Status leaves it
    rig.status(0)
    assert not rig.irqs.level[14]


def test_drive_positions_fill_the_primary_first_and_put_the_cd_on_the_secondary_master():
    assert drive_positions(1, 1) == ([0], [2])
    assert drive_positions(3, 1) == ([0, 1, 3], [2])
    assert drive_positions(4, 0) == ([0, 1, 2, 3], [])
    assert drive_positions(1, 3) == ([0], [2, 3, 1])
    assert drive_positions(0, 3) == ([], [2, 3, 0])
    with pytest.raises(ValueError):
        drive_positions(3, 2)
