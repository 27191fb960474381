"""Builds the CP437 8x16 text-mode font that the VGA model loads into plane 2 at power-on.

A VGA BIOS copies its 8x16 ROM font into character map 0 when it sets mode 3 (IBM VGA Technical Reference,
"Character Generator"); Linux's vgacon keeps using whatever font it finds there. We derive our own glyphs:

* letters, digits, punctuation and the CP437 symbols are rasterised once from DejaVu Sans Mono (Bitstream Vera
  licence, see resources/fonts/cp437-8x16.LICENSE.txt) with FreeType's monochrome hinting at 13 px, the size whose
  cell (7.8 px advance, 17 px line) fits an 8x16 cell with the baseline at row 12, as in the IBM font;
* the line-drawing characters 0xB3-0xDA, the shades 0xB0-0xB2 and the blocks 0xDB-0xDF are drawn procedurally so
  they meet their neighbours at the cell edges (the 9th column of 0xC0-0xDF is replicated by the attribute
  controller's line-graphics mode, which only works when the strokes reach column 7).

Run `python -m core.devices.vga_fontgen` to regenerate resources/fonts/cp437-8x16.bin (4096 bytes: 256 glyphs
of 16 rows, bit 7 = leftmost pixel). The result is committed; the engine never needs Pillow or the TTF at run time.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from core.devices.vga_font import FONT_PATH, GLYPH_HEIGHT, GLYPH_WIDTH, cp437_unicode

TTF_CANDIDATES = ("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",)
FALLBACK_TTF = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",)
FONT_SIZE = 13
BASELINE_SHIFT = -1          # DejaVu's 13 px ascent is 13; the IBM font's baseline sits on row 12

# Line-drawing characters as arm weights (up, down, left, right): 0 none, 1 single, 2 double.
BOX_ARMS: dict[int, tuple[int, int, int, int]] = {
    0xB3: (1, 1, 0, 0), 0xB4: (1, 1, 1, 0), 0xB5: (1, 1, 2, 0), 0xB6: (2, 2, 1, 0), 0xB7: (0, 2, 1, 0),
    0xB8: (0, 1, 2, 0), 0xB9: (2, 2, 2, 0), 0xBA: (2, 2, 0, 0), 0xBB: (0, 2, 2, 0), 0xBC: (2, 0, 2, 0),
    0xBD: (2, 0, 1, 0), 0xBE: (1, 0, 2, 0), 0xBF: (0, 1, 1, 0), 0xC0: (1, 0, 0, 1), 0xC1: (1, 0, 1, 1),
    0xC2: (0, 1, 1, 1), 0xC3: (1, 1, 0, 1), 0xC4: (0, 0, 1, 1), 0xC5: (1, 1, 1, 1), 0xC6: (1, 1, 0, 2),
    0xC7: (2, 2, 0, 1), 0xC8: (2, 0, 0, 2), 0xC9: (0, 2, 0, 2), 0xCA: (2, 0, 2, 2), 0xCB: (0, 2, 2, 2),
    0xCC: (2, 2, 0, 2), 0xCD: (0, 0, 2, 2), 0xCE: (2, 2, 2, 2), 0xCF: (1, 0, 2, 2), 0xD0: (2, 0, 1, 1),
    0xD1: (0, 1, 2, 2), 0xD2: (0, 2, 1, 1), 0xD3: (2, 0, 0, 1), 0xD4: (1, 0, 0, 2), 0xD5: (0, 1, 0, 2),
    0xD6: (0, 2, 0, 1), 0xD7: (2, 2, 1, 1), 0xD8: (1, 1, 2, 2), 0xD9: (1, 0, 1, 0), 0xDA: (0, 1, 0, 1),
}
CX, CY = 3, 7                 # the centre lines single strokes run along


def box_glyph(up: int, down: int, left: int, right: int) -> np.ndarray:
    """Rasterise a line-drawing character. A double arm is a 3-pixel band with its middle line carved out; bands
    reach across the centre box, so outer strokes meet outer strokes and inner meet inner at every junction."""
    h, w = GLYPH_HEIGHT, GLYPH_WIDTH
    a = 1 if 2 in (up, down) else 0          # half-width of the centre box across vertical arms
    b = 1 if 2 in (left, right) else 0
    double = np.zeros((h, w), bool)
    hollow = np.zeros((h, w), bool)
    single = np.zeros((h, w), bool)
    for weight, rows, cols, hrows, hcols in (
        (up, slice(0, CY + b + 1), slice(CX - 1, CX + 2), slice(0, CY + 1), slice(CX, CX + 1)),
        (down, slice(CY - b, h), slice(CX - 1, CX + 2), slice(CY, h), slice(CX, CX + 1)),
        (left, slice(CY - 1, CY + 2), slice(0, CX + a + 1), slice(CY, CY + 1), slice(0, CX + 1)),
        (right, slice(CY - 1, CY + 2), slice(CX - a, w), slice(CY, CY + 1), slice(CX, w)),
    ):
        if weight == 2:
            double[rows, cols] = True
            hollow[hrows, hcols] = True
        elif weight == 1:
            # A single stroke is the band's middle line, running across the centre box.
            if cols.stop - cols.start == 3:        # vertical arm
                single[rows, CX] = True
            else:
                single[CY, cols] = True
    return (double & ~hollow) | single


def shade_glyph(code: int) -> np.ndarray:
    patterns = {0xB0: (0x88, 0x22), 0xB1: (0xAA, 0x55), 0xB2: (0x77, 0xDD)}
    even, odd = patterns[code]
    rows = [even if y % 2 == 0 else odd for y in range(GLYPH_HEIGHT)]
    return np.unpackbits(np.array(rows, np.uint8)[:, None], axis=1).astype(bool)


def block_glyph(code: int) -> np.ndarray:
    g = np.zeros((GLYPH_HEIGHT, GLYPH_WIDTH), bool)
    half_h, half_w = GLYPH_HEIGHT // 2, GLYPH_WIDTH // 2
    if code == 0xDB:
        g[:, :] = True
    elif code == 0xDC:
        g[half_h:, :] = True
    elif code == 0xDD:
        g[:, :half_w] = True
    elif code == 0xDE:
        g[:, half_w:] = True
    elif code == 0xDF:
        g[:half_h, :] = True
    return g


def _load_fonts():
    from PIL import ImageFont
    primary = next((p for p in TTF_CANDIDATES if Path(p).exists()), None)
    if primary is None:
        raise SystemExit("DejaVu Sans Mono not found: apt-get install fonts-dejavu-core")
    fonts = [ImageFont.truetype(primary, FONT_SIZE)]
    fonts += [ImageFont.truetype(p, FONT_SIZE) for p in FALLBACK_TTF if Path(p).exists()]
    return fonts


def _has_glyph(font, ch: str) -> bool:
    # A character the font lacks renders as .notdef; compare against a private-use code point's rendering.
    return bytes(font.getmask(ch, mode="1")) != bytes(font.getmask("\ue000", mode="1")) or ch == " "


def rasterise(font, ch: str) -> np.ndarray:
    from PIL import Image, ImageDraw
    img = Image.new("1", (GLYPH_WIDTH, GLYPH_HEIGHT), 0)
    draw = ImageDraw.Draw(img)
    draw.fontmode = "1"            # FreeType monochrome rendering with hinting: crisp strokes on the pixel grid
    advance = font.getlength(ch)
    x = max(0, round((GLYPH_WIDTH - advance) / 2))
    left, top, right, bottom = font.getbbox(ch)
    if right - left > GLYPH_WIDTH:   # too wide (proportional fallback glyph): squeeze to the cell's left edge
        x = -left
    draw.text((x, BASELINE_SHIFT), ch, font=font, fill=1)
    return np.array(img, dtype=bool)


def build_font() -> bytes:
    fonts = _load_fonts()
    glyphs = np.zeros((256, GLYPH_HEIGHT, GLYPH_WIDTH), bool)
    for code in range(256):
        if code in BOX_ARMS:
            glyphs[code] = box_glyph(*BOX_ARMS[code])
        elif code in (0xB0, 0xB1, 0xB2):
            glyphs[code] = shade_glyph(code)
        elif 0xDB <= code <= 0xDF:
            glyphs[code] = block_glyph(code)
        elif code in (0x00, 0x20, 0xFF):
            continue                # NUL, space and NBSP are blank
        else:
            ch = cp437_unicode(code)
            font = next((f for f in fonts if _has_glyph(f, ch)), fonts[0])
            glyphs[code] = rasterise(font, ch)
    return np.packbits(glyphs, axis=2).reshape(256 * GLYPH_HEIGHT).tobytes()


def main() -> int:
    data = build_font()
    with open(FONT_PATH, "wb") as f:
        f.write(data)
    print(f"wrote {FONT_PATH} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
