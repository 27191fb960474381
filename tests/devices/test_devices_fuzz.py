"""A hostile guest cannot make a device model raise: random port and MMIO traffic against every device."""
from __future__ import annotations

import random

import pytest

from core.bus import MmioBus, PortIoBus
from core.devices.acpi_pm import AcpiPm
from core.devices.i8042 import I8042
from core.devices.ioapic import IoApic
from core.devices.pic import Pic8259Pair
from core.devices.pit import Pit8254
from core.devices.post import PostPort
from core.devices.reset_control import ResetControl
from core.devices.rtc import CmosRtc
from core.devices.serial import Uart16550
from core.irq import IrqLine
from core.timers import TimerQueue


class Sink:
    def set_irq(self, gsi: int, level: bool) -> None:
        pass


@pytest.fixture
def timers():
    q = TimerQueue()
    errors: list[BaseException] = []
    q.on_error = errors.append
    yield q
    q.stop()
    assert errors == []


def test_random_register_traffic(timers: TimerQueue) -> None:
    sink = Sink()
    pio, mmio = PortIoBus(), MmioBus()
    pic = Pic8259Pair()
    uart = Uart16550(IrqLine(sink, 4), lambda b: None)
    kbd = I8042(lambda: None, IrqLine(sink, 1), IrqLine(sink, 12))
    for dev in (pic, uart, Pit8254(timers, IrqLine(sink, 0)), CmosRtc(IrqLine(sink, 8), timers, 1 << 28), kbd,
                PostPort(), AcpiPm(IrqLine(sink, 9), lambda: None, timers=timers), ResetControl(lambda: None)):
        dev.attach(pio)
    ioapic = IoApic(lambda *m: None)
    ioapic.attach(mmio)
    ports = [p for p in range(0x1000) if p in pio._ports]
    rng = random.Random(1234)
    for _ in range(30000):
        size = rng.choice((1, 1, 1, 2, 4))
        if rng.random() < 0.8:
            port = rng.choice(ports)
            if rng.random() < 0.6:
                pio.write(port, size, rng.getrandbits(32))
            else:
                pio.read(port, size)
        else:
            addr = 0xFEC0_0000 + rng.choice((0, 0x10, 0x40, 0xF0, 0x100, 0x108, 0x120, rng.randrange(0x400)))
            size = rng.choice((1, 2, 4, 8))
            if rng.random() < 0.6:
                mmio.write(addr, size, rng.getrandbits(64))
            else:
                mmio.read(addr, size)
        if rng.random() < 0.01:
            pic.set_irq(rng.randrange(16), rng.random() < 0.5)
            pic.has_interrupt() and pic.acknowledge()
            ioapic.set_irq(rng.randrange(24), rng.random() < 0.5)
            ioapic.eoi(rng.randrange(256))
            uart.receive(bytes(rng.getrandbits(8) for _ in range(5)))
            kbd.press_key(b"\x1c")
            kbd.mouse_event(rng.randrange(-600, 600), rng.randrange(-600, 600), rng.randrange(8), rng.randrange(-9, 9))
