"""The VGA model driven through its ports and memory windows as a guest drives it, checked on rendered pixels."""
from __future__ import annotations

import random
import time

import numpy as np
import pytest

from core.bus import MmioBus, PortIoBus
from core.devices.pci import PciBus
from core.devices.vga import Vga
from core.devices.vga_font import glyph_bitmap
from core.devices.vga_registers import MODE_03H, MODE_12H, MODE_13H, ModeRegisters, ega_palette_64
from core.devices.vga_screen_info import screen_info_for_text_mode
from core.display.renderer import Renderer, text_snapshot
from core.display.vga_raster import rasterise

LFB_ADDR, MMIO_ADDR = 0xFD00_0000, 0xFEBF_0000


class Machine:
    """Just the buses and the adapter, wired as the Machine wires them."""

    def __init__(self) -> None:
        self.pio = PortIoBus()
        self.mmio = MmioBus()
        self.pci = PciBus(self.pio, self.mmio, lambda gsi, level: None)
        self.pci.attach(self.pio)
        self.vga = Vga(self.pci)
        self.vga.attach(self.pio, self.mmio)

    def outb(self, port: int, value: int) -> None:
        self.pio.write(port, 1, value)

    def outw(self, port: int, value: int) -> None:
        self.pio.write(port, 2, value)

    def inb(self, port: int) -> int:
        return self.pio.read(port, 1)

    def inw(self, port: int) -> int:
        return self.pio.read(port, 2)

    def pci_config_write(self, slot: int, reg: int, value: int) -> None:
        self.pio.write(0xCF8, 4, 0x8000_0000 | (slot << 11) | reg)
        self.pio.write(0xCFC, 4, value)

    def pci_config_read(self, slot: int, reg: int) -> int:
        self.pio.write(0xCF8, 4, 0x8000_0000 | (slot << 11) | reg)
        return self.pio.read(0xCFC, 4)

    def set_mode(self, mode: ModeRegisters) -> None:
        """Program a register set through the ports, in the order a VGA BIOS does."""
        self.outb(0x3C2, mode.misc)
        self.outw(0x3C4, 0x0100)                      # synchronous reset while the clocking changes
        for i, v in enumerate(mode.seq[1:], start=1):
            self.outb(0x3C4, i)
            self.outb(0x3C5, v)
        self.outw(0x3C4, 0x0300)
        self.outb(0x3D4, 0x11)
        self.outb(0x3D5, mode.crtc[0x11] & 0x7F)       # unlock CRTC 0-7
        for i, v in enumerate(mode.crtc):
            self.outb(0x3D4, i)
            self.outb(0x3D5, v)
        for i, v in enumerate(mode.gc):
            self.outw(0x3CE, i | (v << 8))
        self.inb(0x3DA)
        for i, v in enumerate(mode.ac):
            self.outb(0x3C0, i)
            self.outb(0x3C0, v)
        self.outb(0x3C0, 0x20)

    def set_dac(self, index: int, r: int, g: int, b: int) -> None:
        self.outb(0x3C8, index)
        for v in (r, g, b):
            self.outb(0x3C9, v)

    def frame(self, **kw):
        return rasterise(self.vga, **kw).pixels


def rgb(pixel: int) -> tuple[int, int, int]:
    return (pixel >> 16) & 0xFF, (pixel >> 8) & 0xFF, pixel & 0xFF


def ega(index: int) -> int:
    pal = ega_palette_64()
    r, g, b = (pal[3 * index + i] for i in range(3))
    return 0xFF000000 | ((r << 2 | r >> 4) << 16) | ((g << 2 | g >> 4) << 8) | (b << 2 | b >> 4)


@pytest.fixture
def m() -> Machine:
    return Machine()


# -- text mode -------------------------------------------------------------------------------------------------
def test_power_on_is_80x25_text_with_cleared_screen(m):
    pixels = m.frame(cursor_on=False)
    assert pixels.shape == (400, 720)
    assert m.vga.text_geometry() == (80, 25)
    assert np.all(pixels == ega(0))
    assert text_snapshot(m.vga) == [""] * 25


