"""The PC platform Vireo emulates: where devices sit in port and physical address space, and their IRQs.

One table shared by the device models, the ACPI tables that describe them to the guest (ACPI 6.4, 5.2) and the
boot loaders. Values follow QEMU's i440FX/PIIX4 machine where Linux has expectations (PM base 0x600, SCI 9).
"""
from __future__ import annotations

# Legacy I/O ports.
COM1_PORT, COM1_IRQ = 0x3F8, 4
COM2_PORT, COM2_IRQ = 0x2F8, 3
PIC_MASTER_PORT, PIC_SLAVE_PORT, ELCR_PORT = 0x20, 0xA0, 0x4D0
PIT_PORT, PIT_IRQ = 0x40, 0          # counters 0x40-0x42, control 0x43; GSI 2 on the I/O APIC
PIT_GSI = 2
PORT_61 = 0x61                       # NMI status / speaker / PIT gate 2
RTC_PORT, RTC_IRQ = 0x70, 8
I8042_DATA_PORT, I8042_CMD_PORT = 0x60, 0x64
I8042_KBD_IRQ, I8042_MOUSE_IRQ = 1, 12
POST_PORT = 0x80
RESET_CONTROL_PORT = 0xCF9           # PIIX reset control register: write 0x06 for a hard reset
PCI_CONFIG_ADDRESS_PORT = 0xCF8

# ACPI fixed hardware (PM1a event/control blocks and the PM timer), FADT-described.
ACPI_PM_BASE = 0x600
ACPI_PM1A_EVT = ACPI_PM_BASE          # PM1_STS (2 bytes) + PM1_EN (2 bytes)
ACPI_PM1A_CNT = ACPI_PM_BASE + 0x04   # PM1_CNT (2 bytes)
ACPI_PM_TMR = ACPI_PM_BASE + 0x08     # 24-bit 3.579545 MHz PM timer (4 bytes)
ACPI_GPE0 = ACPI_PM_BASE + 0x20       # GPE0_STS + GPE0_EN (4 bytes each half)
ACPI_PM_LEN = 0x40
ACPI_SCI_IRQ = 9
ACPI_S5_SLP_TYP = 5                   # the SLP_TYP our DSDT's \_S5 package names
PM_TIMER_HZ = 3_579_545

# Physical address map.
LAPIC_BASE = 0xFEE0_0000
IOAPIC_BASE = 0xFEC0_0000
IOAPIC_PINS = 24
# Where direct boot places 32-bit PCI BARs (core/devices/pci.py assign_resources). The DSDT's window (SeaBIOS's
# rule, core/boot/acpi_dsdt.py) starts lower and ends at the same place, so it holds this for every RAM size.
PCI_MMIO_WINDOW = (0xE000_0000, 0xFEC0_0000)
PCI_MMIO32_END = IOAPIC_BASE                  # SeaBIOS's BUILD_PCIMEM_END: 32-bit BARs go below the I/O APIC
PCI_MMIO64_ALIGN = 1 << 30                    # SeaBIOS aligns its 64-bit BAR regions to 1 GiB
PCI_MMIO64_SIZE = 32 << 30                    # the DSDT's window above RAM for 64-bit BARs
PIIX_SLOT = 1                                 # 00:01.0 ISA bridge, 00:01.1 IDE (as on QEMU's i440FX machine)
PCI_INTX_GSIS = (16, 17, 18, 19)              # PIRQ A-D: I/O APIC pins of PCI INTx, level-triggered (DSDT _PRT)
BIOS_AREA_START = 0xE_0000            # ACPI tables and the RSDP live here (ACPI 6.4, 5.2.5.1)
BIOS_AREA_END = 0x10_0000
EBDA_START = 0x9_FC00                 # RAM below this is usable; 0x9FC00-0xFFFFF is reserved
VGA_WINDOW = 0xA_0000

# Where the direct-boot loaders put things in low memory.
ZERO_PAGE_ADDR = 0x7000               # struct boot_params (Linux boot.rst, "64-bit boot protocol")
CMDLINE_ADDR = 0x2_0000
CMDLINE_MAX = 0x1_0000
BOOT_GDT_ADDR = 0x500
BOOT_PML4_ADDR = 0x9000               # identity page tables for the 64-bit entry (PML4, PDPT, PDs follow)
BOOT_STACK_TOP = 0x8FF0
KERNEL_LOAD_ADDR = 0x10_0000
MULTIBOOT_INFO_ADDR = 0x6000
ACPI_TABLES_ADDR = 0xE_0000
MP_TABLE_ADDR = 0xF_0000
