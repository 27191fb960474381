"""A PIIX3 IDE controller on a bare PCI bus and port bus, driven through its registers as a driver would (the
IDE tests share it): `IdeRig({0: AtaDisk(image)})` configures the function as firmware does (BAR4 at BM_BASE, I/O
and bus-master enables, IDETIM decode) and offers register-level helpers. Interrupts are recorded per ISA IRQ.
"""
from __future__ import annotations

import struct

from core.bus import MmioBus, PortIoBus
from core.devices.ide import PiixIde
from core.devices.ide.drive import IdeDrive
from core.devices.pci import PciBus
from core.memory import GuestMemory
from core.storage import create_image, open_image

BM_BASE = 0xC000
CMD_BASE = (0x1F0, 0x170)
CTL = (0x3F6, 0x376)
SLOT, FUNCTION = 1, 1


class IrqRecorder:
    """An interrupt sink that keeps each line's level and counts rising edges."""

    def __init__(self) -> None:
        self.level: dict[int, bool] = {}
        self.edges: dict[int, int] = {}

    def set_irq(self, gsi: int, level: bool) -> None:
        if level and not self.level.get(gsi):
            self.edges[gsi] = self.edges.get(gsi, 0) + 1
        self.level[gsi] = level


class IdeRig:
    def __init__(self, drives: dict[int, IdeDrive] | None = None, ram: int = 4 << 20, configure: bool = True) -> None:
        self.mem = GuestMemory(ram)
        self.pio, self.mmio = PortIoBus(), MmioBus()
        self.irqs = IrqRecorder()
        self.bus = PciBus(self.pio, self.mmio, self.irqs.set_irq)
        self.bus.attach(self.pio)
        self.ide = PiixIde(self.mem, self.irqs)
        self.bus.add(self.ide, slot=SLOT, function=FUNCTION)
        self.ide.attach(self.pio)
        for position, drive in (drives or {}).items():
            self.ide.attach_drive(position, drive)
        if configure:
            self.cfg_write(0x20, 4, BM_BASE | 1)
            self.cfg_write(0x04, 2, 0x0005)          # I/O space, bus master
            self.cfg_write(0x40, 2, 0x8000)
            self.cfg_write(0x42, 2, 0x8000)

    # -- PCI configuration ---------------------------------------------------------------------------------
    def cfg_write(self, reg: int, size: int, value: int) -> None:
        self.pio.write(0xCF8, 4, 0x8000_0000 | SLOT << 11 | FUNCTION << 8 | (reg & 0xFC))
        self.pio.write(0xCFC + (reg & 3), size, value)

    def cfg_read(self, reg: int, size: int) -> int:
        self.pio.write(0xCF8, 4, 0x8000_0000 | SLOT << 11 | FUNCTION << 8 | (reg & 0xFC))
        return self.pio.read(0xCFC + (reg & 3), size)

    # -- task file ---------------------------------------------------------------------------------------------
    def inb(self, ch: int, reg: int) -> int:
        return self.pio.read(CMD_BASE[ch] + reg, 1)

    def outb(self, ch: int, reg: int, value: int) -> None:
        self.pio.write(CMD_BASE[ch] + reg, 1, value)

    def status(self, ch: int) -> int:
        return self.inb(ch, 7)

    def alt_status(self, ch: int) -> int:
        return self.pio.read(CTL[ch], 1)

    def control(self, ch: int, value: int) -> None:
        self.pio.write(CTL[ch], 1, value)

    def select(self, ch: int, unit: int, extra: int = 0xA0) -> None:
        self.outb(ch, 6, extra | unit << 4)

    def command(self, ch: int, unit: int, cmd: int, *, feature: int = 0, count: int = 0, lba: int = 0,
                lba48: bool = False, device: int = 0xE0) -> None:
        """Load the task file (48-bit: high bytes first) and write the command."""
        self.select(ch, unit, device & ~0x10)
        if lba48:
            self.outb(ch, 1, 0)
            self.outb(ch, 2, count >> 8 & 0xFF)
            self.outb(ch, 3, lba >> 24 & 0xFF)
            self.outb(ch, 4, lba >> 32 & 0xFF)
            self.outb(ch, 5, lba >> 40 & 0xFF)
        self.outb(ch, 1, feature)
        self.outb(ch, 2, count & 0xFF)
        self.outb(ch, 3, lba & 0xFF)
        self.outb(ch, 4, lba >> 8 & 0xFF)
        self.outb(ch, 5, lba >> 16 & 0xFF)
        if not lba48:
            self.outb(ch, 6, (device & ~0x10) | unit << 4 | (lba >> 24 & 0x0F))
        self.outb(ch, 7, cmd)

    def read_data(self, ch: int, nbytes: int, width: int = 2) -> bytes:
        out = bytearray()
        while len(out) < nbytes:
            out += self.pio.read(CMD_BASE[ch], width).to_bytes(width, "little")
        return bytes(out[:nbytes])

    def write_data(self, ch: int, data: bytes, width: int = 2) -> None:
        for i in range(0, len(data), width):
            self.pio.write(CMD_BASE[ch], width, int.from_bytes(data[i:i + width], "little"))

    # -- bus master --------------------------------------------------------------------------------------------
    def bm_out(self, ch: int, offset: int, size: int, value: int) -> None:
        self.pio.write(BM_BASE + 8 * ch + offset, size, value)

    def bm_in(self, ch: int, offset: int, size: int = 1) -> int:
        return self.pio.read(BM_BASE + 8 * ch + offset, size)

    def prd_table(self, table: int, regions: list[tuple[int, int]]) -> None:
        """Write a PRD table of (address, byte count) regions, EOT on the last."""
        for i, (addr, count) in enumerate(regions):
            eot = 0x8000_0000 if i == len(regions) - 1 else 0
            self.mem.write(table + 8 * i, struct.pack("<II", addr, (count & 0xFFFF) | eot))

    def dma(self, ch: int, table: int, to_memory: bool) -> None:
        """Program and start the engine (table, direction, clear status, start), as Linux's ata_bmdma does."""
        self.bm_out(ch, 4, 4, table)
        self.bm_out(ch, 0, 1, 0x08 if to_memory else 0)
        self.bm_out(ch, 2, 1, 0x06)
        self.bm_out(ch, 0, 1, (0x08 if to_memory else 0) | 1)

    def stop_dma(self, ch: int) -> None:
        self.bm_out(ch, 0, 1, self.bm_in(ch, 0) & ~1)

    def close(self) -> None:
        self.ide.close()
        self.mem.close()


def make_image(path, size: int, fmt: str = "raw", fill: bytes | None = None, read_only: bool = False):
    """An image of `size` bytes (its content `fill`, repeated, when given), opened for the device."""
    create_image(str(path), fmt, size)
    if fill is not None:
        with open_image(str(path)) as dev:
            data = (fill * (size // len(fill) + 1))[:size]
            dev.write(0, data)
    return open_image(str(path), read_only=read_only)
