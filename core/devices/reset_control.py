"""The PIIX3/PIIX4 Reset Control Register at port 0xCF9 (Intel 82371AB PIIX4 datasheet, "RC - Reset Control
Register").

Bit 1 (SRST) picks a hard (1) or soft (0) reset, bit 2 (RCPU) starts it when it goes from 0 to 1. Linux's
`reboot=pci` writes 0x02 and then 0x06; the FADT's RESET_REG names this port with value 0x06, which is how Linux
reboots an ACPI machine by default. Both kinds of reset restart the virtual machine from its power-on state (a
soft reset only asserts INIT on real hardware, but nothing in a VM depends on devices surviving it).

The register is one byte wide and sits inside the PCI configuration-address dword (0xCF8-0xCFB): the PCI host
bridge decodes only 32-bit accesses at 0xCF8, byte accesses at 0xCF9 reach this register, which is why it
registers the single port 0xCF9.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from core.bus import PortIoBus
from core.platform import RESET_CONTROL_PORT
from core.state import fields as f

RC_SRST, RC_RCPU, RC_FULL = 0x02, 0x04, 0x08


class ResetControl:
    """`on_reset` is called (outside the lock) when RCPU goes from 0 to 1."""

    def __init__(self, on_reset: Callable[[], None]) -> None:
        self.on_reset = on_reset
        self._lock = threading.Lock()
        self.value = 0
        self.last_reset_hard: bool | None = None

    def get_state(self) -> dict:
        """Machine state (docs/machine-state.md): the reset control register."""
        with self._lock:
            return {"value": self.value}

    def set_state(self, state: dict) -> None:
        checked = f.validate(state, {"value": f.U8}, "reset_control", 0)
        with self._lock:
            self.value = checked["value"]

    def attach(self, pio: PortIoBus) -> None:
        pio.register(RESET_CONTROL_PORT, 1, self)

    def reset(self) -> None:
        with self._lock:
            self.value = 0

    def io_read(self, port: int, size: int) -> int:
        with self._lock:
            return self.value

    def io_write(self, port: int, size: int, value: int) -> None:
        with self._lock:
            value &= RC_SRST | RC_RCPU | RC_FULL
            fire = bool(value & RC_RCPU and not self.value & RC_RCPU)
            self.value = value
            if fire:
                # The reset clears RCPU on the chip; clearing it here as well keeps the next reset request
                # working even if the machine's reset path does not reach this device.
                self.last_reset_hard = bool(value & RC_SRST)
                self.value = value & ~RC_RCPU
        if fire:
            self.on_reset()