def test_glyph_and_attribute_become_expected_pixels(m):
    row, col = 2, 5
    m.mmio.write(0xB8000 + 2 * (row * 80 + col), 2, 0x1E41)       # 'A', yellow on blue
    pixels = m.frame(cursor_on=False)
    cell = pixels[row * 16:(row + 1) * 16, col * 9:(col + 1) * 9]
    glyph = glyph_bitmap(0x41)
    yellow, blue = ega(0x3E), ega(0x01)                             # attribute palette 14 -> 0x3E, 1 -> 0x01
    assert rgb(yellow) == (255, 255, 85) and rgb(blue) == (0, 0, 170)
    expected = np.where(glyph, yellow, blue)
    assert np.array_equal(cell[:, :8], expected)
    assert np.all(cell[:, 8] == blue)                               # 9th dot is background for letters
    assert glyph.sum() > 10
    assert text_snapshot(m.vga)[row] == "     A"


def test_line_graphics_replicate_ninth_dot(m):
    m.mmio.write(0xB8000, 2, 0x07C4)                                 # '─'
    cell = m.frame(cursor_on=False)[0:16, 0:9]
    lit = cell != ega(0)
    assert np.array_equal(lit[:, 8], lit[:, 7]) and lit[:, 8].any()
    m.outb(0x3C4, 1)
    m.outb(0x3C5, 0x01)                                              # 8-dot characters
    assert m.frame(cursor_on=False).shape == (400, 640)


def test_guest_loaded_font_in_plane_2_is_used(m):
    # What vgacon_do_font_op does: planar access to plane 2 at 0xA0000, then restore odd/even text addressing.
    m.outw(0x3C4, 0x0402)
    m.outw(0x3C4, 0x0704)
    m.outw(0x3CE, 0x0204)
    m.outw(0x3CE, 0x0005)
    m.outw(0x3CE, 0x0006)
    glyph = [0xFF, 0x81, 0x81, 0xFF] * 4
    for i, b in enumerate(glyph):
        m.mmio.write(0xA0000 + 0x41 * 32 + i, 1, b)
    assert m.mmio.read(0xA0000 + 0x41 * 32 + 1, 1) == 0x81
    m.outw(0x3C4, 0x0302)
    m.outw(0x3C4, 0x0304)
    m.outw(0x3CE, 0x0004)
    m.outw(0x3CE, 0x1005)
    m.outw(0x3CE, 0x0E06)
    m.mmio.write(0xB8000, 2, 0x0741)
    cell = m.frame(cursor_on=False)[0:16, 0:8] != ega(0)
    expected = np.unpackbits(np.array(glyph, np.uint8)[:, None], axis=1).astype(bool)
    assert np.array_equal(cell, expected)


def test_cursor_shape_position_and_disable(m):
    m.outw(0x3D4, 0x050A)          # cursor start scan line 5
    m.outw(0x3D4, 0x090B)          # cursor end 9
    pos = 3 * 80 + 10
    m.outw(0x3D4, ((pos >> 8) << 8) | 0x0E)
    m.outw(0x3D4, ((pos & 0xFF) << 8) | 0x0F)
    m.mmio.write(0xB8000 + 2 * pos, 2, 0x0E20)                       # space, yellow: the cursor takes the fg
    on = m.frame(cursor_on=True)
    cell = on[48:64, 90:99]
    assert np.all(cell[5:10] == ega(0x3E))
    assert np.all(cell[:5] == ega(0)) and np.all(cell[10:] == ega(0))
    assert np.all(m.frame(cursor_on=False)[48:64, 90:99] == ega(0))
    assert m.vga.cursor_position() == (10, 3)
    m.outw(0x3D4, 0x250A)          # bit 5: cursor off
    assert np.all(m.frame(cursor_on=True)[48:64, 90:99] == ega(0))


