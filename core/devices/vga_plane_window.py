"""The graphics window 0xA0000-0xAFFFF as plain memory while it reaches exactly one plane, byte for byte.

A VGA BIOS loads a text font this way (IBM VGA Technical Reference / FreeVGA "VGA Memory Organization" and
"Sequencer": SeaVGABIOS's font access state is map mask plane 2, sequential addressing, graphics controller memory
map 1 (A0000 64 KiB), read map select 2, write mode 0), storing the 256 glyphs with one byte store each: 4096
MMIO exits through the planar model at every text mode set. In that state -- misc output RAM enabled; memory map 1;
chain-4 off and odd/even addressing off (sequencer memory mode); graphics mode write mode 0, read mode 0, host
odd/even off; no set/reset, rotation, logical function or bit mask; the map mask one plane p and read map select p;
no Bochs VBE mode taking the window over -- window byte `a` is byte `a` of plane p for reads and writes alike.

The planes are one page-aligned mapping (VgaMemory.vram), so the CPU backend maps plane p's 64 KiB itself at
0xA0000 (Accelerator.map_ram: a unicorn mapping, a KVM memory slot): the same memory the planar model uses, so no
copy, no hand-over, and nothing depends on when the backend applies the mapping or removes it (as with the linear
framebuffer BAR). Mapped at the first guest access in that state, unmapped by the register write that ends it (or
reset, or a state load). What the guest stores through RAM is not counted by the VGA's change counter, so readers
(`sync`, through Vga.generation and VgaMemory.planes) compare the plane with its last copy while it is mapped, and
until the backend has applied the unmap.

As for the text window (vga_text_window.py) and QEMU's chain-4 alias: reads through RAM do not load the latches,
which only write modes 1-3 and the logical functions use, and those end the state.
"""
from __future__ import annotations

import logging
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

PLANE_WINDOW_GPA = 0xA0000
PLANE_WINDOW_SIZE = 0x10000          # memory map 1; also the size of one plane
_PLANE_FOR_MASK = {1: 0, 2: 1, 4: 2, 8: 3}


class PlaneWindow:
    """Plane p mapped at 0xA0000 (see the module docstring). `mapper` is the CPU backend or None (never mapped)."""

    def __init__(self, memory: VgaMemory) -> None:
        self.memory = memory
        self.mapper = None
        self.mapped_plane: int | None = None     # the plane map_ram was asked for (and not undone)
        self._watched: int | None = None         # the plane compared by sync (mapped, or unmapped not yet settled)
        self._copy = b""
        self._map_refused = False
        self.maps = 0                            # how many times a plane was mapped (diagnostics, tests)

    def plane(self) -> int | None:
        """The plane the registers make the 64 KiB window at 0xA0000 a plain store of, or None."""
        memory = self.memory
        regs = memory.regs
        seq, gc = regs.seq, regs.gc
        banked = memory.banked
        p = _PLANE_FOR_MASK.get(seq[SEQ_MAP_MASK] & 0xF)
        if (p is None or not regs.misc & MISC_RAM_ENABLE
                or (gc[GC_MISC] >> 2) & 3 != 1
                or seq[SEQ_MEMORY_MODE] & (SR04_CHAIN4 | SR04_ODD_EVEN_DISABLE) != SR04_ODD_EVEN_DISABLE
                or gc[GC_MODE] & (3 | GR05_READ_MODE1 | GR05_HOST_ODD_EVEN)
                or gc[GC_ENABLE_SET_RESET] or gc[GC_DATA_ROTATE] or gc[GC_BIT_MASK] != 0xFF
                or gc[GC_READ_MAP] & 3 != p
                or (banked is not None and banked.enabled)):
            return None
        return p

    # -- vCPU thread ----------------------------------------------------------------------------------------
    def accessed(self, base: int, size: int) -> None:
        """A guest access reached the MMIO path at window offset `base`: map the plane if the state allows."""
        if self._watched is not None and self.mapped_plane is None:
            self._settle()
        if self.mapper is None or self._map_refused or self.mapped_plane is not None or base >= PLANE_WINDOW_SIZE:
            return
        p = self.plane()
        if p is None:
            return
        with self.memory.regs.lock:
            self.sync()
            try:
                self.mapper.map_ram(PLANE_WINDOW_GPA, self.memory.host_address + p * PLANE_WINDOW_SIZE,
                                    PLANE_WINDOW_SIZE)
            except (ValueError, NotImplementedError) as exc:
                log.info("VGA plane window stays MMIO: %s", exc)
                self._map_refused = True
                return
            self.mapped_plane = self._watched = p
            self._copy = self._plane_bytes(p)
            self.maps += 1

    def registers_changed(self) -> None:
        if self._watched is not None and self.mapped_plane is None:
            self._settle()
        if self.mapped_plane is not None and self.plane() != self.mapped_plane:
            self._unmap()

    def _settle(self) -> None:
        """After an unmap: once the backend has applied it, no store can bypass the model any more."""
        settled = self.mapper.ram_mappings_settled()
        self.sync()
        if settled:
            self._watched = None
            self._copy = b""

    def _unmap(self) -> None:
        with self.memory.regs.lock:
            self.sync()
            self.mapped_plane = None
            self.mapper.unmap_ram(PLANE_WINDOW_GPA)

    def release(self) -> None:
        """Reset or state load: unmapped, nothing watched."""
        with self.memory.regs.lock:
            if self.mapped_plane is not None:
                self.mapped_plane = None
                self.mapper.unmap_ram(PLANE_WINDOW_GPA)
            self._watched = None
            self._copy = b""

    # -- readers (any thread) ------------------------------------------------------------------------------
    def sync(self) -> None:
        """Count stores made through RAM since the last call as a change of the picture."""
        p = self._watched
        if p is None:
            return
        current = self._plane_bytes(p)
        if current != self._copy:
            self._copy = current
            self.memory.regs.generation += 1

    def _plane_bytes(self, p: int) -> bytes:
        start = p * PLANE_WINDOW_SIZE
        return self.memory.vram[start:start + PLANE_WINDOW_SIZE]
