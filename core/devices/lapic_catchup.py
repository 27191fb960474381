"""What a software CPU's local APIC learns outside its own lock: EOIs written natively (Intel SDM vol. 3,
10.8.5; core/hypervisor/uc_fast_eoi.py), a timer expiry signalled to its vCPU's thread (10.5.4;
core/hypervisor/vcpu_signal_timer.py), and timer ticks acknowledged and deadlines written natively (10.5.4.1,
10.8.4; core/hypervisor/uc_native_tick.py). The model (core/devices/lapic.py) wraps its lock in CatchUpLock, whose
every entry first applies them, so it never judges an interrupt against a stale ISR or IRR, and whose last exit
arms the native paths again for the state it leaves (the tick only on the vCPU's own thread).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from core.devices.lapic import LocalApic

# core/devices/lapic.py's, repeated here because that module imports this one
DM_EXTINT = 7
LVT_MASKED = 1 << 16
REG_LVT_TIMER, REG_LVT_LINT0 = 0x320, 0x350
TIMER_TSC_DEADLINE = 2

# uc_native_tick's word (the fast EOI's word with more bits); kept in step with that module by its tests
FAST, TICK, BASE, DEADLINE, NEWDL, PEND, TAKEN = 1 << 63, 1 << 62, 1 << 61, 1 << 60, 1 << 59, 1 << 58, 1 << 57
TICKS_SHIFT, TICKS_MASK, PEND_SHIFT, EOIS_MASK = 32, 0xFFFF, 48, 0xFFFF_FFFF


class NativeTick(Protocol):
    """A vCPU whose timer ticks may be taken natively (core/hypervisor/uc_native_tick.NativeTick)."""
    guest_deadline: int                               # the IA32_TSC_DEADLINE value last written natively
    taken_ticks: int
    taken_vectors: int
    @property
    def on_owner_thread(self) -> bool: ...            # the caller is the vCPU's thread
    @property
    def timer_ready(self) -> bool: ...                # the WRMSR stub may set the vCPU's POSIX timer
    def publish(self, bits: int, vector: int, tsc_deadline: int) -> None: ...
    def arm_word(self, bits: int) -> None: ...        # the word alone (any thread; no TICK)


class FastEoi(Protocol):
    """A vCPU's record of EOIs written without the model (core/hypervisor/uc_fast_eoi.FastEoiWord)."""
    native: NativeTick | None
    def take(self) -> int: ...                        # how many were written since the last take; disarms
    def take_word(self) -> int: ...                   # the whole word (with native ticks); disarms
    def arm(self, mmio_base: int) -> None: ...        # the next EOI to this page may be written natively
    def point_block(self, mmio_base: int) -> None: ...


class PolledTimer(Protocol):
    """A local APIC timer fired by polling, on the vCPU's thread (core/hypervisor/vcpu_signal_timer)."""
    deadline: int | None
    def poll(self) -> None: ...                       # fire it if its deadline has passed
    def arm(self, deadline_ns: int) -> None: ...
    def cancel(self) -> None: ...
    def adopt(self, deadline_ns: int | None) -> None: ...   # set natively already: only the record changes


class CatchUpLock:
    """The model's lock once part of its state changes outside it -- EOIs written natively (uc_fast_eoi), a timer
    expiry signalled to the vCPU's thread (vcpu_signal_timer), ticks taken natively (uc_native_tick): taking it
    first applies those, so the model never looks at a stale ISR or IRR; leaving it for the last time arms the
    native paths for the state the model is left in."""
    __slots__ = ("_lock", "_apic", "_depth")

    def __init__(self, lock: threading.RLock, apic: LocalApic) -> None:
        self._lock, self._apic = lock, apic
        self._depth = 0                               # changed only by the holder

    def __enter__(self) -> CatchUpLock:
        self._lock.acquire()
        self._depth += 1
        self._apic._catch_up()
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        try:
            if not self._depth:
                self._apic._arm_native()
        finally:
            self._lock.release()


