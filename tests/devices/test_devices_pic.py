"""8259A pair: the init sequence Linux and BIOSes use, priorities, EOI forms, cascade, ELCR, poll, spurious IRQs."""
from __future__ import annotations

from core.bus import PortIoBus
from core.devices.pic import Pic8259Pair


def make() -> tuple[Pic8259Pair, PortIoBus, list[int]]:
    kicks: list[int] = []
    pic = Pic8259Pair(on_intr_change=lambda: kicks.append(1))
    bus = PortIoBus()
    pic.attach(bus)
    return pic, bus, kicks


def init_linux(bus: PortIoBus, master_base: int = 0x30, slave_base: int = 0x38) -> None:
    """arch/x86/kernel/i8259.c init_8259A(): ICW1 0x11, ICW2 base, ICW3 cascade, ICW4 8086 mode."""
    bus.write(0x21, 1, 0xFF)
    bus.write(0xA1, 1, 0xFF)
    bus.write(0x20, 1, 0x11)
    bus.write(0x21, 1, master_base)
    bus.write(0x21, 1, 0x04)
    bus.write(0x21, 1, 0x01)
    bus.write(0xA0, 1, 0x11)
    bus.write(0xA1, 1, slave_base)
    bus.write(0xA1, 1, 0x02)
    bus.write(0xA1, 1, 0x01)
    bus.write(0x21, 1, 0x00)
    bus.write(0xA1, 1, 0x00)


def test_init_sequence_and_masks() -> None:
    pic, bus, _ = make()
    init_linux(bus)
    bus.write(0x21, 1, 0xFB)
    assert bus.read(0x21, 1) == 0xFB
    st = pic.state()
    assert st["master_base"] == 0x30 and st["slave_base"] == 0x38
    pic.set_irq(0, True)
    assert not pic.has_interrupt()           # IRQ0 masked
    bus.write(0x21, 1, 0xFA)
    assert pic.has_interrupt()
    assert pic.acknowledge() == 0x30


def test_edge_pulse_latched_and_eoi() -> None:
    pic, bus, kicks = make()
    init_linux(bus)
    pic.set_irq(4, True)
    pic.set_irq(4, False)                    # a pulse still leaves the request latched
    assert pic.has_interrupt() and kicks == [1]
    bus.write(0x20, 1, 0x0A)                 # OCW3: read IRR
    assert bus.read(0x20, 1) == 0x10
    assert pic.acknowledge() == 0x34
    assert bus.read(0x20, 1) == 0x00
    bus.write(0x20, 1, 0x0B)                 # OCW3: read ISR
    assert bus.read(0x20, 1) == 0x10
    assert not pic.has_interrupt()
    bus.write(0x20, 1, 0x20)                 # non-specific EOI
    assert bus.read(0x20, 1) == 0x00


def test_fixed_priority_and_nesting() -> None:
    pic, bus, _ = make()
    init_linux(bus)
    pic.set_irq(5, True)
    pic.set_irq(3, True)
    assert pic.acknowledge() == 0x33         # IRQ3 outranks IRQ5
    assert not pic.has_interrupt()           # IRQ5 waits: lower priority than the one in service
    pic.set_irq(1, True)
    assert pic.has_interrupt()               # IRQ1 outranks IRQ3 in service: nests
    assert pic.acknowledge() == 0x31
    bus.write(0x20, 1, 0x20)                 # EOI clears the highest in service (IRQ1)
    bus.write(0x20, 1, 0x0B)
    assert bus.read(0x20, 1) == 0x08
    bus.write(0x20, 1, 0x63)                 # specific EOI for IRQ3
    assert pic.acknowledge() == 0x35


def test_cascade_vector_and_slave_eoi() -> None:
    pic, bus, _ = make()
    init_linux(bus)
    pic.set_irq(12, True)
    assert pic.has_interrupt()
    assert pic.acknowledge() == 0x3C
    bus.write(0x20, 1, 0x0B)
    bus.write(0xA0, 1, 0x0B)
    assert bus.read(0x20, 1) == 0x04         # master: cascade IR2 in service
    assert bus.read(0xA0, 1) == 0x10         # slave: IR4 in service
    pic.set_irq(14, True)
    assert not pic.has_interrupt()
    bus.write(0xA0, 1, 0x20)
    bus.write(0x20, 1, 0x20)
    assert pic.has_interrupt()
    assert pic.acknowledge() == 0x3E


def test_level_mode_via_elcr() -> None:
    pic, bus, _ = make()
    init_linux(bus)
    bus.write(0x4D1, 1, 0xFF)
    assert bus.read(0x4D1, 1) == 0xDE        # IRQ8 and IRQ13 are edge-only on PIIX
    bus.write(0x4D0, 1, 0xFF)
    assert bus.read(0x4D0, 1) == 0xF8
    pic.set_irq(9, True)
    assert pic.acknowledge() == 0x39
    bus.write(0xA0, 1, 0x20)
    bus.write(0x20, 1, 0x20)
    assert pic.has_interrupt()               # still asserted: requests again after EOI
    pic.set_irq(9, False)
    assert not pic.has_interrupt()           # the level went away before INTA


