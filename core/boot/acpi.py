"""The ACPI tables Vireo gives the guest (ACPI 6.4, chapter 5.2 "ACPI System Description Tables"):

  RSDP (5.2.5, revision 2) -> XSDT (5.2.8) and RSDT (5.2.7) -> FADT (5.2.9, revision 6) -> DSDT (5.2.11.1), FACS
                                                             -> MADT (5.2.12)

They describe what platform.py places: the PM1a event/control blocks, PM timer and GPE0 block (the SCI on IRQ 9,
ACPI permanently enabled since SMI_CMD is 0), the reset register at I/O 0xCF9, the 8042 and legacy devices, one
local APIC (or x2APIC above ID 254) per vCPU, the I/O APIC with the PC's interrupt overrides (IRQ0 -> GSI 2, the
SCI level-triggered), and a DSDT (core/boot/acpi_dsdt.py) whose \\_S5 package lets the guest power off by writing
SLP_TYP|SLP_EN to PM1a_CNT. The power button is the fixed-feature one (FADT PWR_BUTTON clear), so the DSDT needs no
button device.

One builder, two placements. layout_acpi_tables builds every table once into a position-independent layout: a
blob of tables whose pointers hold offsets into it, an RSDP likewise, and the list of pointer fields and checksums
that placing them must fix. Direct boot (build_acpi_tables) places it itself at platform.ACPI_TABLES_ADDR
(0xE0000), inside the reserved BIOS area of the e820 map, with the RSDP first on a 16-byte boundary so a guest
that scans 0xE0000-0xFFFFF for "RSD PTR " finds it (5.2.5.1). Firmware boot hands the same layout to the firmware
as fw_cfg files and a table-loader script (core/boot/acpi_fw_cfg.py), and the firmware places it.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from core import platform
from core.boot.acpi_dsdt import FOUR_GIB, PciWindows, dsdt_aml, pci_windows
from core.boot.e820 import low_ram_end
from core.boot.errors import BootError
from core.memory import GuestMemory

OEM_ID = b"VIREO "
OEM_TABLE_ID = b"VIREOPC "
OEM_REVISION = 1
CREATOR_ID = b"VIRO"
CREATOR_REVISION = 1

ACPI_AREA_END = platform.MP_TABLE_ADDR    # 0xF0000 up is left for the MP table / firmware

# FADT flags (ACPI 6.4, table 5.10).
FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_PWR_BUTTON = 1 << 4      # set = control-method power button; we use the fixed-feature one (clear)
FADT_SLP_BUTTON = 1 << 5      # set = no fixed-feature sleep button
FADT_FIX_RTC = 1 << 6         # set = RTC wake status not in the fixed register space
FADT_RESET_REG_SUP = 1 << 10
# IA-PC boot architecture flags (table 5.11).
IAPC_LEGACY_DEVICES = 1 << 0
IAPC_8042 = 1 << 1
# MADT (5.2.12).
MADT_PCAT_COMPAT = 1 << 0
MADT_LOCAL_APIC, MADT_IO_APIC, MADT_INT_SRC_OVERRIDE, MADT_LAPIC_NMI = 0, 1, 2, 4
MADT_LOCAL_X2APIC, MADT_LOCAL_X2APIC_NMI = 9, 10
MADT_ENABLED = 1 << 0
MPS_ACTIVE_HIGH, MPS_ACTIVE_LOW = 0b01, 0b11
MPS_EDGE, MPS_LEVEL = 0b01 << 2, 0b11 << 2
X2APIC_FIRST_ID = 255        # 0xFF is the xAPIC broadcast ID: from here on only an x2APIC entry can name a CPU

# Generic Address Structure (5.2.3.2).
GAS_SYSTEM_MEMORY, GAS_SYSTEM_IO = 0, 1
ACCESS_BYTE, ACCESS_WORD, ACCESS_DWORD = 1, 2, 3

PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_LEN, GPE0_BLK_LEN = 4, 2, 4, 8
RTC_CENTURY_INDEX = 0x32     # the CMOS byte holding the century, as on PC/AT BIOSes
FADT_REVISION, FADT_MINOR = 6, 4
FADT_LENGTH = 276
FADT_FIRMWARE_CTRL, FADT_DSDT, FADT_X_DSDT = 36, 40, 140    # the FADT's pointers to the FACS and DSDT
HEADER_LEN = 36
HEADER_CHECKSUM = 9
# RSDP (5.2.5.3): the 20-byte ACPI 1.0 part with its checksum, then the extended part.
RSDP_CHECKSUM, RSDP_RSDT, RSDP_XSDT, RSDP_EXT_CHECKSUM = 8, 16, 24, 32
RSDP_V1_LEN, RSDP_LEN = 20, 36


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes `data` (with that byte zero) sum to 0 modulo 256."""
    return (-sum(data)) & 0xFF


