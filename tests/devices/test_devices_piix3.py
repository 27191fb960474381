"""The PIIX3 ISA bridge as firmware and PIC-mode guests see it: a multi-function slot, and PIRQ steering of PCI
interrupts to ISA IRQs (82371SB datasheet 2.2.9) while the I/O APIC pins 16-19 keep getting them."""
from __future__ import annotations

from core.bus import MmioBus, PortIoBus
from core.devices.pci import HEADER_TYPE, PciBus, PciDevice
from core.devices.piix3 import Piix3IsaBridge


def _config_read(pio: PortIoBus, slot: int, func: int, reg: int, size: int = 4) -> int:
    pio.write(0xCF8, 4, 0x8000_0000 | slot << 11 | func << 8 | (reg & 0xFC))
    return pio.read(0xCFC + (reg & 3), size)


def _config_write(pio: PortIoBus, slot: int, func: int, reg: int, size: int, value: int) -> None:
    pio.write(0xCF8, 4, 0x8000_0000 | slot << 11 | func << 8 | (reg & 0xFC))
    pio.write(0xCFC + (reg & 3), size, value)


def _board():
    pio, mmio = PortIoBus(), MmioBus()
    lines: list[tuple[int, bool]] = []
    bus = PciBus(pio, mmio, lambda gsi, level: lines.append((gsi, level)))
    bus.attach(pio)
    bridge = Piix3IsaBridge(lambda irq, level: lines.append((irq, level)))
    bus.add(bridge, slot=1, function=0)
    bus.pirq_router = bridge
    return pio, bus, bridge, lines


def test_second_function_makes_slot_multifunction_and_is_enumerable() -> None:
    pio, bus, bridge, _ = _board()
    assert _config_read(pio, 1, 0, HEADER_TYPE, 1) & 0x80 == 0
    ide_like = PciDevice(0x8086, 0x7010, 0x010180)
    bus.add(ide_like, slot=1, function=1)
    assert _config_read(pio, 1, 0, HEADER_TYPE, 1) & 0x80
    assert _config_read(pio, 1, 0, 0) == 0x7000_8086
    assert _config_read(pio, 1, 1, 0) == 0x7010_8086
    assert _config_read(pio, 1, 2, 0) == 0xFFFF_FFFF       # absent function reads all ones
    assert bus.add(PciDevice(0x1AF4, 0x1042, 0x010000)) == 2  # the next free slot skips the southbridge's


def test_pirq_routing_steers_intx_to_the_programmed_isa_irq() -> None:
    pio, bus, bridge, lines = _board()
    dev = PciDevice(0x1AF4, 0x1042, 0x010000, interrupt_pin=1)
    slot = bus.add(dev, slot=3)
    pirq = bus.pirq_for(slot, 1)
    dev.set_intx(True)
    assert lines == [(16 + pirq, True)]                       # routing disabled at power-on: I/O APIC only
    lines.clear()
    _config_write(pio, 1, 0, 0x60 + pirq, 1, 11)              # firmware steers this PIRQ to IRQ 11
    assert lines == [(11, True)]                              # the asserted line follows at once
    lines.clear()
    dev.set_intx(False)
    assert sorted(lines) == [(11, False), (16 + pirq, False)]
    lines.clear()
    _config_write(pio, 1, 0, 0x60 + pirq, 1, 0x80 | 11)      # disabled again
    dev.set_intx(True)
    assert lines == [(16 + pirq, True)]


def test_two_pirqs_sharing_an_irq_are_wired_or() -> None:
    pio, bus, bridge, lines = _board()
    a = PciDevice(0x1AF4, 0x1042, 0x010000, interrupt_pin=1)
    b = PciDevice(0x1AF4, 0x1042, 0x010000, interrupt_pin=1)
    sa, sb = bus.add(a, slot=4), bus.add(b, slot=5)
    for pirq in (bus.pirq_for(sa, 1), bus.pirq_for(sb, 1)):
        _config_write(pio, 1, 0, 0x60 + pirq, 1, 10)
    a.set_intx(True)
    b.set_intx(True)
    a.set_intx(False)
    isa = [e for e in lines if e[0] == 10]
    assert isa == [(10, True)]                                # still held by b
    b.set_intx(False)
    assert [e for e in lines if e[0] == 10] == [(10, True), (10, False)]


def test_unroutable_irq_values_and_reset() -> None:
    pio, bus, bridge, lines = _board()
    _config_write(pio, 1, 0, 0x60, 1, 2)                      # IRQ 2 is the cascade: not a valid target
    assert bridge.isa_irq_for(0) is None
    _config_write(pio, 1, 0, 0x61, 1, 5)
    assert bridge.isa_irq_for(1) == 5
    bridge.reset()
    assert _config_read(pio, 1, 0, 0x60) == 0x8080_8080
