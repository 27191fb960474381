"""IPIs through the xAPIC's ICR (Intel SDM vol. 3, 10.6.1): what the target sees, and that the sender's ICR
accesses never wait for its own model's lock (core/devices/lapic.py, _write_icr)."""
from __future__ import annotations

import threading

import pytest

from core.devices.apic_bus import ApicBus
from core.devices.lapic import DM_FIXED, LocalApic
from core.timers import TimerQueue

REG_SVR, REG_ICR_LO, REG_ICR_HI, REG_ESR = 0xF0, 0x300, 0x310, 0x280
ICR_DELIVERY_PENDING = 1 << 12


class Cpu:
    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1

    def nmi(self) -> None: ...
    def init(self) -> None: ...
    def sipi(self, vector: int) -> None: ...


@pytest.fixture
def apics():
    timers = TimerQueue()
    bus = ApicBus()
    made = []
    for i in range(2):
        cpu = Cpu()
        apic = LocalApic(i, timers, bus, cpu, bus_hz=25_000_000, tsc_hz=1_000_000_000, read_tsc=lambda: 0,
                         bsp=i == 0)
        apic.mmio_write(REG_SVR, 4, 0x1FF)          # software-enabled, as Linux leaves it
        bus.add(apic)
        made.append((apic, cpu))
    yield made
    timers.stop()


def send_fixed(apic: LocalApic, dest: int, vector: int) -> None:
    """Linux's xAPIC sequence (native_apic_mem_write): wait for idle, ICR2, then ICR."""
    assert not apic.mmio_read(REG_ICR_LO, 4) & ICR_DELIVERY_PENDING
    apic.mmio_write(REG_ICR_HI, 4, dest << 24)
    apic.mmio_write(REG_ICR_LO, 4, DM_FIXED << 8 | vector)


def test_a_fixed_ipi_reaches_the_addressed_apic_and_wakes_its_cpu(apics) -> None:
    (sender, _), (target, target_cpu) = apics
    send_fixed(sender, 1, 0xFB)
    assert target.irr == 1 << 0xFB and target_cpu.wakes == 1 and sender.irr == 0
    assert target.has_interrupt() and target.acknowledge() == 0xFB
    # The ICR reads back what was written, delivery status idle; ICR2 keeps the destination.
    assert sender.mmio_read(REG_ICR_LO, 4) == DM_FIXED << 8 | 0xFB
    assert sender.mmio_read(REG_ICR_HI, 4) == 1 << 24


def test_an_illegal_vector_sets_the_senders_esr_and_delivers_nothing(apics) -> None:
    (sender, _), (target, _) = apics
    send_fixed(sender, 1, 0x0F)
    assert target.irr == 0
    sender.mmio_write(REG_ESR, 4, 0)                  # latch the pending errors (SDM 10.5.3)
    assert sender.mmio_read(REG_ESR, 4) & 0x20        # send illegal vector


def test_the_icr_does_not_wait_for_the_senders_own_lock(apics) -> None:
    """Another thread in the sender's model (a timer, a device's interrupt) does not hold up its IPIs: only the
    target's lock is taken, for the delivery."""
    (sender, _), (target, _) = apics
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with sender._lock:
            held.set()
            release.wait(10)
    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        sent = threading.Thread(target=send_fixed, args=(sender, 1, 0x41))
        sent.start()
        sent.join(5)
        assert not sent.is_alive(), "the IPI waited for the sender's model lock"
        assert target.irr == 1 << 0x41
    finally:
        release.set()
        holder.join()


def test_an_x2apic_icr_write_sends_the_ipi_too(apics) -> None:
    """x2APIC mode (SDM 10.12.9): one 64-bit ICR MSR write, the destination in bits 63:32."""
    (sender, _), (target, target_cpu) = apics
    assert sender.msr_write(0x1B, sender.base_msr | 1 << 10)            # IA32_APIC_BASE.EXTD
    assert sender.msr_write(0x830, 1 << 32 | DM_FIXED << 8 | 0xFC)
    assert target.irr == 1 << 0xFC and target_cpu.wakes == 1
    assert sender.msr_read(0x830) == 1 << 32 | DM_FIXED << 8 | 0xFC
