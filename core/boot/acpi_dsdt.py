"""The AML body of Vireo's DSDT (ACPI 6.4, 5.2.11.1) and the PCI memory windows it announces.

The namespace:

  \\_S5            Package{SLP_TYP, SLP_TYP, 0, 0}: how the guest powers off through PM1a_CNT (7.4.2 "\\_Sx")
  \\_SB.PCI0       the PCI root bridge (PNP0A03): bus 0, its I/O and memory windows (_CRS, 6.2.2) and the INTx
                  routing (_PRT, 6.2.13)
  \\_SB.PCI0.KBD_  the 8042's keyboard port (PNP0303): ports 0x60/0x64, IRQ 1
  \\_SB.PCI0.MOU_  the 8042's aux port (PNP0F13): IRQ 12

The PS/2 devices are there for firmware boot as much as for the OS: SeaBIOS 1.16.2 parses the DSDT it was given
(src/fw/dsdt_parser.c) and, when the DSDT lists devices but no PNP0303, skips keyboard setup altogether
(src/hw/ps2port.c, "ACPI: no PS/2 keyboard present"). Its parser knows only a subset of AML (no QWord integers
outside buffers, for one), so every object here stays within it. Linux's i8042 driver takes the ports and IRQs
from the same devices (drivers/input/serio/i8042-acpipnpio.h) and, without an aux device, disables the mouse port.

The 32-bit memory window follows where SeaBIOS 1.16.2 puts BARs (src/fw/pciinit.c): pci_setup starts the window at
RamSize (the end of RAM below 4 GiB), i440fx_mem_addr_setup moves it up to 0x80000000 when RamSize <= 2 GiB or to
0xC0000000 when RamSize <= 3 GiB, and it ends at BUILD_PCIMEM_END, the I/O APIC (0xFEC00000). When the 32-bit
window cannot hold every BAR, pci_bios_map_devices moves the 64-bit BARs above 4 GiB, starting at the end of RAM
over 4 GiB (or etc/reserved-memory-end, which Vireo does not provide) rounded up to 1 GiB; the DSDT's 64-bit
window starts there too. Direct boot's own BAR placement (platform.PCI_MMIO_WINDOW) lies inside the 32-bit window
for every RAM size Vireo makes.
"""
from __future__ import annotations

from dataclasses import dataclass

from core import platform
from core.boot import aml

GiB = 1 << 30
FOUR_GIB = 4 * GiB


@dataclass(frozen=True)
class PciWindows:
    """The root bridge's memory windows, half-open [start, end) byte ranges."""

    mem32: tuple[int, int]
    mem64: tuple[int, int]


def pci_windows(low_ram_bytes: int, high_ram_bytes: int = 0) -> PciWindows:
    """SeaBIOS's windows for a guest with `low_ram_bytes` of RAM from 0 (its RamSize, the end of the e820 RAM
    below 4 GiB) and `high_ram_bytes` of RAM from 4 GiB up (its RamSizeOver4G)."""
    if not 0 < low_ram_bytes <= FOUR_GIB:
        raise ValueError(f"low RAM of {low_ram_bytes:#x} bytes is not between 1 byte and 4 GiB")
    if high_ram_bytes < 0:
        raise ValueError(f"RAM above 4 GiB of {high_ram_bytes:#x} bytes is negative")
    if low_ram_bytes <= 0x8000_0000:
        start = 0x8000_0000
    elif low_ram_bytes <= 0xC000_0000:
        start = 0xC000_0000
    else:
        start = low_ram_bytes
    if start > platform.PCI_MMIO_WINDOW[0]:
        raise ValueError(f"RAM below 4 GiB ends at {low_ram_bytes:#x}, inside the PCI window at "
                         f"{platform.PCI_MMIO_WINDOW[0]:#x}; keep at most 3 GiB of RAM below 4 GiB")
    align = platform.PCI_MMIO64_ALIGN
    start64 = (FOUR_GIB + high_ram_bytes + align - 1) // align * align
    return PciWindows((start, platform.PCI_MMIO32_END), (start64, start64 + platform.PCI_MMIO64_SIZE))


def dsdt_aml(windows: PciWindows) -> bytes:
    """The definition block's AML, to go after the DSDT's header."""
    s5 = aml.name("\\_S5", aml.package(aml.integer(platform.ACPI_S5_SLP_TYP), aml.integer(platform.ACPI_S5_SLP_TYP),
                                       aml.integer(0), aml.integer(0)))
    return s5 + aml.scope("\\_SB", pci_root(windows))


def pci_root(windows: PciWindows) -> bytes:
    """Device(PCI0): bus 0, the windows it decodes, the 8042 behind it, and a _PRT mapping every slot's INTA-D
    straight to the I/O APIC GSIs core/devices/pci.py drives (6.2.13: Source 0 means SourceIndex is a GSI,
    level, active low)."""
    (mem_lo, mem_hi), (mem64_lo, mem64_hi) = windows.mem32, windows.mem64
    crs = aml.resource_template(
        aml.word_bus_number(0, 0xFF),
        aml.io_port(platform.PCI_CONFIG_ADDRESS_PORT, 8),
        aml.word_io(0x0000, 0x0CF7),
        aml.word_io(0x0D00, 0xFFFF),
        aml.dword_memory(platform.VGA_WINDOW, 0xBFFFF),
        aml.dword_memory(mem_lo, mem_hi - 1),
        aml.qword_memory(mem64_lo, mem64_hi - 1),
    )
    routes = [aml.package(aml.integer(slot << 16 | 0xFFFF), aml.integer(pin), aml.integer(0),
                          aml.integer(platform.PCI_INTX_GSIS[(slot + pin) % 4]))
              for slot in range(1, 32) for pin in range(4)]
    return aml.device("PCI0",
                      aml.name("_HID", aml.eisa_id("PNP0A03")),
                      aml.name("_ADR", aml.integer(0)),
                      aml.name("_UID", aml.integer(0)),
                      aml.name("_BBN", aml.integer(0)),
                      aml.name("_CRS", crs),
                      aml.name("_PRT", aml.package(*routes)),
                      *ps2_devices())


def ps2_devices() -> tuple[bytes, bytes]:
    """The 8042's two ports as ISA devices behind the root bridge (the ISA bus decodes subtractively)."""
    keyboard = aml.device("KBD",
                          aml.name("_HID", aml.eisa_id("PNP0303")),
                          aml.name("_CRS", aml.resource_template(aml.io_port(platform.I8042_DATA_PORT, 1),
                                                                 aml.io_port(platform.I8042_CMD_PORT, 1),
                                                                 aml.irq_no_flags(platform.I8042_KBD_IRQ))))
    mouse = aml.device("MOU",
                       aml.name("_HID", aml.eisa_id("PNP0F13")),
                       aml.name("_CRS", aml.resource_template(aml.irq_no_flags(platform.I8042_MOUSE_IRQ))))
    return keyboard, mouse
