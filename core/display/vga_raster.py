"""Turns the VGA model's state into pixels, the way the CRT controller and attribute controller scan it out.

Follows the IBM VGA Technical Reference / FreeVGA:

* CRTC addressing: the start address, the offset register (the memory address advances by twice its value per
  character row), byte / word / doubleword address modes (CRTC 0x17 bit 6, 0x14 bit 6) with the word-mode
  wrap bit (MA13 or MA15 into bit 0), the CGA/Hercules row-scan substitution into address bits 13 and 14 (CRTC
  0x17 bits 0-1), maximum scan line and scan doubling, preset row scan, and the line-compare split screen;
* text: character in plane 0, attribute in plane 1, glyph rows in plane 2 at the character map the sequencer
  selects for attribute bit 3; 8- or 9-dot cells with line-graphics replication for 0xC0-0xDF; blink (attribute
  bit 7 when the mode control enables it) and the CRTC cursor (start/end scan lines, location, disable bit);
  the underline scan line for attributes x000x001;
* graphics: 16-colour planar (one bit from each plane, colour plane enable), the CGA 4-colour shift-register
  interleave, and 256-colour mode (four plane bytes per character clock);
* the attribute controller palette, colour select (with P5/P4 select) and horizontal pel panning, then the DAC
  (6-bit entries, or 8-bit with the VBE 8BIT_DAC flag) masked by the PEL mask;
* Bochs VBE modes: 8 bpp through the DAC, 15/16/24/32 bpp direct colour, with virtual width and x/y offsets.

Output pixels are uint32 0xFFRRGGBB (numpy), built with array operations only: no per-pixel Python.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.devices.vga import Vga
from core.devices.vga_registers import (
    AC_COLOR_SELECT,
    AC_MODE_CONTROL,
    AC_PANNING,
    AC_PLANE_ENABLE,
    AR10_BLINK,
    AR10_LINE_GRAPHICS,
    AR10_P54S,
    AR10_PAN_COMPAT,
    CR14_DWORD,
    CR17_ADDRESS_WRAP,
    CR17_BYTE_MODE,
    CR_CURSOR_END,
    CR_CURSOR_START,
    CR_H_DISPLAY_END,
    CR_MAX_SCAN_LINE,
    CR_MODE_CONTROL,
    CR_OFFSET,
    CR_PRESET_ROW_SCAN,
    CR_UNDERLINE,
    GC_MISC,
    GC_MODE,
    GR05_SHIFT_256,
    GR05_SHIFT_INTERLEAVE,
    GR06_GRAPHICS,
    SEQ_CHARMAP,
    SEQ_CLOCKING,
    SR01_8DOT,
    SR01_DOT_CLOCK_HALF,
    VgaRegisters,
)

OPAQUE = np.uint32(0xFF000000)


@dataclass
class Raster:
    pixels: np.ndarray      # (height, width) uint32 0xFFRRGGBB
    mode: str               # e.g. "text 80x25", "vga 320x200x8", "vbe 1024x768x32", "blank"
    text: bool


# -- palettes ---------------------------------------------------------------------------------------------------
def dac_palette(regs: VgaRegisters) -> np.ndarray:
    """The 256 DAC entries as uint32 colours, indexed through the PEL mask."""
    dac = np.frombuffer(bytes(regs.dac), np.uint8).reshape(256, 3).astype(np.uint32)
    if not regs.dac_8bit:
        dac = ((dac & 0x3F) << 2) | ((dac & 0x3F) >> 4)
    colours = OPAQUE | (dac[:, 0] << 16) | (dac[:, 1] << 8) | dac[:, 2]
    return colours[np.arange(256) & regs.pel_mask]


def attribute_palette(regs: VgaRegisters, dac: np.ndarray) -> np.ndarray:
    """The 16 colours a 4-bit pixel value shows: attribute palette register, colour select, then the DAC."""
    ac = regs.ac
    pal = np.array(ac[:16], np.uint32) & 0x3F
    select = ac[AC_COLOR_SELECT]
    if ac[AC_MODE_CONTROL] & AR10_P54S:
        pal = (pal & 0x0F) | ((select & 0x03) << 4)
    pal = pal | ((select & 0x0C) << 4)
    return dac[pal]


# -- CRTC address generation ------------------------------------------------------------------------------------
@dataclass
class ScanPlan:
    ma: np.ndarray          # memory address (character-clock units) at the start of each output line
    row_scan: np.ndarray    # row scan counter (scan line inside the character row) of each output line
    split: np.ndarray       # True for lines below the line-compare split


def scan_plan(regs: VgaRegisters, graphics: bool) -> ScanPlan:
    crtc = regs.crtc
    physical = regs.vertical_display_end() + 1
    doubled = (crtc[CR_MAX_SCAN_LINE] >> 7) & 1
    rows_per_char = (crtc[CR_MAX_SCAN_LINE] & 0x1F) + 1
    preset = crtc[CR_PRESET_ROW_SCAN] & 0x1F
    compare = regs.line_compare()
    step = crtc[CR_OFFSET] * 2
    p = np.arange(physical)
    split = p > compare
    q = np.where(split, p - compare - 1, p)
    s = (q >> doubled) + np.where(split, 0, preset)
    row_scan = s % rows_per_char
    ma = np.where(split, 0, regs.start_address()) + (s // rows_per_char) * step
    keep = (q & doubled) == 0
    cga_substitution = (crtc[CR_MODE_CONTROL] & 3) != 3
    if graphics and not cga_substitution:
        keep &= row_scan == 0        # repeated scan lines of a row show the same memory: one output line
    return ScanPlan(ma[keep], row_scan[keep], split[keep])


def memory_addresses(regs: VgaRegisters, ma: np.ndarray, row_scan: np.ndarray) -> np.ndarray:
    """CRTC memory address -> plane offset, for an (lines, clocks) array of addresses."""
    crtc = regs.crtc
    if crtc[CR_UNDERLINE] & CR14_DWORD:
        addr = ma << 2
    elif not crtc[CR_MODE_CONTROL] & CR17_BYTE_MODE:
        wrap_bit = 15 if crtc[CR_MODE_CONTROL] & CR17_ADDRESS_WRAP else 13
        addr = (ma << 1) | ((ma >> wrap_bit) & 1)
    else:
        addr = ma
    mode = crtc[CR_MODE_CONTROL]
    if not mode & 1:
        addr = (addr & ~(1 << 13)) | ((row_scan[:, None] & 1) << 13)
    if not mode & 2:
        addr = (addr & ~(1 << 14)) | (((row_scan[:, None] >> 1) & 1) << 14)
    return addr & 0xFFFF


def _pan(regs: VgaRegisters, plan: ScanPlan, image: np.ndarray, width: int, shift: int) -> np.ndarray:
    """Apply horizontal pel panning by cropping an image rendered one character clock wider."""
    if shift == 0:
        return image[:, :width]
    out = image[:, shift:shift + width].copy()
    if regs.ac[AC_MODE_CONTROL] & AR10_PAN_COMPAT and plan.split.any():
        out[plan.split] = image[plan.split, :width]
    return out


# -- text mode --------------------------------------------------------------------------------------------------
def charmap_offsets(regs: VgaRegisters) -> tuple[int, int]:
    """Plane-2 offsets of character maps A (attribute bit 3 set) and B."""
    s = regs.seq[SEQ_CHARMAP]
    a = ((s >> 3) & 4) | ((s >> 2) & 3)
    b = ((s >> 2) & 4) | (s & 3)

    def offset(k: int) -> int:
        return (k & 3) * 0x4000 + (k >> 2) * 0x2000
    return offset(a), offset(b)


def render_text(vga: Vga, cursor_on: bool, blink_on: bool) -> Raster:
    regs = vga.regs
    planes = vga.memory.planes
    crtc, ac = regs.crtc, regs.ac
    cols = crtc[CR_H_DISPLAY_END] + 1
    cell_w = 8 if regs.seq[SEQ_CLOCKING] & SR01_8DOT else 9
    pan = ac[AC_PANNING] & 0x0F
    shift = (pan + 1) % 9 if cell_w == 9 else (pan if pan < 8 else 0)
    clocks = cols + (1 if shift else 0)
    plan = scan_plan(regs, graphics=False)
    ma = plan.ma[:, None] + np.arange(clocks)
    addr = memory_addresses(regs, ma, plan.row_scan)
    chars = planes[0][addr]
    attrs = planes[1][addr]

    map_a, map_b = charmap_offsets(regs)
    font_base = np.where(attrs & 0x08, map_a, map_b) if map_a != map_b else map_a
    glyph_rows = planes[2][(font_base + chars.astype(np.int64) * 32 + plan.row_scan[:, None]) & 0xFFFF]
    bits = np.unpackbits(glyph_rows[..., None], axis=-1).astype(bool)          # (lines, clocks, 8)
    if cell_w == 9:
        ninth = bits[..., 7] & ((chars & 0xE0) == 0xC0) if ac[AC_MODE_CONTROL] & AR10_LINE_GRAPHICS \
            else np.zeros(chars.shape, bool)
        bits = np.concatenate([bits, ninth[..., None]], axis=-1)

    fg_index = attrs & 0x0F
    bg_index = attrs >> 4
    solid = np.zeros(chars.shape, bool)                 # cells whose whole scan line shows the foreground
    underline = crtc[CR_UNDERLINE] & 0x1F
    solid |= ((attrs & 0x77) == 0x01) & (plan.row_scan[:, None] == underline)
    if ac[AC_MODE_CONTROL] & AR10_BLINK:
        bg_index = bg_index & 0x07
        if not blink_on:
            hidden = (attrs & 0x80) != 0
            bits &= ~hidden[..., None]
            solid &= ~hidden
    start, end = crtc[CR_CURSOR_START], crtc[CR_CURSOR_END] & 0x1F
    if cursor_on and not start & 0x20 and (start & 0x1F) <= end:
        on_line = (plan.row_scan >= (start & 0x1F)) & (plan.row_scan <= end) & ~plan.split
        solid |= (ma == regs.cursor_address()) & on_line[:, None]

    colours = attribute_palette(regs, dac_palette(regs))
    plane_enable = ac[AC_PLANE_ENABLE] & 0x0F
    fg = colours[fg_index & plane_enable]
    bg = colours[bg_index & plane_enable]
    lit = bits | solid[..., None]
    pixels = np.where(lit, fg[..., None], bg[..., None]).reshape(len(plan.ma), clocks * cell_w)
    pixels = _pan(regs, plan, pixels, cols * cell_w, shift)
    if regs.seq[SEQ_CLOCKING] & SR01_DOT_CLOCK_HALF:
        pixels = np.repeat(pixels, 2, axis=1)
    rows = vga.text_geometry()[1]
    return Raster(np.ascontiguousarray(pixels), f"text {cols}x{rows}", True)


# -- VGA graphics modes -----------------------------------------------------------------------------------------
def render_graphics(vga: Vga) -> Raster:
    regs = vga.regs
    planes = vga.memory.planes
    crtc, ac = regs.crtc, regs.ac
    cols = crtc[CR_H_DISPLAY_END] + 1
    pan = ac[AC_PANNING] & 0x0F
    mode256 = bool(regs.gc[GC_MODE] & GR05_SHIFT_256)
    shift = (pan >> 1) if mode256 else (pan & 7)
    clocks = cols + (1 if shift else 0)
    plan = scan_plan(regs, graphics=True)
    ma = plan.ma[:, None] + np.arange(clocks)
    addr = memory_addresses(regs, ma, plan.row_scan)
    data = planes[:, addr]                                    # (4, lines, clocks)
    lines = len(plan.ma)
    if mode256:
        index = np.moveaxis(data, 0, -1).reshape(lines, clocks * 4)
        pixels = dac_palette(regs)[index]
        width = cols * 4
        depth = 8
    else:
        bits = np.unpackbits(data[..., None], axis=-1)        # (4, lines, clocks, 8)
        if regs.gc[GC_MODE] & GR05_SHIFT_INTERLEAVE:
            # CGA 4-colour: two bits per pixel, the first four pixels from planes 0/2, the next four from 1/3.
            pair_lo = np.concatenate([bits[0][..., 0::2], bits[1][..., 0::2]], axis=-1)
            pair_lo_low = np.concatenate([bits[0][..., 1::2], bits[1][..., 1::2]], axis=-1)
            pair_hi = np.concatenate([bits[2][..., 0::2], bits[3][..., 0::2]], axis=-1)
            pair_hi_low = np.concatenate([bits[2][..., 1::2], bits[3][..., 1::2]], axis=-1)
            index = pair_lo_low | (pair_lo << 1) | (pair_hi_low << 2) | (pair_hi << 3)
        else:
            index = bits[0] | (bits[1] << 1) | (bits[2] << 2) | (bits[3] << 3)
        index = index.reshape(lines, clocks * 8) & (ac[AC_PLANE_ENABLE] & 0x0F)
        pixels = attribute_palette(regs, dac_palette(regs))[index]
        width = cols * 8
        depth = 4
    pixels = _pan(regs, plan, pixels, width, shift)
    return Raster(np.ascontiguousarray(pixels), f"vga {width}x{lines}x{depth}", False)


# -- Bochs VBE --------------------------------------------------------------------------------------------------
def render_vbe(vga: Vga) -> Raster:
    vbe = vga.vbe
    xres, yres, bpp, line, start = vbe.mode()
    buf = vbe.vram
    name = f"vbe {xres}x{yres}x{bpp}"
    if bpp == 32:
        src = np.ndarray((yres, xres), np.uint32, buffer=buf, offset=start, strides=(line, 4))
        if vbe.big_endian:
            src = src.byteswap()
        return Raster(src | OPAQUE, name, False)
    if bpp == 24:
        src = np.ndarray((yres, xres, 3), np.uint8, buffer=buf, offset=start, strides=(line, 3, 1))
        wide = src.astype(np.uint32)
        return Raster(OPAQUE | (wide[..., 2] << 16) | (wide[..., 1] << 8) | wide[..., 0], name, False)
    if bpp in (15, 16):
        src = np.ndarray((yres, xres), np.uint16, buffer=buf, offset=start, strides=(line, 2)).astype(np.uint32)
        if vbe.big_endian:
            src = ((src & 0xFF) << 8) | (src >> 8)
        if bpp == 16:
            r, g, b = (src >> 11) & 0x1F, (src >> 5) & 0x3F, src & 0x1F
            g8 = (g << 2) | (g >> 4)
        else:
            r, g, b = (src >> 10) & 0x1F, (src >> 5) & 0x1F, src & 0x1F
            g8 = (g << 3) | (g >> 2)
        r8, b8 = (r << 3) | (r >> 2), (b << 3) | (b >> 2)
        return Raster(OPAQUE | (r8 << 16) | (g8 << 8) | b8, name, False)
    src = np.ndarray((yres, xres), np.uint8, buffer=buf, offset=start, strides=(line, 1))
    return Raster(dac_palette(vga.regs)[src], name, False)


def rasterise(vga: Vga, cursor_on: bool = True, blink_on: bool = True) -> Raster:
    """The picture the adapter currently sends to the monitor."""
    regs = vga.regs
    if vga.vbe.enabled:
        raster = render_vbe(vga)
    elif regs.gc[GC_MISC] & GR06_GRAPHICS:
        raster = render_graphics(vga)
    else:
        raster = render_text(vga, cursor_on, blink_on)
    if not regs.display_enabled():
        raster = Raster(np.full(raster.pixels.shape, OPAQUE, np.uint32), "blank", raster.text)
    return raster


def blink_enabled(vga: Vga) -> bool:
    return bool(vga.regs.ac[AC_MODE_CONTROL] & AR10_BLINK)
