"""The board's IDE block (core/board.py): the PIIX3 IDE function at 00:01.1 whether or not it has drives, IDE disks
and CD-ROMs on the positions drive_positions() gives, set up as firmware would for a directly booted kernel (and
again after a reset), a CD changed while the machine exists, and every image closed with the board."""
from __future__ import annotations

import os

import pytest

from core import platform
from core.board import Board
from core.devices.ide import AtaDisk, AtapiCdrom
from core.machine import DiskSpec, MachineConfig
from core.storage import create_image
from tests.helpers.vmproc import holds_open


def build(config: MachineConfig) -> Board:
    return Board(config, "software", serial_output=lambda data: None, request_reset=lambda: None,
                 request_poweroff=lambda: None, report_fault=lambda reason: None)


def config_read(board: Board, function: int, reg: int, size: int = 4) -> int:
    board.pio.write(0xCF8, 4, 0x8000_0000 | platform.PIIX_SLOT << 11 | function << 8 | reg)
    return board.pio.read(0xCFC, size)


def test_the_ide_function_is_there_without_drives():
    board = build(MachineConfig(kernel="unused", memory_mib=32, display="none"))
    try:
        assert config_read(board, 1, 0) == 0x7010_8086
        assert config_read(board, 0, 0x0C) >> 16 & 0x80          # function 0 says the slot is multi-function
        assert board.pio.read(0x1F7, 1) == 0xFF                  # decoding, but no drive: the floating bus
    finally:
        board.close()


def test_drives_placement_direct_boot_setup_reset_and_a_cd_change(tmp_path):
    disk, iso, iso2 = tmp_path / "d.qcow2", tmp_path / "a.iso", tmp_path / "b.iso"
    create_image(str(disk), "qcow2", 8 << 20)
    for path in (iso, iso2):
        create_image(str(path), "raw", 64 * 2048)
    config = MachineConfig(kernel="unused", memory_mib=32, display="none",
                           disks=[DiskSpec(str(disk), bus="ide"), DiskSpec(str(tmp_path / "v.raw"), bus="virtio")],
                           cdroms=[str(iso), ""])
    create_image(config.disks[1].path, "raw", 1 << 20)
    board = build(config)
    try:
        ide = board.ide
        assert isinstance(ide.drive(0), AtaDisk) and ide.drive(0).serial == "vireo-disk0"
        assert isinstance(ide.drive(2), AtapiCdrom) and ide.drive(2).medium_present     # the secondary master
        assert isinstance(ide.drive(3), AtapiCdrom) and not ide.drive(3).medium_present  # an empty drive
        assert len(board.disks) == 1                                                      # one virtio disk
        assert config_read(board, 1, 0x40) == 0x8000_8000 and config_read(board, 1, 0x20) & 1
        assert board.pio.read(0x1F7, 1) == 0x50                  # the disk answers at once: ready
        board.reset()
        assert config_read(board, 1, 0x40) == 0x8000_8000 and board.pio.read(0x1F7, 1) == 0x50
        assert holds_open(os.getpid(), iso)
        board.change_cdrom(0, str(iso2))
        assert ide.drive(2).backend.path == str(iso2) and ide.drive(2).unit_attention
        assert not holds_open(os.getpid(), iso)                  # the old disc's image is closed
        board.change_cdrom(1, str(iso))
        board.change_cdrom(0, None)
        assert not ide.drive(2).medium_present
    finally:
        board.close()
    assert not any(holds_open(os.getpid(), path) for path in (disk, iso, iso2))   # every image closed


def test_too_many_ide_drives_is_an_error(tmp_path):
    isos = []
    for i in range(5):
        isos.append(str(tmp_path / f"{i}.iso"))
        create_image(isos[-1], "raw", 2048)
    with pytest.raises(ValueError):
        build(MachineConfig(kernel="unused", memory_mib=32, display="none", cdroms=isos))
