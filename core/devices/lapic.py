"""The local APIC of one software-emulated CPU (Intel SDM vol. 3, ch. 10 "Advanced Programmable Interrupt
Controller (APIC)"). The bus joining every vCPU's local APIC with the I/O APIC and the MSIs of PCI devices is
apic_bus's ApicBus.

Modelled: the xAPIC register page (memory-mapped at the IA32_APIC_BASE address) and the x2APIC MSR interface
(0x800-0x8FF, SDM 10.12); ID, version, TPR/PPR/APR, EOI with the broadcast to the I/O APIC for level-triggered
vectors, LDR/DFR (flat and cluster models), the spurious-vector register with software enable, ISR/TMR/IRR,
ESR, the ICR with every destination mode and shorthand (fixed, lowest priority, NMI, INIT, SIPI), the LVT
(timer, thermal, performance counters, LINT0, LINT1, error), and the timer in one-shot, periodic and TSC-deadline
modes (IA32_TSC_DEADLINE, SDM 10.5.4.1) with the divide configuration.

LINT0 in ExtINT mode connects the 8259A PIC, the APIC bus's `extint` (virtual wire mode, MP spec 1.4, 3.6.2.2):
its vector comes from the PIC's interrupt-acknowledge cycle, not from IRR. At power-on the firmware's virtual-wire
set-up is assumed (LINT0 ExtINT and LINT1 NMI on the bootstrap processor), as a BIOS leaves it and as KVM-based
monitors program it. Nothing on this platform drives LINT1.

Time: the timer counts at `bus_hz` (the "core crystal clock" the CPU reports in CPUID leaf 0x15); the TSC-deadline
comparison uses the guest TSC, whose frequency is `tsc_hz` and whose value `read_tsc()` gives. Timers run on the
machine's TimerQueue; when an interrupt becomes deliverable the APIC calls `wake()` so the CPU stops its time
slice or wakes from HLT (`wake()`). Thread-safe: the vCPU, the timer thread, devices and other vCPUs all reach it.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.devices.lapic_catchup import CatchUpLock, FastEoi, NativeTick, PolledTimer, apply_native, arm_native
from core.timers import TimerQueue, now_ns

if TYPE_CHECKING:
    from core.devices.apic_bus import ApicBus

APIC_BASE_BSP = 1 << 8
APIC_BASE_EXTD = 1 << 10        # x2APIC mode
APIC_BASE_ENABLE = 1 << 11
APIC_DEFAULT_BASE = 0xFEE0_0000
APIC_VERSION = 0x0005_0014      # version 0x14 (integrated APIC), 6 LVT entries (max LVT index 5)

# Delivery modes (ICR, LVT, I/O APIC redirection entries)
DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_SIPI, DM_EXTINT = 0, 1, 2, 4, 5, 6, 7

# Register offsets in the xAPIC page (x2APIC MSR = 0x800 + offset / 16)
REG_ID, REG_VERSION, REG_TPR, REG_APR, REG_PPR, REG_EOI = 0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0
REG_RRD, REG_LDR, REG_DFR, REG_SVR = 0xC0, 0xD0, 0xE0, 0xF0
REG_ISR, REG_TMR, REG_IRR = 0x100, 0x180, 0x200
REG_ESR, REG_LVT_CMCI, REG_ICR_LO, REG_ICR_HI = 0x280, 0x2F0, 0x300, 0x310
REG_LVT_TIMER, REG_LVT_THERMAL, REG_LVT_PERF, REG_LVT_LINT0, REG_LVT_LINT1, REG_LVT_ERROR = (
    0x320, 0x330, 0x340, 0x350, 0x360, 0x370)
REG_TIMER_INITIAL, REG_TIMER_CURRENT, REG_TIMER_DIVIDE, REG_SELF_IPI = 0x380, 0x390, 0x3E0, 0x3F0
LVT_REGS = (REG_LVT_TIMER, REG_LVT_THERMAL, REG_LVT_PERF, REG_LVT_LINT0, REG_LVT_LINT1, REG_LVT_ERROR, REG_LVT_CMCI)

LVT_MASKED = 1 << 16
LVT_LEVEL = 1 << 15
LVT_DELIVERY_STATUS = 1 << 12
TIMER_ONESHOT, TIMER_PERIODIC, TIMER_TSC_DEADLINE = 0, 1, 2
SVR_ENABLE = 1 << 8
SVR_SUPPRESS_EOI_BROADCAST = 1 << 12
ICR_LEVEL_ASSERT = 1 << 14
ICR_LEVEL_TRIGGER = 1 << 15
ICR_LOGICAL = 1 << 11
ESR_SEND_ILLEGAL_VECTOR, ESR_RECEIVE_ILLEGAL_VECTOR, ESR_ILLEGAL_REGISTER = 1 << 5, 1 << 6, 1 << 7

MSR_X2APIC_FIRST, MSR_X2APIC_LAST = 0x800, 0x8FF
MSR_TSC_DEADLINE = 0x6E0

_LVT_WRITABLE = {
    REG_LVT_TIMER: 0x700FF, REG_LVT_THERMAL: 0x107FF, REG_LVT_PERF: 0x107FF, REG_LVT_LINT0: 0x1A7FF,
    REG_LVT_LINT1: 0x1A7FF, REG_LVT_ERROR: 0x100FF, REG_LVT_CMCI: 0x107FF,
}
_DIVIDE = {0b000: 2, 0b001: 4, 0b010: 8, 0b011: 16, 0b100: 32, 0b101: 64, 0b110: 128, 0b111: 1}


def _highest(bits: int) -> int:
    return bits.bit_length() - 1


class ApicCpu:
    """What the local APIC needs from its CPU (implemented by the vCPU)."""

    def wake(self) -> None: ...                       # an interrupt may now be deliverable
    def nmi(self) -> None: ...                        # an NMI is pending
    def init(self) -> None: ...                       # INIT IPI
    def sipi(self, vector: int) -> None: ...          # start-up IPI


class LocalApic:
    def __init__(self, apic_id: int, timers: TimerQueue, bus: ApicBus, cpu: ApicCpu, *, bus_hz: int,
                 tsc_hz: int, read_tsc: Callable[[], int], bsp: bool) -> None:
        self.apic_id = apic_id
        self.bus = bus
        self.cpu = cpu
        self.bus_hz = bus_hz
        self.tsc_hz = tsc_hz
        self.read_tsc = read_tsc
        self._lock: threading.RLock | CatchUpLock = threading.RLock()
        self.fast_eoi: FastEoi | None = None
        self._timer = timers.timer(self._timer_fired)
        self._polled_timer: PolledTimer | None = None
        self.power_on(bsp)

    def attach_fast_eoi(self, word: FastEoi) -> None:
        """EOIs may be written natively while `word` is armed (uc_fast_eoi): from now on every use of the model
        takes them first, under its lock."""
        self.fast_eoi = word
        self._catch_up_under_lock()

    def attach_native_tick(self, tick: NativeTick) -> None:
        with self._lock:                    # the take on entry is the last of the fast EOI's own (lapic_catchup)
            self.fast_eoi.native = tick

    def use_polled_timer(self, timer: PolledTimer) -> None:
        """Run the timer on `timer` instead of the TimerQueue (vcpu_signal_timer): from now on every use of the
        model first fires it if its deadline has passed, under its lock."""
        with self._lock:
            old, self._timer = self._timer, timer
            if old.deadline is not None:
                timer.arm(old.deadline)
                old.cancel()
            self._polled_timer = timer
        self._catch_up_under_lock()

    def _catch_up_under_lock(self) -> None:
        if not isinstance(self._lock, CatchUpLock):
            self._lock = CatchUpLock(self._lock, self)

    def _catch_up(self) -> None:
        if self.fast_eoi is not None:
            apply_native(self, self.fast_eoi)
        if self._polled_timer is not None:
            self._polled_timer.poll()

    def _arm_native(self) -> None:
        if self.fast_eoi is not None:
            arm_native(self, self.fast_eoi)

    def poll_timer(self) -> None:
        """Fire a polled timer whose deadline has passed (taking the lock does it)."""
        with self._lock:
            pass

    # -- state ------------------------------------------------------------------------------------------------
    def power_on(self, bsp: bool) -> None:
        """RESET (SDM 10.4.7.1), then the firmware's virtual-wire set-up on the BSP."""
        with self._lock:
            self.base_msr = APIC_DEFAULT_BASE | APIC_BASE_ENABLE | (APIC_BASE_BSP if bsp else 0)
            self._reset_registers()
            if bsp:
                self.lvt[REG_LVT_LINT0] = DM_EXTINT << 8
                self.lvt[REG_LVT_LINT1] = DM_NMI << 8

    def _reset_registers(self) -> None:
        self._timer.cancel()
        self.irr = 0
        self.isr = 0
        self.tmr = 0
        self.tpr = 0
        self.ldr = 0
        self.dfr = 0xFFFF_FFFF
        self.svr = 0xFF
        self.esr = 0
        self.esr_pending = 0
        self.icr = 0
        self.lvt = dict.fromkeys(LVT_REGS, LVT_MASKED)
        self.timer_initial = 0
        self.timer_divide_reg = 0
        self.timer_start_ns = 0
        self.tsc_deadline = 0

    def reset_for_init(self) -> None:
        """INIT: like RESET except the APIC ID and IA32_APIC_BASE are kept (SDM 10.4.7.3)."""
        with self._lock:
            self._reset_registers()

    @property
    def x2apic(self) -> bool:
        return bool(self.base_msr & APIC_BASE_EXTD)

    @property
    def hw_enabled(self) -> bool:
        return bool(self.base_msr & APIC_BASE_ENABLE)

    @property
    def sw_enabled(self) -> bool:
        return bool(self.svr & SVR_ENABLE)

    @property
    def mmio_base(self) -> int | None:
        """Guest-physical base of the xAPIC page, or None in x2APIC mode or when disabled."""
        if self.hw_enabled and not self.x2apic:
            return self.base_msr & 0xF_FFFF_F000
        return None

    # -- priorities (SDM 10.8.3.1) ----------------------------------------------------------------------------
    def _ppr(self) -> int:
        isrv = _highest(self.isr) if self.isr else 0
        if (self.tpr >> 4) >= (isrv >> 4):
            return self.tpr & 0xFF
        return isrv & 0xF0

    def _deliverable_vector(self) -> int | None:
        if not self.irr or not self.hw_enabled:
            return None
        v = _highest(self.irr)
        if (v >> 4) > (self._ppr() >> 4):
            return v
        return None

    def _extint_pending(self) -> bool:
        lint0 = self.lvt[REG_LVT_LINT0]
        if self.hw_enabled and (lint0 & LVT_MASKED or (lint0 >> 8) & 7 != DM_EXTINT):
            return False
        pic = self.bus.extint
        return pic is not None and pic.has_interrupt()

    def has_interrupt(self) -> bool:
        """INTR as the CPU sees it: a maskable interrupt is waiting (EFLAGS.IF decides whether it is taken)."""
        with self._lock:
            return self._deliverable_vector() is not None or self._extint_pending()

    def acknowledge(self) -> int:
        """The CPU takes the interrupt: returns its vector (IRR -> ISR, or the PIC's INTA for ExtINT)."""
        with self._lock:
            pic = self.bus.extint
            if pic is not None and self._extint_pending():
                return pic.acknowledge()
            v = self._deliverable_vector()
            if v is None:
                return self.svr & 0xFF            # spurious interrupt (SDM 10.9)
            bit = 1 << v
            self.irr &= ~bit
            self.isr |= bit
            word = self.fast_eoi                  # armed here unless the lock's exit arms it (a native tick)
            if word is not None and word.native is None and self.isr == bit and not self.irr and not self.tmr & bit:
                if (base := self.mmio_base) is not None:
                    word.arm(base)
            return v

    # -- accepting interrupts ---------------------------------------------------------------------------------
    def accept(self, mode: int, vector: int, level_trigger: bool = False) -> None:
        """An interrupt message for this APIC (from the I/O APIC, an IPI, or a local LVT source)."""
        if mode in (DM_FIXED, DM_LOWEST):
            if vector < 16:
                with self._lock:
                    self.esr_pending |= ESR_RECEIVE_ILLEGAL_VECTOR
                self._lvt_error()
                return
            with self._lock:
                if not self.hw_enabled:
                    return
                bit = 1 << vector
                self.irr |= bit
                if level_trigger:
                    self.tmr |= bit
                else:
                    self.tmr &= ~bit
                deliverable = self._deliverable_vector() is not None
            if deliverable:
                self.cpu.wake()
        elif mode == DM_NMI:
            self.cpu.nmi()
        elif mode == DM_INIT:
            self.cpu.init()
        elif mode == DM_SIPI:
            self.cpu.sipi(vector)
        elif mode == DM_EXTINT:
            self.cpu.wake()
        # SMI: no SMM in this machine; the message is dropped.

    def _local(self, reg: int) -> None:
        """Deliver the interrupt of one LVT entry (timer, error, LINT1 ...)."""
        with self._lock:
            entry = self.lvt[reg]
            if entry & LVT_MASKED or not self.sw_enabled:
                return
        mode = (entry >> 8) & 7
        self.accept(DM_FIXED if mode == DM_FIXED else mode, entry & 0xFF, False)

    def _lvt_error(self) -> None:
        with self._lock:
            entry = self.lvt[REG_LVT_ERROR]
        if not entry & LVT_MASKED and self.sw_enabled and (entry & 0xFF) >= 16:
            self.accept(DM_FIXED, entry & 0xFF)

    def pic_changed(self) -> None:
        """The PIC's INT output rose: with LINT0 in ExtINT mode that is an interrupt for this CPU."""
        if self._extint_pending():
            self.cpu.wake()

    # -- EOI --------------------------------------------------------------------------------------------------
    def _eoi(self) -> None:
        with self._lock:
            if not self.isr:
                return
            v = _highest(self.isr)
            self.isr &= ~(1 << v)
            level = bool(self.tmr >> v & 1)
            broadcast = level and not self.svr & SVR_SUPPRESS_EOI_BROADCAST
            more = self._deliverable_vector() is not None
        if broadcast:
            self.bus.eoi(v)
        if more:
            self.cpu.wake()

    # -- timer (SDM 10.5.4) -----------------------------------------------------------------------------------
    def _timer_mode(self) -> int:
        return (self.lvt[REG_LVT_TIMER] >> 17) & 3

    def _divide(self) -> int:
        r = self.timer_divide_reg
        return _DIVIDE[(r & 3) | ((r >> 1) & 4)]

    def _ticks_to_ns(self, ticks: int) -> int:
        return ticks * self._divide() * 1_000_000_000 // self.bus_hz

    def _timer_current(self) -> int:
        if self._timer_mode() == TIMER_TSC_DEADLINE or not self.timer_initial or not self._timer.armed \
                and self._timer_mode() == TIMER_ONESHOT:
            return 0
        elapsed = (now_ns() - self.timer_start_ns) * self.bus_hz // (self._divide() * 1_000_000_000)
        if self._timer_mode() == TIMER_PERIODIC:
            return self.timer_initial - elapsed % self.timer_initial
        return max(0, self.timer_initial - elapsed)

    def _start_count(self) -> None:
        self._timer.cancel()
        if self.timer_initial and self._timer_mode() != TIMER_TSC_DEADLINE:
            self.timer_start_ns = now_ns()
            self._timer.arm(self.timer_start_ns + self._ticks_to_ns(self.timer_initial))

    def _arm_deadline(self) -> None:
        if self.tsc_deadline and self._timer_mode() == TIMER_TSC_DEADLINE:
            self._timer.arm(self._deadline_ns())     # replaces the last one
        else:
            self._timer.cancel()

    def _deadline_ns(self) -> int:
        return now_ns() + max(0, (self.tsc_deadline - self.read_tsc()) * 1_000_000_000 // self.tsc_hz)

    def adopt_deadline(self, value: int) -> None:
        """IA32_TSC_DEADLINE was written natively, the timer set already (uc_native_tick); 0: it fired."""
        self.tsc_deadline = value
        self._polled_timer.adopt(self._deadline_ns() if value else None)

    def _timer_fired(self) -> None:
        with self._lock:
            mode = self._timer_mode()
            if mode == TIMER_TSC_DEADLINE:
                if not self.tsc_deadline:
                    return
                remaining = self.tsc_deadline - self.read_tsc()
                if remaining > 0:                   # woke early (host clock granularity): wait the rest
                    self._timer.arm(now_ns() + remaining * 1_000_000_000 // self.tsc_hz + 1)
                    return
                self.tsc_deadline = 0
            elif mode == TIMER_PERIODIC and self.timer_initial:
                period = self._ticks_to_ns(self.timer_initial)
                due = self.timer_start_ns + period      # the expiry that just fired starts the next period
                now = now_ns()
                if due < now - period:                  # after a long host stall, skip the missed periods
                    due = now
                self.timer_start_ns = due
                self._timer.arm(due + period)
        self._local(REG_LVT_TIMER)

    # -- register file ----------------------------------------------------------------------------------------
    def _read_reg(self, reg: int) -> int | None:
        if reg == REG_ID:
            return self.apic_id if self.x2apic else (self.apic_id & 0xFF) << 24
        if reg == REG_VERSION:
            return APIC_VERSION
        if reg == REG_TPR:
            return self.tpr
        if reg == REG_APR:
            return 0
        if reg == REG_PPR:
            return self._ppr()
        if reg == REG_LDR:
            if self.x2apic:
                return ((self.apic_id >> 4) << 16) | (1 << (self.apic_id & 0xF))
            return self.ldr
        if reg == REG_DFR:
            return None if self.x2apic else self.dfr
        if reg == REG_SVR:
            return self.svr
        if REG_ISR <= reg < REG_ISR + 0x80:
            return (self.isr >> ((reg - REG_ISR) // 16 * 32)) & 0xFFFF_FFFF
        if REG_TMR <= reg < REG_TMR + 0x80:
            return (self.tmr >> ((reg - REG_TMR) // 16 * 32)) & 0xFFFF_FFFF
        if REG_IRR <= reg < REG_IRR + 0x80:
            return (self.irr >> ((reg - REG_IRR) // 16 * 32)) & 0xFFFF_FFFF
        if reg == REG_ESR:
            return self.esr
        if reg == REG_ICR_LO:
            return self.icr & 0xFFFF_FFFF
        if reg == REG_ICR_HI:
            return None if self.x2apic else (self.icr >> 32) & 0xFFFF_FFFF
        if reg in self.lvt:
            return self.lvt[reg]
        if reg == REG_TIMER_INITIAL:
            return self.timer_initial
        if reg == REG_TIMER_CURRENT:
            return self._timer_current()
        if reg == REG_TIMER_DIVIDE:
            return self.timer_divide_reg
        if reg == REG_EOI or reg == REG_RRD or reg == REG_SELF_IPI:
            return 0 if not self.x2apic else None
        return None

    def _write_reg(self, reg: int, value: int) -> bool:
        """Returns False for a register that does not exist (or is read-only in x2APIC mode)."""
        value &= 0xFFFF_FFFF
        if reg == REG_EOI:
            self._eoi()
            return True
        if reg == REG_SELF_IPI:
            if not self.x2apic:
                return False
            self.accept(DM_FIXED, value & 0xFF)
            return True
        if reg == REG_ICR_LO or reg == REG_ICR_HI:
            return self._write_icr(reg, value)
        kick = False
        with self._lock:
            if reg == REG_ID:
                if self.x2apic:
                    return False
                self.apic_id = value >> 24          # writable in xAPIC mode (SDM 10.4.6)
            elif reg == REG_TPR:
                self.tpr = value & 0xFF
                kick = self._deliverable_vector() is not None
            elif reg == REG_LDR:
                if self.x2apic:
                    return False
                self.ldr = value & 0xFF00_0000
            elif reg == REG_DFR:
                if self.x2apic:
                    return False
                self.dfr = value | 0x0FFF_FFFF
            elif reg == REG_SVR:
                self.svr = value & (0x1FF | SVR_SUPPRESS_EOI_BROADCAST)
                if not self.svr & SVR_ENABLE:
                    for r in self.lvt:
                        self.lvt[r] |= LVT_MASKED
                    self._timer.cancel()
                kick = self._deliverable_vector() is not None
            elif reg == REG_ESR:
                if self.x2apic and value:
                    return False
                self.esr, self.esr_pending = self.esr_pending, 0
            elif reg in self.lvt:
                entry = value & _LVT_WRITABLE[reg]
                if not self.sw_enabled:
                    entry |= LVT_MASKED
                old_mode = self._timer_mode()
                self.lvt[reg] = entry
                if reg == REG_LVT_TIMER and self._timer_mode() != old_mode:
                    self._timer.cancel()
                    self.tsc_deadline = 0
                kick = reg == REG_LVT_LINT0 and self._extint_pending()
            elif reg == REG_TIMER_INITIAL:
                self.timer_initial = value
                self._start_count()
            elif reg == REG_TIMER_DIVIDE:
                self.timer_divide_reg = value & 0xB
            elif reg in (REG_VERSION, REG_PPR, REG_APR, REG_RRD, REG_TIMER_CURRENT) or (
                    REG_ISR <= reg < REG_IRR + 0x80):
                return not self.x2apic              # read-only: ignored in xAPIC mode, #GP in x2APIC mode
            else:
                return False
        if kick:
            self.cpu.wake()
        return True

    def _write_icr(self, reg: int, value: int) -> bool:
        """ICR and ICR2 in xAPIC mode, outside the model's lock (x2APIC's ICR MSR likewise). Only this CPU's own
        accesses write the ICR (an INIT clears it while the CPU waits for a SIPI, so it cannot race them), and it
        holds no interrupt state, so there is nothing to catch up on first. Linux sends an IPI as a read
        (wait_icr_idle), an ICR2 write and an ICR write; with two vCPUs a pipe's every wake-up is one, and taking
        the lock for each made them several times dearer (docs/software-cpu.md, "Session 20")."""
        if reg == REG_ICR_HI:
            if self.x2apic:
                return False
            self.icr = (self.icr & 0xFFFF_FFFF) | (value & 0xFF00_0000) << 32
            return True
        self.icr = icr = (self.icr & ~0xFFFF_FFFF) | (value & ~LVT_DELIVERY_STATUS)
        self._send_ipi(icr)
        return True

    def _send_ipi(self, icr: int) -> None:
        vector = icr & 0xFF
        mode = (icr >> 8) & 7
        logical = bool(icr & ICR_LOGICAL)
        shorthand = (icr >> 18) & 3
        if mode == DM_INIT and icr & ICR_LEVEL_TRIGGER and not icr & ICR_LEVEL_ASSERT:
            return                                  # INIT level de-assert: only for 82489DX arbitration IDs
        if mode in (DM_FIXED, DM_LOWEST) and vector < 16:
            with self._lock:
                self.esr_pending |= ESR_SEND_ILLEGAL_VECTOR
            self._lvt_error()
            return
        if self.x2apic:
            dest = icr >> 32
        else:
            dest = (icr >> 56) & 0xFF
        if shorthand == 1:
            targets = [self]
        elif shorthand == 2:
            targets = self.bus.all()
        elif shorthand == 3:
            targets = [a for a in self.bus.all() if a is not self]
        else:
            targets = self.bus.match(dest, logical, x2apic=self.x2apic)
        if mode == DM_LOWEST and targets:
            targets = [min(targets, key=lambda a: (a._ppr(), a.apic_id))]
        for apic in targets:
            apic.accept(mode, vector, False)

    # -- access paths -----------------------------------------------------------------------------------------
    def mmio_read(self, offset: int, size: int) -> int:
        reg = offset & 0xFF0
        if reg == REG_ICR_LO or reg == REG_ICR_HI:
            value = self._read_reg(reg)             # lock-free: see _write_icr
        else:
            with self._lock:
                value = self._read_reg(reg)
        if value is None:
            value = 0
        shift = (offset & 0xF) * 8
        return (value >> shift) & ((1 << (size * 8)) - 1) if shift < 32 else 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset & 0xF:
            return                                  # only aligned 32-bit accesses reach a register
        if not self._write_reg(offset & 0xFF0, value):
            with self._lock:
                self.esr_pending |= ESR_ILLEGAL_REGISTER
            self._lvt_error()

    def msr_read(self, msr: int) -> int | None:
        """RDMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE or an x2APIC register; None means #GP."""
        if msr == 0x1B:
            return self.base_msr
        if msr == MSR_TSC_DEADLINE:
            with self._lock:
                return self.tsc_deadline if self._timer_mode() == TIMER_TSC_DEADLINE else 0
        if not self.x2apic or not MSR_X2APIC_FIRST <= msr <= MSR_X2APIC_LAST:
            return None
        reg = (msr - MSR_X2APIC_FIRST) << 4
        if reg == REG_ICR_LO:
            return self.icr
        with self._lock:
            return self._read_reg(reg)

    def msr_write(self, msr: int, value: int) -> bool:
        """WRMSR; False means #GP."""
        if msr == 0x1B:
            return self._write_base(value)
        if msr == MSR_TSC_DEADLINE:
            with self._lock:
                if self._timer_mode() == TIMER_TSC_DEADLINE:
                    self.tsc_deadline = value
                    self._arm_deadline()
            return True
        if not self.x2apic or not MSR_X2APIC_FIRST <= msr <= MSR_X2APIC_LAST:
            return False
        reg = (msr - MSR_X2APIC_FIRST) << 4
        if reg == REG_ICR_LO:
            self.icr = icr = value & 0xFFFF_FFFF_000C_CFFF     # outside the lock, as in _write_icr
            self._send_ipi(icr)
            return True
        if value >> 32:
            return False
        return self._write_reg(reg, value)

    def _write_base(self, value: int) -> bool:
        enable, extd = bool(value & APIC_BASE_ENABLE), bool(value & APIC_BASE_EXTD)
        if value & ~(0xF_FFFF_F000 | APIC_BASE_ENABLE | APIC_BASE_EXTD | APIC_BASE_BSP):
            return False
        if extd and not enable:
            return False                            # invalid state (SDM 10.12.5)
        if self.x2apic and enable and not extd:
            return False                            # x2APIC -> xAPIC needs a detour through disabled
        with self._lock:
            was_enabled = self.hw_enabled
            self.base_msr = (value & ~APIC_BASE_BSP) | (self.base_msr & APIC_BASE_BSP)
            if was_enabled and not enable:
                self._reset_registers()             # a globally disabled APIC keeps only its ID
                self.svr = 0xFF
        return True
