"""Interrupt lines from devices to the interrupt controllers.

A device holds an IrqLine for its ISA IRQ / GSI and sets its level (level = True asserts it). Edge-triggered ISA
devices call pulse(). Where the line ends is the board's choice (core/board.py): KVM_IRQ_LINE into KVM's in-kernel
PIC + I/O APIC, or the user-space PIC and I/O APIC models the board builds for the software CPU. PCI devices
also send message-signalled interrupts (PCI 3.0, 6.8) to the same InterruptSink.
"""
from __future__ import annotations

from typing import Protocol


class IrqSink(Protocol):
    def set_irq(self, gsi: int, level: bool) -> None: ...


class InterruptSink(IrqSink, Protocol):
    """A machine's interrupt controllers as devices see them: interrupt lines by GSI, and MSIs (the address/data
    pair of SDM vol. 3, 10.11). Both callable from any thread."""

    def send_msi(self, address: int, data: int) -> None: ...


class IrqLine:
    """One interrupt line (GSI) into an IrqSink; remembers its level so repeated sets are cheap."""

    __slots__ = ("_sink", "gsi", "level")

    def __init__(self, sink: IrqSink, gsi: int) -> None:
        self._sink = sink
        self.gsi = gsi
        self.level = False

    def set(self, level: bool) -> None:
        level = bool(level)
        if level != self.level:
            self.level = level
            self._sink.set_irq(self.gsi, level)

    def pulse(self) -> None:
        """An edge: assert then deassert (ISA devices on the 8259A are edge-triggered)."""
        self._sink.set_irq(self.gsi, True)
        self._sink.set_irq(self.gsi, False)
        self.level = False