def gas(space: int, bit_width: int, address: int, access_size: int = 0, bit_offset: int = 0) -> bytes:
    return struct.pack("<BBBBQ", space, bit_width, bit_offset, access_size, address)


def table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A System Description Table: the 36-byte header (5.2.6) over `body`, checksummed."""
    length = HEADER_LEN + len(body)
    header = bytearray(struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID, OEM_TABLE_ID,
                                   OEM_REVISION, CREATOR_ID, CREATOR_REVISION))
    out = header + body
    out[HEADER_CHECKSUM] = checksum(out)
    return bytes(out)


def build_dsdt(windows: PciWindows) -> bytes:
    """The DSDT, revision 2: integers in this definition block are 64 bits wide (5.2.11.1)."""
    return table(b"DSDT", 2, dsdt_aml(windows))


def build_facs() -> bytes:
    """FACS (5.2.10): no checksum; waking vectors zero because Vireo has no S3 resume path."""
    return struct.pack("<4sIIIIIQB3sI24s", b"FACS", 64, 0, 0, 0, 0, 0, 2, b"\0" * 3, 0, b"\0" * 24)


def build_fadt(dsdt_addr: int, facs_addr: int) -> bytes:
    """FADT revision 6 (table 5.9): fixed hardware blocks from platform.py, in both the 32-bit and X_ forms.
    The DSDT and FACS "addresses" are their offsets in the layout's blob until the blob is placed."""
    pm1a_evt, pm1a_cnt, pm_tmr, gpe0 = (platform.ACPI_PM1A_EVT, platform.ACPI_PM1A_CNT, platform.ACPI_PM_TMR,
                                        platform.ACPI_GPE0)
    flags = FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_FIX_RTC | FADT_RESET_REG_SUP
    body = bytearray(FADT_LENGTH - HEADER_LEN)

    def put(offset: int, fmt: str, *values: int | bytes) -> None:
        struct.pack_into(fmt, body, offset - HEADER_LEN, *values)

    put(FADT_FIRMWARE_CTRL, "<II", facs_addr, dsdt_addr)        # FIRMWARE_CTRL, DSDT
    put(45, "<B", 0)                                            # Preferred_PM_Profile: unspecified
    put(46, "<HI", platform.ACPI_SCI_IRQ, 0)                    # SCI_INT, SMI_CMD (0: ACPI mode is fixed)
    put(56, "<IIIIIIII", pm1a_evt, 0, pm1a_cnt, 0, 0, pm_tmr, gpe0, 0)
    put(88, "<BBBBBBB", PM1_EVT_LEN, PM1_CNT_LEN, 0, PM_TMR_LEN, GPE0_BLK_LEN, 0, 0)
    put(96, "<HH", 101, 1001)                                   # P_LVL2/3_LAT beyond limits: no C2/C3
    put(108, "<B", RTC_CENTURY_INDEX)
    put(109, "<H", IAPC_LEGACY_DEVICES | IAPC_8042)
    put(112, "<I", flags)
    body[116 - HEADER_LEN:128 - HEADER_LEN] = gas(GAS_SYSTEM_IO, 8, platform.RESET_CONTROL_PORT, ACCESS_BYTE)
    put(128, "<B", 0x06)                                        # RESET_VALUE: PIIX "hard reset" (SRST|RCPU)
    put(131, "<B", FADT_MINOR)
    # X_FIRMWARE_CTRL must be zero when FIRMWARE_CTRL is set (5.2.9); X_DSDT merely takes precedence over DSDT.
    put(FADT_X_DSDT - 8, "<QQ", 0, dsdt_addr)                   # X_FIRMWARE_CTRL, X_DSDT
    x_blocks = (
        (148, gas(GAS_SYSTEM_IO, PM1_EVT_LEN * 8, pm1a_evt, ACCESS_WORD)),
        (172, gas(GAS_SYSTEM_IO, PM1_CNT_LEN * 8, pm1a_cnt, ACCESS_WORD)),
        (208, gas(GAS_SYSTEM_IO, PM_TMR_LEN * 8, pm_tmr, ACCESS_DWORD)),
        (220, gas(GAS_SYSTEM_IO, GPE0_BLK_LEN * 8, gpe0, ACCESS_BYTE)),
    )
    for offset, g in x_blocks:
        body[offset - HEADER_LEN:offset - HEADER_LEN + 12] = g
    put(268, "<8s", b"Vireo\0\0\0")                              # Hypervisor Vendor Identity
    return table(b"FACP", FADT_REVISION, bytes(body))


