"""The colour text window 0xB8000-0xBFFFF as plain memory while the VGA makes it one.

In the text modes a VGA BIOS sets (IBM VGA Technical Reference / FreeVGA "VGA Memory Organization": graphics
controller misc memory map 3, B8000 32 KiB; sequencer memory mode odd/even, no chain-4; graphics mode host odd/even,
read mode 0, write mode 0 with no set/reset, rotation, logical function or bit mask; map mask planes 0 and 1; read
map select 0 or 1; RAM enabled; no Bochs VBE mode taking the window over) the window is a linear store: window
byte `a` is byte `a & ~1` of plane `a & 1` (characters in plane 0, attributes in plane 1), a read returns what the
last write put there, and nothing else in the window decodes. A guest filling or scrolling the screen (SeaVGABIOS
clears all 32 KiB at every mode set) then makes tens of thousands of MMIO exits through the planar model for what
is a memory store. So, while that register state holds, the window's bytes live here, in a 32 KiB host buffer
laid out as the guest sees them (character, attribute, character, ...), which the CPU backend maps as guest RAM
(Accelerator.map_ram: a unicorn mapping, a KVM memory slot); the MMIO path serves the same buffer until the
backend has applied the mapping, so behaviour does not depend on when it does.

Ownership moves between this buffer and the planes:
* taken at the first guest access to the window while the register state is linear (not at every register write:
  a mode set passes through many intermediate states): planes 0/1 are interleaved into the buffer, which is mapped;
* given back as soon as a register write breaks the linear state (or at reset / state load): the buffer is
  de-interleaved into the planes and unmapped, and the planar model serves the window again;
* readers of the planes (renderer, text snapshot, machine state) first copy the buffer into the planes (`sync`,
  which also counts a change in the VGA's generation counter, since stores through RAM are not seen).
A backend may apply an unmap late (the software CPU: at its next slice, so the rest of the translation block
that wrote the register may still store into the buffer): those stores are found by comparing the buffer with
what was given back, and applied to the planes as the odd/even writes they were, before the next VGA memory
access or register write on a vCPU thread and before the state is saved ("fold").

One difference from the trapping model, as in QEMU's chain-4 alias: reads through the buffer do not load the four
latches (only write modes 1-3 and the logical functions use them, and those modes end the linear state).
"""
from __future__ import annotations

import ctypes
import logging
import mmap
from typing import TYPE_CHECKING

from core.devices.vga_registers import (
    GC_BIT_MASK,
    GC_DATA_ROTATE,
    GC_ENABLE_SET_RESET,
    GC_MISC,
    GC_MODE,
    GC_READ_MAP,
    GR05_HOST_ODD_EVEN,
    GR05_READ_MODE1,
    MISC_RAM_ENABLE,
    SEQ_MAP_MASK,
    SEQ_MEMORY_MODE,
    SR04_CHAIN4,
    SR04_ODD_EVEN_DISABLE,
)

if TYPE_CHECKING:
    from core.devices.vga_memory import VgaMemory

log = logging.getLogger(__name__)

TEXT_WINDOW_GPA = 0xB8000
TEXT_WINDOW_OFFSET = 0x18000        # inside the 128 KiB legacy window at 0xA0000
TEXT_WINDOW_SIZE = 0x8000
PLANE_SIZE = 0x10000
_CHUNK = 256                        # fold compares the buffer with what was given back this many bytes at a time


