"""8254 PIT: counting derived from time, latch and read-back, modes, BCD, gate and OUT2 in port 0x61, IRQ0."""
from __future__ import annotations

import time

import pytest

from core.bus import PortIoBus
from core.devices.pit import PIT_HZ, Pit8254, ticks_to_ns
from core.irq import IrqLine
from core.timers import TimerQueue


class FakeSink:
    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []

    def set_irq(self, gsi: int, level: bool) -> None:
        self.calls.append((gsi, level))

    def rising_edges(self) -> int:
        return sum(1 for _, level in self.calls if level)


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        return self.ns

    def advance_ticks(self, ticks: int) -> None:
        self.ns += ticks_to_ns(ticks)


@pytest.fixture
def timers():
    q = TimerQueue()
    yield q
    q.stop()


def make(timers: TimerQueue, clock: Clock | None = None) -> tuple[Pit8254, PortIoBus, FakeSink]:
    sink = FakeSink()
    pit = Pit8254(timers, IrqLine(sink, 0), clock=clock) if clock else Pit8254(timers, IrqLine(sink, 0))
    bus = PortIoBus()
    pit.attach(bus)
    return pit, bus, sink


def write_count(bus: PortIoBus, port: int, n: int) -> None:
    bus.write(port, 1, n & 0xFF)
    bus.write(port, 1, n >> 8)


def latch_read(bus: PortIoBus, counter: int) -> int:
    bus.write(0x43, 1, counter << 6)             # counter latch command
    port = 0x40 + counter
    return bus.read(port, 1) | bus.read(port, 1) << 8


def test_mode2_latch_readback(timers: TimerQueue) -> None:
    clock = Clock()
    _, bus, _ = make(timers, clock)
    bus.write(0x43, 1, 0x34)                     # counter 0, LSB/MSB, mode 2, binary
    write_count(bus, 0x40, 1000)
    clock.advance_ticks(300)
    assert latch_read(bus, 0) == 700
    clock.advance_ticks(1000)                    # one full period later: reloaded, same phase
    assert latch_read(bus, 0) == 700
    clock.advance_ticks(699)
    assert latch_read(bus, 0) == 1               # mode 2 never reads 0: 1 then reload to N


def test_latched_value_is_frozen_until_read(timers: TimerQueue) -> None:
    clock = Clock()
    _, bus, _ = make(timers, clock)
    bus.write(0x43, 1, 0x34)
    write_count(bus, 0x40, 5000)
    clock.advance_ticks(100)
    bus.write(0x43, 1, 0x00)
    clock.advance_ticks(1000)
    bus.write(0x43, 1, 0x00)                     # a second latch before reading is ignored
    assert bus.read(0x40, 1) | bus.read(0x40, 1) << 8 == 4900


def test_readback_status_and_count(timers: TimerQueue) -> None:
    clock = Clock()
    _, bus, _ = make(timers, clock)
    bus.write(0x43, 1, 0x30)                     # counter 0, mode 0
    bus.write(0x43, 1, 0xE2)                     # read-back: status of counter 0
    assert bus.read(0x40, 1) == 0x40 | 0x30      # OUT low (mode 0), NULL COUNT, rw=3 mode 0
    write_count(bus, 0x40, 200)
    clock.advance_ticks(50)
    bus.write(0x43, 1, 0xC2)                     # read-back: count and status
    assert bus.read(0x40, 1) == 0x30             # count loaded: NULL COUNT clear, OUT still low
    assert bus.read(0x40, 1) | bus.read(0x40, 1) << 8 == 150
    clock.advance_ticks(150)
    bus.write(0x43, 1, 0xE2)
    assert bus.read(0x40, 1) & 0x80              # terminal count reached: OUT high
    bus.write(0x43, 1, 0xD2)                     # count only
    assert bus.read(0x40, 1) | bus.read(0x40, 1) << 8 == 0


def test_lsb_only_msb_only_and_unlatched_reads(timers: TimerQueue) -> None:
    clock = Clock()
    _, bus, _ = make(timers, clock)
    bus.write(0x43, 1, 0x54)                     # counter 1, LSB only, mode 2
    bus.write(0x41, 1, 0x80)
    clock.advance_ticks(0x10)
    assert bus.read(0x41, 1) == 0x70
    bus.write(0x43, 1, 0x64)                     # counter 1, MSB only, mode 2
    bus.write(0x41, 1, 0x02)                     # count 0x200
    clock.advance_ticks(0x100)
    assert bus.read(0x41, 1) == 0x01
    bus.write(0x43, 1, 0x74)
    write_count(bus, 0x41, 0x1234)
    clock.advance_ticks(0x34)
    assert bus.read(0x41, 1) == 0x00 and bus.read(0x41, 1) == 0x12   # live LSB then MSB


def test_bcd_counting(timers: TimerQueue) -> None:
    clock = Clock()
    _, bus, _ = make(timers, clock)
    bus.write(0x43, 1, 0x31)                     # counter 0, mode 0, BCD
    write_count(bus, 0x40, 0x1000)               # 1000 decimal
    clock.advance_ticks(1)
    assert latch_read(bus, 0) == 0x0999
    clock.advance_ticks(999 + 1)                 # wraps through 0 to 9999 in BCD
    assert latch_read(bus, 0) == 0x9999


