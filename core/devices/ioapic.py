"""The I/O APIC (Intel 82093AA I/O APIC datasheet, 290566; the version 0x20 EOI register as in the ICH/PCH
datasheets' "EOI Register").

Memory-mapped at platform.IOAPIC_BASE: IOREGSEL at +0x00 selects a register, IOWIN at +0x10 reads or writes it, and
the EOI register at +0x40 (version 0x20 parts) ends a level-triggered interrupt by vector. Registers: 0x00 ID,
0x01 version (0x20, maximum redirection entry 23), 0x02 arbitration ID, 0x10 + 2n / 0x11 + 2n the low and high
halves of redirection entry n (vector, delivery mode, destination mode, delivery status, polarity, remote IRR,
trigger mode, mask, destination).

Interrupt inputs carry the asserted state of each line (`set_irq(pin, True)` = asserted), whatever the
electrical polarity: the ACPI tables describe every line as active-high, so the polarity bit is stored for the
guest but never inverts the input (the same convention as QEMU and KVM's I/O APIC). Edge-triggered pins send a
message on the rising edge while unmasked; a masked edge is discarded (82093AA, "Interrupt Mask"). Level-triggered
pins send a message while asserted, unmasked and with remote IRR clear, and set remote IRR; the local APIC's EOI
broadcast (or the EOI register) clears it and, if the line is still asserted, the message goes out again.

Messages go out through `deliver(dest, logical_dest_mode, delivery_mode, vector, level_triggered)`, called
outside this device's lock so the local APICs may call back into `eoi`.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from core.bus import MmioBus
from core.platform import IOAPIC_BASE, IOAPIC_PINS
from core.state import fields as f

MMIO_SIZE = 0x1000
IOREGSEL, IOWIN, IOEOI = 0x00, 0x10, 0x40
REG_ID, REG_VERSION, REG_ARB, REG_REDTBL = 0x00, 0x01, 0x02, 0x10
VERSION = 0x20

# Redirection entry bits.
RTE_VECTOR = 0xFF
RTE_DELIVERY_MODE_SHIFT = 8
RTE_DEST_LOGICAL = 1 << 11
RTE_DELIVERY_STATUS = 1 << 12
RTE_POLARITY_LOW = 1 << 13
RTE_REMOTE_IRR = 1 << 14
RTE_LEVEL = 1 << 15
RTE_MASKED = 1 << 16
RTE_DEST_SHIFT = 56
RTE_WRITABLE = 0xFF00_0000_0001_AFFF     # delivery status and remote IRR are read-only

Deliver = Callable[[int, bool, int, int, bool], None]


class IoApic:
    """An I/O APIC with `pins` inputs (24 by default). Thread-safe."""

    def __init__(self, deliver: Deliver, base: int = IOAPIC_BASE, pins: int = IOAPIC_PINS, apic_id: int = 0) -> None:
        self.deliver = deliver
        self.base = base
        self.pins = pins
        self._lock = threading.Lock()
        self._initial_id = apic_id
        self.level = [False] * pins          # current input state (asserted)
        self._power_on()

    def _power_on(self) -> None:
        self.regsel = 0
        self.id = self._initial_id & 0xF
        self.redirection = [RTE_MASKED] * self.pins
        self.messages_sent = 0

    def attach(self, mmio: MmioBus) -> None:
        mmio.register(self.base, MMIO_SIZE, self)

    def reset(self) -> None:
        with self._lock:
            self._power_on()

    # -- machine state (docs/machine-state.md) ------------------------------------------------------------------
    # `levels` is a bit per pin (asserted inputs), as KVM's kvm_ioapic_state.irr.

    STATE_VERSION = 1

    def get_state(self) -> dict:
        with self._lock:
            return {"regsel": self.regsel, "id": self.id, "redirection": list(self.redirection),
                    "levels": sum(1 << i for i, level in enumerate(self.level) if level)}

    def set_state(self, state: dict) -> None:
        checked = f.validate(state, {"regsel": f.U8, "id": f.u(4), "redirection": f.Ints(self.pins),
                                     "levels": f.u(self.pins)}, "ioapic", 0)
        with self._lock:
            self.regsel, self.id = checked["regsel"], checked["id"]
            self.redirection = checked["redirection"]
            self.level = [bool(checked["levels"] >> i & 1) for i in range(self.pins)]

    # -- interrupt inputs ---------------------------------------------------------------------------------------

    def set_irq(self, pin: int, level: bool) -> None:
        if not 0 <= pin < self.pins:
            return
        with self._lock:
            rising = level and not self.level[pin]
            self.level[pin] = level
            entry = self.redirection[pin]
            send: list[tuple[int, bool, int, int, bool]] = []
            if entry & RTE_LEVEL:
                self._service_level(pin, send)
            elif rising and not entry & RTE_MASKED:
                send.append(self._message(entry))
        self._send(send)

    def eoi(self, vector: int) -> None:
        """A level-triggered interrupt with this vector was handled (local APIC EOI broadcast or EOI register)."""
        with self._lock:
            send: list[tuple[int, bool, int, int, bool]] = []
            for pin, entry in enumerate(self.redirection):
                if entry & RTE_LEVEL and entry & RTE_REMOTE_IRR and entry & RTE_VECTOR == vector:
                    self.redirection[pin] = entry & ~RTE_REMOTE_IRR
                    self._service_level(pin, send)
        self._send(send)

    def _service_level(self, pin: int, send: list[tuple[int, bool, int, int, bool]]) -> None:
        entry = self.redirection[pin]
        if self.level[pin] and not entry & (RTE_MASKED | RTE_REMOTE_IRR):
            self.redirection[pin] = entry | RTE_REMOTE_IRR
            send.append(self._message(entry))

    @staticmethod
    def _message(entry: int) -> tuple[int, bool, int, int, bool]:
        return (entry >> RTE_DEST_SHIFT, bool(entry & RTE_DEST_LOGICAL), (entry >> RTE_DELIVERY_MODE_SHIFT) & 7,
                entry & RTE_VECTOR, bool(entry & RTE_LEVEL))

    def _send(self, messages: list[tuple[int, bool, int, int, bool]]) -> None:
        for message in messages:
            self.messages_sent += 1
            self.deliver(*message)

    # -- registers -----------------------------------------------------------------------------------------------

    def _read_register(self, index: int) -> int:
        if index == REG_ID:
            return self.id << 24
        if index == REG_VERSION:
            return ((self.pins - 1) << 16) | VERSION
        if index == REG_ARB:
            return self.id << 24             # the arbitration ID is loaded from the ID
        n, high = divmod(index - REG_REDTBL, 2)
        if REG_REDTBL <= index and n < self.pins:
            entry = self.redirection[n]
            return (entry >> 32) if high else entry & 0xFFFF_FFFF
        return 0

    def _write_register(self, index: int, value: int, send: list[tuple[int, bool, int, int, bool]]) -> None:
        if index == REG_ID:
            self.id = (value >> 24) & 0xF
            return
        n, high = divmod(index - REG_REDTBL, 2)
        if not (REG_REDTBL <= index and n < self.pins):
            return                           # version and arbitration are read-only
        old = self.redirection[n]
        if high:
            new = (old & 0xFFFF_FFFF) | (value << 32)
        else:
            new = (old & ~0xFFFF_FFFF) | value
        new = (new & RTE_WRITABLE) | (old & RTE_REMOTE_IRR)
        if not new & RTE_LEVEL:
            new &= ~RTE_REMOTE_IRR           # remote IRR has no meaning for edge-triggered entries
        self.redirection[n] = new
        if new & RTE_LEVEL:
            # Unmasking (or switching to level) while the line is asserted sends the interrupt now.
            self._service_level(n, send)

    # -- MMIO ---------------------------------------------------------------------------------------------------

    def mmio_read(self, addr: int, size: int) -> int:
        offset = addr - self.base
        with self._lock:
            dword_offset = offset & ~3
            if dword_offset == IOREGSEL:
                value = self.regsel
            elif dword_offset == IOWIN:
                value = self._read_register(self.regsel)
            else:
                value = 0                     # EOI is write-only, the rest of the page is reserved
        shift = 8 * (offset & 3)
        return (value >> shift) & ((1 << (8 * size)) - 1) if size < 8 else value >> shift

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        offset = addr - self.base
        dword_offset = offset & ~3
        shift = 8 * (offset & 3)
        width_mask = ((1 << (8 * min(size, 4))) - 1) << shift
        value = (value << shift) & width_mask & 0xFFFF_FFFF
        if dword_offset == IOEOI:
            self.eoi(value & 0xFF)
            return
        send: list[tuple[int, bool, int, int, bool]] = []
        with self._lock:
            if dword_offset == IOREGSEL:
                self.regsel = ((self.regsel & ~width_mask) | value) & 0xFF
            elif dword_offset == IOWIN:
                current = self._read_register(self.regsel)
                self._write_register(self.regsel, (current & ~width_mask) | value, send)
        self._send(send)

    # -- inspection -----------------------------------------------------------------------------------------------

    def entry(self, pin: int) -> int:
        with self._lock:
            return self.redirection[pin]