def build_madt(num_cpus: int) -> bytes:
    """MADT: one enabled Processor Local APIC / x2APIC per vCPU (APIC ID = ACPI UID = index), the I/O APIC,
    the ISA overrides a PC has (PIT on pin 2; the SCI level-triggered, active high), and LINT1 as NMI."""
    if num_cpus < 1:
        raise ValueError("an MADT needs at least one CPU")
    entries = bytearray()
    for cpu in range(num_cpus):
        if cpu < X2APIC_FIRST_ID:
            entries += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, cpu, cpu, MADT_ENABLED)
        else:
            entries += struct.pack("<BBHIII", MADT_LOCAL_X2APIC, 16, 0, cpu, MADT_ENABLED, cpu)
    ioapic_id = num_cpus & 0xFF
    entries += struct.pack("<BBBBII", MADT_IO_APIC, 12, ioapic_id, 0, platform.IOAPIC_BASE, 0)
    entries += struct.pack("<BBBBIH", MADT_INT_SRC_OVERRIDE, 10, 0, platform.PIT_IRQ, platform.PIT_GSI, 0)
    entries += struct.pack("<BBBBIH", MADT_INT_SRC_OVERRIDE, 10, 0, platform.ACPI_SCI_IRQ, platform.ACPI_SCI_IRQ,
                           MPS_ACTIVE_HIGH | MPS_LEVEL)
    # LINT1 of every processor (UID 0xFF / 0xFFFFFFFF = all) is wired to NMI, edge, active high.
    entries += struct.pack("<BBBHB", MADT_LAPIC_NMI, 6, 0xFF, MPS_ACTIVE_HIGH | MPS_EDGE, 1)
    if num_cpus > X2APIC_FIRST_ID:
        entries += struct.pack("<BBHIB3s", MADT_LOCAL_X2APIC_NMI, 12, MPS_ACTIVE_HIGH | MPS_EDGE, 0xFFFF_FFFF, 1,
                               b"\0" * 3)
    body = struct.pack("<II", platform.LAPIC_BASE, MADT_PCAT_COMPAT) + bytes(entries)
    return table(b"APIC", 5, body)


