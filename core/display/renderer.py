"""The frame source for consoles, screenshots and remote viewers: device state -> Frame with dirty rectangles.

Independent of Qt. `render()` is cheap when nothing changed: the device's change counter and the blink phases are
checked first, and a new frame is produced only if the picture can differ. Timing follows the VGA: the cursor
blinks every 16 vertical frames and blinking characters every 32 (at 70 Hz: 114 ms and 229 ms half periods).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from core.devices.vga import Vga
from core.devices.vga_font import CP437_TABLE
from core.display.frame import Frame, dirty_rects
from core.display.vga_raster import blink_enabled, memory_addresses, rasterise, scan_plan

CURSOR_HALF_PERIOD = 8 / 70
BLINK_HALF_PERIOD = 16 / 70


class Renderer:
    """Produces frames of one Vga. Safe to call from any one thread at a time (a lock serialises callers)."""

    def __init__(self, vga: Vga, clock: Callable[[], float] = time.monotonic) -> None:
        self.vga = vga
        self.clock = clock
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._sequence = 0
        self.last_frame: Frame | None = None

    def _phases(self) -> tuple[bool, bool]:
        now = self.clock()
        return int(now / CURSOR_HALF_PERIOD) % 2 == 0, int(now / BLINK_HALF_PERIOD) % 2 == 0

    def render(self, force: bool = False) -> Frame | None:
        """A new frame if the picture changed since the last call (or `force`), else None."""
        with self._lock:
            vga = self.vga
            cursor_on, blink_on = self._phases()
            text = vga.in_text_mode()
            key = (vga.generation, cursor_on if text else None, blink_on if text and blink_enabled(vga) else None)
            untracked = vga.vbe.enabled and vga.lfb_mapped_as_ram
            if not force and key == self._key and not untracked and self.last_frame is not None:
                return None
            raster = rasterise(vga, cursor_on, blink_on)
            self._key = key
            previous = self.last_frame.pixels if self.last_frame is not None else None
            rects = dirty_rects(previous, raster.pixels)
            if not rects and not force and self.last_frame is not None and self.last_frame.mode == raster.mode:
                return None
            self._sequence += 1
            height, width = raster.pixels.shape
            frame = Frame(width, height, raster.pixels, rects, raster.mode, self._sequence)
            self.last_frame = frame
            return frame

def text_snapshot(vga: Vga) -> list[str] | None:
    """The characters on a text-mode screen as Unicode lines (CP437 decoded, trailing spaces stripped), read
    through the CRTC addressing the guest programmed; None in graphics modes."""
    if not vga.in_text_mode():
        return None
    regs = vga.regs
    cols, rows = vga.text_geometry()
    plan = scan_plan(regs, graphics=False)
    first_lines = [i for i in range(len(plan.ma)) if plan.row_scan[i] == 0][:rows]
    if not first_lines:
        return []
    ma = plan.ma[first_lines][:, None] + np.arange(cols)
    addr = memory_addresses(regs, ma, np.zeros(len(first_lines), np.int64))
    codes = vga.memory.planes[0][addr]
    return ["".join(CP437_TABLE[c] if c else " " for c in line).rstrip() for line in codes.tolist()]
