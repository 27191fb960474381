"""The expansion ROM BAR (PCI 3.0, 6.2.5.2) of core/devices/pci.py, which gives SeaBIOS the VGA BIOS as QEMU does:
sizing, decode only with both the enable bit and memory decode on, read-only contents, reset."""
from __future__ import annotations

from core.bus import MmioBus, PortIoBus
from core.devices.pci import CMD_MEMORY, COMMAND, EXPANSION_ROM, PciBus, PciDevice

ROM = b"\x55\xAA\x4C" + bytes(range(256)) * 150          # 38403 bytes -> a 64 KiB BAR
ADDR = 0xFEBE_0000


class Mapper:
    def __init__(self) -> None:
        self.mapped: dict[int, tuple[int, bool]] = {}

    def map_ram(self, gpa: int, host: int, size: int, readonly: bool = False) -> None:
        self.mapped[gpa] = (size, readonly)

    def unmap_ram(self, gpa: int) -> None:
        del self.mapped[gpa]


def setup():
    mmio, mapper = MmioBus(), Mapper()
    bus = PciBus(PortIoBus(), mmio, lambda gsi, level: None, ram_mapper=mapper)
    dev = PciDevice(0x1234, 0x1111, 0x030000)
    dev.set_expansion_rom(ROM)
    bus.add(dev, slot=2)
    return bus, dev, mmio, mapper


def test_rom_bar_sizes_like_a_memory_bar():
    _, dev, _, _ = setup()
    dev.config_write(EXPANSION_ROM, 4, 0xFFFF_FFFF)
    assert dev.config_read(EXPANSION_ROM, 4) == 0xFFFF_0001        # 64 KiB, the enable bit writable


def test_rom_is_decoded_only_when_enabled_and_memory_decode_is_on():
    _, dev, mmio, mapper = setup()
    dev.config_write(EXPANSION_ROM, 4, ADDR)
    dev.config_write(COMMAND, 2, CMD_MEMORY)
    assert mmio.find(ADDR) is None                                   # enable bit still clear
    dev.config_write(EXPANSION_ROM, 4, ADDR | 1)
    assert mmio.read(ADDR, 4) == int.from_bytes(ROM[:4], "little")
    assert mmio.read(ADDR + len(ROM), 1) == 0xFF                     # past the image, inside the BAR
    mmio.write(ADDR, 4, 0)                                           # a ROM
    assert mmio.read(ADDR, 2) == 0xAA55
    assert mapper.mapped[ADDR] == (0x10000, True)                   # mapped read-only for the CPU as well
    dev.config_write(COMMAND, 2, 0)
    assert mmio.find(ADDR) is None and ADDR not in mapper.mapped


def test_reset_disables_the_rom():
    bus, dev, mmio, _ = setup()
    dev.config_write(EXPANSION_ROM, 4, ADDR | 1)
    dev.config_write(COMMAND, 2, CMD_MEMORY)
    bus.reset()
    assert dev.config_read(EXPANSION_ROM, 4) == 0 and mmio.find(ADDR) is None