def test_mode3_square_wave(timers: TimerQueue) -> None:
    clock = Clock()
    pit, bus, _ = make(timers, clock)
    bus.write(0x43, 1, 0x76)                     # counter 1, mode 3
    write_count(bus, 0x41, 10)
    assert pit.out(1) and latch_read(bus, 1) == 10
    clock.advance_ticks(2)
    assert latch_read(bus, 1) == 6               # counts by two
    clock.advance_ticks(3)
    assert not pit.out(1)                        # second half of the period
    clock.advance_ticks(5)
    assert pit.out(1)


def test_mode2_new_count_takes_effect_at_period_end(timers: TimerQueue) -> None:
    clock = Clock()
    _, bus, _ = make(timers, clock)
    bus.write(0x43, 1, 0x74)
    write_count(bus, 0x41, 1000)
    clock.advance_ticks(300)
    write_count(bus, 0x41, 500)
    bus.write(0x43, 1, 0xC4)                     # read-back count and status of counter 1
    assert bus.read(0x41, 1) & 0x40              # NULL COUNT until the new count is loaded
    assert bus.read(0x41, 1) | bus.read(0x41, 1) << 8 == 700
    clock.advance_ticks(800)                     # 100 ticks into the first 500-tick period
    assert latch_read(bus, 1) == 400


def test_counter2_gate_and_out_via_port61(timers: TimerQueue) -> None:
    """What Linux's pit_calibrate_tsc does: gate high, mode 0 on counter 2, poll port 0x61 bit 5."""
    clock = Clock()
    _, bus, _ = make(timers, clock)
    bus.write(0x61, 1, (bus.read(0x61, 1) & ~0x02) | 0x01)
    bus.write(0x43, 1, 0xB0)
    latch = PIT_HZ // 20                         # 50 ms
    write_count(bus, 0x42, latch)
    assert not bus.read(0x61, 1) & 0x20
    clock.advance_ticks(latch - 1)
    assert not bus.read(0x61, 1) & 0x20
    clock.advance_ticks(1)
    assert bus.read(0x61, 1) & 0x20
    assert bus.read(0x61, 1) & 0x0F == 0x01


def test_gate_low_pauses_mode0(timers: TimerQueue) -> None:
    clock = Clock()
    _, bus, _ = make(timers, clock)
    bus.write(0x61, 1, 0x01)
    bus.write(0x43, 1, 0xB0)
    write_count(bus, 0x42, 1000)
    clock.advance_ticks(400)
    bus.write(0x61, 1, 0x00)                     # gate low: counting stops
    clock.advance_ticks(5000)
    assert latch_read(bus, 2) == 600
    bus.write(0x61, 1, 0x01)
    clock.advance_ticks(100)
    assert latch_read(bus, 2) == 500


def test_mode1_gate_trigger(timers: TimerQueue) -> None:
    clock = Clock()
    pit, bus, _ = make(timers, clock)
    bus.write(0x43, 1, 0xB2)                     # counter 2, mode 1
    write_count(bus, 0x42, 100)
    assert pit.out(2)                            # waits for the trigger
    bus.write(0x61, 1, 0x01)                     # rising gate edge triggers the one-shot
    clock.advance_ticks(10)
    assert not pit.out(2) and latch_read(bus, 2) == 90
    clock.advance_ticks(90)
    assert pit.out(2)


def test_refresh_bit_toggles(timers: TimerQueue) -> None:
    _, bus, _ = make(timers)
    seen = {bus.read(0x61, 1) & 0x10 for _ in range(2000)}
    assert seen == {0, 0x10}


def test_mode2_irq0_rate(timers: TimerQueue) -> None:
    pit, bus, sink = make(timers)
    bus.write(0x43, 1, 0x34)
    started = time.monotonic()
    write_count(bus, 0x40, PIT_HZ // 100)        # 100 Hz, as a HZ=100 kernel programs it
    time.sleep(0.3)
    n = sink.rising_edges()
    periods = (time.monotonic() - started) * 100    # the window actually slept, which a loaded host stretches
    assert periods - 4 <= n <= periods + 1, (n, periods)
    assert all(gsi == 0 for gsi, _ in sink.calls)
    bus.write(0x43, 1, 0x30)                     # reprogramming to mode 0 without a count stops the ticks
    time.sleep(0.05)
    n = sink.rising_edges()
    time.sleep(0.05)
    assert sink.rising_edges() == n


def test_mode4_one_shot_irq(timers: TimerQueue) -> None:
    """Linux's PIT clockevent in one-shot mode: control 0x38, then the delta."""
    pit, bus, sink = make(timers)
    bus.write(0x43, 1, 0x38)
    write_count(bus, 0x40, PIT_HZ // 1000)       # 1 ms
    end = time.monotonic() + 5
    while not sink.rising_edges() and time.monotonic() < end:
        time.sleep(0.001)
    time.sleep(0.05)                             # and no second edge: it is a one-shot
    assert sink.rising_edges() == 1
    assert pit.irqs_raised == 1


def test_tiny_period_is_rate_limited(timers: TimerQueue) -> None:
    _, bus, sink = make(timers)
    bus.write(0x43, 1, 0x34)
    write_count(bus, 0x40, 1)
    time.sleep(0.1)
    bus.write(0x43, 1, 0x30)
    assert sink.rising_edges() <= 2100           # at most one per 50 us