def build_rsdp(rsdt_addr: int, xsdt_addr: int) -> bytes:
    """RSDP revision 2 (5.2.5.3): the ACPI 1.0 checksum over the first 20 bytes, the extended one over all 36.
    The RSDT and XSDT "addresses" are offsets in the layout's blob until it is placed."""
    rsdp = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, OEM_ID, 2, rsdt_addr, RSDP_LEN, xsdt_addr, 0,
                                 b"\0" * 3))
    rsdp[RSDP_CHECKSUM] = checksum(rsdp[:RSDP_V1_LEN])
    rsdp[RSDP_EXT_CHECKSUM] = checksum(rsdp)
    return bytes(rsdp)


# -- one layout, two placements ------------------------------------------------------------------------------------

TABLES, RSDP = "tables", "rsdp"     # the two blobs: every table, and the RSDP (which must sit where a scan finds it)
TABLES_ALIGN = 64                   # the FACS, first in the blob, must be 64-byte aligned (5.2.10)
TABLE_ALIGN = 16


@dataclass(frozen=True)
class Pointer:
    """A little-endian field of `size` bytes at `offset` in blob `blob` that holds an offset into the TABLES blob;
    placing the blob at an address adds that address to it."""

    blob: str
    offset: int
    size: int


@dataclass(frozen=True)
class Checksum:
    """The byte at `offset` in blob `blob` that makes bytes [start, start + length) sum to 0 modulo 256."""

    blob: str
    offset: int
    start: int
    length: int


@dataclass(frozen=True)
class AcpiLayout:
    """The tables as two position-independent blobs: `pointers` still hold offsets into `tables`, and
    `checksums` (in the order they must be redone: the RSDP's 20-byte one before its extended one) are right
    only for tables placed at address 0. `offsets` gives each table's offset in `tables` by signature."""

    tables: bytes
    rsdp: bytes
    pointers: tuple[Pointer, ...]
    checksums: tuple[Checksum, ...]
    offsets: dict[bytes, int]


def layout_acpi_tables(num_cpus: int, windows: PciWindows) -> AcpiLayout:
    """Build every table once, laid out in one blob at offsets from its start: FACS, DSDT, FADT, MADT, XSDT,
    RSDT; and the RSDP on its own."""
    blob = bytearray()
    offsets: dict[bytes, int] = {}

    def put(data: bytes, align: int = TABLE_ALIGN) -> int:
        offset = -len(blob) % align + len(blob)
        blob.extend(bytes(offset - len(blob)) + data)
        offsets[data[:4]] = offset
        return offset

    facs = put(build_facs(), TABLES_ALIGN)
    dsdt = put(build_dsdt(windows))
    fadt = put(build_fadt(dsdt, facs))
    madt = put(build_madt(num_cpus))
    listed = (fadt, madt)
    xsdt = put(table(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in listed)))
    rsdt = put(table(b"RSDT", 1, b"".join(struct.pack("<I", a) for a in listed)))
    pointers = [Pointer(TABLES, fadt + FADT_FIRMWARE_CTRL, 4), Pointer(TABLES, fadt + FADT_DSDT, 4),
                Pointer(TABLES, fadt + FADT_X_DSDT, 8)]
    pointers += [Pointer(TABLES, xsdt + HEADER_LEN + 8 * i, 8) for i in range(len(listed))]
    pointers += [Pointer(TABLES, rsdt + HEADER_LEN + 4 * i, 4) for i in range(len(listed))]
    pointers += [Pointer(RSDP, RSDP_RSDT, 4), Pointer(RSDP, RSDP_XSDT, 8)]
    checksums = [Checksum(TABLES, offsets[sig] + HEADER_CHECKSUM, offsets[sig],
                          struct.unpack_from("<I", blob, offsets[sig] + 4)[0])
                 for sig in (b"DSDT", b"FACP", b"APIC", b"XSDT", b"RSDT")]
    checksums += [Checksum(RSDP, RSDP_CHECKSUM, 0, RSDP_V1_LEN), Checksum(RSDP, RSDP_EXT_CHECKSUM, 0, RSDP_LEN)]
    return AcpiLayout(bytes(blob), build_rsdp(rsdt, xsdt), tuple(pointers), tuple(checksums), offsets)


