"""Vireo's ACPI tables as the fw_cfg files a firmware loads: `etc/acpi/tables`, `etc/acpi/rsdp` and the
`etc/table-loader` script that tells the firmware where to put them and how to link them.

The tables are the ones direct boot writes (core/boot/acpi.py layout_acpi_tables: one builder), here left for the
firmware to place. The script is QEMU's BIOS linker/loader format (QEMU hw/acpi/bios-linker-loader.c, run by
SeaBIOS src/fw/romfile_loader.c): a sequence of 128-byte little-endian entries, each a u32 command and its
arguments, file names NUL-padded to 56 bytes, the rest zero:

  ALLOCATE (1)      file[56], align u32, zone u8: copy the fw_cfg file into memory the firmware allocates, aligned,
                    in the HIGH zone (RAM below 4 GiB it reserves) or the FSEG zone (0xF0000-0xFFFFF)
  ADD_POINTER (2)   dest_file[56], src_file[56], offset u32, size u8: add src_file's address to the size-byte
                    little-endian integer at offset in dest_file (which holds an offset into src_file)
  ADD_CHECKSUM (3)  file[56], offset u32, start u32, length u32: subtract the byte sum of [start, start+length)
                    from the byte at offset, so the range sums to zero

The script allocates the tables in the HIGH zone (64-byte aligned, for the FACS: ACPI 6.4, 5.2.10) and the RSDP in
the FSEG zone (16-byte aligned, where the RSDP scan of 5.2.5.1 finds it), links every pointer -- the RSDP's
RsdtAddress and XsdtAddress (5.2.5.3), the RSDT's and XSDT's entries (5.2.7, 5.2.8), the FADT's FIRMWARE_CTRL,
DSDT and X_DSDT (5.2.9) -- then redoes every table's header checksum (5.2.6) and the RSDP's two checksums, the
20-byte one before the extended one that covers it. SeaBIOS, having loaded tables this way, finds the RSDP in the
F segment and builds no ACPI tables of its own (src/fw/paravirt.c qemu_platform_setup).

The PCI windows in the DSDT follow SeaBIOS's placement for the RAM the firmware is told about (acpi_dsdt.py), so
`low_ram_bytes` and `high_ram_bytes` must match the guest's etc/e820; and the fw_cfg device must not offer
etc/reserved-memory-end, which would move SeaBIOS's 64-bit BARs out of the window.
"""
from __future__ import annotations

import struct

from core.boot.acpi import RSDP, TABLE_ALIGN, TABLES, TABLES_ALIGN, layout_acpi_tables
from core.boot.acpi_dsdt import pci_windows

TABLES_FILE = "etc/acpi/tables"
RSDP_FILE = "etc/acpi/rsdp"
LOADER_FILE = "etc/table-loader"

ENTRY_SIZE = 128
FILE_NAME_SIZE = 56
COMMAND_ALLOCATE, COMMAND_ADD_POINTER, COMMAND_ADD_CHECKSUM = 1, 2, 3
ZONE_HIGH, ZONE_FSEG = 1, 2

_FILE_OF = {TABLES: TABLES_FILE, RSDP: RSDP_FILE}


def _name(file: str) -> bytes:
    raw = file.encode("ascii")
    if len(raw) >= FILE_NAME_SIZE:
        raise ValueError(f"table-loader file name {file!r} is longer than {FILE_NAME_SIZE - 1} bytes")
    return raw.ljust(FILE_NAME_SIZE, b"\0")


def _entry(command: int, args: bytes) -> bytes:
    return struct.pack("<I", command) + args.ljust(ENTRY_SIZE - 4, b"\0")


def allocate(file: str, align: int, zone: int) -> bytes:
    """An ALLOCATE entry."""
    return _entry(COMMAND_ALLOCATE, _name(file) + struct.pack("<IB", align, zone))


def add_pointer(dest_file: str, src_file: str, offset: int, size: int) -> bytes:
    """An ADD_POINTER entry."""
    return _entry(COMMAND_ADD_POINTER, _name(dest_file) + _name(src_file) + struct.pack("<IB", offset, size))


def add_checksum(file: str, offset: int, start: int, length: int) -> bytes:
    """An ADD_CHECKSUM entry."""
    return _entry(COMMAND_ADD_CHECKSUM, _name(file) + struct.pack("<III", offset, start, length))


def firmware_acpi_files(num_cpus: int, low_ram_bytes: int, high_ram_bytes: int = 0) -> dict[str, bytes]:
    """The fw_cfg files {"etc/acpi/tables", "etc/acpi/rsdp", "etc/table-loader"} for a guest with `num_cpus`
    vCPUs, `low_ram_bytes` of RAM from address 0 (the end of the e820 RAM below 4 GiB) and `high_ram_bytes` of RAM
    from 4 GiB up. core/boot/acpi.py guest_ram_split(memory) gives both from a GuestMemory."""
    layout = layout_acpi_tables(num_cpus, pci_windows(low_ram_bytes, high_ram_bytes))
    script = [allocate(TABLES_FILE, TABLES_ALIGN, ZONE_HIGH), allocate(RSDP_FILE, TABLE_ALIGN, ZONE_FSEG)]
    script += [add_pointer(_FILE_OF[p.blob], TABLES_FILE, p.offset, p.size) for p in layout.pointers]
    script += [add_checksum(_FILE_OF[c.blob], c.offset, c.start, c.length) for c in layout.checksums]
    return {TABLES_FILE: layout.tables, RSDP_FILE: layout.rsdp, LOADER_FILE: b"".join(script)}
