"""I/O APIC: register window, redirection entries, edge and level delivery, remote IRR and EOI."""
from __future__ import annotations

import threading

from core.bus import MmioBus
from core.devices.ioapic import IoApic

BASE = 0xFEC0_0000
Message = tuple[int, bool, int, int, bool]


def make() -> tuple[IoApic, MmioBus, list[Message]]:
    sent: list[Message] = []
    ioapic = IoApic(lambda *m: sent.append(m))
    bus = MmioBus()
    ioapic.attach(bus)
    return ioapic, bus, sent


def write_reg(bus: MmioBus, index: int, value: int) -> None:
    bus.write(BASE, 4, index)
    bus.write(BASE + 0x10, 4, value)


def read_reg(bus: MmioBus, index: int) -> int:
    bus.write(BASE, 4, index)
    return bus.read(BASE + 0x10, 4)


def program(bus: MmioBus, pin: int, low: int, dest: int = 0) -> None:
    write_reg(bus, 0x11 + 2 * pin, dest << 24)
    write_reg(bus, 0x10 + 2 * pin, low)


def test_id_version_and_power_on_masks() -> None:
    _, bus, _ = make()
    assert read_reg(bus, 0x01) == 0x0017_0020    # 24 entries, version 0x20
    write_reg(bus, 0x00, 0x0500_0000)
    assert read_reg(bus, 0x00) == 0x0500_0000
    assert read_reg(bus, 0x02) == 0x0500_0000
    write_reg(bus, 0x01, 0)
    assert read_reg(bus, 0x01) == 0x0017_0020    # read-only
    for pin in range(24):
        assert read_reg(bus, 0x10 + 2 * pin) & 0x1_0000
    assert bus.read(BASE, 4) == 0x10 + 2 * 23    # IOREGSEL reads back


def test_redirection_entry_fields_roundtrip() -> None:
    ioapic, bus, _ = make()
    # vector 0x31, lowest priority, logical, active low, level, masked; destination 0x0F
    low = 0x31 | (1 << 8) | (1 << 11) | (1 << 13) | (1 << 15) | (1 << 16)
    program(bus, 5, low, dest=0x0F)
    assert read_reg(bus, 0x1A) == low
    assert read_reg(bus, 0x1B) == 0x0F00_0000
    write_reg(bus, 0x1A, low | (1 << 12) | (1 << 14))   # delivery status and remote IRR are read-only
    assert read_reg(bus, 0x1A) == low
    assert ioapic.entry(5) >> 56 == 0x0F


def test_edge_delivery_on_rising_edge_only() -> None:
    ioapic, bus, sent = make()
    program(bus, 2, 0x30, dest=1)               # edge, fixed, physical, unmasked
    ioapic.set_irq(2, True)
    ioapic.set_irq(2, True)                     # no new edge
    ioapic.set_irq(2, False)
    ioapic.set_irq(2, True)
    assert sent == [(1, False, 0, 0x30, False)] * 2


def test_masked_edge_is_discarded() -> None:
    ioapic, bus, sent = make()
    program(bus, 4, 0x34 | (1 << 16))
    ioapic.set_irq(4, True)
    ioapic.set_irq(4, False)
    program(bus, 4, 0x34)
    assert sent == []


def test_level_remote_irr_and_eoi_redelivery() -> None:
    ioapic, bus, sent = make()
    program(bus, 9, 0x39 | (1 << 15), dest=0)   # SCI: level
    ioapic.set_irq(9, True)
    assert sent == [(0, False, 0, 0x39, True)]
    assert read_reg(bus, 0x22) & (1 << 14)       # remote IRR
    ioapic.set_irq(9, False)
    ioapic.set_irq(9, True)
    assert len(sent) == 1                        # remote IRR holds it back
    ioapic.eoi(0x39)
    assert len(sent) == 2                        # still asserted at EOI: sent again
    ioapic.set_irq(9, False)
    ioapic.eoi(0x39)
    assert len(sent) == 2 and not read_reg(bus, 0x22) & (1 << 14)
    ioapic.eoi(0x40)                             # another vector: nothing
    assert len(sent) == 2


def test_eoi_register_of_version_0x20() -> None:
    ioapic, bus, sent = make()
    program(bus, 11, 0x3B | (1 << 15))
    ioapic.set_irq(11, True)
    bus.write(BASE + 0x40, 4, 0x3B)
    assert len(sent) == 2


def test_unmasking_asserted_level_line_delivers() -> None:
    ioapic, bus, sent = make()
    program(bus, 16, 0x50 | (1 << 15) | (1 << 16))
    ioapic.set_irq(16, True)
    assert sent == []
    program(bus, 16, 0x50 | (1 << 15))
    assert sent == [(0, False, 0, 0x50, True)]


def test_eoi_may_reenter_from_deliver() -> None:
    """deliver runs outside the lock: a local APIC that EOIs at once (re-entrantly) must not deadlock."""
    sent: list[Message] = []
    holder: list[IoApic] = []

    def deliver(*m: object) -> None:
        sent.append(m)  # type: ignore[arg-type]
        if len(sent) < 3:
            holder[0].eoi(0x60)

    ioapic = IoApic(deliver)
    holder.append(ioapic)
    bus = MmioBus()
    ioapic.attach(bus)
    program(bus, 20, 0x60 | (1 << 15))
    t = threading.Thread(target=ioapic.set_irq, args=(20, True))
    t.start()
    t.join(timeout=2)
    assert not t.is_alive() and len(sent) == 3


def test_partial_and_byte_accesses() -> None:
    ioapic, bus, _ = make()
    bus.write(BASE, 1, 0x12)                     # IOREGSEL by byte: entry 1 low
    bus.write(BASE + 0x10, 1, 0x44)              # vector byte only
    assert ioapic.entry(1) & 0x1_00FF == 0x1_0044
    assert bus.read(BASE + 0x10, 1) == 0x44
    assert bus.read(BASE + 0x12, 1) == 0x01      # mask bit seen in the third byte
    ioapic.reset()
    assert ioapic.entry(1) == 1 << 16
