"""VGA display memory: four 64 KiB planes and the CPU's path to them through the 0xA0000-0xBFFFF window.

Follows the IBM VGA Technical Reference / FreeVGA ("Graphics Controller", "Sequencer", "VGA Memory Organization"):

* the graphics controller's miscellaneous register selects which part of the window decodes (A0000 128 KiB,
  A0000 64 KiB, B0000 32 KiB or B8000 32 KiB); misc output bit 1 enables CPU access at all;
* addressing: chain-4 (sequencer memory mode bit 3: address bits 0-1 pick the plane, the plane offset keeps the
  address as is, so mode 13h uses every fourth byte of each plane), odd/even (memory mode bit 2 clear: bit 0
  picks plane 0/1 (2/3), the offset is the address with bit 0 cleared), or planar (the map mask picks planes);
* every read loads the four latches; read mode 0 returns one plane (the read map select, or the plane the
  address selects in chain-4/odd-even), read mode 1 returns the colour-compare result with colour don't care;
* write modes 0-3 with data rotate, the logical function against the latches (replace/AND/OR/XOR), set/reset
  and enable set/reset, the bit mask, and the sequencer map mask choosing which planes are written.

The planes live in one page-aligned anonymous mapping, plane p at p * 64 KiB, which the renderer reads through a
numpy view (made when first asked for: the machine itself never needs numpy, and importing it is a good part of a
VM's start-up). While the registers make 0xB8000-0xBFFFF a linear text store, its bytes may live in a buffer the
CPU maps as RAM instead (core/devices/vga_text_window.py); while they make 0xA0000-0xAFFFF one plane byte for byte,
the CPU maps that plane itself there (core/devices/vga_plane_window.py). `planes` brings both up to date first.
"""
from __future__ import annotations

import ctypes
import mmap
from typing import TYPE_CHECKING

from core.devices.vga_plane_window import PlaneWindow
from core.devices.vga_registers import (
    GC_BIT_MASK,
    GC_COLOR_COMPARE,
    GC_COLOR_DONT_CARE,
    GC_DATA_ROTATE,
    GC_ENABLE_SET_RESET,
    GC_MISC,
    GC_MODE,
    GC_READ_MAP,
    GC_SET_RESET,
    GR05_HOST_ODD_EVEN,
    GR05_READ_MODE1,
    MISC_RAM_ENABLE,
    SEQ_MAP_MASK,
    SEQ_MEMORY_MODE,
    SR04_CHAIN4,
    SR04_ODD_EVEN_DISABLE,
    VgaRegisters,
)
from core.devices.vga_text_window import TextWindow

if TYPE_CHECKING:
    import numpy as np

PLANE_SIZE = 0x10000
VGA_WINDOW_BASE = 0xA0000
VGA_WINDOW_SIZE = 0x20000

# GC misc bits 3-2: (start offset inside the 128 KiB window, length).
MEMORY_MAPS = ((0x00000, 0x20000), (0x00000, 0x10000), (0x10000, 0x8000), (0x18000, 0x8000))

_EXPAND = [0xFF if bit else 0x00 for bit in (0, 1)]


