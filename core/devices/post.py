"""The POST diagnostic port 0x80 (IBM PC/AT BIOS convention; ISA "POST code" cards latch what is written there).

Firmware writes progress codes to it and Linux writes to it as an I/O delay (arch/x86 io_delay, "0x80" method),
so writes must be cheap. The last code is kept and read back, as a POST card with a read-back latch shows it, and
a short history is kept for diagnosing a guest that stops during boot.
"""
from __future__ import annotations

import threading
from collections import deque

from core.bus import PortIoBus
from core.platform import POST_PORT
from core.state import fields as f

HISTORY = 64


class PostPort:
    """Port 0x80: writes are recorded as `last_code` (and in `history`); reads return the last code."""

    def __init__(self, port: int = POST_PORT) -> None:
        self.port = port
        self._lock = threading.Lock()
        self.last_code = 0
        self.writes = 0
        self.history: deque[int] = deque(maxlen=HISTORY)

    def get_state(self) -> dict:
        """Machine state (docs/machine-state.md): the last POST code."""
        with self._lock:
            return {"last_code": self.last_code}

    def set_state(self, state: dict) -> None:
        checked = f.validate(state, {"last_code": f.U8}, "post", 0)
        with self._lock:
            self.last_code = checked["last_code"]

    def attach(self, pio: PortIoBus) -> None:
        pio.register(self.port, 1, self)

    def reset(self) -> None:
        with self._lock:
            self.last_code = 0
            self.history.clear()

    def io_read(self, port: int, size: int) -> int:
        with self._lock:
            return self.last_code

    def io_write(self, port: int, size: int, value: int) -> None:
        with self._lock:
            code = value & 0xFF
            self.writes += 1
            if code != self.last_code or not self.history:
                self.history.append(code)
            self.last_code = code
