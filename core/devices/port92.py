"""System control port A at 0x92 (PS/2 "fast A20 and init"; PIIX3/PIIX4 datasheets, "Port 92h"): bit 1 is the A20
gate and bit 0, written as 1, resets the CPUs (fast INIT).

Boot loaders and firmware set bit 1 to open A20. Vireo's CPUs always address all memory (A20 is never masked),
so the bit is only remembered and read back; a 0-to-1 write of bit 0 asks the machine for a reset (through the
same path as port 0xCF9) and reads back as 0.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from core.bus import PortIoBus
from core.state import fields as f

PORT_92 = 0x92
FAST_RESET, A20_GATE = 0x01, 0x02


class SystemControlPortA:
    def __init__(self, on_reset: Callable[[], None]) -> None:
        self.on_reset = on_reset
        self._lock = threading.Lock()
        self.value = A20_GATE             # A20 is open at power-on on this platform (never masked)

    def get_state(self) -> dict:
        """Machine state (docs/machine-state.md): the A20 gate bit."""
        with self._lock:
            return {"value": self.value}

    def set_state(self, state: dict) -> None:
        checked = f.validate(state, {"value": f.Int(0, A20_GATE)}, "port92", 0)
        with self._lock:
            self.value = checked["value"] & A20_GATE

    def attach(self, pio: PortIoBus) -> None:
        pio.register(PORT_92, 1, self)

    def reset(self) -> None:
        with self._lock:
            self.value = A20_GATE

    def io_read(self, port: int, size: int) -> int:
        with self._lock:
            return self.value

    def io_write(self, port: int, size: int, value: int) -> None:
        with self._lock:
            self.value = value & A20_GATE
        if value & FAST_RESET:
            self.on_reset()
