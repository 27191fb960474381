"""The text on a VGA text-mode picture, read back from its pixels: for tests that see a VM's screen only as a
Frame (core/display/frame.py) -- through the Host API's console() or the GUI's ConsoleView -- and not as the VGA
model's character cells (core.display.renderer.text_snapshot, which needs the machine in this process).

A text-mode frame is 80x25 cells of 9x16 pixels (720x400). Each cell's first 8 columns are its glyph, foreground
on background: the cell's pixels of one colour must form an 8x16 glyph of the font the guest's screen uses. Two
fonts are known: the one SeaBIOS's VGA BIOS (vgabios-stdvga.bin, Debian's seabios) loads into plane 2 at its mode
set, which every firmware-booted guest keeps, and Vireo's own (core/devices/vga_font.py), which direct kernel boot
loads. The VGA BIOS keeps its font as a 4 KiB table of 256 glyphs of 16 bytes; it is found in the ROM as the one
such table whose NUL and space glyphs are empty and whose full block (0xDB) is solid.

The glyph is taken to be the colour with fewer pixels (a character covers less of its cell than its background),
the other one when that fits no glyph. A cell that fits none (the blinking cursor over a character, a font the
guest loaded itself) reads as "?"."""
from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from core.devices.vga_font import cp437_unicode, glyph_bitmap
from core.display.frame import Frame

CELL_W, CELL_H, COLS, ROWS = 9, 16, 80, 25
VGA_BIOS = Path("/usr/share/seabios/vgabios-stdvga.bin")
GLYPH_BYTES = 16


def vga_bios_font(rom: bytes) -> bytes | None:
    """The 8x16 font table in a VGA BIOS image (256 glyphs of 16 rows, one byte a row), or None."""
    empty, solid = bytes(GLYPH_BYTES), b"\xff" * GLYPH_BYTES
    for offset in range(len(rom) - 256 * GLYPH_BYTES + 1):
        table = rom[offset:offset + 256 * GLYPH_BYTES]
        if (table[:GLYPH_BYTES] == empty and table[0x20 * GLYPH_BYTES:0x21 * GLYPH_BYTES] == empty
                and table[0xDB * GLYPH_BYTES:0xDC * GLYPH_BYTES] == solid):
            return table
    return None


@cache
def _glyphs() -> dict[bytes, str]:
    """Packed 8x16 bitmap -> character, the VGA BIOS's font first."""
    fonts = []
    if VGA_BIOS.is_file():
        font = vga_bios_font(VGA_BIOS.read_bytes())
        if font is not None:
            fonts.append([np.unpackbits(np.frombuffer(font, np.uint8)[c * GLYPH_BYTES:(c + 1) * GLYPH_BYTES][:, None],
                                        axis=1).astype(bool) for c in range(256)])
    fonts.append([glyph_bitmap(c) for c in range(256)])
    table: dict[bytes, str] = {}
    for font in fonts:
        for code, bitmap in enumerate(font):
            ch = " " if code in (0, 0xFF) else cp437_unicode(code)
            table.setdefault(np.packbits(bitmap).tobytes(), ch)
    return table


def _cell(cell: np.ndarray) -> str:
    colours, counts = np.unique(cell, return_counts=True)
    if len(colours) == 1:
        return " "
    if len(colours) > 2:
        return "?"
    glyphs = _glyphs()
    for colour in colours[np.argsort(counts)]:
        ch = glyphs.get(np.packbits(cell == colour).tobytes())
        if ch is not None:
            return ch
    return "?"


def frame_text(frame: Frame | None) -> list[str]:
    """The 25 lines of a text-mode frame, trailing spaces stripped; [] for None or a graphics-mode frame."""
    if frame is None or (frame.width, frame.height) != (COLS * CELL_W, ROWS * CELL_H):
        return []
    lines = []
    for row in range(ROWS):
        band = frame.pixels[row * CELL_H:(row + 1) * CELL_H]
        lines.append("".join(_cell(band[:, col * CELL_W:col * CELL_W + 8]) for col in range(COLS)).rstrip())
    return lines