class TextWindow:
    """The buffer and its ownership (see the module docstring). `mapper` is the CPU backend (map_ram/unmap_ram)
    or None, in which case the window is never taken and the planar model serves every access."""

    def __init__(self, memory: VgaMemory) -> None:
        self.memory = memory
        self.mapper = None
        self.ram = mmap.mmap(-1, TEXT_WINDOW_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._anchor = ctypes.c_char.from_buffer(self.ram)
        self.host_address = ctypes.addressof(self._anchor)
        self.owned = False           # the buffer holds the window's bytes (planes 0/1, even offsets < 32 KiB)
        self.mapped = False          # map_ram asked of the backend (and not undone)
        self._map_refused = False
        self._synced = b""           # the buffer as last copied into the planes (owned)
        self._given_back = b""       # the buffer as given back, while a late unmap may still let stores in
        self.fold_pending = False

    # -- the register state --------------------------------------------------------------------------------
    def linear(self) -> bool:
        """Whether the registers make 0xB8000-0xBFFFF the linear character/attribute store (module docstring)."""
        memory = self.memory
        regs = memory.regs
        seq, gc = regs.seq, regs.gc
        banked = memory.banked
        return bool(regs.misc & MISC_RAM_ENABLE
                    and (gc[GC_MISC] >> 2) & 3 == 3
                    and not seq[SEQ_MEMORY_MODE] & (SR04_CHAIN4 | SR04_ODD_EVEN_DISABLE)
                    and gc[GC_MODE] & (3 | GR05_READ_MODE1 | GR05_HOST_ODD_EVEN) == GR05_HOST_ODD_EVEN
                    and not gc[GC_ENABLE_SET_RESET] and not gc[GC_DATA_ROTATE] and gc[GC_BIT_MASK] == 0xFF
                    and seq[SEQ_MAP_MASK] & 0xF == 3
                    and not gc[GC_READ_MAP] & 2
                    and not (banked is not None and banked.enabled))

    def registers_changed(self) -> None:
        """A register that decides the window's decoding was written (on a vCPU thread)."""
        if self.fold_pending:
            self._fold_late_stores()
        if self.owned and not self.linear():
            self.give_back()

    # -- guest access (MMIO path, vCPU thread) ------------------------------------------------------------------
    def write(self, base: int, size: int, value: int) -> bool:
        """A guest store at window offset `base` (from 0xA0000): True if this served it (the window is linear and
        taken, or could be taken now), False to leave it to the planar model."""
        if self.fold_pending:
            self._fold_late_stores()
        if not self.owned and not self._take_if_linear(base, size):
            return False
        regs = self.memory.regs
        off = base - TEXT_WINDOW_OFFSET
        if 0 <= off and off + size <= TEXT_WINDOW_SIZE:
            self.ram[off:off + size] = value.to_bytes(size, "little")
        else:                        # straddling the window's edge: only the bytes inside decode
            for i in range(size):
                o = off + i
                if 0 <= o < TEXT_WINDOW_SIZE:
                    self.ram[o] = (value >> (8 * i)) & 0xFF
        regs.generation += 1
        return True

    def read(self, base: int, size: int) -> int | None:
        """A guest load: the value if this served it, None to leave it to the planar model."""
        if self.fold_pending:
            self._fold_late_stores()
        if not self.owned and not self._take_if_linear(base, size):
            return None
        off = base - TEXT_WINDOW_OFFSET
        if 0 <= off and off + size <= TEXT_WINDOW_SIZE:
            return int.from_bytes(self.ram[off:off + size], "little")
        value = 0
        for i in range(size):
            o = off + i
            byte = self.ram[o] if 0 <= o < TEXT_WINDOW_SIZE else 0xFF
            value |= byte << (8 * i)
        return value

    def _fold_late_stores(self) -> None:
        """On a vCPU thread after a give-back: fold the stores that reached the buffer since. Once the backend
        has applied the unmap (asked before folding, on the thread that applies it), none can follow."""
        settled = self.mapper.ram_mappings_settled()
        self.fold()
        if settled:
            self.fold_pending = False
            self._given_back = b""

    def _take_if_linear(self, base: int, size: int) -> bool:
        if self.mapper is None or self._map_refused:
            return False
        if not (base < TEXT_WINDOW_OFFSET + TEXT_WINDOW_SIZE and TEXT_WINDOW_OFFSET < base + size):
            return False
        if not self.linear():
            return False
        self.take()
        return True

    # -- ownership ----------------------------------------------------------------------------------------------
    def take(self) -> None:
        """The planes' text bytes move into the buffer, which the backend maps at 0xB8000."""
        memory = self.memory
        with memory.regs.lock:
            if self.fold_pending:
                self.fold()
                self.fold_pending = False
                self._given_back = b""
            vram = memory.vram
            text = bytearray(TEXT_WINDOW_SIZE)
            text[0::2] = vram[0:TEXT_WINDOW_SIZE:2]
            text[1::2] = vram[PLANE_SIZE:PLANE_SIZE + TEXT_WINDOW_SIZE:2]
            self.ram[:] = text
            self._synced = bytes(text)
            self.owned = True
            if not self.mapped:
                try:
                    self.mapper.map_ram(TEXT_WINDOW_GPA, self.host_address, TEXT_WINDOW_SIZE)
                    self.mapped = True
                except (ValueError, NotImplementedError) as exc:
                    # The MMIO path keeps serving the buffer: correct, only slower.
                    log.info("VGA text window stays MMIO: %s", exc)
                    self._map_refused = True

    def give_back(self) -> None:
        """The buffer's bytes go back into the planes and the window is unmapped; the planar model serves it."""
        memory = self.memory
        with memory.regs.lock:
            if not self.owned:
                return
            self._copy_to_planes()
            self.owned = False
            if self.mapped:
                self.mapped = False
                self._given_back = self.ram[:]
                self.fold_pending = True
                self.mapper.unmap_ram(TEXT_WINDOW_GPA)

    def release(self) -> None:
        """Reset or state load: the planes hold the truth from now on; the buffer is dropped and unmapped."""
        with self.memory.regs.lock:
            self.owned = False
            self.fold_pending = False
            self._given_back = self._synced = b""
            if self.mapped:
                self.mapped = False
                self.mapper.unmap_ram(TEXT_WINDOW_GPA)
            self.ram[:] = bytes(TEXT_WINDOW_SIZE)

    # -- readers ----------------------------------------------------------------------------------------------
    def sync(self) -> None:
        """Make the planes show the buffer (any thread): what the guest stored through RAM since the last call
        is copied over and counted as a change."""
        if not self.owned:
            return
        with self.memory.regs.lock:
            if not self.owned:
                return
            current = self.ram[:]
            if current != self._synced:
                self._copy_to_planes(current)
                self._synced = current
                self.memory.regs.generation += 1

    def fold(self) -> None:
        """Apply stores that reached the buffer after it was given back (a late unmap) to the planes, as the
        odd/even writes they were when the buffer was mapped."""
        if not self._given_back:
            return
        with self.memory.regs.lock:
            before = self._given_back
            if not before:
                return
            current = self.ram[:]
            if current == before:
                return
            vram = self.memory.vram
            for start in range(0, TEXT_WINDOW_SIZE, _CHUNK):
                if current[start:start + _CHUNK] == before[start:start + _CHUNK]:
                    continue
                for a in range(start, start + _CHUNK):
                    if current[a] != before[a]:
                        vram[(a & 1) * PLANE_SIZE + (a & ~1)] = current[a]
            self._given_back = current
            self.memory.regs.generation += 1

    def _copy_to_planes(self, data: bytes | None = None) -> None:
        src = self.ram[:] if data is None else data
        vram = self.memory.vram
        vram[0:TEXT_WINDOW_SIZE:2] = src[0::2]
        vram[PLANE_SIZE:PLANE_SIZE + TEXT_WINDOW_SIZE:2] = src[1::2]