def apply_native(apic: LocalApic, word: FastEoi) -> None:
    """Take the vCPU's word and apply what its stubs did since the model last looked (under the model's lock)."""
    tick = word.native
    if tick is None:
        # Armed only with one edge-triggered vector in service and nothing requested (see acknowledge), and
        # disarmed by this take: whatever was counted is that vector's EOI, with nothing to broadcast or wake.
        if word.take() and apic.isr:
            apic.isr &= ~(1 << (apic.isr.bit_length() - 1))
        return
    raw = word.take_word()
    if not raw:
        return
    eois = raw & EOIS_MASK
    ticks = (raw >> TICKS_SHIFT) & TICKS_MASK
    base = 1 if raw & BASE else 0
    if raw & TAKEN:
        # Armed with the IRR holding only this vector (no TICK with it), taken once the BASE vector was EOI'd:
        # it left the IRR, and is in service unless its EOI was counted too.
        vector = (raw >> PEND_SHIFT) & 0xFF
        apic.irr &= ~(1 << vector)
        apic.isr = 0 if eois > base else 1 << vector
        tick.taken_vectors += 1
    elif ticks:
        # Armed with nothing requested and at most the BASE vector in service, and each native tick needed
        # everything before it EOI'd: the timer's vector is in service unless its last tick was EOI'd too.
        apic.isr = 0 if eois >= ticks + base else 1 << (apic.lvt[REG_LVT_TIMER] & 0xFF)
        tick.taken_ticks += ticks
    elif eois and apic.isr:
        apic.isr &= ~(1 << (apic.isr.bit_length() - 1))
    if raw & NEWDL:
        apic.adopt_deadline(tick.guest_deadline)     # written after the last native tick, if any
    elif ticks:
        apic.adopt_deadline(0)                       # the last native tick consumed it


def arm_native(apic: LocalApic, word: FastEoi) -> None:
    """Arm the vCPU's word for the state the model is left in (uc_native_tick's conditions), under the model's lock,
    after the take its entry made. TICK (and the block's expiry) only on the vCPU's own thread."""
    tick = word.native
    if tick is None:
        return
    owner = tick.on_owner_thread
    base = apic.mmio_base
    isr, irr = apic.isr, apic.irr
    # At most one vector in service, and it edge-triggered; nothing requested but, for PEND, one vector.
    one_edge = not isr or (not isr & (isr - 1) and not apic.tmr & isr)
    entry, lint0 = apic.lvt[REG_LVT_TIMER], apic.lvt[REG_LVT_LINT0]
    # No ExtINT source can interrupt outside the model's lock; the vector beats the TPR once the BASE vector is
    # EOI'd (PPR is then the TPR).
    quiet = base is not None and one_edge and apic.sw_enabled and (lint0 & LVT_MASKED or (lint0 >> 8) & 7 != DM_EXTINT)
    bits = 0
    if quiet and not irr:
        bits = FAST | (BASE if isr else 0)
    elif quiet and not irr & (irr - 1):
        vector = irr.bit_length() - 1
        # Deliverable now (above the PPR, hence the TPR): the accept that requested it has woken the CPU.
        if vector >= 16 and not apic.tmr >> vector & 1 and apic._deliverable_vector() == vector:
            bits = FAST | (BASE if isr else 0) | PEND | vector << PEND_SHIFT
    deadline_mode = apic._timer_mode() == TIMER_TSC_DEADLINE
    if deadline_mode and tick.timer_ready:
        bits |= DEADLINE
        vector = entry & 0xFF
        if owner and bits & FAST and not bits & PEND and not entry & LVT_MASKED and vector >= 16 \
                and vector >> 4 > (apic.tpr & 0xFF) >> 4:
            bits |= TICK
    if bits & FAST:
        word.point_block(base)
    if owner:
        tick.publish(bits, entry & 0xFF, apic.tsc_deadline if deadline_mode else 0)
    else:
        tick.arm_word(bits)
