"""ACPI fixed hardware: the PM1a event and control blocks, the PM timer and the GPE0 block (ACPI 6.4, 4.8.3
"PM1 Event Grouping" / "PM1 Control Grouping", 4.8.3.3 "Power Management Timer", 4.8.4.1 "General-Purpose Event
Register Blocks").

Layout at platform.ACPI_PM_BASE, as the FADT describes it: PM1a_EVT_BLK (PM1_STS, PM1_EN: 2 bytes each) at +0,
PM1a_CNT_BLK (2 bytes) at +4, PM_TMR_BLK (4 bytes) at +8, GPE0_BLK (GPE0_STS then GPE0_EN, 4 bytes each) at +0x20.

Status bits are write-1-to-clear. The SCI is a level-triggered line asserted while any enabled status bit is set
(ACPI 6.4, 4.8.3.1). SCI_EN reads as 1 and cannot be cleared: the FADT has no SMI_CMD port, which tells the OS the
machine is always in ACPI mode (ACPI 6.4, 4.8.2.5 "Legacy/ACPI Select and the SCI Interrupt"). Writing SLP_EN with
SLP_TYP = the \\_S5 value from our DSDT powers the machine off; other sleep types go to `on_sleep` when given, or
wake at once (WAK_STS set) when the machine has no sleep state to enter.

The PM timer is a 24-bit counter at 3.579545 MHz derived from host monotonic time; TMR_STS is set each time its
top bit changes, and raises the SCI through TMR_EN (a Timer is armed for that only when a TimerQueue is given).
Accesses of any width are taken apart into bytes, so 8-, 16- and 32-bit accesses to every register behave as on a
chipset; a 32-bit read of the timer is one consistent sample.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from core.bus import PortIoBus
from core.irq import IrqLine
from core.platform import ACPI_PM_BASE, ACPI_PM_LEN, ACPI_S5_SLP_TYP, PM_TIMER_HZ
from core.state import fields as f
from core.timers import TimerQueue, now_ns

# Offsets inside the block.
PM1_STS, PM1_EN, PM1_CNT, PM_TMR, GPE0_STS, GPE0_EN = 0x00, 0x02, 0x04, 0x08, 0x20, 0x24
GPE0_BYTES = 4

# PM1_STS / PM1_EN bits.
TMR_STS, BM_STS, GBL_STS, PWRBTN_STS, SLPBTN_STS, RTC_STS, WAK_STS = 0x1, 0x10, 0x20, 0x100, 0x200, 0x400, 0x8000
TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN = 0x1, 0x20, 0x100, 0x200, 0x400
PM1_STS_BITS = TMR_STS | BM_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS | WAK_STS
PM1_EN_BITS = TMR_EN | GBL_EN | PWRBTN_EN | SLPBTN_EN | RTC_EN
SCI_EVENTS = TMR_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS    # status bits with an enable bit

# PM1_CNT bits.
SCI_EN, BM_RLD, GBL_RLS = 0x1, 0x2, 0x4
SLP_TYP_SHIFT, SLP_TYP_MASK, SLP_EN = 10, 0x1C00, 0x2000

TIMER_BITS = 24
NS = 1_000_000_000


class AcpiPm:
    """The PM1a/PM timer/GPE0 register blocks. Callbacks run outside the device lock."""

    def __init__(self, sci: IrqLine, on_poweroff: Callable[[], None],
                 on_sleep: Callable[[int], None] | None = None, *,
                 timers: TimerQueue | None = None, base: int = ACPI_PM_BASE,
                 clock: Callable[[], int] = now_ns) -> None:
        self.sci = sci
        self.on_poweroff = on_poweroff
        self.on_sleep = on_sleep
        self.base = base
        self._clock = clock
        self._lock = threading.Lock()
        self._epoch = clock()
        self._timer = timers.timer(self._on_timer_overflow) if timers is not None else None
        self._power_on()

    def _power_on(self) -> None:
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = SCI_EN
        self.gpe0_sts = 0
        self.gpe0_en = 0
        self._msb_seen = self._ticks() >> (TIMER_BITS - 1)

    def attach(self, pio: PortIoBus) -> None:
        pio.register(self.base, ACPI_PM_LEN, self)

    def reset(self) -> None:
        with self._lock:
            self._power_on()
            self._arm_timer()
            self._update_sci()

    # -- machine state (docs/machine-state.md) ----------------------------------------------------------------------

    STATE = {"pm1_sts": f.U16, "pm1_en": f.U16, "pm1_cnt": f.U16, "gpe0_sts": f.U32, "gpe0_en": f.U32,
             "_msb_seen": f.Int(0, 1 << 62), "_epoch": f.MONO}
    STATE_VERSION = 1

    def get_state(self) -> dict:
        with self._lock:
            return f.capture(self, self.STATE, self._clock())

    def set_state(self, state: dict) -> None:
        now = self._clock()
        checked = f.validate(state, self.STATE, "acpi_pm", now)
        with self._lock:
            f.apply(self, checked, self.STATE, now)
            self._arm_timer()
            self._update_sci()

    # -- host side ----------------------------------------------------------------------------------------------------

    def press_power_button(self) -> None:
        """The fixed-hardware power button (ACPI 6.4, 4.8.2.2.1.1): PWRBTN_STS, and an SCI if PWRBTN_EN."""
        with self._lock:
            self.pm1_sts |= PWRBTN_STS
            self._update_sci()

    def raise_gpe(self, bit: int) -> None:
        """Set a general-purpose event status bit (0-31), e.g. for hot-plug notifications."""
        if not 0 <= bit < 8 * GPE0_BYTES:
            raise ValueError(f"GPE {bit} outside GPE0_BLK")
        with self._lock:
            self.gpe0_sts |= 1 << bit
            self._update_sci()

    def wake(self) -> None:
        """Mark the return from a sleep state (WAK_STS), as the chipset does on wake-up."""
        with self._lock:
            self.pm1_sts |= WAK_STS
            self._update_sci()

    def timer_value(self) -> int:
        return self._ticks() & ((1 << TIMER_BITS) - 1)

    # -- port I/O ----------------------------------------------------------------------------------------------------

    def io_read(self, port: int, size: int) -> int:
        with self._lock:
            offset = port - self.base
            regs = self._snapshot()
            value = 0
            for i in range(size):
                value |= regs.get(offset + i, 0) << (8 * i)
            return value

    def io_write(self, port: int, size: int, value: int) -> None:
        action: tuple[str, int] | None = None
        with self._lock:
            offset = port - self.base
            for i in range(size):
                result = self._write_byte(offset + i, (value >> (8 * i)) & 0xFF)
                action = result or action
            self._update_sci()
        if action is None:
            return
        kind, slp_typ = action
        if kind == "poweroff":
            self.on_poweroff()
        elif self.on_sleep is not None:
            self.on_sleep(slp_typ)
        else:
            self.wake()

    def _snapshot(self) -> dict[int, int]:
        """Every readable byte of the block, the timer sampled once."""
        regs: dict[int, int] = {}

        def put(offset: int, value: int, width: int) -> None:
            for i in range(width):
                regs[offset + i] = (value >> (8 * i)) & 0xFF

        put(PM1_STS, self._pm1_status(), 2)
        put(PM1_EN, self.pm1_en, 2)
        put(PM1_CNT, self.pm1_cnt & ~(SLP_EN | GBL_RLS), 2)     # SLP_EN and GBL_RLS are write-only
        put(PM_TMR, self.timer_value(), 4)
        put(GPE0_STS, self.gpe0_sts, GPE0_BYTES)
        put(GPE0_EN, self.gpe0_en, GPE0_BYTES)
        return regs

    def _write_byte(self, offset: int, byte: int) -> tuple[str, int] | None:
        if PM1_STS <= offset < PM1_STS + 2:
            clear = (byte << (8 * (offset - PM1_STS))) & PM1_STS_BITS
            if clear & TMR_STS:
                self._msb_seen = self._ticks() >> (TIMER_BITS - 1)
            self.pm1_sts &= ~clear
        elif PM1_EN <= offset < PM1_EN + 2:
            shift = 8 * (offset - PM1_EN)
            self.pm1_en = ((self.pm1_en & ~(0xFF << shift)) | (byte << shift)) & PM1_EN_BITS
            self._arm_timer()
        elif PM1_CNT <= offset < PM1_CNT + 2:
            shift = 8 * (offset - PM1_CNT)
            cnt = (self.pm1_cnt & ~(0xFF << shift)) | (byte << shift)
            self.pm1_cnt = (cnt & (BM_RLD | SLP_TYP_MASK)) | SCI_EN
            if cnt & SLP_EN:
                slp_typ = (cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT
                return ("poweroff" if slp_typ == ACPI_S5_SLP_TYP else "sleep", slp_typ)
        elif GPE0_STS <= offset < GPE0_STS + GPE0_BYTES:
            self.gpe0_sts &= ~(byte << (8 * (offset - GPE0_STS)))
        elif GPE0_EN <= offset < GPE0_EN + GPE0_BYTES:
            shift = 8 * (offset - GPE0_EN)
            self.gpe0_en = (self.gpe0_en & ~(0xFF << shift)) | (byte << shift)
        return None

    # -- PM timer and SCI ---------------------------------------------------------------------------------------------

    def _ticks(self) -> int:
        return (self._clock() - self._epoch) * PM_TIMER_HZ // NS

    def _pm1_status(self) -> int:
        status = self.pm1_sts
        if self._ticks() >> (TIMER_BITS - 1) != self._msb_seen:
            status |= TMR_STS
        return status

    def _update_sci(self) -> None:
        self.pm1_sts = self._pm1_status()
        pending = (self.pm1_sts & self.pm1_en & SCI_EVENTS) or (self.gpe0_sts & self.gpe0_en)
        self.sci.set(bool(pending) and bool(self.pm1_cnt & SCI_EN))

    def _arm_timer(self) -> None:
        if self._timer is None:
            return
        if not self.pm1_en & TMR_EN:
            self._timer.cancel()
            return
        next_flip = ((self._ticks() >> (TIMER_BITS - 1)) + 1) << (TIMER_BITS - 1)
        self._timer.arm(self._epoch + -(-next_flip * NS // PM_TIMER_HZ))

    def _on_timer_overflow(self) -> None:
        with self._lock:
            self._update_sci()
            self._arm_timer()
