"""What a firmware-booted machine puts in fw_cfg (core/boot/firmware_config.py): the memory map direct boot reports,
the boot order as SeaBIOS's device paths then HALT, no retry after a failed boot, the boot menu, and a kernel
with its setup header patched as a boot loader does."""
from __future__ import annotations

import struct

import pytest

from core.boot.e820 import build_e820
from core.boot.errors import BootError
from core.boot.firmware_config import (
    KERNEL_BOOT_PATH,
    BootDevices,
    add_linux_kernel,
    configure_fw_cfg,
    ide_boot_path,
    pci_boot_path,
)
from core.devices import fw_cfg as fc
from core.machine import MachineConfig
from core.memory import GuestMemory


@pytest.fixture
def memory():
    mem = GuestMemory(256 << 20)
    yield mem
    mem.close()


def test_memory_map_cpus_and_failure_policy(memory):
    fw = fc.FwCfg(memory)
    configure_fw_cfg(fw, MachineConfig(cpus=3, boot_menu_wait_ms=0), memory, BootDevices())
    raw = fw.file_data("etc/e820")
    entries = [struct.unpack_from("<QQI", raw, i) for i in range(0, len(raw), 20)]
    assert entries == [(e.addr, e.size, e.type) for e in build_e820(memory)]
    assert struct.unpack("<Q", fw.item(fc.RAM_SIZE))[0] == 256 << 20
    assert fw.item(fc.NB_CPUS) == fw.item(fc.MAX_CPUS) == struct.pack("<H", 3)
    assert fw.file_data("etc/boot-fail-wait") == b"\xff\xff\xff\xff"     # (u32)-1: never retry
    assert fw.item(fc.BOOT_MENU) == b"\0\0" and not fw.has_file("etc/boot-menu-wait")
    assert fw.item(fc.NOGRAPHIC) == b"\0\0"


def test_boot_order_lines_follow_the_configured_order(memory):
    boot = BootDevices()
    boot.add("disk", pci_boot_path(3))
    boot.add("cd", ide_boot_path(1, 0))
    boot.add("disk", ide_boot_path(0, 0))
    fw = fc.FwCfg(memory)
    configure_fw_cfg(fw, MachineConfig(boot=["cd", "disk"], boot_menu_wait_ms=1500, display="none"), memory, boot)
    assert fw.file_data("bootorder") == (b"/pci@i0cf8/ide@1,1/drive@1/disk@0\n/pci@i0cf8/scsi@3/disk@0,0\n"
                                         b"/pci@i0cf8/ide@1,1/drive@0/disk@0\nHALT\0")
    assert fw.item(fc.BOOT_MENU) == b"\1\0" and fw.file_data("etc/boot-menu-wait") == struct.pack("<H", 1500)
    assert fw.item(fc.NOGRAPHIC) == b"\1\0"
    fw = fc.FwCfg(memory)
    configure_fw_cfg(fw, MachineConfig(boot=["disk"]), memory, boot)
    assert b"ide@1,1/drive@1" not in fw.file_data("bootorder")          # a CD not asked for is not tried


def test_acpi_files_come_complete_or_not_at_all(memory):
    fw = fc.FwCfg(memory)
    files = {"etc/acpi/tables": b"T", "etc/acpi/rsdp": b"R", "etc/table-loader": b"L"}
    configure_fw_cfg(fw, MachineConfig(), memory, BootDevices(), files)
    assert [fw.file_data(n) for n in files] == [b"T", b"R", b"L"]
    with pytest.raises(ValueError, match="etc/table-loader"):
        configure_fw_cfg(fc.FwCfg(memory), MachineConfig(), memory, BootDevices(),
                         {"etc/acpi/tables": b"T", "etc/acpi/rsdp": b"R"})


def test_kernel_items_and_patched_setup_header(memory, debian_kernel, tmp_path):
    rom = tmp_path / "linuxboot_dma.bin"
    rom.write_bytes(b"\x55\xaa" + bytes(510))
    kernel = debian_kernel.read_bytes()
    initrd = b"initrd" * 1000
    fw, boot = fc.FwCfg(memory), BootDevices()
    add_linux_kernel(fw, memory, boot, kernel, initrd, "console=ttyS0 quiet", rom_path=str(rom))
    setup_size = (kernel[0x1F1] + 1) * 512
    setup = fw.item(fc.SETUP_DATA)
    assert len(setup) == setup_size and fw.item(fc.KERNEL_DATA) == kernel[setup_size:]
    assert struct.unpack_from("<I", setup, 0x228)[0] == 0x20000 == struct.unpack("<I", fw.item(fc.CMDLINE_ADDR))[0]
    assert setup[0x210] == 0xB0 and setup[0x211] & 0x81 == 0x81
    assert fw.item(fc.CMDLINE_DATA) == b"console=ttyS0 quiet\0"
    initrd_addr, initrd_size = struct.unpack_from("<II", setup, 0x218)
    assert initrd_size == len(initrd) and initrd_addr == struct.unpack("<I", fw.item(fc.INITRD_ADDR))[0]
    assert initrd_addr % 4096 == 0 and initrd_addr + initrd_size <= memory.regions[0].end - 0x28000
    assert fw.file_data("genroms/linuxboot_dma.bin") == rom.read_bytes()
    assert boot.paths["kernel"] == [KERNEL_BOOT_PATH]


def test_kernel_errors_are_one_line(memory, tmp_path):
    fw, boot = fc.FwCfg(memory), BootDevices()
    with pytest.raises(BootError, match="qemu-system-data"):
        add_linux_kernel(fw, memory, boot, b"x", None, "", rom_path=str(tmp_path / "none.bin"))
    rom = tmp_path / "rom.bin"
    rom.write_bytes(b"\x55\xaa")
    with pytest.raises(BootError, match="only a Linux bzImage"):
        add_linux_kernel(fw, memory, boot, b"\0" * 4096, None, "", kernel_name="mb.elf", rom_path=str(rom))
