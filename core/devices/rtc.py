"""The MC146818A real-time clock and its CMOS RAM at ports 0x70/0x71 (Motorola MC146818A datasheet; the PC/AT
CMOS map as SeaBIOS and QEMU use it).

Port 0x70 selects a register (bit 7 is the PC's NMI-disable bit, kept but without effect: nothing here raises an
NMI); port 0x71 reads or writes it. Registers 0x00-0x09 are the clock (seconds, alarm seconds, minutes, alarm
minutes, hours, alarm hours, day of week, date, month, year), 0x0A-0x0D the control registers A-D, and the rest
battery-backed RAM, with the century at 0x32 (the FADT's CENTURY field points there).

The clock is the host's UTC clock plus an offset the guest changes by setting the time, so it never drifts from
the host. Its seconds tick on the host's second boundaries shifted by that offset; the update-in-progress flag is
high for the 244 us before an update plus the 1984 us update cycle (datasheet, "Update Cycle"), and the time
registers change at the end of the cycle. SET (register B bit 7) and a divider reset (register A DV = 11x) freeze
the registers so the guest can write a new time; releasing them restarts the clock from what was written (the
first update follows one second after SET clears, half a second after the divider restarts). BCD or binary and
12- or 24-hour formats follow register B.

Interrupts on IRQ8: periodic (rate from register A RS3-0), alarm (with the 0xC0-0xFF "don't care" codes) and
update-ended, each gated by its enable bit in register B. The IRQ line stays asserted while IRQF is set and drops
when the guest reads register C, as on the chip. The periodic flag is kept even with PIE clear, without a timer.
Day of week is derived from the date (the chip only counts it; no guest relies on an inconsistent value).

CMOS RAM holds the memory sizes where BIOSes look: 0x15/0x16 base memory, 0x17/0x18 and 0x30/0x31 extended memory
in KiB, 0x34/0x35 memory above 16 MiB in 64 KiB units, 0x5B-0x5D memory above 4 GiB in 64 KiB units, 0x5F the CPU
count minus one (SeaBIOS's QEMU convention), and the standard checksum over 0x10-0x2D at 0x2E/0x2F.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from core.bus import PortIoBus
from core.irq import IrqLine
from core.memory import PCI_HOLE_START
from core.platform import RTC_PORT
from core.state import fields as f
from core.timers import TimerQueue, now_ns

NS = 1_000_000_000
CMOS_SIZE = 128

SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = 0, 1, 2, 3, 4, 5
DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR = 6, 7, 8, 9
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32
CLOCK_REGS = (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR, CENTURY)

A_UIP = 0x80
A_DV_MASK, A_DV_NORMAL = 0x70, 0x20
B_SET, B_PIE, B_AIE, B_UIE, B_SQWE, B_DM_BINARY, B_24H, B_DSE = 0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01
C_IRQF, C_PF, C_AF, C_UF = 0x80, 0x40, 0x20, 0x10
D_VRT = 0x80

UIP_BEFORE_NS = 244_000 + 1_984_000     # tBUC + tUC at a 32.768 kHz time base

# CMOS RAM locations.
EQUIPMENT = 0x14
BASE_MEM_LO, BASE_MEM_HI = 0x15, 0x16
EXT_MEM_LO, EXT_MEM_HI = 0x17, 0x18
EXT_MEM2_LO, EXT_MEM2_HI = 0x30, 0x31
HIGH_MEM_LO, HIGH_MEM_HI = 0x34, 0x35
ABOVE_4G = 0x5B                         # three bytes, 64 KiB units
CPU_COUNT_MINUS_ONE = 0x5F
CHECKSUM_HI, CHECKSUM_LO = 0x2E, 0x2F

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def _periodic_ns(rate_select: int) -> tuple[int, int] | None:
    """The periodic interrupt period as a fraction (numerator ns, denominator) for RS3-0, or None when off."""
    if rate_select == 0:
        return None
    shift = {1: 7, 2: 8}.get(rate_select, rate_select - 1)   # RS 1 and 2 repeat the 256 Hz and 128 Hz rates
    return (1 << shift) * NS, 32768


class CmosRtc:
    """MC146818A with 128 bytes of CMOS RAM. `memory_size` is the guest RAM in bytes."""

    def __init__(self, irq: IrqLine, timers: TimerQueue, memory_size: int, *, cpus: int = 1,
                 ram_below_4g: int | None = None,
                 realtime_ns: Callable[[], int] = time.time_ns,
                 monotonic_ns: Callable[[], int] = now_ns) -> None:
        self.irq = irq
        self._realtime = realtime_ns
        self._monotonic = monotonic_ns
        self._lock = threading.Lock()
        self._update_timer = timers.timer(self._on_update)
        self._periodic_timer = timers.timer(self._on_periodic)
        self.ram = bytearray(CMOS_SIZE)
        self.index = 0
        self.nmi_disabled = False
        self.offset_ns = 0                    # guest wall clock minus host wall clock
        self.reg_a = A_DV_NORMAL | 0x06        # 32.768 kHz, 1024 Hz periodic rate (the PC/AT BIOS setting)
        self.reg_b = B_24H
        self.flags = 0                         # register C
        self.frozen = False
        self._last_update_second: int | None = None
        self._periodic_epoch = 0
        self._periodic_seen = 0
        self._fill_memory_bytes(memory_size, cpus, ram_below_4g)
        with self._lock:
            self._write_century_if_running()
            self._arm_update()

    # -- set-up -------------------------------------------------------------------------------------------------------

    def _fill_memory_bytes(self, memory_size: int, cpus: int, ram_below_4g: int | None) -> None:
        below = min(memory_size, PCI_HOLE_START) if ram_below_4g is None else ram_below_4g
        above = max(0, memory_size - below)
        ram = self.ram
        ram[EQUIPMENT] = 0x06                  # math coprocessor, PS/2 mouse; display bits 00 = EGA/VGA
        ram[BASE_MEM_LO], ram[BASE_MEM_HI] = (640).to_bytes(2, "little")
        ext_kib = min(max(0, below // KiB - 1024), 0xFFFF)
        ram[EXT_MEM_LO], ram[EXT_MEM_HI] = ext_kib.to_bytes(2, "little")
        ram[EXT_MEM2_LO], ram[EXT_MEM2_HI] = ext_kib.to_bytes(2, "little")
        high_64k = min(max(0, (below - 16 * MiB) // (64 * KiB)), 0xFFFF)
        ram[HIGH_MEM_LO], ram[HIGH_MEM_HI] = high_64k.to_bytes(2, "little")
        ram[ABOVE_4G:ABOVE_4G + 3] = min(above // (64 * KiB), 0xFF_FFFF).to_bytes(3, "little")
        ram[CPU_COUNT_MINUS_ONE] = max(0, min(cpus, 256) - 1)
        self._update_checksum()

    def _update_checksum(self) -> None:
        total = sum(self.ram[0x10:0x2E]) & 0xFFFF
        self.ram[CHECKSUM_HI], self.ram[CHECKSUM_LO] = total >> 8, total & 0xFF

    def _write_century_if_running(self) -> None:
        if not self.frozen:
            self.ram[CENTURY] = self._clock_regs(self._guest_ns())[CENTURY]

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    def attach(self, pio: PortIoBus) -> None:
        pio.register(RTC_PORT, 2, self)

    def reset(self) -> None:
        """The chip's RESET input: interrupt enables and flags clear; the time and the RAM survive."""
        with self._lock:
            self.reg_b &= ~(B_PIE | B_AIE | B_UIE | B_SQWE)
            self.flags = 0
            self.index = 0
            self._periodic_timer.cancel()
            self.irq.set(False)

    # -- machine state (docs/machine-state.md) ----------------------------------------------------------------------
    # The guest's wall clock keeps its offset from the host's (QEMU's default, base=utc): after a restore it
    # shows the host's time again, as a PC's RTC does after a suspend to disk. The periodic interrupt's phase is
    # saved relative to the moment of saving.

    STATE = {"ram": f.Bytes(CMOS_SIZE), "index": f.u(7), "nmi_disabled": f.BOOL,
             "offset_ns": f.Int(-(1 << 80), 1 << 80), "reg_a": f.u(7), "reg_b": f.U8, "flags": f.U8, "frozen": f.BOOL,
             "_last_update_second": f.Optional(f.Int(-(1 << 60), 1 << 60)), "_periodic_epoch": f.MONO,
             "_periodic_seen": f.Int(-(1 << 62), 1 << 62)}
    STATE_VERSION = 1

    def get_state(self) -> dict:
        with self._lock:
            return f.capture(self, self.STATE, self._monotonic())

    def set_state(self, state: dict) -> None:
        now = self._monotonic()
        checked = f.validate(state, self.STATE, "rtc", now)
        with self._lock:
            f.apply(self, checked, self.STATE, now)
            self._arm_periodic()
            self._update_timer.cancel()
            self._arm_update()
            self._update_irq()

    # -- port I/O ----------------------------------------------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        if port == RTC_PORT:
            return 0xFF                        # the index register is write-only on a PC
        with self._lock:
            return self._read_register(self.index)

    def io_write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            if port == RTC_PORT:
                self.index = value & 0x7F
                self.nmi_disabled = bool(value & 0x80)
            else:
                self._write_register(self.index, value)

    # -- registers ----------------------------------------------------------------------------------------------------

    def _read_register(self, index: int) -> int:
        if index == REG_A:
            return self.reg_a | (A_UIP if self._update_in_progress() else 0)
        if index == REG_B:
            return self.reg_b
        if index == REG_C:
            value = self._flags_now()
            self.flags = 0
            self._periodic_seen = self._periodic_index()
            self.irq.set(False)
            return value
        if index == REG_D:
            return D_VRT
        if index in CLOCK_REGS and not self.frozen:
            return self._clock_regs(self._guest_ns())[index]
        return self.ram[index]

    def _write_register(self, index: int, value: int) -> None:
        if index == REG_A:
            old_running = self._divider_running()
            old_rate = self.reg_a & 0x0F
            self.reg_a = value & 0x7F
            if old_running != self._divider_running():
                self._set_frozen(self._frozen_wanted(), restart_phase_ns=NS // 2)
            if old_rate != self.reg_a & 0x0F or old_running != self._divider_running():
                self._restart_periodic()
        elif index == REG_B:
            if value & B_SET:
                value &= ~B_UIE                # SET clears UIE (datasheet, register B bit 4)
            old = self.reg_b
            self.reg_b = value
            if (old ^ value) & B_SET:
                self._set_frozen(self._frozen_wanted(), restart_phase_ns=0)
            if (old ^ value) & B_PIE:
                self._restart_periodic(keep_phase=True)
            self._update_irq()
        elif index in (REG_C, REG_D):
            return                             # read-only
        elif index in CLOCK_REGS:
            if self.frozen:
                self.ram[index] = value
            else:
                # Written while the clock runs: the new value takes effect and counting goes on from it.
                guest = self._guest_ns()
                regs = self._clock_regs(guest)
                regs[index] = value
                self._set_clock(self._regs_to_epoch(regs), guest % NS)
        else:
            self.ram[index] = value

    def _divider_running(self) -> bool:
        return (self.reg_a & 0x60) != 0x60     # DV2-DV1 = 11 holds the divider chain in reset

    def _frozen_wanted(self) -> bool:
        return bool(self.reg_b & B_SET) or not self._divider_running()

    def _set_frozen(self, frozen: bool, restart_phase_ns: int) -> None:
        if frozen == self.frozen:
            return
        if frozen:
            regs = self._clock_regs(self._guest_ns())
            for index, value in regs.items():
                self.ram[index] = value
            self.frozen = True
            self._update_timer.cancel()
        else:
            self.frozen = False
            regs = {i: self.ram[i] for i in CLOCK_REGS}
            self._set_clock(self._regs_to_epoch(regs), restart_phase_ns)

    def _set_clock(self, epoch_seconds: int, phase_ns: int) -> None:
        self.offset_ns = epoch_seconds * NS + phase_ns - self._realtime()
        self._last_update_second = epoch_seconds
        self._write_century_if_running()
        self._arm_update()

    # -- time conversion ----------------------------------------------------------------------------------------------

    def _guest_ns(self) -> int:
        return self._realtime() + self.offset_ns

    def _encode(self, value: int) -> int:
        return value if self.reg_b & B_DM_BINARY else ((value // 10) << 4) | (value % 10)

    def _decode(self, value: int) -> int:
        if self.reg_b & B_DM_BINARY:
            return value
        return min((value >> 4) & 0xF, 9) * 10 + min(value & 0xF, 9)

    def _encode_hours(self, hour: int) -> int:
        if self.reg_b & B_24H:
            return self._encode(hour)
        return self._encode(hour % 12 or 12) | (0x80 if hour >= 12 else 0)

    def _decode_hours(self, value: int) -> int:
        if self.reg_b & B_24H:
            return self._decode(value & 0x7F)
        return self._decode(value & 0x7F) % 12 + (12 if value & 0x80 else 0)

    def _clock_regs(self, guest_ns: int) -> dict[int, int]:
        t = datetime.fromtimestamp(guest_ns // NS, tz=UTC)
        return {
            SECONDS: self._encode(t.second),
            MINUTES: self._encode(t.minute),
            HOURS: self._encode_hours(t.hour),
            DAY_OF_WEEK: self._encode((t.weekday() + 1) % 7 + 1),   # 1 = Sunday
            DAY_OF_MONTH: self._encode(t.day),
            MONTH: self._encode(t.month),
            YEAR: self._encode(t.year % 100),
            CENTURY: self._encode(t.year // 100),
        }

    def _regs_to_epoch(self, regs: dict[int, int]) -> int:
        """Registers to a UTC timestamp; out-of-range fields are clamped (a guest's garbage cannot raise)."""
        import calendar  # only when the guest sets the clock: not part of every VM's start-up
        century = self._decode(regs[CENTURY])
        if not 19 <= century <= 99:
            century = 20
        year = max(1970, century * 100 + min(self._decode(regs[YEAR]), 99))
        month = min(max(self._decode(regs[MONTH]), 1), 12)
        day = min(max(self._decode(regs[DAY_OF_MONTH]), 1), calendar.monthrange(year, month)[1])
        hour = min(self._decode_hours(regs[HOURS]), 23)
        minute = min(self._decode(regs[MINUTES]), 59)
        second = min(self._decode(regs[SECONDS]), 59)
        return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))

    def _update_in_progress(self) -> bool:
        if self.frozen:
            return False
        return NS - self._guest_ns() % NS <= UIP_BEFORE_NS

    # -- interrupts ---------------------------------------------------------------------------------------------------

    def _irqf(self, flags: int) -> bool:
        return bool(flags & self.reg_b & (B_PIE | B_AIE | B_UIE))   # PF/AF/UF line up with PIE/AIE/UIE

    def _flags_now(self) -> int:
        flags = self.flags
        if self._periodic_index() > self._periodic_seen:
            flags |= C_PF
        return flags | (C_IRQF if self._irqf(flags) else 0)

    def _update_irq(self) -> None:
        flags = self._flags_now()
        self.flags = flags & (C_PF | C_AF | C_UF)
        self._periodic_seen = self._periodic_index()
        self.irq.set(bool(flags & C_IRQF))

    def _period(self) -> tuple[int, int] | None:
        if not self._divider_running() or (self.reg_a & A_DV_MASK) != A_DV_NORMAL:
            return None
        return _periodic_ns(self.reg_a & 0x0F)

    def _periodic_index(self) -> int:
        period = self._period()
        if period is None:
            return self._periodic_seen
        num, den = period
        return (self._monotonic() - self._periodic_epoch) * den // num

    def _restart_periodic(self, keep_phase: bool = False) -> None:
        if not keep_phase:
            self._periodic_epoch = self._monotonic()
            self._periodic_seen = 0
        self._arm_periodic()

    def _arm_periodic(self) -> None:
        period = self._period()
        if period is None or not self.reg_b & B_PIE:
            self._periodic_timer.cancel()
            return
        num, den = period
        nxt = max(self._periodic_index(), self._periodic_seen) + 1
        self._periodic_timer.arm(self._periodic_epoch + -(-nxt * num // den))

    def _on_periodic(self) -> None:
        with self._lock:
            self._update_irq()
            self._arm_periodic()

    def _arm_update(self) -> None:
        if self.frozen:
            return
        to_boundary = NS - self._guest_ns() % NS
        self._update_timer.arm_after(to_boundary + 50_000)   # just past the boundary, whatever the clocks' skew

    def _on_update(self) -> None:
        with self._lock:
            if self.frozen:
                return
            guest = self._guest_ns()
            second = guest // NS
            if second != self._last_update_second:
                self._last_update_second = second
                self.flags |= C_UF
                regs = self._clock_regs(guest)
                if self._alarm_matches(regs):
                    self.flags |= C_AF
                self.ram[CENTURY] = regs[CENTURY]
                self._update_irq()
            self._arm_update()

    def _alarm_matches(self, regs: dict[int, int]) -> bool:
        for alarm, current in ((SECONDS_ALARM, SECONDS), (MINUTES_ALARM, MINUTES), (HOURS_ALARM, HOURS)):
            value = self.ram[alarm]
            if value & 0xC0 == 0xC0:
                continue                       # "don't care" code
            if value != regs[current]:
                return False
        return True

    # -- host side ----------------------------------------------------------------------------------------------------

    def guest_time(self) -> datetime:
        """The guest's current RTC time (UTC)."""
        with self._lock:
            if self.frozen:
                return datetime.fromtimestamp(self._regs_to_epoch({i: self.ram[i] for i in CLOCK_REGS}),
                                              tz=UTC)
            return datetime.fromtimestamp(self._guest_ns() / NS, tz=UTC)
