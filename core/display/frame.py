"""A rendered picture and the rectangles that changed since the previous one.

Pixels are uint32 0xFFRRGGBB in host (little-endian) order, which is byte order B, G, R, A: Qt's Format_RGB32
takes the buffer as is, and `rgb` is a zero-copy (height, width, 3) view for Pillow or numpy users.
Dirty rectangles are found by comparing with the previous frame in bands of 16 lines, so they are exact whatever
wrote the guest's video memory (port I/O, MMIO, or a CPU writing a RAM-mapped framebuffer).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

BAND = 16

Rect = tuple[int, int, int, int]          # x, y, width, height


@dataclass
class Frame:
    width: int
    height: int
    pixels: np.ndarray                    # (height, width) uint32 0xFFRRGGBB, C-contiguous
    dirty: list[Rect] = field(default_factory=list)
    mode: str = ""
    sequence: int = 0

    @property
    def rgb(self) -> np.ndarray:
        """(height, width, 3) uint8 view in R, G, B order (not contiguous)."""
        return self.pixels.view(np.uint8).reshape(self.height, self.width, 4)[..., 2::-1]

    def to_image(self):
        """A Pillow RGB image (Pillow is imported only here)."""
        from PIL import Image
        return Image.fromarray(np.ascontiguousarray(self.rgb), "RGB")

    def save_png(self, path: str) -> None:
        self.to_image().save(path, "PNG")


class FrameSource(Protocol):
    """Anything a console can poll for pictures: core.display.renderer.Renderer for a local VM, or a client of a
    remote display. `render()` returns a new Frame when the picture changed since the previous call (or when
    `force`), else None; it must be cheap when nothing changed, because viewers poll it about 60 times a second."""

    def render(self, force: bool = False) -> Frame | None: ...


def dirty_rects(previous: np.ndarray | None, current: np.ndarray) -> list[Rect]:
    """Rectangles covering every pixel that differs. Consecutive changed bands merge into one rectangle."""
    height, width = current.shape
    if previous is None or previous.shape != current.shape:
        return [(0, 0, width, height)]
    changed = previous != current
    rows = changed.any(axis=1)
    if not rows.any():
        return []
    rects: list[Rect] = []
    run_start = -1
    run_x0, run_x1 = width, 0
    for band_start in range(0, height, BAND):
        band_end = min(band_start + BAND, height)
        if rows[band_start:band_end].any():
            cols = changed[band_start:band_end].any(axis=0)
            xs = np.flatnonzero(cols)
            if run_start < 0:
                run_start = band_start
            run_x0 = min(run_x0, int(xs[0]))
            run_x1 = max(run_x1, int(xs[-1]) + 1)
            continue
        if run_start >= 0:
            rects.append((run_x0, run_start, run_x1 - run_x0, band_start - run_start))
            run_start, run_x0, run_x1 = -1, width, 0
    if run_start >= 0:
        rects.append((run_x0, run_start, run_x1 - run_x0, height - run_start))
    return rects