def place(layout: AcpiLayout, tables_addr: int, rsdp_addr: int) -> tuple[bytes, bytes]:
    """The tables and RSDP blobs as they must read at `tables_addr` and `rsdp_addr`: the same steps as the
    firmware's table loader (pointers, then checksums), done here for direct boot."""
    if tables_addr % TABLES_ALIGN or rsdp_addr % TABLE_ALIGN:
        raise ValueError(f"ACPI tables at {tables_addr:#x} / RSDP at {rsdp_addr:#x} are not 64/16-byte aligned")
    blobs = {TABLES: bytearray(layout.tables), RSDP: bytearray(layout.rsdp)}
    for p in layout.pointers:
        data = blobs[p.blob]
        value = int.from_bytes(data[p.offset:p.offset + p.size], "little") + tables_addr
        if value >> (8 * p.size):
            raise ValueError(f"ACPI tables at {tables_addr:#x} do not fit a {p.size}-byte pointer")
        data[p.offset:p.offset + p.size] = value.to_bytes(p.size, "little")
    for c in layout.checksums:
        data = blobs[c.blob]
        data[c.offset] = (data[c.offset] - sum(data[c.start:c.start + c.length])) & 0xFF
    return bytes(blobs[TABLES]), bytes(blobs[RSDP])


def guest_ram_split(memory: GuestMemory) -> tuple[int, int]:
    """(end of the RAM below 4 GiB, bytes of RAM from 4 GiB up): what pci_windows and the firmware's e820 see."""
    high_end = max((r.end for r in memory.regions if r.gpa >= FOUR_GIB), default=FOUR_GIB)
    return low_ram_end(memory), high_end - FOUR_GIB


def build_acpi_tables(memory: GuestMemory, num_cpus: int,
                      avoid: Sequence[tuple[int, int]] = ()) -> int:
    """Direct boot: write the RSDP and the tables after it, in the BIOS area where an OS scans for them (ACPI 6.4,
    5.2.5.1), clear of the `avoid` ranges (where the kernel will load), and return the RSDP's address. The first
    choice is platform.ACPI_TABLES_ADDR; a kernel that loads there pushes them up in 4 KiB steps."""
    if not memory.contains(platform.ACPI_TABLES_ADDR, ACPI_AREA_END - platform.ACPI_TABLES_ADDR):
        raise BootError(f"guest memory of {memory.size >> 10} KiB has no room for the ACPI tables at "
                        f"{platform.ACPI_TABLES_ADDR:#x}; give more --memory")
    layout = layout_acpi_tables(num_cpus, pci_windows(*guest_ram_split(memory)))
    for rsdp_addr in range(platform.ACPI_TABLES_ADDR, platform.BIOS_AREA_END, 0x1000):
        tables_addr = -(rsdp_addr + RSDP_LEN) % TABLES_ALIGN + rsdp_addr + RSDP_LEN
        end = tables_addr + len(layout.tables)
        if end > ACPI_AREA_END and rsdp_addr == platform.ACPI_TABLES_ADDR:
            raise BootError(f"the ACPI tables do not fit below {ACPI_AREA_END:#x}; use fewer --cpus")
        if end > platform.BIOS_AREA_END:
            break
        if any(rsdp_addr < a_end and a_start < end for a_start, a_end in avoid):
            continue
        tables, rsdp = place(layout, tables_addr, rsdp_addr)
        memory.fill(rsdp_addr, end - rsdp_addr, 0)
        memory.write(rsdp_addr, rsdp)
        memory.write(tables_addr, tables)
        return rsdp_addr
    raise BootError(f"the kernel loads over the whole BIOS area {platform.ACPI_TABLES_ADDR:#x}-"
                    f"{platform.BIOS_AREA_END:#x}, leaving no room for the ACPI tables; link it at 1 MiB or above")
