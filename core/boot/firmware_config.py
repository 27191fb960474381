"""What a machine tells its firmware through fw_cfg (core/devices/fw_cfg.py; item meanings per QEMU's
docs/specs/fw_cfg.rst and how SeaBIOS 1.16 reads them: src/fw/paravirt.c, src/boot.c).

* RAM_SIZE, NB_CPUS, MAX_CPUS, NOGRAPHIC (no display adapter: SeaBIOS then also talks on COM1);
* "etc/e820": the memory map, the same entries direct boot reports (core/boot/e820.py), as QEMU's
  struct e820_entry {le64 address, le64 length, le32 type};
* BOOT_MENU and "etc/boot-menu-wait" (ms): SeaBIOS offers "Press ESC for boot menu" for that long;
* "bootorder": one OpenFirmware device path per line, in the order the firmware should try them, then "HALT" so
  that nothing unlisted is tried. The paths are those SeaBIOS builds for the devices it finds (boot.c):
  a PCI function is "/pci@i0cf8/<name>@<slot>[,<function>]" (any name matches), an ATA/ATAPI drive
  "/pci@i0cf8/ide@1,1/drive@<channel>/disk@<unit>";
* "etc/boot-fail-wait" = -1: after "No bootable device." SeaBIOS waits for a key press forever instead of
  rebooting (no automatic retry), so the VM stays on that screen;
* the ACPI table loader's files -- add_acpi_files is the one place they are added.

Boot devices are registered by whoever builds them (BootDevices.add with pci_boot_path / ide_boot_path), and the
"bootorder" file is written once the board is complete (configure_fw_cfg).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.boot.e820 import build_e820
from core.devices import fw_cfg as fc
from core.memory import GuestMemory

if TYPE_CHECKING:
    from core.machine import MachineConfig

PCI_ROOT = "/pci@i0cf8"
NO_RETRY = 0xFFFF_FFFF                  # etc/boot-fail-wait: (u32)-1, never retry
ACPI_FILES = ("etc/acpi/tables", "etc/acpi/rsdp", "etc/table-loader")


def pci_boot_path(slot: int, function: int = 0, name: str = "scsi", suffix: str = "/disk@0,0") -> str:
    """The bootorder line of a PCI boot device (a virtio-blk function: "/pci@i0cf8/scsi@4/disk@0,0", as QEMU
    writes it; SeaBIOS matches the "/pci@i0cf8/*@4" prefix)."""
    fn = f",{function:x}" if function else ""
    return f"{PCI_ROOT}/{name}@{slot:x}{fn}{suffix}"


def ide_boot_path(channel: int, unit: int, slot: int = 1, function: int = 1) -> str:
    """The bootorder line of an ATA disk or ATAPI CD-ROM on the PIIX IDE function (00:01.1): channel 0/1
    (primary/secondary), unit 0/1 (master/slave)."""
    return f"{PCI_ROOT}/ide@{slot:x},{function:x}/drive@{channel:x}/disk@{unit:x}"


@dataclass
class BootDevices:
    """The bootable devices of a machine by kind ("cd", "disk"), in the order they were added."""

    paths: dict[str, list[str]] = field(default_factory=lambda: {"cd": [], "disk": []})

    def add(self, kind: str, path: str) -> None:
        if kind not in self.paths:
            raise ValueError(f"boot device kind {kind!r}: use one of {', '.join(self.paths)}")
        self.paths[kind].append(path)

    def bootorder(self, order: list[str]) -> list[str]:
        """The lines of the "bootorder" file for a boot order of kinds (MachineConfig.firmware_boot_order)."""
        lines: list[str] = []
        for kind in order:
            lines += [p for p in self.paths.get(kind, []) if p not in lines]
        return lines


def e820_file(memory: GuestMemory) -> bytes:
    return b"".join(struct.pack("<QQI", e.addr, e.size, e.type) for e in build_e820(memory))


def add_acpi_files(fw: fc.FwCfg, files: dict[str, bytes]) -> None:
    """THE place the ACPI tables reach the firmware: `files` holds "etc/acpi/tables", "etc/acpi/rsdp" and
    "etc/table-loader" as the table-loader piece (core/boot/acpi_fw_cfg.py) makes them. With them SeaBIOS
    installs Vireo's tables (QEMU's linker/loader protocol); without them -- today -- it builds its own."""
    missing = [name for name in ACPI_FILES if name not in files]
    if files and missing:
        raise ValueError(f"ACPI fw_cfg files incomplete: {', '.join(missing)} missing")
    for name in ACPI_FILES:
        if name in files:
            fw.add_file(name, files[name])


def configure_fw_cfg(fw: fc.FwCfg, config: MachineConfig, memory: GuestMemory, boot: BootDevices,
                     acpi_files: dict[str, bytes] | None = None) -> None:
    """Everything a firmware-booted machine offers through fw_cfg (see the module docstring)."""
    fw.add_u64(fc.RAM_SIZE, memory.size)
    fw.add_u16(fc.NB_CPUS, config.cpus)
    fw.add_u16(fc.MAX_CPUS, config.cpus)
    fw.add_u16(fc.NOGRAPHIC, 1 if config.display == "none" else 0)
    fw.add_file("etc/e820", e820_file(memory))
    menu_ms = config.boot_menu_wait_ms
    fw.add_u16(fc.BOOT_MENU, 1 if menu_ms > 0 else 0)
    if menu_ms > 0:
        fw.add_file("etc/boot-menu-wait", struct.pack("<H", min(menu_ms, 0xFFFF)))
    fw.add_file("etc/boot-fail-wait", struct.pack("<I", NO_RETRY))
    lines = boot.bootorder(config.firmware_boot_order)
    fw.add_file("bootorder", ("\n".join([*lines, "HALT"]) + "\0").encode())
    add_acpi_files(fw, acpi_files or {})
