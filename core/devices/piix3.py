"""The PIIX3 PCI-to-ISA bridge (Intel 82371SB datasheet, 290550: function 0, PCI 8086:7000) and its PIRQ router.

The bridge is function 0 of the southbridge's slot (00:01.0, as on QEMU's i440FX machine); the IDE controller is
function 1. What firmware and PIC-mode guests care about is the PIRQ route control registers PIRQRC[A:D] at
configuration offsets 0x60-0x63 (datasheet 2.2.9): bit 7 set disables routing, bits 3:0 name the ISA IRQ (3-7,
9-12, 14, 15) a PCI interrupt line PIRQx# is steered to. SeaBIOS programs them (10, 10, 11, 11 on QEMU) and
writes the IRQ into each function's interrupt line register; a guest without an I/O APIC then takes PCI
interrupts on the 8259A pins those registers name, level-triggered through the ELCR (ports 0x4D0/0x4D1, modelled
by the PIC).

Vireo keeps PCI INTx on I/O APIC pins 16-19 as well (platform.PCI_INTX_GSIS, what the DSDT's _PRT announces), so
an APIC-mode guest is unaffected by the routing: a PIRQ steered to ISA IRQ n additionally drives pin n, which an
APIC-mode guest leaves masked.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from core.devices.pci import PciDevice

PIRQ_ROUTE_BASE = 0x60           # PIRQRC[A:D] at 0x60-0x63
PIRQ_DISABLED = 0x80
ROUTABLE_IRQS = frozenset({3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15})


class Piix3IsaBridge(PciDevice):
    """00:01.0: the ISA bridge. `set_isa_irq(irq, level)` drives an ISA interrupt line (the board's GSI < 16)."""

    def __init__(self, set_isa_irq: Callable[[int, bool], None]) -> None:
        # Class 06/01/00 (ISA bridge); header type 0x80 once function 1 joins (PciBus sets it).
        super().__init__(0x8086, 0x7000, 0x060100)
        self._set_isa_irq = set_isa_irq
        self._lock = threading.Lock()
        self._pirq_levels = [False] * 4
        self._isa_levels: dict[int, bool] = {}
        for i in range(4):
            self.wmask[PIRQ_ROUTE_BASE + i] = 0x8F
        self._reset_routes()

    def _reset_routes(self) -> None:
        for i in range(4):
            self.config[PIRQ_ROUTE_BASE + i] = PIRQ_DISABLED

    def isa_irq_for(self, pirq: int) -> int | None:
        """The ISA IRQ PIRQ A-D (0-3) is steered to, or None while its routing is disabled or names no IRQ."""
        value = self.config[PIRQ_ROUTE_BASE + pirq]
        if value & PIRQ_DISABLED or (value & 0xF) not in ROUTABLE_IRQS:
            return None
        return value & 0xF

    def set_pirq(self, pirq: int, level: bool) -> None:
        """PCI interrupt line PIRQx# (already the OR of the functions sharing it) changed."""
        with self._lock:
            self._pirq_levels[pirq] = level
            self._update_isa_lines()

    def _update_isa_lines(self) -> None:
        # An ISA line is the wired-OR of every PIRQ steered to it: shared, level-triggered.
        want: dict[int, bool] = {}
        for pirq, level in enumerate(self._pirq_levels):
            irq = self.isa_irq_for(pirq)
            if irq is not None:
                want[irq] = want.get(irq, False) or level
        for irq in set(want) | set(self._isa_levels):
            level = want.get(irq, False)
            if self._isa_levels.get(irq, False) != level:
                self._set_isa_irq(irq, level)
            self._isa_levels[irq] = level
        self._isa_levels = {irq: level for irq, level in self._isa_levels.items() if level or irq in want}

    def config_written(self, offset: int, size: int) -> None:
        if offset < PIRQ_ROUTE_BASE + 4 and offset + size > PIRQ_ROUTE_BASE:
            with self._lock:
                self._update_isa_lines()    # re-steering moves an asserted line to its new IRQ

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._reset_routes()
            self._update_isa_lines()

