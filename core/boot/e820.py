"""The BIOS memory map (ACPI 6.4, 15 "System Address Map Interfaces": INT 15h E820) that direct-boot loaders hand
to the guest: in the Linux zero page (boot_params.e820_table, Documentation/arch/x86/zero-page.rst) and in the
Multiboot information structure (Multiboot 0.6.96, 3.3 "mmap_*").

Derived from GuestMemory.regions so it always matches the RAM that exists: conventional memory below the EBDA,
the legacy hole 0x9FC00-0xFFFFF reserved (the ACPI tables live there), RAM from 1 MiB to the 32-bit PCI hole,
the interrupt controllers' MMIO windows reserved, and RAM above 4 GiB when the VM has it.
"""
from __future__ import annotations

from dataclasses import dataclass

from core import platform
from core.memory import GuestMemory

E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4

# The fixed MMIO windows the chipset decodes below 4 GiB; a guest must not treat them as free PCI space.
_MMIO_RESERVED = (
    (platform.IOAPIC_BASE, 0x1000),
    (platform.LAPIC_BASE, 0x1000),
)


@dataclass(frozen=True)
class E820Entry:
    addr: int
    size: int
    type: int

    @property
    def end(self) -> int:
        return self.addr + self.size


def build_e820(memory: GuestMemory) -> list[E820Entry]:
    """The guest's memory map, sorted by address, with no overlaps."""
    entries: list[E820Entry] = []
    for region in memory.regions:
        start, end = region.gpa, region.end
        if start < platform.BIOS_AREA_END:
            # The first region holds the legacy PC layout: usable conventional memory, then the reserved
            # EBDA/VGA/BIOS hole up to 1 MiB whether or not RAM backs all of it.
            low_end = min(end, platform.EBDA_START)
            if low_end > start:
                entries.append(E820Entry(start, low_end - start, E820_RAM))
            entries.append(E820Entry(platform.EBDA_START, platform.BIOS_AREA_END - platform.EBDA_START,
                                     E820_RESERVED))
            start = platform.BIOS_AREA_END
        if end > start:
            entries.append(E820Entry(start, end - start, E820_RAM))
    for base, size in _MMIO_RESERVED:
        entries.append(E820Entry(base, size, E820_RESERVED))
    entries.sort(key=lambda e: e.addr)
    return entries


def low_ram_end(memory: GuestMemory) -> int:
    """End of the RAM that starts at 0 (the top of what 32-bit structures such as an initrd may use)."""
    return memory.regions[0].end


def conventional_kib(memory: GuestMemory) -> int:
    """KiB of usable RAM below 640 KiB (Multiboot mem_lower)."""
    return min(low_ram_end(memory), platform.EBDA_START) // 1024


def extended_kib(memory: GuestMemory) -> int:
    """KiB of contiguous RAM from 1 MiB up to the first hole (Multiboot mem_upper)."""
    return max(0, low_ram_end(memory) - platform.BIOS_AREA_END) // 1024