def test_blink_attribute(m):
    m.mmio.write(0xB8000, 2, 0xC4DB)                                 # full block, red on blinking red... bg 4
    on = m.frame(cursor_on=False, blink_on=True)[0:16, 0:8]
    off = m.frame(cursor_on=False, blink_on=False)[0:16, 0:8]
    assert np.all(on == ega(0x04))                                   # fg 4 (red)
    assert np.all(off == ega(0x04))                                  # bg 0xC & 7 = 4 too: blinks between equals
    m.mmio.write(0xB8000, 2, 0x8EDB)                                 # yellow on black, blinking
    assert np.all(m.frame(cursor_on=False, blink_on=True)[0:16, 0:8] == ega(0x3E))
    assert np.all(m.frame(cursor_on=False, blink_on=False)[0:16, 0:8] == ega(0))
    m.inb(0x3DA)
    m.outb(0x3C0, 0x30)                                              # mode control, keep palette source
    m.outb(0x3C0, 0x04)                                              # blink off: bit 7 = bright background
    assert np.all(m.frame(cursor_on=False, blink_on=False)[0:16, 0:8] == ega(0x3E))


def test_start_address_scrolls_and_snapshot_follows(m):
    m.mmio.write(0xB8000 + 160, 2, 0x0758)                           # 'X' at row 1
    m.outw(0x3D4, 0x000C)
    m.outw(0x3D4, 0x500D)                                            # start at word 80: row 1 becomes row 0
    assert text_snapshot(m.vga)[0] == "X"


# -- graphics modes ---------------------------------------------------------------------------------------------
def test_mode_13h_palette_and_pixel(m):
    m.set_mode(MODE_13H)
    m.set_dac(5, 63, 0, 32)
    m.outb(0x3C7, 5)
    assert [m.inb(0x3C9) for _ in range(3)] == [63, 0, 32]
    m.mmio.write(0xA0000 + 20 * 320 + 10, 1, 5)
    m.mmio.write(0xA0000 + 199 * 320 + 319, 1, 5)
    pixels = m.frame()
    assert pixels.shape == (200, 320)
    assert rgb(pixels[20, 10]) == (255, 0, 130)
    assert rgb(pixels[199, 319]) == (255, 0, 130)
    assert rgb(pixels[20, 11]) == (0, 0, 0)
    assert m.mmio.read(0xA0000 + 20 * 320 + 10, 1) == 5
    assert text_snapshot(m.vga) is None
    m.outb(0x3C6, 0x00)                                              # PEL mask 0: every pixel shows DAC 0
    assert rgb(m.frame()[20, 10]) == (0, 0, 0)


def test_planar_640x480_write_modes(m):
    m.set_mode(MODE_12H)
    for a in range(0, 240, 8):                                       # clear three lines, as a BIOS mode set does
        m.mmio.write(0xA0000 + a, 8, 0)
    # Write mode 2: the CPU byte's low nibble is the colour, the bit mask picks pixels 2 and 3 of byte 0.
    m.outw(0x3CE, 0x0205)
    m.outw(0x3CE, 0x3008)
    m.mmio.read(0xA0000, 1)                                          # load the latches first
    m.mmio.write(0xA0000, 1, 0x0C)
    # Write mode 0 with set/reset on all planes: colour 9 across byte 1 (pixels 8-15) of line 1.
    m.outw(0x3CE, 0x0005)
    m.outw(0x3CE, 0xFF08)
    m.outw(0x3CE, 0x0900)
    m.outw(0x3CE, 0x0F01)
    m.mmio.write(0xA0000 + 80 + 1, 1, 0x00)
    m.outw(0x3CE, 0x0001)
    pixels = m.frame()
    assert pixels.shape == (480, 640)
    assert [rgb(p) for p in pixels[0, :4]] == [(0, 0, 0), (0, 0, 0), rgb(ega(0x3C)), rgb(ega(0x3C))]
    assert all(rgb(p) == rgb(ega(0x39)) for p in pixels[1, 8:16])
    assert rgb(pixels[1, 7]) == (0, 0, 0)
    # Read mode 1: colour compare for colour 9 finds all eight pixels of that byte.
    m.outw(0x3CE, 0x0905)
    m.outw(0x3CE, 0x0902)
    m.outw(0x3CE, 0x0F07)
    assert m.mmio.read(0xA0000 + 81, 1) == 0xFF
    assert m.mmio.read(0xA0000, 1) == 0x00
    # Read mode 0 with read map select returns one plane; write mode 1 copies all latches.
    m.outw(0x3CE, 0x0005)
    m.outw(0x3CE, 0x0304)
    assert m.mmio.read(0xA0000 + 81, 1) == 0xFF                      # colour 9 has plane 3 set
    m.outw(0x3CE, 0x0104)
    assert m.mmio.read(0xA0000 + 81, 1) == 0x00                      # and plane 1 clear
    m.outw(0x3CE, 0x0105)
    m.mmio.write(0xA0000 + 160, 1, 0)                                # latches (from offset 81) -> offset 160
    assert all(rgb(p) == rgb(ega(0x39)) for p in m.frame()[2, :8])