def test_spurious_irq7_and_irq15() -> None:
    pic, bus, _ = make()
    init_linux(bus)
    bus.write(0x4D0, 1, 0x20)                # IRQ5 level
    pic.set_irq(5, True)
    assert pic.has_interrupt()
    pic.set_irq(5, False)
    assert pic.acknowledge() == 0x37         # nothing left: IR7's vector, ISR untouched
    bus.write(0x20, 1, 0x0B)
    assert bus.read(0x20, 1) == 0
    bus.write(0x4D1, 1, 0x02)                # IRQ9 level
    pic.set_irq(9, True)
    # The slave's request vanishes between the master seeing IR2 and the slave's INTA cycle.
    with pic._lock:
        pic.master.acknowledge()
        pic.slave.set_input(1, False)
        assert pic.slave.acknowledge() is None
    assert pic.spurious == 1


def test_spurious_slave_vector_through_acknowledge() -> None:
    pic, bus, _ = make()
    init_linux(bus)
    bus.write(0xA1, 1, 0xFF)
    # Put IR2 on the master by hand (as a glitch would) with nothing pending on the slave.
    with pic._lock:
        pic.master.irr |= 0x04
    assert pic.acknowledge() == 0x3F         # IRQ15's vector
    bus.write(0x20, 1, 0x0B)
    assert bus.read(0x20, 1) == 0x04         # the master still counts the cascade in service


def test_rotation_and_set_priority() -> None:
    pic, bus, _ = make()
    init_linux(bus)
    bus.write(0x20, 1, 0xC4)                 # set priority: IR4 lowest, so IR5 is highest
    pic.set_irq(3, True)
    pic.set_irq(6, True)
    assert pic.acknowledge() == 0x36
    bus.write(0x20, 1, 0xA0)                 # rotate on non-specific EOI: IR6 becomes lowest
    pic.set_irq(6, False)
    pic.set_irq(6, True)
    assert pic.acknowledge() == 0x33         # IR7 highest now, then 0..; IR3 beats IR6


def test_auto_eoi() -> None:
    pic, bus, _ = make()
    bus.write(0x20, 1, 0x11)
    bus.write(0x21, 1, 0x08)
    bus.write(0x21, 1, 0x04)
    bus.write(0x21, 1, 0x03)                 # ICW4: AEOI, 8086
    bus.write(0x21, 1, 0x00)
    pic.set_irq(1, True)
    assert pic.acknowledge() == 0x09
    bus.write(0x20, 1, 0x0B)
    assert bus.read(0x20, 1) == 0            # no ISR bit: ended automatically
    pic.set_irq(0, True)
    assert pic.has_interrupt()


def test_special_mask_mode() -> None:
    pic, bus, _ = make()
    init_linux(bus)
    pic.set_irq(3, True)
    assert pic.acknowledge() == 0x33
    pic.set_irq(6, True)
    assert not pic.has_interrupt()
    bus.write(0x21, 1, 0x08)                 # mask IR3 (in service)
    bus.write(0x20, 1, 0x68)                 # OCW3: set special mask mode
    assert pic.has_interrupt()               # lower-priority IR6 now allowed
    assert pic.acknowledge() == 0x36


def test_poll_mode() -> None:
    pic, bus, _ = make()
    init_linux(bus)
    pic.set_irq(6, True)
    bus.write(0x20, 1, 0x0C)                 # OCW3 poll
    assert bus.read(0x20, 1) == 0x86
    bus.write(0x20, 1, 0x0B)
    assert bus.read(0x20, 1) == 0x40         # the poll acted as INTA
    bus.write(0x20, 1, 0x0C)
    assert bus.read(0x20, 1) == 0x00


def test_icw1_resets_edge_latch_and_masks() -> None:
    pic, bus, _ = make()
    init_linux(bus)
    bus.write(0x21, 1, 0xFF)
    pic.set_irq(1, True)
    init_linux(bus)
    assert not pic.has_interrupt()           # the line must fall and rise again after ICW1
    pic.set_irq(1, False)
    pic.set_irq(1, True)
    assert pic.acknowledge() == 0x31


def test_kick_only_on_rising_intr() -> None:
    pic, bus, kicks = make()
    init_linux(bus)
    pic.set_irq(3, True)
    pic.set_irq(4, True)
    assert kicks == [1]
    pic.acknowledge()
    bus.write(0x20, 1, 0x20)
    assert kicks == [1, 1]                   # INT dropped during service and rose again after EOI
