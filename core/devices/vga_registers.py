"""The VGA register file and its I/O ports (IBM VGA Technical Reference; FreeVGA "VGA/SVGA Video Programming").

Ports 0x3B0-0x3DF: miscellaneous output (write 0x3C2, read 0x3CC), input status #0 (0x3C2) and #1 (0x3BA/0x3DA,
which also resets the attribute controller's index/data flip-flop), feature control (write 0x3BA/0x3DA, read
0x3CA), video subsystem enable (0x3C3), the sequencer (0x3C4/0x3C5), the graphics controller (0x3CE/0x3CF), the
CRT controller (0x3B4/0x3B5 or 0x3D4/0x3D5, chosen by misc output bit 0, "I/O address select"), the attribute
controller (0x3C0 index/data through the flip-flop, 0x3C1 read) and the DAC (PEL mask 0x3C6, read index 0x3C7
and DAC state, write index 0x3C8, data 0x3C9 in red/green/blue triplets).

Reserved register bits read back as 0; CRTC registers 0-7 are write-protected while CRTC 0x11 bit 7 is set (except
the line-compare bit 8 in register 7), as the reference describes. Input status #1 reports vertical retrace and
display-disabled from the host clock, timed like a 70 Hz 400-line frame, so guests that wait for retrace proceed.

Also here: the register sets the IBM VGA BIOS programs for the standard modes 03h (80x25 text), 12h (640x480x16)
and 13h (320x200x256), and its default DAC contents; the device model uses mode 03h as its power-on state.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# Sequencer registers.
SEQ_RESET, SEQ_CLOCKING, SEQ_MAP_MASK, SEQ_CHARMAP, SEQ_MEMORY_MODE = range(5)
SEQ_MASKS = (0x03, 0x3D, 0x0F, 0x3F, 0x0E, 0x00, 0x00, 0x00)
SR01_8DOT, SR01_DOT_CLOCK_HALF, SR01_SCREEN_OFF = 0x01, 0x08, 0x20
SR04_EXTENDED, SR04_ODD_EVEN_DISABLE, SR04_CHAIN4 = 0x02, 0x04, 0x08

# Graphics controller registers.
GC_SET_RESET, GC_ENABLE_SET_RESET, GC_COLOR_COMPARE, GC_DATA_ROTATE, GC_READ_MAP = range(5)
GC_MODE, GC_MISC, GC_COLOR_DONT_CARE, GC_BIT_MASK = 5, 6, 7, 8
GC_MASKS = (0x0F, 0x0F, 0x0F, 0x1F, 0x03, 0x7B, 0x0F, 0x0F, 0xFF)
GR05_READ_MODE1, GR05_HOST_ODD_EVEN, GR05_SHIFT_INTERLEAVE, GR05_SHIFT_256 = 0x08, 0x10, 0x20, 0x40
GR06_GRAPHICS = 0x01

# CRT controller registers (the ones the renderer and cursor use).
CR_H_DISPLAY_END, CR_OVERFLOW, CR_PRESET_ROW_SCAN, CR_MAX_SCAN_LINE = 0x01, 0x07, 0x08, 0x09
CR_CURSOR_START, CR_CURSOR_END, CR_START_HI, CR_START_LO = 0x0A, 0x0B, 0x0C, 0x0D
CR_CURSOR_HI, CR_CURSOR_LO = 0x0E, 0x0F
CR_V_RETRACE_END, CR_V_DISPLAY_END, CR_OFFSET, CR_UNDERLINE, CR_MODE_CONTROL, CR_LINE_COMPARE = \
    0x11, 0x12, 0x13, 0x14, 0x17, 0x18
NUM_CRTC = 0x19
CR11_PROTECT = 0x80
CR14_DWORD = 0x40
CR17_BYTE_MODE, CR17_ADDRESS_WRAP = 0x40, 0x20

# Attribute controller registers.
AC_MODE_CONTROL, AC_OVERSCAN, AC_PLANE_ENABLE, AC_PANNING, AC_COLOR_SELECT = 0x10, 0x11, 0x12, 0x13, 0x14
NUM_AC = 0x15
AC_MASKS = (0x3F,) * 16 + (0xEF, 0xFF, 0x3F, 0x0F, 0x0F)
AR10_GRAPHICS, AR10_LINE_GRAPHICS, AR10_BLINK, AR10_PAN_COMPAT, AR10_P54S = 0x01, 0x04, 0x08, 0x20, 0x80
AR_PALETTE_SOURCE = 0x20          # index register bit 5: the display uses the palette (0 blanks the screen)

MISC_COLOR, MISC_RAM_ENABLE = 0x01, 0x02
ST01_DISPLAY_DISABLED, ST01_V_RETRACE = 0x01, 0x08

# Timing of the host-clock retrace model: 70 Hz frames of 449 lines, 400 displayed (the mode 3 timing).
FRAME_NS = 1_000_000_000 // 70
LINE_NS = FRAME_NS // 449
V_RETRACE_START_NS = 412 * LINE_NS
V_RETRACE_END_NS = 414 * LINE_NS
H_BLANK_FROM_NS = LINE_NS * 80 // 100


@dataclass(frozen=True)
class ModeRegisters:
    """Everything a BIOS writes to set a standard mode."""

    misc: int
    seq: tuple[int, ...]
    crtc: tuple[int, ...]
    gc: tuple[int, ...]
    ac: tuple[int, ...]


# The IBM VGA BIOS parameter tables for the standard modes (VGA Technical Reference, "BIOS mode tables").
MODE_03H = ModeRegisters(
    misc=0x67,
    seq=(0x03, 0x00, 0x03, 0x00, 0x02),
    crtc=(0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F, 0x00, 0x4F, 0x0D, 0x0E, 0x00, 0x00, 0x00, 0x00,
          0x9C, 0x8E, 0x8F, 0x28, 0x1F, 0x96, 0xB9, 0xA3, 0xFF),
    gc=(0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0E, 0x00, 0xFF),
    ac=(0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F,
        0x0C, 0x00, 0x0F, 0x08, 0x00),
)
MODE_12H = ModeRegisters(
    misc=0xE3,
    seq=(0x03, 0x01, 0x0F, 0x00, 0x06),
    crtc=(0x5F, 0x4F, 0x50, 0x82, 0x54, 0x80, 0x0B, 0x3E, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
          0xEA, 0x8C, 0xDF, 0x28, 0x00, 0xE7, 0x04, 0xE3, 0xFF),
    gc=(0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x0F, 0xFF),
    ac=(0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F,
        0x01, 0x00, 0x0F, 0x00, 0x00),
)
MODE_13H = ModeRegisters(
    misc=0x63,
    seq=(0x03, 0x01, 0x0F, 0x00, 0x0E),
    crtc=(0x5F, 0x4F, 0x50, 0x82, 0x54, 0x80, 0xBF, 0x1F, 0x00, 0x41, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
          0x9C, 0x8E, 0x8F, 0x28, 0x40, 0x96, 0xB9, 0xA3, 0xFF),
    gc=(0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x05, 0x0F, 0xFF),
    ac=(0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F,
        0x41, 0x00, 0x0F, 0x00, 0x00),
)


def ega_palette_64() -> bytes:
    """The 64 EGA colours a VGA BIOS loads into DAC 0-63 for the 16-colour modes: index bits are r'g'b'RGB, a
    primary bit is worth 2/3 of full scale and a secondary bit 1/3 (6-bit DAC values 42 and 21)."""
    out = bytearray()
    for i in range(64):
        for primary, secondary in ((2, 5), (1, 4), (0, 3)):
            out.append(42 * ((i >> primary) & 1) + 21 * ((i >> secondary) & 1))
    return bytes(out)


class VgaRegisters:
    """The register file and port decode. `generation` counts changes that can alter the picture; the memory and
    VBE models bump it too, so the renderer can skip frames where nothing changed."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.generation = 0
        # Called after a write to misc output, a sequencer or a graphics controller register (or the VBE enable):
        # the registers that decide how the memory window decodes (vga_text_window.TextWindow.registers_changed).
        self.on_decode_change: Callable[[], None] | None = None
        self.dac_8bit = False             # set by the Bochs VBE ENABLE register's 8BIT_DAC flag
        self.reset()

    def reset(self) -> None:
        self.misc = 0
        self.seq = [0] * 8
        self.gc = [0] * 16
        self.crtc = [0] * 32
        self.ac = [0] * 32
        self.seq_index = self.gc_index = self.crtc_index = 0
        self.ac_index = 0
        self.ac_flipflop = False          # False: next 0x3C0 write is an index
        self.feature_control = 0
        self.subsystem_enable = 1
        self.dac = bytearray(768)
        self.dac_read_index = self.dac_write_index = 0
        self.dac_component = 0
        self.dac_latch = [0, 0, 0]
        self.dac_state = 0                # 0: write mode, 3: read mode (DAC state register)
        self.pel_mask = 0xFF
        self.load_mode(MODE_03H)
        self.dac[:192] = ega_palette_64()
        self.generation += 1

    def load_mode(self, mode: ModeRegisters) -> None:
        """Program a whole register set at once, as the BIOS mode-set does."""
        self.misc = mode.misc
        self.seq[:len(mode.seq)] = mode.seq
        self.crtc[:len(mode.crtc)] = mode.crtc
        self.gc[:len(mode.gc)] = mode.gc
        self.ac[:len(mode.ac)] = mode.ac
        self.ac_index = AR_PALETTE_SOURCE
        self.generation += 1

    # -- derived values ---------------------------------------------------------------------------------------
    @property
    def color_io(self) -> bool:
        return bool(self.misc & MISC_COLOR)

    def vertical_display_end(self) -> int:
        c = self.crtc
        return c[CR_V_DISPLAY_END] | ((c[CR_OVERFLOW] & 0x02) << 7) | ((c[CR_OVERFLOW] & 0x40) << 3)

    def line_compare(self) -> int:
        c = self.crtc
        return c[CR_LINE_COMPARE] | ((c[CR_OVERFLOW] & 0x10) << 4) | ((c[CR_MAX_SCAN_LINE] & 0x40) << 3)

    def start_address(self) -> int:
        return (self.crtc[CR_START_HI] << 8) | self.crtc[CR_START_LO]

    def cursor_address(self) -> int:
        return (self.crtc[CR_CURSOR_HI] << 8) | self.crtc[CR_CURSOR_LO]

    def display_enabled(self) -> bool:
        """False while the screen is blanked: sequencer in reset, screen-off bit, or the attribute controller
        detached from the palette (index bit 5 clear, which guests use while reloading it)."""
        return ((self.seq[SEQ_RESET] & 3) == 3 and not self.seq[SEQ_CLOCKING] & SR01_SCREEN_OFF
                and bool(self.ac_index & AR_PALETTE_SOURCE))

    # -- port I/O ---------------------------------------------------------------------------------------------
    def io_read(self, port: int, size: int) -> int:
        value = 0
        for i in range(size):
            value |= self.read_port(port + i) << (8 * i)
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        # A 16-bit OUT to an index port writes the index and then the data port, as the ISA bus splits it.
        for i in range(size):
            self.write_port(port + i, (value >> (8 * i)) & 0xFF)

    def _inactive(self, port: int) -> bool:
        """CRTC and input status #1 answer only at the address misc output bit 0 selects (mono 3Bx, colour 3Dx)."""
        if port in (0x3B4, 0x3B5, 0x3BA):
            return self.color_io
        if port in (0x3D4, 0x3D5, 0x3DA):
            return not self.color_io
        return False

    def read_port(self, port: int) -> int:
        if self._inactive(port):
            return 0xFF
        with self.lock:
            if port == 0x3C0:
                return self.ac_index
            if port == 0x3C1:
                idx = self.ac_index & 0x1F
                return self.ac[idx] if idx < NUM_AC else 0
            if port == 0x3C2:
                return 0x00                 # input status #0: no CRT interrupt pending, switch sense low
            if port == 0x3C3:
                return self.subsystem_enable
            if port == 0x3C4:
                return self.seq_index
            if port == 0x3C5:
                return self.seq[self.seq_index] if self.seq_index < 5 else 0
            if port == 0x3C6:
                return self.pel_mask
            if port == 0x3C7:
                return self.dac_state
            if port == 0x3C8:
                return self.dac_write_index
            if port == 0x3C9:
                return self._dac_read()
            if port == 0x3CA:
                return self.feature_control
            if port == 0x3CC:
                return self.misc
            if port == 0x3CE:
                return self.gc_index
            if port == 0x3CF:
                return self.gc[self.gc_index] if self.gc_index < 9 else 0
            if port in (0x3B4, 0x3D4):
                return self.crtc_index
            if port in (0x3B5, 0x3D5):
                return self.crtc[self.crtc_index] if self.crtc_index < NUM_CRTC else 0
            if port in (0x3BA, 0x3DA):
                self.ac_flipflop = False
                return self._input_status_1()
        return 0xFF

    def write_port(self, port: int, value: int) -> None:
        if self._inactive(port):
            return
        with self.lock:
            self.generation += 1
            if port == 0x3C0:
                if not self.ac_flipflop:
                    self.ac_index = value & 0x3F
                else:
                    idx = self.ac_index & 0x1F
                    if idx < NUM_AC:
                        self.ac[idx] = value & AC_MASKS[idx]
                self.ac_flipflop = not self.ac_flipflop
            elif port == 0x3C2:
                self.misc = value
            elif port == 0x3C3:
                self.subsystem_enable = value & 1
            elif port == 0x3C4:
                self.seq_index = value & 0x07
            elif port == 0x3C5:
                self.seq[self.seq_index] = value & SEQ_MASKS[self.seq_index]
            elif port == 0x3C6:
                self.pel_mask = value
            elif port == 0x3C7:
                self.dac_read_index = value
                self.dac_component = 0
                self.dac_state = 3
            elif port == 0x3C8:
                self.dac_write_index = value
                self.dac_component = 0
                self.dac_state = 0
            elif port == 0x3C9:
                self._dac_write(value)
            elif port == 0x3CE:
                self.gc_index = value & 0x0F
            elif port == 0x3CF:
                if self.gc_index < 9:
                    self.gc[self.gc_index] = value & GC_MASKS[self.gc_index]
            elif port in (0x3B4, 0x3D4):
                self.crtc_index = value & 0x3F
            elif port in (0x3B5, 0x3D5):
                self._crtc_write(self.crtc_index, value)
            elif port in (0x3BA, 0x3DA):
                self.feature_control = value & 0x0B
            if port in (0x3C2, 0x3C5, 0x3CF) and self.on_decode_change is not None:
                self.on_decode_change()

    def _crtc_write(self, index: int, value: int) -> None:
        if index >= NUM_CRTC:
            return
        if index <= 7 and self.crtc[CR_V_RETRACE_END] & CR11_PROTECT:
            if index == CR_OVERFLOW:
                self.crtc[index] = (self.crtc[index] & ~0x10) | (value & 0x10)
            return
        self.crtc[index] = value

    def _dac_write(self, value: int) -> None:
        self.dac_latch[self.dac_component] = value & (0xFF if self.dac_8bit else 0x3F)
        self.dac_component += 1
        if self.dac_component == 3:
            base = self.dac_write_index * 3
            self.dac[base:base + 3] = bytes(self.dac_latch)
            self.dac_write_index = (self.dac_write_index + 1) & 0xFF
            self.dac_component = 0

    def _dac_read(self) -> int:
        value = self.dac[self.dac_read_index * 3 + self.dac_component]
        self.dac_component += 1
        if self.dac_component == 3:
            self.dac_read_index = (self.dac_read_index + 1) & 0xFF
            self.dac_component = 0
        return value

    @staticmethod
    def _input_status_1() -> int:
        t = time.monotonic_ns() % FRAME_NS
        value = 0
        if V_RETRACE_START_NS <= t < V_RETRACE_END_NS:
            value |= ST01_V_RETRACE | ST01_DISPLAY_DISABLED
        elif t >= 400 * LINE_NS or (t % LINE_NS) >= H_BLANK_FROM_NS:
            value |= ST01_DISPLAY_DISABLED
        return value