def test_data_rotate_and_logical_ops(m):
    m.set_mode(MODE_12H)
    m.outw(0x3C4, 0x0102)                                            # plane 0 only
    m.mmio.write(0xA0000, 1, 0xF0)
    m.outw(0x3CE, 0x1803)                                            # XOR with latches, no rotate
    m.mmio.read(0xA0000, 1)
    m.mmio.write(0xA0000, 1, 0xFF)
    m.outw(0x3CE, 0x0004)
    assert m.mmio.read(0xA0000, 1) == 0x0F
    m.outw(0x3CE, 0x0403)                                            # rotate right by 4, replace
    m.mmio.write(0xA0000, 1, 0x12)
    assert m.mmio.read(0xA0000, 1) == 0x21


# -- Bochs VBE and the PCI function ----------------------------------------------------------------------------
def dispi_write(m, index, value):
    m.outw(0x1CE, index)
    m.outw(0x1CF, value)


def dispi_read(m, index):
    m.outw(0x1CE, index)
    return m.inw(0x1CF)


def test_pci_identity_and_bars(m):
    slot = m.vga.pci.slot
    assert m.pci_config_read(slot, 0x00) == 0x1111_1234
    assert m.pci_config_read(slot, 0x08) >> 8 == 0x030000
    assert m.pci_config_read(slot, 0x2C) == 0x1100_1AF4
    m.pci_config_write(slot, 0x10, 0xFFFF_FFFF)
    assert m.pci_config_read(slot, 0x10) == (0x1_0000_0000 - 16 * 1024 * 1024) | 0x8   # 16 MiB prefetchable
    m.pci_config_write(slot, 0x18, 0xFFFF_FFFF)
    assert m.pci_config_read(slot, 0x18) == 0xFFFF_F000


def map_bars(m):
    m.vga.pci.set_firmware_resources(LFB_ADDR, MMIO_ADDR)


