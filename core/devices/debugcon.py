"""QEMU's ISA debug console (isa-debugcon) at port 0x402, where SeaBIOS's QEMU build prints its log
(src/fw/paravirt.c qemu_debug_preinit; CONFIG_DEBUG_IO): every byte written is text.

Reading the port returns 0xE9, the value QEMU's debugcon answers (firmware uses it to detect the port). Complete
lines go to the VM's log at debug level ("firmware: ..."), and the most recent output is kept for inspection.
"""
from __future__ import annotations

import logging
import threading

from core.bus import PortIoBus
from core.state import fields as f

log = logging.getLogger("vireo.firmware")

DEBUGCON_PORT = 0x402
READBACK = 0xE9
KEEP = 64 * 1024             # bytes of recent output kept in `output`
MAX_LINE = 1024


class DebugConsole:
    def __init__(self, port: int = DEBUGCON_PORT) -> None:
        self.port = port
        self._lock = threading.Lock()
        self._line = bytearray()
        self._output = bytearray()

    def get_state(self) -> dict:
        """Machine state (docs/machine-state.md): the line being written (the log so far stays with the host)."""
        with self._lock:
            return {"line": bytes(self._line)}

    def set_state(self, state: dict) -> None:
        checked = f.validate(state, {"line": f.Bytes(max_length=1 << 16)}, "debugcon", 0)
        with self._lock:
            self._line = bytearray(checked["line"])

    def attach(self, pio: PortIoBus) -> None:
        pio.register(self.port, 1, self)

    def reset(self) -> None:
        """The log survives a reset: what the firmware printed before it is still worth reading."""

    @property
    def output(self) -> str:
        """The most recent output (up to 64 KiB), as text."""
        with self._lock:
            return self._output.decode("latin-1")

    def io_read(self, port: int, size: int) -> int:
        return READBACK

    def io_write(self, port: int, size: int, value: int) -> None:
        byte = value & 0xFF
        with self._lock:
            self._output.append(byte)
            if len(self._output) > KEEP:
                del self._output[:len(self._output) - KEEP]
            if byte == 0x0A or len(self._line) >= MAX_LINE:
                line = self._line.decode("latin-1").rstrip("\r")
                self._line.clear()
                if byte != 0x0A:
                    self._line.append(byte)
            else:
                self._line.append(byte)
                return
        log.debug("firmware: %s", line)
