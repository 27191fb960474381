"""The High Precision Event Timer (IA-PC HPET Specification 1.0a, section 2 "Register Interface").

One timer block at platform.HPET_BASE, matching the ACPI HPET table (core/boot/acpi.py): revision 1, three
comparators, a 64-bit main counter at 100 MHz (period 10 ns = 10,000,000 fs), legacy replacement capable,
vendor 0x8086. Registers: GCAP_ID (0x000), GEN_CONF (0x010: ENABLE_CNF, LEG_RT_CNF), GINTR_STA (0x020, write 1 to
clear), MAIN_COUNTER_VAL (0x0F0) and, per timer n at 0x100 + 0x20 n, the configuration and capability register,
the comparator and the FSB route register. Accesses of 32 or 64 bits at any register, and narrower ones, work.

The main counter is derived from host monotonic time while ENABLE_CNF is set and frozen while it is clear, so it
cannot drift. A comparator matches when the counter equals it (all 64 bits, or the low 32 bits in 32-bit mode),
as the specification says; a comparator already passed fires only after the counter wraps, and Linux's
hpet_clkevt_set_next_event checks for exactly that. Periodic timers add their period to the comparator at each
match (Tn_VAL_SET_CNF sets the comparator itself, the following write sets the period, as AMD's and Intel's
parts behave and Linux's hpet_set_periodic expects); missed periods are coalesced into one interrupt. Interrupts are
edge (a pulse) or level (the GINTR_STA bit, asserted until the guest clears it). Timers arm a host Timer only while
their interrupt is enabled.

Routing: with LEG_RT_CNF timer 0 replaces the PIT on ISA IRQ 0 and timer 1 the RTC on IRQ 8; otherwise each timer
goes to the I/O APIC input in Tn_INT_ROUTE_CNF, offered among GSIs 20-23 (inputs no ISA or PCI device uses here).
IRQ numbers are those of the machine's IrqSink (ISA IRQ n = GSI n, except the PIT's IRQ 0 that the sink routes to
I/O APIC pin 2).
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from core.bus import MmioBus
from core.irq import IrqLine, IrqSink
from core.platform import HPET_BASE
from core.timers import TimerQueue, now_ns

MMIO_SIZE = 0x400
NUM_TIMERS = 3
PERIOD_FS = 10_000_000                   # 10 ns: a 100 MHz counter
NS_PER_TICK = PERIOD_FS // 1_000_000
GCAP_ID = (PERIOD_FS << 32) | (0x8086 << 16) | (1 << 15) | (1 << 13) | ((NUM_TIMERS - 1) << 8) | 0x01
ROUTE_CAP = 0x00F0_0000                  # I/O APIC inputs 20-23
LEGACY_IRQS = (0, 8)
MIN_IRQ_INTERVAL_NS = 50_000

REG_GCAP, REG_CONF, REG_ISR, REG_COUNTER = 0x000, 0x010, 0x020, 0x0F0
CONF_ENABLE, CONF_LEGACY = 0x1, 0x2

# Timer configuration bits.
TN_LEVEL, TN_INT_ENB, TN_PERIODIC, TN_PER_CAP, TN_SIZE_CAP, TN_VAL_SET, TN_32BIT = 2, 4, 8, 16, 32, 64, 256
TN_ROUTE_SHIFT, TN_ROUTE_MASK = 9, 0x1F << 9
TN_WRITABLE = TN_LEVEL | TN_INT_ENB | TN_PERIODIC | TN_VAL_SET | TN_32BIT | TN_ROUTE_MASK
M64, M32 = (1 << 64) - 1, (1 << 32) - 1


class _Comparator:
    def __init__(self, index: int) -> None:
        self.index = index
        self.config = TN_PER_CAP | TN_SIZE_CAP | (ROUTE_CAP << 32)
        self.comparator = M64
        self.period = 0
        self.fsb = 0
        self.timer = None
        self.next_fire_ns: int | None = None


class Hpet:
    """The HPET block. `sink` receives the interrupts (the machine's IrqSink, e.g. the accelerator)."""

    def __init__(self, timers: TimerQueue, sink: IrqSink, base: int = HPET_BASE, *,
                 clock: Callable[[], int] = now_ns) -> None:
        self.base = base
        self._clock = clock
        self._sink = sink
        self._lines: dict[int, IrqLine] = {}
        self._lock = threading.Lock()
        self.comparators = [_Comparator(i) for i in range(NUM_TIMERS)]
        for c in self.comparators:
            c.timer = timers.timer(lambda c=c: self._on_timer(c))
        self._power_on()

    def _power_on(self) -> None:
        self.conf = 0
        self.isr = 0
        self._frozen_counter = 0
        self._base_ns = 0
        self._base_counter = 0
        for c in self.comparators:
            c.config = TN_PER_CAP | TN_SIZE_CAP | (ROUTE_CAP << 32)
            c.comparator = M64
            c.period = 0
            c.fsb = 0
            c.timer.cancel()
            c.next_fire_ns = None

    def attach(self, mmio: MmioBus) -> None:
        mmio.register(self.base, MMIO_SIZE, self)

    def reset(self) -> None:
        with self._lock:
            for line in self._lines.values():
                line.set(False)
            self._power_on()

    # -- main counter ---------------------------------------------------------------------------------------------

    def _counter(self, now: int) -> int:
        if not self.conf & CONF_ENABLE:
            return self._frozen_counter
        return (self._base_counter + (now - self._base_ns) // NS_PER_TICK) & M64

    def _counter_ns(self, value: int) -> int:
        """The host time at which the running counter reaches `value` (taken modulo 2^64 forward)."""
        return self._base_ns + ((value - self._base_counter) & M64) * NS_PER_TICK

    # -- registers -----------------------------------------------------------------------------------------------

    def _read64(self, offset: int, now: int) -> int:
        if offset == REG_GCAP:
            return GCAP_ID
        if offset == REG_CONF:
            return self.conf
        if offset == REG_ISR:
            return self.isr
        if offset == REG_COUNTER:
            return self._counter(now)
        n, reg = divmod(offset - 0x100, 0x20)
        if offset >= 0x100 and n < NUM_TIMERS:
            c = self.comparators[n]
            if reg == 0x00:
                return c.config
            if reg == 0x08:
                return c.comparator & (M32 if c.config & TN_32BIT else M64)
            if reg == 0x10:
                return c.fsb
        return 0

    def _write64(self, offset: int, value: int, mask: int, now: int) -> None:
        def merged(old: int) -> int:
            return (old & ~mask) | (value & mask)

        if offset == REG_CONF:
            self._write_conf(merged(self.conf) & (CONF_ENABLE | CONF_LEGACY), now)
        elif offset == REG_ISR:
            cleared = value & mask & ((1 << NUM_TIMERS) - 1)
            self.isr &= ~cleared
            for c in self.comparators:
                if cleared >> c.index & 1:
                    self._set_level(c, False)
        elif offset == REG_COUNTER:
            if not self.conf & CONF_ENABLE:         # writable only while halted (spec 2.3.7)
                self._frozen_counter = merged(self._frozen_counter) & M64
        else:
            n, reg = divmod(offset - 0x100, 0x20)
            if offset < 0x100 or n >= NUM_TIMERS:
                return
            c = self.comparators[n]
            if reg == 0x00:
                self._write_timer_config(c, merged(c.config), now)
            elif reg == 0x08:
                self._write_comparator(c, value, mask, now)
            elif reg == 0x10:
                c.fsb = merged(c.fsb)
            self._schedule(c, now)

    def _write_conf(self, conf: int, now: int) -> None:
        old = self.conf
        if (old ^ conf) & CONF_LEGACY:
            for c in self.comparators[:2]:
                self._set_level(c, False)           # the line changes: deassert the old one
        if not old & CONF_ENABLE and conf & CONF_ENABLE:
            self._base_ns, self._base_counter = now, self._frozen_counter
        elif old & CONF_ENABLE and not conf & CONF_ENABLE:
            self._frozen_counter = self._counter(now)
        self.conf = conf
        for c in self.comparators:
            self._schedule(c, now)

    def _write_timer_config(self, c: _Comparator, value: int, now: int) -> None:
        writable = TN_WRITABLE if c.config & TN_PER_CAP else TN_WRITABLE & ~TN_PERIODIC
        if (c.config ^ value) & (TN_ROUTE_MASK | TN_LEVEL):
            self._set_level(c, False)
        c.config = (c.config & ~TN_WRITABLE) | (value & writable)
        if not c.config & TN_LEVEL and self.isr >> c.index & 1:
            self.isr &= ~(1 << c.index)
        if c.config & TN_32BIT:
            c.comparator &= M32

    def _write_comparator(self, c: _Comparator, value: int, mask: int, now: int) -> None:
        if c.config & TN_32BIT:
            mask &= M32
        periodic = bool(c.config & TN_PERIODIC)
        if not periodic or c.config & TN_VAL_SET:
            c.comparator = (c.comparator & ~mask) | (value & mask)
        if periodic:
            c.period = (c.period & ~mask) | (value & mask)
        c.config &= ~TN_VAL_SET

    # -- interrupts ---------------------------------------------------------------------------------------------

    def _irq_of(self, c: _Comparator) -> int | None:
        if self.conf & CONF_LEGACY and c.index < 2:
            return LEGACY_IRQS[c.index]
        route = (c.config & TN_ROUTE_MASK) >> TN_ROUTE_SHIFT
        return route if ROUTE_CAP >> route & 1 else None

    def _line(self, gsi: int) -> IrqLine:
        line = self._lines.get(gsi)
        if line is None:
            line = self._lines[gsi] = IrqLine(self._sink, gsi)
        return line

    def _set_level(self, c: _Comparator, level: bool) -> None:
        gsi = self._irq_of(c)
        if gsi is not None:
            self._line(gsi).set(level)

    def _schedule(self, c: _Comparator, now: int) -> None:
        if not (self.conf & CONF_ENABLE and c.config & TN_INT_ENB):
            c.timer.cancel()
            c.next_fire_ns = None
            return
        counter = self._counter(now)
        if c.config & TN_32BIT:
            delta = (c.comparator - counter) & M32
            target = counter + (delta or (1 << 32))
        else:
            target = c.comparator if c.comparator > counter else None
        if target is None:
            c.timer.cancel()
            c.next_fire_ns = None
            return
        c.next_fire_ns = self._counter_ns(target)
        c.timer.arm(c.next_fire_ns)

    def _on_timer(self, c: _Comparator) -> None:
        with self._lock:
            now = self._clock()
            if c.next_fire_ns is None or now < c.next_fire_ns:
                return
            self._fire(c)
            if c.config & TN_PERIODIC and c.period:
                counter = self._counter(now)
                width = M32 if c.config & TN_32BIT else M64
                # Advance the comparator past the present, coalescing periods the host missed.
                behind = (counter - c.comparator) & width
                steps = behind // c.period + 1 if behind < (width >> 1) else 1
                c.comparator = (c.comparator + steps * c.period) & width
                self._schedule(c, now)
                if c.next_fire_ns is not None and c.next_fire_ns < now + MIN_IRQ_INTERVAL_NS:
                    c.next_fire_ns = now + MIN_IRQ_INTERVAL_NS
                    c.timer.arm(c.next_fire_ns)
            else:
                c.next_fire_ns = None

    def _fire(self, c: _Comparator) -> None:
        gsi = self._irq_of(c)
        if c.config & TN_LEVEL:
            self.isr |= 1 << c.index
            if gsi is not None:
                self._line(gsi).set(True)
        elif gsi is not None:
            self._line(gsi).pulse()

    # -- MMIO -----------------------------------------------------------------------------------------------------

    def mmio_read(self, addr: int, size: int) -> int:
        offset = addr - self.base
        with self._lock:
            value = self._read64(offset & ~7, self._clock())
        shift = 8 * (offset & 7)
        return (value >> shift) & ((1 << (8 * size)) - 1)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        offset = addr - self.base
        shift = 8 * (offset & 7)
        mask = (((1 << (8 * size)) - 1) << shift) & M64
        with self._lock:
            self._write64(offset & ~7, (value << shift) & mask, mask, self._clock())

    # -- inspection -----------------------------------------------------------------------------------------------

    def counter(self) -> int:
        with self._lock:
            return self._counter(self._clock())
