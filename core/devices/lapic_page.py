"""A local APIC's state as the 1 KiB register page (Intel SDM vol. 3, 10.4.1, table 10-1 offsets), the layout
KVM_GET_LAPIC/KVM_SET_LAPIC use, so one record serves both accelerators: ID, TPR, LDR, DFR, SVR, ISR/TMR/IRR
(eight 32-bit words each, 16 bytes apart), ESR, ICR, the LVT entries, the timer's initial count, current count
(TMCCT, what is left of the period: a restore restarts the timer from it, as KVM_SET_LAPIC does) and divide
configuration. IA32_APIC_BASE and IA32_TSC_DEADLINE travel with the vCPU's MSRs.

This module reads and writes the software CPU's LocalApic model (core/devices/lapic.py) through that page.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from core.devices import lapic as L
from core.state.fields import StateError
from core.timers import now_ns

if TYPE_CHECKING:
    from core.devices.lapic import LocalApic

PAGE_SIZE = 0x400


def _put(page: bytearray, reg: int, value: int) -> None:
    struct.pack_into("<I", page, reg, value & 0xFFFF_FFFF)


def _get(page: bytes, reg: int) -> int:
    return struct.unpack_from("<I", page, reg)[0]


def _put256(page: bytearray, base: int, bits: int) -> None:
    for i in range(8):
        _put(page, base + 16 * i, bits >> (32 * i))


def _get256(page: bytes, base: int) -> int:
    return sum(_get(page, base + 16 * i) << (32 * i) for i in range(8))


def lapic_to_page(apic: LocalApic) -> bytes:
    """The model's registers as the page (call with the vCPUs stopped)."""
    page = bytearray(PAGE_SIZE)
    with apic._lock:
        _put(page, L.REG_ID, (apic.apic_id & 0xFF) << 24)
        _put(page, L.REG_VERSION, L.APIC_VERSION)
        _put(page, L.REG_TPR, apic.tpr)
        _put(page, L.REG_LDR, apic.ldr)
        _put(page, L.REG_DFR, apic.dfr)
        _put(page, L.REG_SVR, apic.svr)
        _put256(page, L.REG_ISR, apic.isr)
        _put256(page, L.REG_TMR, apic.tmr)
        _put256(page, L.REG_IRR, apic.irr)
        _put(page, L.REG_ESR, apic.esr)
        _put(page, L.REG_ICR_LO, apic.icr)
        _put(page, L.REG_ICR_HI, apic.icr >> 32 if not apic.x2apic else (apic.icr >> 32) << 24)
        for reg, value in apic.lvt.items():
            _put(page, reg, value)
        _put(page, L.REG_TIMER_INITIAL, apic.timer_initial)
        _put(page, L.REG_TIMER_CURRENT, apic._timer_current())
        _put(page, L.REG_TIMER_DIVIDE, apic.timer_divide_reg)
    return bytes(page)


def page_to_lapic(apic: LocalApic, page: bytes, base_msr: int, tsc_deadline: int, where: str) -> None:
    """Load the model from the page (checked) and IA32_APIC_BASE; restart its timer where the page says."""
    if len(page) != PAGE_SIZE:
        raise StateError(f"{where}: the APIC register page is {len(page)} bytes, expected {PAGE_SIZE}")
    if base_msr & ~(0xF_FFFF_F000 | L.APIC_BASE_ENABLE | L.APIC_BASE_EXTD | L.APIC_BASE_BSP) or \
            base_msr & L.APIC_BASE_EXTD and not base_msr & L.APIC_BASE_ENABLE:
        raise StateError(f"{where}: IA32_APIC_BASE {base_msr:#x} is not a valid value")
    divide = _get(page, L.REG_TIMER_DIVIDE)
    if divide & ~0xB:
        raise StateError(f"{where}: timer divide configuration {divide:#x} has reserved bits set")
    initial, current = _get(page, L.REG_TIMER_INITIAL), _get(page, L.REG_TIMER_CURRENT)
    if current > initial:
        raise StateError(f"{where}: timer current count {current} is above the initial count {initial}")
    with apic._lock:
        apic._timer.cancel()
        apic.base_msr = (base_msr & ~L.APIC_BASE_BSP) | (apic.base_msr & L.APIC_BASE_BSP)
        x2 = apic.x2apic
        apic.apic_id = _get(page, L.REG_ID) >> 24 if not x2 else apic.apic_id
        apic.tpr = _get(page, L.REG_TPR) & 0xFF
        apic.ldr = _get(page, L.REG_LDR) & 0xFF00_0000
        apic.dfr = _get(page, L.REG_DFR) | 0x0FFF_FFFF
        apic.svr = _get(page, L.REG_SVR) & (0x1FF | L.SVR_SUPPRESS_EOI_BROADCAST)
        apic.isr = _get256(page, L.REG_ISR)
        apic.tmr = _get256(page, L.REG_TMR)
        apic.irr = _get256(page, L.REG_IRR)
        apic.esr = _get(page, L.REG_ESR) & 0xEF
        apic.esr_pending = 0
        high = _get(page, L.REG_ICR_HI)
        apic.icr = (_get(page, L.REG_ICR_LO) & ~L.LVT_DELIVERY_STATUS) | \
            ((high >> 24 if x2 else high & 0xFF00_0000) << 32)
        for reg in L.LVT_REGS:
            apic.lvt[reg] = _get(page, reg) & L._LVT_WRITABLE[reg]
        apic.timer_initial = initial
        apic.timer_divide_reg = divide
        apic.tsc_deadline = 0
        mode = apic._timer_mode()
        if mode == L.TIMER_TSC_DEADLINE:
            apic.tsc_deadline = tsc_deadline
            apic._arm_deadline()
        elif initial and (current or mode == L.TIMER_PERIODIC):
            # Started as long ago as the counts say: the next expiry comes after `current` ticks.
            now = now_ns()
            apic.timer_start_ns = now - apic._ticks_to_ns(initial - (current or initial))
            apic._timer.arm(apic.timer_start_ns + apic._ticks_to_ns(initial))
    apic.cpu.wake()