def test_vbe_mode_set_and_lfb_pixels(m):
    map_bars(m)
    assert dispi_read(m, 0) == 0xB0C5
    assert dispi_read(m, 0xA) * 65536 == 16 * 1024 * 1024
    # The sequence bochs-drm's bochs_hw_setmode uses.
    dispi_write(m, 4, 0)
    dispi_write(m, 3, 32)
    dispi_write(m, 1, 800)
    dispi_write(m, 2, 600)
    dispi_write(m, 5, 0)
    dispi_write(m, 6, 800)
    dispi_write(m, 7, 16 * 1024 * 1024 // (800 * 4))
    dispi_write(m, 8, 0)
    dispi_write(m, 9, 0)
    dispi_write(m, 4, 0x41)
    m.mmio.write(LFB_ADDR + (10 * 800 + 20) * 4, 4, 0x00123456)
    m.mmio.write(LFB_ADDR + (599 * 800 + 799) * 4, 8, 0x00FF0000_0000FF00)   # wraps to next pixel? no: last 2
    pixels = m.frame()
    assert pixels.shape == (600, 800)
    assert rgb(pixels[10, 20]) == (0x12, 0x34, 0x56)
    assert rgb(pixels[599, 799]) == (0, 0xFF, 0)
    assert m.vga.in_text_mode() is False
    # Y offset (page flip / panning) moves the picture.
    dispi_write(m, 9, 10)
    assert rgb(m.frame()[0, 20]) == (0x12, 0x34, 0x56)
    # Disabling returns to the VGA text screen.
    dispi_write(m, 4, 0)
    assert m.frame().shape == (400, 720)


def test_vbe_16_and_8_bpp_and_getcaps(m):
    map_bars(m)
    dispi_write(m, 4, 0x02)
    assert (dispi_read(m, 1), dispi_read(m, 2), dispi_read(m, 3)) == (16000, 12000, 32)
    dispi_write(m, 3, 16)
    dispi_write(m, 1, 640)
    dispi_write(m, 2, 480)
    dispi_write(m, 4, 0x41)
    m.mmio.write(LFB_ADDR + 2 * 5, 2, 0xF800)                         # pure red in 5:6:5
    assert rgb(m.frame()[0, 5]) == (255, 0, 0)
    dispi_write(m, 4, 0)
    dispi_write(m, 3, 8)
    dispi_write(m, 4, 0x41 | 0x20)                                    # 8-bit DAC
    m.set_dac(7, 200, 100, 50)
    m.mmio.write(LFB_ADDR + 3, 1, 7)
    assert rgb(m.frame()[0, 3]) == (200, 100, 50)


def test_vbe_enable_clears_memory_unless_noclearmem(m):
    map_bars(m)
    m.mmio.write(LFB_ADDR, 4, 0xFFFFFF)
    dispi_write(m, 3, 32)
    dispi_write(m, 4, 0x41 | 0x80)
    assert m.mmio.read(LFB_ADDR, 4) == 0xFFFFFF
    dispi_write(m, 4, 0)
    dispi_write(m, 4, 0x41)
    assert m.mmio.read(LFB_ADDR, 4) == 0


def test_mmio_bar_mirrors_dispi_and_vga_ports(m):
    map_bars(m)
    assert m.mmio.read(MMIO_ADDR + 0x500, 2) == 0xB0C5
    assert m.mmio.read(MMIO_ADDR + 0x500 + 2 * 0xA, 2) == 256
    assert m.mmio.read(MMIO_ADDR + 0x600, 4) == 8                     # QEMU extension registers present
    m.mmio.write(MMIO_ADDR + 0x500 + 2 * 1, 2, 1024)
    m.mmio.write(MMIO_ADDR + 0x500 + 2 * 2, 2, 768)
    m.mmio.write(MMIO_ADDR + 0x500 + 2 * 3, 2, 32)
    m.mmio.write(MMIO_ADDR + 0x500 + 2 * 4, 2, 0x41)
    assert m.frame().shape == (768, 1024)
    # bochs_hw_blank: misc output through the mirror, read input status to reset the flip-flop, AC index 0x20.
    m.mmio.write(MMIO_ADDR + 0x400 + 0x02, 1, 0x01)
    m.mmio.read(MMIO_ADDR + 0x400 + 0x1A, 1)
    m.mmio.write(MMIO_ADDR + 0x400, 1, 0x00)
    assert np.all(m.frame() == 0xFF000000)                            # blanked
    m.mmio.read(MMIO_ADDR + 0x400 + 0x1A, 1)
    m.mmio.write(MMIO_ADDR + 0x400, 1, 0x20)
    m.mmio.write(LFB_ADDR, 4, 0x0000FF)
    assert rgb(m.frame()[0, 0]) == (0, 0, 255)
    m.mmio.write(MMIO_ADDR + 0x604, 4, 0xBEBEBEBE)                    # big-endian BGRX
    assert rgb(m.frame()[0, 0]) == (0, 0, 0)
    m.mmio.write(LFB_ADDR, 4, 0xFF000000)                              # bytes 00 00 00 FF = X R G B
    assert rgb(m.frame()[0, 0]) == (0, 0, 255)


def test_banked_window_while_vbe_enabled(m):
    dispi_write(m, 3, 8)
    dispi_write(m, 1, 640)
    dispi_write(m, 2, 480)
    dispi_write(m, 4, 0x01)
    dispi_write(m, 5, 1)                                              # second 64 KiB bank
    m.mmio.write(0xA0000 + 16, 1, 0x2A)
    assert m.vga.vbe.vram[65536 + 16] == 0x2A


def test_multibyte_window_stores_match_byte_stores_in_every_state():
    """A 2- or 4-byte store to the window (text consoles take a shortcut for them) leaves the planes and the
    change counter exactly as the same bytes stored one at a time, across memory maps, addressing, write modes,
    set/reset, rotation, bit mask, map mask and the VBE bank."""
    rnd = random.Random(12)
    fast, ref = Machine(), Machine()
    for trial in range(400):
        seq4 = rnd.choice((0x02, 0x06, 0x0E, 0x02, 0x02))                    # odd/even (text), planar, chain-4
        gc5 = rnd.choice((0x10, 0x00, 0x10, 0x01, 0x02, 0x03, 0x08))
        gc6 = rnd.choice((0x0E, 0x0C, 0x08, 0x04, 0x00, 0x0E))              # memory map select (+ graphics bit)
        regs = [(0x3C4, 2, rnd.choice((0x03, 0x0F, 0x01, 0x02, 0x04, 0x00))), (0x3C4, 4, seq4),
                (0x3CE, 5, gc5), (0x3CE, 6, gc6), (0x3CE, 8, rnd.choice((0xFF, 0xFF, 0x0F))),
                (0x3CE, 1, rnd.choice((0, 0, 0x05))), (0x3CE, 0, rnd.randrange(16)),
                (0x3CE, 3, rnd.choice((0, 0, 0x08, 0x02)))]
        misc = rnd.choice((0x67, 0x67, 0x65)) if trial % 7 else 0x65              # 0x65: no CPU access
        for mach in (fast, ref):
            mach.outb(0x3C2, misc)
            for port, index, value in regs:
                mach.outb(port, index)
                mach.outb(port + 1, value)
            dispi_write(mach, 4, 0x01 if trial % 11 == 0 else 0x00)
        fast.vga.memory.latch = list(ref.vga.memory.latch)
        for _ in range(8):
            size = rnd.choice((2, 4, 2, 1))
            addr = rnd.choice((0xB8000, 0xA0000, 0xB0000)) + rnd.randrange(0x8000) - (size - 1) * (trial % 3 == 0)
            value = rnd.getrandbits(8 * size)
            fast.mmio.write(addr, size, value)
            for i in range(size):
                ref.vga.memory.write((addr - 0xA0000 + i) % 0x20000, (value >> (8 * i)) & 0xFF)
        assert bytes(fast.vga.memory.vram) == bytes(ref.vga.memory.vram), trial
        assert fast.vga.vbe.vram[:0x20000] == ref.vga.vbe.vram[:0x20000], trial
        assert fast.vga.generation == ref.vga.generation, trial


# -- registers --------------------------------------------------------------------------------------------------
def test_attribute_flipflop_reset_by_input_status(m):
    m.outb(0x3C0, 0x11)      # index (flip-flop now at data)
    m.inb(0x3DA)             # reset: next write is an index again
    m.outb(0x3C0, 0x31)
    m.outb(0x3C0, 0x05)
    assert m.vga.regs.ac[0x11] == 0x05
    assert m.inb(0x3C0) == 0x31


def test_crtc_write_protect_and_mono_ports(m):
    m.outw(0x3D4, 0x9011)                                             # protect on
    m.outw(0x3D4, 0x0101)
    assert m.vga.regs.crtc[1] == 0x4F
    assert m.inb(0x3B5) == 0xFF                                       # colour mode: mono CRTC absent
    m.outb(0x3C2, 0x66)                                               # mono I/O addresses
    m.outb(0x3B4, 0x0E)
    m.outb(0x3B5, 0x12)
    assert m.vga.regs.crtc[0x0E] == 0x12


def test_vertical_retrace_toggles(m):
    # Retrace lasts 2 of a 70 Hz frame's 449 lines (~64 us in 14.3 ms), so poll like a guest waiting for it: for
    # several frames of host time, not a fixed count of reads (a fast host did 20000 reads inside one frame).
    seen: set[int] = set()
    deadline = time.monotonic() + 1.0
    while seen != {0, 8} and time.monotonic() < deadline:
        seen.add(m.inb(0x3DA) & 0x08)
    assert seen == {0, 8}


def test_renderer_dirty_rectangles_and_idle(m):
    clock = [0.0]
    r = Renderer(m.vga, clock=lambda: clock[0])
    first = r.render()
    assert first.dirty == [(0, 0, 720, 400)]
    assert r.render() is None                                         # nothing changed
    m.mmio.write(0xB8000 + 2 * (10 * 80 + 40), 2, 0x0F41)
    frame = r.render()
    assert len(frame.dirty) == 1
    x, y, w, h = frame.dirty[0]
    assert 360 <= x and x + w <= 369 and w >= 5 and (y, h) == (160, 16)   # inside the cell, the glyph's width
    clock[0] = 8 / 70 + 0.001                                         # cursor phase flips: its cell is dirty
    frame = r.render()
    assert frame is not None and frame.dirty == [(0, 0, 9, 16)]
    assert frame.rgb.shape == (400, 720, 3)


def test_screen_info_for_text_mode(m):
    m.outw(0x3D4, 0x000E)
    m.outw(0x3D4, (2 * 80 + 7) << 8 | 0x0F)
    data = screen_info_for_text_mode(m.vga).to_bytes()
    assert len(data) == 0x40
    assert data[0] == 7 and data[1] == 2                              # orig_x, orig_y
    assert data[6] == 3 and data[7] == 80 and data[0x0E] == 25 and data[0x0F] == 1
    assert int.from_bytes(data[0x10:0x12], "little") == 16
    assert data[0x0A] != 0x10


def test_reset_restores_text_mode(m):
    m.set_mode(MODE_13H)
    dispi_write(m, 4, 0x41)
    m.vga.reset()
    assert m.frame().shape == (400, 720)
    m.set_mode(MODE_03H)
    assert text_snapshot(m.vga) == [""] * 25


def test_hostile_register_and_memory_values_never_break_rendering(m):
    rng = random.Random(1234)
    map_bars(m)
    ports = list(range(0x3B0, 0x3E0)) + [0x1CE, 0x1CF]
    for round_ in range(30):
        for _ in range(200):
            port = rng.choice(ports)
            if rng.random() < 0.5:
                m.pio.write(port, rng.choice((1, 2)), rng.getrandbits(16))
            else:
                m.pio.read(port, rng.choice((1, 2)))
            m.mmio.write(0xA0000 + rng.randrange(0x20000), rng.choice((1, 2, 4, 8)), rng.getrandbits(64))
            m.mmio.write(MMIO_ADDR + rng.randrange(0x1000), rng.choice((1, 2, 4)), rng.getrandbits(32))
        raster = rasterise(m.vga, cursor_on=bool(round_ & 1), blink_on=bool(round_ & 2))
        assert raster.pixels.ndim == 2 and raster.pixels.dtype == np.uint32
        text_snapshot(m.vga)
