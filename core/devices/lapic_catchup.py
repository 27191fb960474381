"""What a software CPU's local APIC learns outside its own lock: EOIs written natively (Intel SDM vol. 3,
10.8.5; core/hypervisor/uc_fast_eoi.py) and a timer expiry signalled to its vCPU's thread (10.5.4;
core/hypervisor/vcpu_signal_timer.py). The model (core/devices/lapic.py) wraps its lock in CatchUpLock, whose
every entry first applies them, so it never judges an interrupt against a stale ISR or IRR.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from core.devices.lapic import LocalApic


class FastEoi(Protocol):
    """A vCPU's record of EOIs written without the model (core/hypervisor/uc_fast_eoi.FastEoiWord)."""
    def take(self) -> int: ...                        # how many were written since the last take; disarms
    def arm(self, mmio_base: int) -> None: ...        # the next EOI to this page may be written natively


class PolledTimer(Protocol):
    """A local APIC timer fired by polling, on the vCPU's thread (core/hypervisor/vcpu_signal_timer)."""
    deadline: int | None
    def poll(self) -> None: ...                       # fire it if its deadline has passed
    def arm(self, deadline_ns: int) -> None: ...
    def cancel(self) -> None: ...


class CatchUpLock:
    """The model's lock once part of its state changes outside it -- EOIs written natively (uc_fast_eoi), a timer
    expiry signalled to the vCPU's thread (vcpu_signal_timer): taking it first applies those, so the model never
    looks at a stale ISR or IRR."""
    __slots__ = ("_lock", "_apic")

    def __init__(self, lock: threading.RLock, apic: LocalApic) -> None:
        self._lock, self._apic = lock, apic

    def __enter__(self) -> CatchUpLock:
        self._lock.acquire()
        self._apic._catch_up()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
