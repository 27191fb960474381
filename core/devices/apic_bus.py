"""The APIC bus of one machine: the path interrupt messages take to the local APICs of the software CPU (Intel
SDM vol. 3, ch. 10), and the message-signalled interrupts PCI devices send over it.

* Messages from the I/O APIC (a redirection entry's destination, mode, vector and trigger; 82093AA I/O APIC
  datasheet, 3.2.4) and MSIs carry an 8-bit destination: physical (an APIC ID, 0xFF the broadcast, also to APICs
  in x2APIC mode) or logical (flat or cluster, SDM 10.6.2.2), with lowest-priority arbitration among the
  addressed APICs when asked (SDM 10.6.2.4: the lowest processor priority, then the lowest APIC ID).
* An MSI is the address/data pair a PCI device writes (PCI 3.0, 6.8; format in SDM 10.11.1 and 10.11.2):
  decode_msi turns it into a message, or refuses one no APIC accepts.
* EOIs of level-triggered vectors go back to the I/O APIC (SDM 10.8.5), through `on_eoi`.
* The 8259A pair's INTR output reaches every local APIC's LINT0 pin, and its interrupt-acknowledge cycle answers
  an ExtINT delivery (virtual wire mode, MP spec 1.4, 3.6.2.2): `extint`, with `extint_changed` when INTR rises.

IPIs between local APICs use the same bus (LocalApic._send_ipi, with x2APIC's 32-bit destinations).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from core.devices.lapic import DM_FIXED, DM_LOWEST, DM_SIPI, LocalApic

# Message-signalled interrupts (SDM vol. 3, 10.11): the address/data pair a PCI device writes.
MSI_ADDRESS_BASE, MSI_ADDRESS_MASK = 0xFEE0_0000, 0xFFF0_0000
MSI_ADDR_DEST_SHIFT = 12                # bits 19:12 destination ID
MSI_ADDR_REDIRECTION_HINT = 1 << 3
MSI_ADDR_DEST_LOGICAL = 1 << 2
MSI_DATA_LEVEL_TRIGGER = 1 << 15        # trigger mode; bit 14 (assert) only matters for level-triggered
MSI_DATA_LEVEL_ASSERT = 1 << 14


@dataclass(frozen=True)
class MsiMessage:
    """A decoded MSI: where it goes (8-bit destination, logical or physical), how (delivery mode, lowest-priority
    arbitration), what (vector) and its trigger mode."""

    dest: int
    logical: bool
    lowest_priority: bool
    mode: int
    vector: int
    level_triggered: bool


def decode_msi(address: int, data: int) -> MsiMessage | None:
    """Decode an MSI address/data pair (SDM vol. 3, 10.11.1 and 10.11.2); None for a message no APIC accepts:
    an address outside the 0xFEExxxxx interrupt window, a reserved delivery mode (SIPI, 011b), or the
    de-assert half of a level-triggered message (it has no effect on an APIC)."""
    if address & MSI_ADDRESS_MASK != MSI_ADDRESS_BASE or address >> 32:
        return None
    mode = (data >> 8) & 7
    if mode in (3, DM_SIPI):
        return None
    level = bool(data & MSI_DATA_LEVEL_TRIGGER)
    if level and not data & MSI_DATA_LEVEL_ASSERT:
        return None
    # The redirection hint asks for lowest-priority arbitration among the addressed CPUs (10.11.1); the
    # destination mode bit says how the destination ID is read either way, as KVM and QEMU interpret it.
    hint = bool(address & MSI_ADDR_REDIRECTION_HINT)
    return MsiMessage(dest=(address >> MSI_ADDR_DEST_SHIFT) & 0xFF, logical=bool(address & MSI_ADDR_DEST_LOGICAL),
                      lowest_priority=hint or mode == DM_LOWEST, mode=DM_FIXED if mode == DM_LOWEST else mode,
                      vector=data & 0xFF, level_triggered=level)


class ExtIntSource(Protocol):
    """The interrupt controller wired to LINT0 (the 8259A pair): its INTR output and its acknowledge cycle."""

    def has_interrupt(self) -> bool: ...

    def acknowledge(self) -> int: ...


class ApicBus:
    """Every local APIC of one machine, for IPIs and I/O APIC messages; `eoi` forwards EOIs of level-triggered
    vectors to the I/O APIC; `extint` is the PIC on every LINT0 (None: nothing drives the pin)."""

    def __init__(self) -> None:
        self.apics: list[LocalApic] = []
        self.on_eoi: Callable[[int], None] | None = None
        self.extint: ExtIntSource | None = None

    def add(self, apic: LocalApic) -> None:
        self.apics.append(apic)

    def all(self) -> list[LocalApic]:
        return list(self.apics)

    def match(self, dest: int, logical: bool, x2apic: bool = False) -> list[LocalApic]:
        return [a for a in self.apics if destination_matches(a, dest, logical, x2apic or a.x2apic)]

    def deliver(self, dest: int, logical: bool, mode: int, vector: int, level: bool) -> None:
        """A message from the I/O APIC (redirection entry), as the IoApic `deliver` callback."""
        self._deliver_8bit(dest, logical, mode, vector, level, mode == DM_LOWEST)

    def deliver_msi(self, msg: MsiMessage) -> None:
        """A decoded message-signalled interrupt (see decode_msi)."""
        self._deliver_8bit(msg.dest, msg.logical, msg.mode, msg.vector, msg.level_triggered, msg.lowest_priority)

    def _deliver_8bit(self, dest: int, logical: bool, mode: int, vector: int, level: bool, lowest: bool) -> None:
        # I/O APIC and MSI messages carry an 8-bit destination: physical 0xFF is the broadcast, also to APICs in
        # x2APIC mode (whose own broadcast ID is 0xFFFFFFFF).
        if not logical and dest == 0xFF:
            targets = [a for a in self.apics if a.hw_enabled]
        else:
            targets = self.match(dest, logical)
        if lowest and targets:
            targets = [min(targets, key=lambda a: (a._ppr(), a.apic_id))]
        for apic in targets:
            apic.accept(DM_FIXED if mode == DM_LOWEST else mode, vector, level)

    def eoi(self, vector: int) -> None:
        if self.on_eoi is not None:
            self.on_eoi(vector)

    def extint_changed(self) -> None:
        """The PIC's INTR output rose: an interrupt for every APIC whose LINT0 is in ExtINT mode."""
        for apic in self.apics:
            apic.pic_changed()


def destination_matches(apic: LocalApic, dest: int, logical: bool, x2apic: bool) -> bool:
    """Does a message with this destination address reach `apic` (SDM 10.6.2)?"""
    if not apic.hw_enabled:
        return False
    if not logical:
        broadcast = 0xFFFF_FFFF if x2apic else 0xFF
        return dest == broadcast or dest == apic.apic_id
    if apic.x2apic:
        ldr = ((apic.apic_id >> 4) << 16) | (1 << (apic.apic_id & 0xF))
        if dest == 0xFFFF_FFFF:
            return True
        return (dest >> 16) == (ldr >> 16) and bool(dest & ldr & 0xFFFF)
    ldr = apic.ldr >> 24
    if dest == 0xFF:
        return True
    if (apic.dfr >> 28) == 0xF:                 # flat model
        return bool(dest & ldr)
    return (dest >> 4) == (ldr >> 4) and bool(dest & ldr & 0xF)   # cluster model
