"""The board (core/board.py): who owns the interrupt controllers on each accelerator, how device lines and MSIs are
routed to them (the PC's routing: ISA IRQ n to PIC pin n and I/O APIC pin n, the PIT's IRQ 0 to I/O APIC pin 2),
and that a board reset brings them back to power-on state. No guest runs: the board is built, driven, closed."""
from __future__ import annotations

import pytest

from core import platform
from core.board import Board, PcInterruptControllers, wire_interrupt_controllers
from core.bus import MmioBus, PortIoBus
from core.machine import MachineConfig
from core.memory import GuestMemory
from core.timers import TimerQueue
from tests.helpers.accel import ACCELS, require_accel

RTE_MASKED = 1 << 16            # I/O APIC redirection entry: masked
RTE_REMOTE_IRR = 1 << 14        # set while a level-triggered interrupt is in service


def build(accel: str, cpus: int = 2) -> Board:
    require_accel(accel)
    return Board(MachineConfig(kernel="unused: the board loads no kernel", memory_mib=32, cpus=cpus, accel=accel),
                 accel, serial_output=lambda data: None, request_reset=lambda: None, request_poweroff=lambda: None,
                 report_fault=lambda reason: None)


@pytest.mark.parametrize("accel", ACCELS)
def test_the_board_uses_the_accelerators_controllers_only_when_it_has_them(accel: str) -> None:
    board = build(accel)
    try:
        assert board.accel is not None and len(board.vcpus) == 2
        if accel == "kvm":
            assert board.interrupt_controllers is None and board.interrupts is board.accel
        else:
            pc = board.interrupt_controllers
            assert isinstance(pc, PcInterruptControllers) and board.interrupts is pc
            assert pc.apic_bus.apics == [v.lapic for v in board.vcpus]   # the CPUs' local APICs joined its bus
            assert pc.apic_bus.extint is pc.pic                            # the PIC on every LINT0
    finally:
        board.close()


def unmask_ioapic_pin(board: Board, pin: int, vector: int, level: bool) -> None:
    """Program I/O APIC redirection entry `pin` through its MMIO window: fixed delivery to APIC 0."""
    lo = vector | (1 << 15 if level else 0)
    for index, value in ((0x10 + 2 * pin, lo), (0x11 + 2 * pin, 0)):
        board.mmio.write(platform.IOAPIC_BASE, 4, index)
        board.mmio.write(platform.IOAPIC_BASE + 0x10, 4, value)


def test_software_cpu_lines_reach_the_pic_and_the_io_apic_as_on_a_pc() -> None:
    board = build("software")
    try:
        pc = board.interrupt_controllers
        assert pc is not None
        lapic = board.vcpus[0].lapic
        unmask_ioapic_pin(board, 4, 0x34, level=False)
        board.serial.irq.set(True)                     # COM1: ISA IRQ 4
        assert pc.pic.state()["irr"] & 1 << 4
        assert lapic.irr & 1 << 0x34
        unmask_ioapic_pin(board, 2, 0x52, level=False)
        pc.pit.irq.set(True)                           # the PIT: ISA IRQ 0, I/O APIC pin 2
        assert pc.pic.state()["irr"] & 1
        assert lapic.irr & 1 << 0x52
        unmask_ioapic_pin(board, 16, 0x61, level=True)
        board.interrupts.set_irq(16, True)             # PCI INTA#: the I/O APIC only, no PIC input above 15
        assert pc.ioapic.entry(16) & RTE_REMOTE_IRR and lapic.irr & 1 << 0x61
        assert pc.pic.state()["irr"] == 1 << 4 | 1
        board.interrupts.send_msi(0xFEE0_0000, 0x71)   # an MSI to APIC 0 goes over the board's APIC bus
        assert lapic.irr & 1 << 0x71
    finally:
        board.close()


def test_board_reset_brings_the_controllers_back_to_power_on() -> None:
    board = build("software")
    try:
        pc = board.interrupt_controllers
        assert pc is not None
        power_on_imr = pc.pic.state()["imr"]
        board.pio.write(platform.PIC_MASTER_PORT + 1, 1, 0x5A)    # OCW1: a new mask
        unmask_ioapic_pin(board, 5, 0x45, level=False)
        assert pc.pic.state()["imr"] & 0xFF == 0x5A and not pc.ioapic.entry(5) & RTE_MASKED
        board.reset()
        assert pc.pic.state()["imr"] == power_on_imr
        assert pc.ioapic.entry(5) & RTE_MASKED
    finally:
        board.close()


def test_a_software_vcpu_needs_the_boards_apic_bus_first() -> None:
    require_accel("software")
    from core.hypervisor.select import create_accelerator
    memory, pio, mmio, timers = GuestMemory(16 << 20), PortIoBus(), MmioBus(), TimerQueue()
    accel = create_accelerator("software", memory, pio, mmio, 1, timers)
    try:
        with pytest.raises(RuntimeError, match="connect_apic_bus"):
            accel.create_vcpu(0)
        assert wire_interrupt_controllers(accel, pio, mmio, timers) is not None
        assert accel.create_vcpu(0).lapic in accel.apic_bus.apics
    finally:
        accel.close()
        timers.stop()
        memory.close()