class VgaMemory:
    """The 256 KiB of planar memory behind the legacy window. Addresses given to read/write are offsets from
    0xA0000; `banked` (the Bochs VBE model) takes the window over while a VBE mode is enabled."""

    def __init__(self, regs: VgaRegisters) -> None:
        self.regs = regs
        self.vram = mmap.mmap(-1, 4 * PLANE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._anchor = ctypes.c_char.from_buffer(self.vram)
        self.host_address = ctypes.addressof(self._anchor)    # page-aligned: a plane can be mapped as guest RAM
        self._planes: np.ndarray | None = None
        self.latch = [0, 0, 0, 0]
        self.banked = None      # BochsVbe: `enabled`, window_read(offset), window_write(offset, value) -> bool
        self.text = TextWindow(self)    # 0xB8000 as RAM in the linear text state
        self.plane_window = PlaneWindow(self)    # 0xA0000 as one plane's RAM in the single-plane state

    def set_ram_mapper(self, mapper) -> None:
        """The CPU backend (an Accelerator with map_ram) that may map the windows as RAM, or None (never)."""
        self.text.mapper = mapper
        self.plane_window.mapper = mapper

    def decode_changed(self) -> None:
        """A register deciding how the window decodes was written (VgaRegisters.on_decode_change)."""
        self.text.registers_changed()
        self.plane_window.registers_changed()

    @property
    def planes(self) -> np.ndarray:
        """The four planes as a (4, 64 KiB) uint8 array over `vram` (no copy), with the text window's buffer
        copied in."""
        self.text.sync()
        self.plane_window.sync()
        if self._planes is None:
            import numpy as np
            self._planes = np.frombuffer(self.vram, np.uint8).reshape(4, PLANE_SIZE)
        return self._planes

    def reset(self) -> None:
        self.text.release()
        self.plane_window.release()
        self.vram[:] = bytes(len(self.vram))
        self.latch = [0, 0, 0, 0]

    # -- CPU access through the window --------------------------------------------------------------------
    def _decode(self, offset: int) -> int | None:
        """Window offset (0..0x1FFFF) -> address inside the selected memory map, or None if not decoded."""
        regs = self.regs
        if not regs.misc & MISC_RAM_ENABLE:
            return None
        start, length = MEMORY_MAPS[(regs.gc[GC_MISC] >> 2) & 3]
        a = offset - start
        if 0 <= a < length:
            return a
        return None

    def read(self, offset: int) -> int:
        if self.banked is not None:
            value = self.banked.window_read(offset)
            if value is not None:
                return value
        a = self._decode(offset)
        if a is None:
            return 0xFF
        regs = self.regs
        seq, gc = regs.seq, regs.gc
        vram = self.vram
        if seq[SEQ_MEMORY_MODE] & SR04_CHAIN4:
            plane, off = a & 3, a & 0xFFFC
        elif gc[GC_MODE] & GR05_HOST_ODD_EVEN:
            plane, off = (gc[GC_READ_MAP] & 2) | (a & 1), a & 0xFFFE
        else:
            plane, off = gc[GC_READ_MAP] & 3, a & 0xFFFF
        latch = self.latch
        latch[0] = vram[off]
        latch[1] = vram[PLANE_SIZE + off]
        latch[2] = vram[2 * PLANE_SIZE + off]
        latch[3] = vram[3 * PLANE_SIZE + off]
        if not gc[GC_MODE] & GR05_READ_MODE1:
            return latch[plane]
        # Read mode 1: a bit is 1 where every plane that "cares" matches the colour compare value.
        care, compare = gc[GC_COLOR_DONT_CARE], gc[GC_COLOR_COMPARE]
        result = 0xFF
        for p in range(4):
            if care >> p & 1:
                result &= ~(latch[p] ^ _EXPAND[compare >> p & 1])
        return result & 0xFF

    def write(self, offset: int, value: int) -> None:
        if self.banked is not None and self.banked.window_write(offset, value):
            return
        a = self._decode(offset)
        if a is None:
            return
        regs = self.regs
        seq, gc = regs.seq, regs.gc
        mask = seq[SEQ_MAP_MASK]
        mode_bits = seq[SEQ_MEMORY_MODE]
        if mode_bits & SR04_CHAIN4:
            mask &= 1 << (a & 3)
            off = a & 0xFFFC
        elif not mode_bits & SR04_ODD_EVEN_DISABLE:
            mask &= 0b0101 << (a & 1)
            off = a & 0xFFFE
        else:
            off = a & 0xFFFF
        if not mask:
            return
        regs.generation += 1
        vram = self.vram
        write_mode = gc[GC_MODE] & 3
        if write_mode == 0 and not gc[GC_ENABLE_SET_RESET] and not gc[GC_DATA_ROTATE] and gc[GC_BIT_MASK] == 0xFF:
            # The text-mode and mode-13h case: the byte goes to each enabled plane unchanged.
            for p in range(4):
                if mask >> p & 1:
                    vram[p * PLANE_SIZE + off] = value
            return
        latch = self.latch
        if write_mode == 1:
            data = latch
        else:
            rotate = gc[GC_DATA_ROTATE] & 7
            function = (gc[GC_DATA_ROTATE] >> 3) & 3
            bit_mask = gc[GC_BIT_MASK]
            if write_mode != 2 and rotate:
                value = ((value >> rotate) | (value << (8 - rotate))) & 0xFF
            set_reset = gc[GC_SET_RESET]
            if write_mode == 0:
                esr = gc[GC_ENABLE_SET_RESET]
                data = [_EXPAND[set_reset >> p & 1] if esr >> p & 1 else value for p in range(4)]
            elif write_mode == 2:
                data = [_EXPAND[value >> p & 1] for p in range(4)]
            else:
                bit_mask &= value
                data = [_EXPAND[set_reset >> p & 1] for p in range(4)]
            if function == 1:
                data = [d & latch[p] for p, d in enumerate(data)]
            elif function == 2:
                data = [d | latch[p] for p, d in enumerate(data)]
            elif function == 3:
                data = [d ^ latch[p] for p, d in enumerate(data)]
            data = [(d & bit_mask) | (latch[p] & ~bit_mask & 0xFF) for p, d in enumerate(data)]
        for p in range(4):
            if mask >> p & 1:
                vram[p * PLANE_SIZE + off] = data[p]

    # -- MMIO entry points (absolute guest-physical addresses) ---------------------------------------------
    def mmio_read(self, addr: int, size: int) -> int:
        base = addr - VGA_WINDOW_BASE
        if self.text.mapper is not None:
            served = self.text.read(base, size)
            if served is not None:
                return served
            self.plane_window.accessed(base, size)
        value = 0
        for i in range(size):
            value |= self.read((base + i) % VGA_WINDOW_SIZE) << (8 * i)
        return value

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        base = addr - VGA_WINDOW_BASE
        if self.text.mapper is not None:
            if self.text.write(base, size, value):
                return
            self.plane_window.accessed(base, size)
        if self._text_write(base, size, value):
            return
        for i in range(size):
            self.write((base + i) % VGA_WINDOW_SIZE, (value >> (8 * i)) & 0xFF)

    def _text_write(self, base: int, size: int, value: int) -> bool:
        """The store a text console makes (odd/even addressing, write mode 0 with no set/reset, rotation or bit
        mask, inside the decoded map, no VBE bank): each byte straight to plane 0/1 (2/3), as write() would put
        it. False, having done nothing, for any other case (write() then handles it byte by byte)."""
        regs = self.regs
        seq, gc = regs.seq, regs.gc
        if (seq[SEQ_MEMORY_MODE] & (SR04_CHAIN4 | SR04_ODD_EVEN_DISABLE) or gc[GC_MODE] & 3
                or gc[GC_ENABLE_SET_RESET] or gc[GC_DATA_ROTATE] or gc[GC_BIT_MASK] != 0xFF
                or not regs.misc & MISC_RAM_ENABLE or (self.banked is not None and self.banked.enabled)):
            return False
        start, length = MEMORY_MAPS[(gc[GC_MISC] >> 2) & 3]
        a = base - start
        if a < 0 or a + size > length:
            return False
        map_mask = seq[SEQ_MAP_MASK]
        vram = self.vram
        for i in range(size):
            mask = map_mask & (0b0101 << ((a + i) & 1))
            if mask:
                off = (a + i) & 0xFFFE
                byte = (value >> (8 * i)) & 0xFF
                regs.generation += 1
                if mask & 1:
                    vram[off] = byte
                if mask & 2:
                    vram[PLANE_SIZE + off] = byte
                if mask & 4:
                    vram[2 * PLANE_SIZE + off] = byte
                if mask & 8:
                    vram[3 * PLANE_SIZE + off] = byte
        return True
