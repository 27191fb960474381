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
* the ACPI table loader's files -- add_acpi_files is the one place they are added;
* a Linux kernel given with firmware boot (add_linux_kernel): the KERNEL_*, INITRD_*, CMDLINE_* and SETUP_*
  items with the setup header patched as a boot loader does (Linux Documentation/arch/x86/boot.rst; the layout
  QEMU's pc machine uses: setup at 0x10000, command line at 0x20000, the kernel at 1 MiB, the initrd at the top
  of low RAM below what the firmware keeps), and QEMU's linuxboot_dma.bin option ROM, which SeaBIOS runs as a
  boot device ("/rom@genroms/linuxboot_dma.bin") and which reads those items and starts the kernel.

Boot devices are registered by whoever builds them (BootDevices.add with pci_boot_path / ide_boot_path), and the
"bootorder" file is written once the board is complete (configure_fw_cfg).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.boot.e820 import build_e820
from core.boot.errors import BootError
from core.boot.files import cmdline_bytes, read_bounded
from core.devices import fw_cfg as fc
from core.memory import GuestMemory

if TYPE_CHECKING:
    from core.machine import MachineConfig

PCI_ROOT = "/pci@i0cf8"
NO_RETRY = 0xFFFF_FFFF                  # etc/boot-fail-wait: (u32)-1, never retry
ACPI_FILES = ("etc/acpi/tables", "etc/acpi/rsdp", "etc/table-loader")
LINUXBOOT_ROM = "/usr/share/qemu/linuxboot_dma.bin"     # Debian's qemu-system-data
LINUXBOOT_NAME = "genroms/linuxboot_dma.bin"
KERNEL_BOOT_PATH = "/rom@" + LINUXBOOT_NAME
REAL_ADDR, CMDLINE_ADDR, PROT_ADDR = 0x10000, 0x20000, 0x100000
FIRMWARE_TOP_RESERVE = 0x28000          # kept free below the top of low RAM for the firmware's tables


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

    paths: dict[str, list[str]] = field(default_factory=lambda: {"kernel": [], "cd": [], "disk": []})

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
    set_boot_order(fw, config, boot, config.boot_once or config.boot)
    add_acpi_files(fw, acpi_files or {})


def set_boot_order(fw: fc.FwCfg, config: MachineConfig, boot: BootDevices, order: list[str]) -> None:
    """Provide (or replace) "bootorder" for `order`; SeaBIOS reads it afresh at every reset."""
    order = list(order) or (["kernel"] if config.kernel else []) + ["cd", "disk"]
    lines = boot.bootorder(order)
    fw.add_file("bootorder", ("\n".join([*lines, "HALT"]) + "\0").encode())


def add_linux_kernel(fw: fc.FwCfg, memory: GuestMemory, boot: BootDevices, kernel: bytes, initrd: bytes | None,
                     cmdline: str, kernel_name: str = "kernel", rom_path: str = LINUXBOOT_ROM) -> None:
    """Offer a bzImage (and initrd, command line) through fw_cfg with the linuxboot option ROM that loads it
    (see the module docstring). Raises BootError for what the user can fix."""
    try:
        with open(rom_path, "rb") as f:
            rom = f.read()
    except OSError as exc:
        raise BootError(f"booting {kernel_name} through the firmware needs QEMU's option ROM {rom_path} "
                        f"({exc.strerror or exc}): install Debian's qemu-system-data, or boot the kernel "
                        f"directly (--boot kernel, no --firmware)") from None
    from core.boot.linux import is_bzimage  # with a kernel only (see core/boot/loader.py)
    if not is_bzimage(kernel):
        raise BootError(f"{kernel_name}: only a Linux bzImage boots through the firmware; boot it directly "
                        f"(--boot kernel, no --firmware)")
    header = bytearray(kernel[:0x400].ljust(0x400, b"\0"))
    version = struct.unpack_from("<H", header, 0x206)[0]
    if version < 0x202 or not header[0x211] & 0x01:
        raise BootError(f"{kernel_name}: boot protocol {version >> 8}.{version & 0xFF} without LOADED_HIGH; "
                        f"firmware boot needs a bzImage of protocol 2.02 or later")
    setup_size = ((header[0x1F1] or 4) + 1) * 512
    setup = bytearray(kernel[:setup_size])
    raw_cmdline = cmdline_bytes(cmdline, kernel_name) + b"\0"
    struct.pack_into("<I", setup, 0x228, CMDLINE_ADDR)                  # cmd_line_ptr
    setup[0x210] = 0xB0                                                  # type_of_loader: QEMU's id
    setup[0x211] |= 0x80                                                 # CAN_USE_HEAP
    struct.pack_into("<H", setup, 0x224, CMDLINE_ADDR - REAL_ADDR - 0x200)   # heap_end_ptr
    low_end = memory.regions[0].end
    if initrd:
        initrd_max = struct.unpack_from("<I", setup, 0x22C)[0] if version >= 0x203 else 0x37FF_FFFF
        initrd_max = min(initrd_max, low_end - FIRMWARE_TOP_RESERVE - 1)
        initrd_addr = (initrd_max - len(initrd) + 1) & ~0xFFF
        # The kernel decompresses itself in place and needs init_size bytes from 1 MiB (boot.rst, protocol 2.10).
        init_size = struct.unpack_from("<I", setup, 0x260)[0] if version >= 0x20A else 4 * len(kernel)
        if initrd_addr < PROT_ADDR + init_size:
            raise BootError(f"the initrd ({len(initrd) >> 20} MiB) and {kernel_name} do not fit in "
                            f"{memory.size >> 20} MiB of guest memory for firmware boot; give more --memory")
        struct.pack_into("<II", setup, 0x218, initrd_addr, len(initrd))
        fw.add_u32(fc.INITRD_ADDR, initrd_addr)
        fw.add_u32(fc.INITRD_SIZE, len(initrd))
        fw.add_item(fc.INITRD_DATA, initrd)
    fw.add_u32(fc.KERNEL_ADDR, PROT_ADDR)
    fw.add_u32(fc.KERNEL_SIZE, len(kernel) - setup_size)
    fw.add_item(fc.KERNEL_DATA, kernel[setup_size:])
    fw.add_u32(fc.CMDLINE_ADDR, CMDLINE_ADDR)
    fw.add_u32(fc.CMDLINE_SIZE, len(raw_cmdline))
    fw.add_item(fc.CMDLINE_DATA, raw_cmdline)
    fw.add_u32(fc.SETUP_ADDR, REAL_ADDR)
    fw.add_u32(fc.SETUP_SIZE, setup_size)
    fw.add_item(fc.SETUP_DATA, bytes(setup))
    fw.add_file(LINUXBOOT_NAME, rom)
    boot.add("kernel", KERNEL_BOOT_PATH)


def read_boot_file(path: str, what: str, limit: int) -> bytes:
    """A kernel or initrd for firmware boot, at most `limit` bytes (guest RAM: a bigger one cannot be loaded);
    one-line BootError if it cannot be read."""
    return read_bounded(path, what, limit)
