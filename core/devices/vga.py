"""The emulated display adapter: QEMU's standard VGA (IBM VGA register set + Bochs VBE + PCI 1234:1111).

Composes the register file (vga_registers), the planar memory behind 0xA0000-0xBFFFF (vga_memory) and the Bochs
VBE interface with its linear framebuffer (vga_bochs). Power-on state is what a PC BIOS leaves before loading an
OS: mode 03h (80x25 colour text, 9x16 cells, 720x400), the 8x16 CP437 font in character map 0 of plane 2, a
cleared screen (spaces, light grey on black), the cursor at the top left with the BIOS's underline shape.

Wiring (done by the Machine): `Vga(pci_bus, ram_mapper=accelerator)` adds the PCI function (and lets the text
window 0xB8000 be mapped as RAM while that is exact, vga_text_window); `attach(pio, mmio)` claims ports
0x3B0-0x3DF and 0x1CE-0x1CF and the legacy window 0xA0000-0xBFFFF on the MMIO bus.
"""
from __future__ import annotations

from core.bus import MmioBus, PortIoBus
from core.devices import vga_state
from core.devices.pci import PciBus
from core.devices.vga_bochs import (
    DEFAULT_VRAM_SIZE,
    VBE_DISPI_IOPORT_INDEX,
    BochsVbe,
    VgaPciFunction,
)
from core.devices.vga_font import GLYPH_HEIGHT, cp437_8x16
from core.devices.vga_memory import PLANE_SIZE, VGA_WINDOW_BASE, VGA_WINDOW_SIZE, VgaMemory
from core.devices.vga_registers import (
    CR_CURSOR_HI,
    CR_CURSOR_LO,
    CR_H_DISPLAY_END,
    CR_MAX_SCAN_LINE,
    GC_MISC,
    GR06_GRAPHICS,
    VgaRegisters,
)

VGA_PORTS = (0x3B0, 0x30)            # 0x3B0-0x3DF
TEXT_BLANK = (0x20, 0x07)            # space, light grey on black


class Vga:
    """One display adapter. Thread-safety: port and memory accesses come from vCPU threads; the renderer reads
    the state from another thread without locking (a frame may show a half-finished update, as a real CRT
    would)."""

    def __init__(self, pci_bus: PciBus | None = None, vram_size: int = DEFAULT_VRAM_SIZE,
                 pci_slot: int | None = None, ram_mapper=None) -> None:
        self.regs = VgaRegisters()
        self.memory = VgaMemory(self.regs)
        self.vbe = BochsVbe(self.regs, vram_size)
        self.memory.banked = self.vbe
        # The CPU backend (Accelerator with map_ram), or None: the text window then always traps (vga_text_window).
        self.memory.set_ram_mapper(ram_mapper)
        self.regs.on_decode_change = self.memory.decode_changed
        self.pci = VgaPciFunction(self.vbe, self.regs)
        self.lfb_mapped_as_ram = False   # BAR0 is mapped as guest RAM by the CPU backend (writes are untracked)
        self.pci.fb_handler.on_ram_mapping = self._lfb_ram_mapping_changed
        self.closed = False
        if pci_bus is not None:
            pci_bus.add(self.pci, pci_slot)
        self.reset()

    # -- wiring -------------------------------------------------------------------------------------------
    def attach(self, pio: PortIoBus, mmio: MmioBus | None = None) -> None:
        pio.register(VGA_PORTS[0], VGA_PORTS[1], self.regs)
        pio.register(VBE_DISPI_IOPORT_INDEX, 2, self.vbe)
        if mmio is not None:
            mmio.register(VGA_WINDOW_BASE, VGA_WINDOW_SIZE, self.memory)

    def reset(self) -> None:
        """Power-on / system reset: the state a BIOS leaves after setting mode 03h."""
        self.regs.reset()
        self.memory.reset()
        self.vbe.reset()
        self._load_bios_text_mode()

    def get_state(self) -> dict:
        """Machine state (docs/machine-state.md; the record is core/state/vga_state.py's)."""
        return vga_state.get_state(self)

    def set_state(self, state: dict) -> None:
        vga_state.set_state(self, state)

    def _load_bios_text_mode(self) -> None:
        vram = self.memory.vram
        font = cp437_8x16()
        glyphs = 2 * PLANE_SIZE                            # 32 bytes per character slot in map 0 (first 8 KiB)
        for code in range(256):
            vram[glyphs + code * 32:glyphs + code * 32 + GLYPH_HEIGHT] = font[code * GLYPH_HEIGHT:
                                                                           (code + 1) * GLYPH_HEIGHT]
        # Odd/even text memory: character codes in plane 0, attributes in plane 1, at even offsets.
        vram[0:0x8000:2] = bytes([TEXT_BLANK[0]]) * 0x4000
        vram[PLANE_SIZE:PLANE_SIZE + 0x8000:2] = bytes([TEXT_BLANK[1]]) * 0x4000
        self.regs.generation += 1

    # -- inspection -----------------------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        """Increases whenever a register or video memory changes (LFB writes made through RAM mappings excluded;
        text-window stores through RAM are counted here, when they are copied into the planes)."""
        self.memory.text.sync()
        self.memory.plane_window.sync()
        return self.regs.generation

    def in_text_mode(self) -> bool:
        return not self.vbe.enabled and not self.regs.gc[GC_MISC] & GR06_GRAPHICS

    def text_geometry(self) -> tuple[int, int]:
        """(columns, rows) of the current text mode as the CRTC is programmed."""
        regs = self.regs
        cols = regs.crtc[CR_H_DISPLAY_END] + 1
        char_height = (regs.crtc[CR_MAX_SCAN_LINE] & 0x1F) + 1
        lines = regs.vertical_display_end() + 1
        if regs.crtc[CR_MAX_SCAN_LINE] & 0x80:
            lines //= 2
        return cols, max(1, lines // char_height)

    def cursor_position(self) -> tuple[int, int]:
        """(column, row) of the hardware cursor relative to the start address."""
        regs = self.regs
        cols, _ = self.text_geometry()
        pos = ((regs.crtc[CR_CURSOR_HI] << 8) | regs.crtc[CR_CURSOR_LO]) - regs.start_address()
        pos %= PLANE_SIZE
        return pos % cols, pos // cols

    def lfb_host_memory(self) -> tuple[int, int]:
        """(host virtual address, size) of video memory, for a backend mapping BAR0 as guest RAM."""
        return self.vbe.host_address, self.vbe.vram_size

    def _lfb_ram_mapping_changed(self, mapped: bool) -> None:
        self.lfb_mapped_as_ram = mapped
        self.regs.generation += 1      # the picture may have changed behind the counter's back

    def close(self) -> None:
        """The machine has stopped. Video memory stays readable, so the last picture can still be shown and
        screendumped after power-off; its pages go back to the host when this object is dropped."""
        self.closed = True
