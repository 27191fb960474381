"""The 8254 programmable interval timer and the PC's port 0x61 (Intel 8254 datasheet, 231164; IBM PC/AT
technical reference for port 0x61 "system control port B").

Three counters clocked at 1.193182 MHz: counter 0 drives IRQ0, counter 1 is the old DRAM-refresh timer (no output
wired), counter 2 feeds the speaker and its gate and OUT are visible in port 0x61 — Linux calibrates the TSC by
running counter 2 in mode 0 and polling bit 5 there. Modelled: modes 0-5, binary and BCD counting, LSB / MSB /
LSB-then-MSB access with independent read and write flip-flops, the counter latch command, the read-back command
(count and status), NULL COUNT, and the gate rules of each mode (level-sensitive pause in modes 0/2/3/4, rising
edge trigger in modes 1/5 and reload in modes 2/3).

No counter is ever decremented in software: each keeps the host-monotonic time at which its count was loaded and
every read derives the counting element from the elapsed time at exactly 1.193182 MHz, so the timer cannot drift.
Counter 0 arms a Timer at the next rising edge of OUT and pulses IRQ0 there (IRQ0 is edge-triggered on a PC); if
the host falls behind, missed periods are coalesced into one interrupt, as real hardware does when the CPU does not
acknowledge in time.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from core.bus import PortIoBus
from core.irq import IrqLine
from core.platform import PIT_PORT, PORT_61
from core.state import fields as f
from core.timers import TimerQueue, now_ns

PIT_HZ = 1_193_182
NS_PER_S = 1_000_000_000
# The fastest IRQ0 rate the model delivers: a guest programming a count of 1 in mode 2 must not make the timer
# thread spin at 1.19 MHz. 20 kHz is far above any real kernel's tick.
MIN_IRQ_INTERVAL_NS = 50_000
REFRESH_HALF_PERIOD_NS = 15_085   # port 0x61 bit 4 toggles with each DRAM refresh request (15.085 us)


def ticks_to_ns(ticks: int) -> int:
    return -(-ticks * NS_PER_S // PIT_HZ)


def ns_to_ticks(ns: int) -> int:
    return ns * PIT_HZ // NS_PER_S


def _to_bcd(value: int) -> int:
    return int(f"{value % 10000:04d}", 16)


def _from_bcd(value: int) -> int:
    digits = [(value >> shift) & 0xF for shift in (12, 8, 4, 0)]
    # Digits above 9 are not valid BCD; the 8254 counts them anyway, but clamping keeps the model well-defined.
    return sum(min(d, 9) * m for d, m in zip(digits, (1000, 100, 10, 1), strict=True))


class _Counter:
    """One 8254 counter. All methods take `now` (host monotonic ns) and run under the PIT's lock."""

    def __init__(self, index: int, gate: bool) -> None:
        self.index = index
        self.gate = gate
        self.control = 0x36            # the 8254 powers up undefined; until programmed, act as LSB/MSB mode 3
        self.rw = 3
        self.mode = 3
        self.bcd = False
        self._power_on()

    def _power_on(self) -> None:
        self.n = 0x10000               # the count in use (1..65536 binary, 1..10000 BCD)
        self.loaded = False            # a count has been written since the last control word
        self.running = False           # the counting element is counting
        self.triggered = False         # modes 1/5: a gate trigger started the count
        self.start_ns = 0              # when elapsed tick 0 was
        self.frozen_t = 0              # elapsed ticks while not running
        self.pending_n: int | None = None     # modes 2/3: new count taking effect at the end of the period
        self.pending_at_t = 0
        self.next_trigger_n: int | None = None  # modes 1/5: count written while counting, used at the next trigger
        self.null_count = True
        self.write_msb_next = False
        self.write_lsb = 0
        self.read_msb_next = False
        self.latch_bytes: list[int] = []
        self.status_latch: int | None = None

    # -- timing ----------------------------------------------------------------------------------------------------

    @property
    def modulus(self) -> int:
        return 10000 if self.bcd else 0x10000

    @property
    def effective_mode(self) -> int:
        return self.mode & 3 if self.mode > 5 else self.mode   # modes 6 and 7 are modes 2 and 3

    def _initial_out(self) -> bool:
        return self.effective_mode != 0

    def elapsed(self, now: int) -> int:
        self.sync(now)
        return ns_to_ticks(now - self.start_ns) if self.running else self.frozen_t

    def sync(self, now: int) -> None:
        """Apply a count written during modes 2/3 once the period it was written in has ended."""
        if self.pending_n is None or not self.running:
            return
        t = ns_to_ticks(now - self.start_ns)
        if t >= self.pending_at_t:
            self.start_ns += ticks_to_ns(self.pending_at_t)
            self.n = self.pending_n
            self.pending_n = None
            self.null_count = False

    def _period(self) -> int:
        return max(self.n, 2)          # a count of 1 is illegal in modes 2 and 3; treat it as 2

    def count(self, now: int) -> int:
        """The counting element as the guest would read it (binary value, before BCD encoding)."""
        if not self.loaded:
            return 0
        mode = self.effective_mode
        t = self.elapsed(now)
        n = self.n
        if mode in (1, 5) and not self.triggered:
            return n % self.modulus
        if mode == 2:
            period = self._period()
            return period - t % period
        if mode == 3:
            period = self._period()
            phase = t % period
            high = (period + 1) // 2
            if period % 2 == 0:
                return period - 2 * (phase % (period // 2))
            return (period - 1) - 2 * (phase if phase < high else phase - high)
        return (n - t) % self.modulus

    def out(self, now: int) -> bool:
        mode = self.effective_mode
        if not self.loaded:
            return self._initial_out()
        if mode in (1, 5) and not self.triggered:
            return True
        if mode in (2, 3) and not self.running:
            return True                # gate low forces OUT high
        t = self.elapsed(now)
        if mode in (0, 1):
            return t >= self.n
        if mode == 2:
            period = self._period()
            return t % period != period - 1
        if mode == 3:
            period = self._period()
            return t % period < (period + 1) // 2
        return t != self.n             # modes 4 and 5: one clock low at terminal count

    def next_rising_edge_t(self, now: int) -> int | None:
        """The elapsed-tick index of OUT's next rising edge after `now`, or None."""
        if not self.loaded or not self.running:
            return None
        mode = self.effective_mode
        if mode in (1, 5) and not self.triggered:
            return None
        t = self.elapsed(now)
        if mode in (0, 1):
            return self.n if t < self.n else None
        if mode in (4, 5):
            return self.n + 1 if t < self.n + 1 else None
        period = self._period()
        edge = (t // period + 1) * period
        if self.pending_n is not None and edge >= self.pending_at_t:
            edge = self.pending_at_t
        return edge

    # -- programming ---------------------------------------------------------------------------------------------

    def write_control(self, value: int, now: int) -> None:
        self.control = value
        self.rw = (value >> 4) & 3
        self.mode = (value >> 1) & 7
        self.bcd = bool(value & 1)
        self._power_on()

    def _start(self, now: int) -> None:
        self.start_ns = now
        self.frozen_t = 0
        self.running = True

    def _load(self, n: int, now: int) -> None:
        mode = self.effective_mode
        first = not self.loaded
        self.loaded = True
        if mode in (2, 3) and not first and self.running:
            t = self.elapsed(now)
            self.pending_n = n
            self.pending_at_t = (t // self._period() + 1) * self._period()
            return
        if mode in (1, 5):
            # Waits for a gate trigger; NULL COUNT stays set until then.
            if self.triggered:
                self.next_trigger_n = n
            else:
                self.n = n
            return
        self.n = n
        self.pending_n = None
        self.null_count = False
        if self.gate:
            self._start(now)
        else:
            self.running = False
            self.frozen_t = 0

    def write_data(self, value: int, now: int) -> None:
        if self.rw == 0:
            return
        if self.rw == 1:
            raw = value
        elif self.rw == 2:
            raw = value << 8
        elif not self.write_msb_next:
            self.write_lsb = value
            self.write_msb_next = True
            if self.effective_mode == 0:
                # Mode 0: the first byte of a two-byte count stops counting and drops OUT.
                self.loaded = False
                self.running = False
            return
        else:
            raw = self.write_lsb | (value << 8)
            self.write_msb_next = False
        n = _from_bcd(raw) if self.bcd else raw
        if n == 0:
            n = self.modulus
        self.null_count = True
        self._load(n, now)

    def set_gate(self, level: bool, now: int) -> None:
        if level == self.gate:
            return
        mode = self.effective_mode
        if level:
            if mode in (1, 5) and self.loaded:
                if self.next_trigger_n is not None:
                    self.n, self.next_trigger_n = self.next_trigger_n, None
                self.triggered = True
                self.null_count = False
                self._start(now)
            elif mode in (2, 3) and self.loaded:
                self.sync(now)
                if self.pending_n is not None:
                    self.n = self.pending_n
                    self.pending_n = None
                self.null_count = False
                self._start(now)
            elif mode in (0, 4) and self.loaded and not self.running:
                self.start_ns = now - ticks_to_ns(self.frozen_t)
                self.running = True
        elif mode in (0, 2, 3, 4) and self.running:
            self.frozen_t = self.elapsed(now)
            self.running = False
        self.gate = level

    # -- reading -------------------------------------------------------------------------------------------------

    def _encoded_count(self, now: int) -> int:
        value = self.count(now) % self.modulus
        return _to_bcd(value) if self.bcd else value

    def latch_count(self, now: int) -> None:
        if self.latch_bytes:
            return                     # a latched count not yet read is kept (datasheet, "Counter Latch")
        value = self._encoded_count(now)
        if self.rw == 1:
            self.latch_bytes = [value & 0xFF]
        elif self.rw == 2:
            self.latch_bytes = [value >> 8]
        else:
            self.latch_bytes = [value & 0xFF, value >> 8]

    def latch_status(self, now: int) -> None:
        if self.status_latch is not None:
            return
        self.status_latch = (self.out(now) << 7) | (self.null_count << 6) | (self.control & 0x3F)

    def read_data(self, now: int) -> int:
        if self.status_latch is not None:
            value = self.status_latch
            self.status_latch = None
            return value
        if self.latch_bytes:
            return self.latch_bytes.pop(0)
        value = self._encoded_count(now)
        if self.rw == 1:
            return value & 0xFF
        if self.rw == 2:
            return value >> 8
        if self.rw == 3:
            msb = self.read_msb_next
            self.read_msb_next = not msb
            return (value >> 8) if msb else (value & 0xFF)
        return 0


class Pit8254:
    """The 8254 at 0x40-0x43 with counter 0 on `irq`, plus port 0x61 (counter 2's gate and OUT)."""

    def __init__(self, timers: TimerQueue, irq: IrqLine, *, clock: Callable[[], int] = now_ns) -> None:
        self.irq = irq
        self._clock = clock
        self._lock = threading.Lock()
        self._timer = timers.timer(self._on_timer)
        self.irqs_raised = 0
        self._reset_state()

    def _reset_state(self) -> None:
        self.counters = [_Counter(0, gate=True), _Counter(1, gate=True), _Counter(2, gate=False)]
        self.port61 = 0
        self._next_edge_ns: int | None = None

    def attach(self, pio: PortIoBus) -> None:
        pio.register(PIT_PORT, 4, self)
        pio.register(PORT_61, 1, self)

    def reset(self) -> None:
        with self._lock:
            self._timer.cancel()
            self._reset_state()

    # -- port I/O ---------------------------------------------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        with self._lock:
            now = self._clock()
            if port == PORT_61:
                return self._read_port61(now)
            if PIT_PORT <= port < PIT_PORT + 3:
                return self.counters[port - PIT_PORT].read_data(now)
            return 0xFF                  # the control word register is write-only

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            now = self._clock()
            if port == PORT_61:
                # Bits 0-3 are read/write; bits 2 and 3 written as 1 would also clear the (never set) NMI causes.
                self.port61 = value & 0x0F
                self.counters[2].set_gate(bool(value & 1), now)
                return
            if PIT_PORT <= port < PIT_PORT + 3:
                counter = self.counters[port - PIT_PORT]
                counter.write_data(value, now)
                if counter.index == 0:
                    self._rearm(now)
                return
            self._write_control(value, now)

    def _write_control(self, value: int, now: int) -> None:
        select = value >> 6
        if select == 3:
            # Read-back command: bit 5 low latches counts, bit 4 low latches status, bits 1-3 pick counters.
            for i in range(3):
                if value & (2 << i):
                    if not value & 0x20:
                        self.counters[i].latch_count(now)
                    if not value & 0x10:
                        self.counters[i].latch_status(now)
            return
        counter = self.counters[select]
        if value & 0x30 == 0:
            counter.latch_count(now)
            return
        counter.write_control(value, now)
        if select == 0:
            self._rearm(now)

    def _read_port61(self, now: int) -> int:
        refresh = (now // REFRESH_HALF_PERIOD_NS) & 1
        out2 = self.counters[2].out(now)
        return self.port61 | (refresh << 4) | (out2 << 5)

    # -- counter 0 and IRQ0 -----------------------------------------------------------------------------------------

    def _rearm(self, now: int) -> None:
        c0 = self.counters[0]
        edge = c0.next_rising_edge_t(now)
        if edge is None:
            self._next_edge_ns = None
            self._timer.cancel()
            return
        self._next_edge_ns = c0.start_ns + ticks_to_ns(edge)
        self._timer.arm(self._next_edge_ns)

    def _on_timer(self) -> None:
        with self._lock:
            now = self._clock()
            c0 = self.counters[0]
            if self._next_edge_ns is None or now < self._next_edge_ns:
                return
            self.irq.pulse()
            self.irqs_raised += 1
            nxt = c0.next_rising_edge_t(now)     # after this call start_ns reflects any count switch
            if nxt is None:
                self._next_edge_ns = None
                return
            self._next_edge_ns = max(c0.start_ns + ticks_to_ns(nxt), now + MIN_IRQ_INTERVAL_NS)
            self._timer.arm(self._next_edge_ns)

    # -- machine state (docs/machine-state.md) ----------------------------------------------------------------------
    # Counter times (start_ns) are saved relative to the moment of saving; IRQ 0's next edge is derived again
    # from counter 0 when the state is loaded.

    COUNTER_STATE = {"gate": f.BOOL, "control": f.U8, "rw": f.u(2), "mode": f.u(3), "bcd": f.BOOL,
                     "n": f.Int(1, 0x10000), "loaded": f.BOOL, "running": f.BOOL, "triggered": f.BOOL,
                     "start_ns": f.MONO, "frozen_t": f.Int(0, 1 << 62), "pending_n": f.Optional(f.Int(1, 0x10000)),
                     "pending_at_t": f.Int(0, 1 << 62), "next_trigger_n": f.Optional(f.Int(1, 0x10000)),
                     "null_count": f.BOOL, "write_msb_next": f.BOOL, "write_lsb": f.U8, "read_msb_next": f.BOOL,
                     "latch_bytes": f.Ints(max_count=2, hi=0xFF), "status_latch": f.Optional(f.U8)}
    STATE = {"port61": f.u(4)}
    STATE_VERSION = 1

    def get_state(self) -> dict:
        with self._lock:
            now = self._clock()
            state = f.capture(self, self.STATE, now)
            state["counters"] = [f.capture(c, self.COUNTER_STATE, now) for c in self.counters]
            return state

    def set_state(self, state: dict) -> None:
        f.expect_record(state, "pit", (*self.STATE, "counters"))
        now = self._clock()
        counters = state["counters"]
        if not isinstance(counters, list) or len(counters) != 3:
            raise f.StateError("pit.counters: expected a list of the 3 counters")
        checked = [f.validate(c, self.COUNTER_STATE, f"pit.counters[{i}]", now) for i, c in enumerate(counters)]
        top = f.validate({k: v for k, v in state.items() if k != "counters"}, self.STATE, "pit", now)
        with self._lock:
            for counter, c in zip(self.counters, checked, strict=True):
                f.apply(counter, c, self.COUNTER_STATE, now)
            f.apply(self, top, self.STATE, now)
            self._rearm(now)             # IRQ 0's next edge follows from counter 0's state

    # -- inspection --------------------------------------------------------------------------------------------------

    def out(self, index: int) -> bool:
        with self._lock:
            return self.counters[index].out(self._clock())
