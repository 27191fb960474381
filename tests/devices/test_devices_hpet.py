"""HPET: capabilities matching the ACPI table, the 100 MHz counter, one-shot, periodic, level mode, routing."""
from __future__ import annotations

import struct
import time

import pytest

from core.boot.acpi import build_hpet
from core.bus import MmioBus
from core.devices.hpet import Hpet
from core.timers import TimerQueue

BASE = 0xFED0_0000
T0_CFG, T0_CMP, T1_CFG, T1_CMP = BASE + 0x100, BASE + 0x108, BASE + 0x120, BASE + 0x128


class FakeSink:
    def __init__(self) -> None:
        self.levels: dict[int, bool] = {}
        self.rises: dict[int, int] = {}

    def set_irq(self, gsi: int, level: bool) -> None:
        if level and not self.levels.get(gsi):
            self.rises[gsi] = self.rises.get(gsi, 0) + 1
        self.levels[gsi] = level


@pytest.fixture
def timers():
    q = TimerQueue()
    yield q
    q.stop()


def make(timers: TimerQueue, **kw) -> tuple[Hpet, MmioBus, FakeSink]:
    sink = FakeSink()
    hpet = Hpet(timers, sink, **kw)
    bus = MmioBus()
    hpet.attach(bus)
    return hpet, bus, sink


def test_capabilities_match_acpi_table(timers: TimerQueue) -> None:
    _, bus, _ = make(timers)
    block_id = struct.unpack_from("<I", build_hpet(), 36)[0]
    assert bus.read(BASE, 4) == block_id
    assert bus.read(BASE + 4, 4) == 10_000_000          # femtoseconds per tick
    assert bus.read(BASE, 8) >> 32 == 10_000_000
    cfg = bus.read(T0_CFG, 8)
    assert cfg & 0x30 == 0x30                           # periodic capable, 64-bit
    assert cfg >> 32 == 0x00F0_0000


def test_counter_runs_at_100mhz_only_when_enabled(timers: TimerQueue) -> None:
    clock = [5_000_000_000]
    _, bus, _ = make(timers, clock=lambda: clock[0])
    bus.write(BASE + 0xF0, 8, 1000)                     # halted: writable
    clock[0] += 1_000_000
    assert bus.read(BASE + 0xF0, 8) == 1000
    bus.write(BASE + 0x10, 4, 1)
    clock[0] += 1_000_000                               # 1 ms = 100,000 ticks
    assert bus.read(BASE + 0xF0, 4) == 101_000
    bus.write(BASE + 0xF0, 4, 0)                        # ignored while running
    bus.write(BASE + 0x10, 4, 0)
    clock[0] += 1_000_000
    assert bus.read(BASE + 0xF0, 8) == 101_000


def test_counter_rate_against_host_clock(timers: TimerQueue) -> None:
    _, bus, _ = make(timers)
    bus.write(BASE + 0x10, 4, 1)
    t0, c0 = time.monotonic_ns(), bus.read(BASE + 0xF0, 8)
    time.sleep(0.1)
    t1, c1 = time.monotonic_ns(), bus.read(BASE + 0xF0, 8)
    assert abs((c1 - c0) - (t1 - t0) / 10) < 0.01 * (c1 - c0)


def test_one_shot_legacy_irq0(timers: TimerQueue) -> None:
    """Linux's hpet_clkevt_set_next_event on timer 0 in legacy replacement mode (32-bit accesses)."""
    _, bus, sink = make(timers)
    bus.write(BASE + 0x10, 4, 0x3)                      # enable + legacy replacement
    bus.write(T0_CFG, 4, 0x4 | 0x100)                   # interrupt enable, 32-bit mode, edge
    cnt = bus.read(BASE + 0xF0, 4) + 200_000            # 2 ms
    bus.write(T0_CMP, 4, cnt & 0xFFFF_FFFF)
    time.sleep(0.05)
    assert sink.rises == {0: 1}
    assert not sink.levels[0]


def test_periodic_linux_sequence(timers: TimerQueue) -> None:
    """hpet_set_periodic: cfg with SETVAL, comparator = now + delta, then the period (delta)."""
    _, bus, sink = make(timers)
    bus.write(BASE + 0x10, 4, 0x3)
    delta = 1_000_000                                   # 10 ms
    bus.write(T0_CFG, 4, 0x4 | 0x8 | 0x40 | 0x100)
    bus.write(T0_CMP, 4, (bus.read(BASE + 0xF0, 4) + delta) & 0xFFFF_FFFF)
    bus.write(T0_CMP, 4, delta)
    assert not bus.read(T0_CFG, 4) & 0x40               # SETVAL clears itself
    time.sleep(0.3)
    bus.write(T0_CFG, 4, 0)
    assert 25 <= sink.rises.get(0, 0) <= 31, sink.rises


def test_level_mode_status_and_routing(timers: TimerQueue) -> None:
    _, bus, sink = make(timers)
    bus.write(BASE + 0x10, 4, 0x1)                      # no legacy replacement: route by Tn_INT_ROUTE_CNF
    bus.write(T1_CFG, 4, 0x2 | 0x4 | (21 << 9))         # level, enabled, I/O APIC input 21
    bus.write(T1_CMP, 8, bus.read(BASE + 0xF0, 8) + 100_000)
    time.sleep(0.03)
    assert sink.levels.get(21) and bus.read(BASE + 0x20, 4) == 0x2
    bus.write(BASE + 0x20, 4, 0x2)                      # write 1 to clear
    assert not sink.levels[21] and bus.read(BASE + 0x20, 4) == 0


def test_passed_comparator_waits_for_wrap(timers: TimerQueue) -> None:
    hpet, bus, sink = make(timers)
    bus.write(BASE + 0x10, 4, 0x3)
    bus.write(T0_CFG, 4, 0x4)                           # 64-bit one-shot
    bus.write(T0_CMP, 8, max(0, hpet.counter() - 10))   # already behind the counter
    time.sleep(0.02)
    assert sink.rises == {}


def test_reset(timers: TimerQueue) -> None:
    hpet, bus, _ = make(timers)
    bus.write(BASE + 0x10, 4, 0x3)
    bus.write(T0_CFG, 4, 0x4)
    hpet.reset()
    assert bus.read(BASE + 0x10, 4) == 0 and bus.read(T0_CFG, 4) & 0x4 == 0
    assert bus.read(T0_CMP, 8) == (1 << 64) - 1
