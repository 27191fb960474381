"""The Bochs VBE "dispi" interface and the PCI function of QEMU's standard VGA (1234:1111).

Models the interface Bochs' VGABIOS and Linux's `bochs` DRM driver (drivers/gpu/drm/tiny/bochs.c) program:

* index/data ports 0x1CE/0x1CF (16-bit): ID (0xB0C0-0xB0C5; the guest writes the version it speaks), XRES, YRES,
  BPP (8, 15, 16, 24, 32), ENABLE (ENABLED, GETCAPS: XRES/YRES/BPP read as the maxima, 8BIT_DAC, LFB_ENABLED,
  NOCLEARMEM), BANK (64 KiB window into video memory at 0xA0000), VIRT_WIDTH / VIRT_HEIGHT, X_OFFSET / Y_OFFSET
  (panning) and VIDEO_MEMORY_64K;
* the PCI function: class 0300 (VGA), subsystem 1AF4:1100 so the driver recognises QEMU's stdvga, revision 2;
  BAR0 the linear framebuffer (prefetchable memory, its size equals VIDEO_MEMORY_64K * 64 KiB, which the driver
  checks), BAR2 a 4 KiB MMIO register block: 0x000 EDID (absent: the header reads as zeros, so the driver offers
  its default modes, 1024x768 preferred), 0x400-0x41F the VGA ports 0x3C0-0x3DF, 0x500-0x515 the dispi registers
  (register i at 0x500 + 2i), 0x600 QEMU's extension block (size, then the framebuffer byte order).

Video memory is an anonymous mmap so a CPU backend can map it straight into the guest as RAM (see
`Vga.lfb_host_memory`) instead of trapping every framebuffer access.
"""
from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable

from core.devices.pci import Bar, PciDevice
from core.devices.vga_registers import VgaRegisters

VBE_DISPI_IOPORT_INDEX, VBE_DISPI_IOPORT_DATA = 0x1CE, 0x1CF

INDEX_ID, INDEX_XRES, INDEX_YRES, INDEX_BPP, INDEX_ENABLE, INDEX_BANK = range(6)
INDEX_VIRT_WIDTH, INDEX_VIRT_HEIGHT, INDEX_X_OFFSET, INDEX_Y_OFFSET, INDEX_VIDEO_MEMORY_64K = range(6, 11)
NUM_REGS = 10

ID0, ID5 = 0xB0C0, 0xB0C5
DISPI_ENABLED, DISPI_GETCAPS, DISPI_8BIT_DAC, DISPI_LFB_ENABLED, DISPI_NOCLEARMEM = 0x01, 0x02, 0x20, 0x40, 0x80
MAX_XRES, MAX_YRES, MAX_BPP = 16000, 12000, 32
VALID_BPP = (8, 15, 16, 24, 32)

DEFAULT_VRAM_SIZE = 16 * 1024 * 1024
MMIO_BAR_SIZE = 0x1000
MMIO_VGA_PORTS, MMIO_DISPI, MMIO_QEXT = 0x400, 0x500, 0x600
QEXT_SIZE = 8
QEXT_LITTLE_ENDIAN, QEXT_BIG_ENDIAN = 0x1E1E1E1E, 0xBEBEBEBE

PCI_VENDOR, PCI_DEVICE = 0x1234, 0x1111
PCI_SUBSYSTEM_VENDOR, PCI_SUBSYSTEM = 0x1AF4, 0x1100   # Red Hat / QEMU: bochs-drm's BOCHS_QEMU_STDVGA entry
PCI_CLASS_VGA = 0x030000


def bytes_per_pixel(bpp: int) -> int:
    return (bpp + 7) // 8


class BochsVbe:
    """Dispi registers plus video memory. `mode()` gives the effective geometry the renderer draws."""

    def __init__(self, regs: VgaRegisters, vram_size: int = DEFAULT_VRAM_SIZE) -> None:
        if vram_size < 4 * 1024 * 1024 or vram_size & (vram_size - 1):
            raise ValueError("video memory must be a power of two of at least 4 MiB (bochs-drm needs 4 MiB)")
        self.regs = regs
        self.vram_size = vram_size
        self.vram = mmap.mmap(-1, vram_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._anchor = ctypes.c_char.from_buffer(self.vram)
        self.host_address = ctypes.addressof(self._anchor)
        self.big_endian = False
        self.reset()

    def reset(self) -> None:
        self.index = 0
        self.r = [0] * NUM_REGS
        self.r[INDEX_ID] = ID5
        self.r[INDEX_XRES], self.r[INDEX_YRES], self.r[INDEX_BPP] = 640, 480, 8
        self.big_endian = False
        self.regs.dac_8bit = False
        self._fixup()
        self.regs.generation += 1

    # -- state --------------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.r[INDEX_ENABLE] & DISPI_ENABLED)

    def mode(self) -> tuple[int, int, int, int, int]:
        """(xres, yres, bpp, line_bytes, start_byte) of the enabled mode."""
        r = self.r
        bpp = r[INDEX_BPP]
        line = r[INDEX_VIRT_WIDTH] * bytes_per_pixel(bpp)
        start = r[INDEX_Y_OFFSET] * line + r[INDEX_X_OFFSET] * bytes_per_pixel(bpp)
        return r[INDEX_XRES], r[INDEX_YRES], bpp, line, start

    def _fixup(self) -> None:
        """Keep the geometry inside video memory: virtual width at least XRES, virtual height what fits, visible
        height and panning clamped so the scanned-out picture never leaves the buffer."""
        r = self.r
        if r[INDEX_BPP] not in VALID_BPP:
            r[INDEX_BPP] = 8
        r[INDEX_XRES] = max(8, min(r[INDEX_XRES], MAX_XRES))
        r[INDEX_YRES] = max(1, min(r[INDEX_YRES], MAX_YRES))
        bpp_bytes = bytes_per_pixel(r[INDEX_BPP])
        if r[INDEX_VIRT_WIDTH] < r[INDEX_XRES]:
            r[INDEX_VIRT_WIDTH] = r[INDEX_XRES]
        line = r[INDEX_VIRT_WIDTH] * bpp_bytes
        r[INDEX_VIRT_HEIGHT] = min(self.vram_size // line, 0xFFFF)
        r[INDEX_YRES] = min(r[INDEX_YRES], r[INDEX_VIRT_HEIGHT])
        r[INDEX_X_OFFSET] = min(r[INDEX_X_OFFSET], r[INDEX_VIRT_WIDTH] - r[INDEX_XRES])
        r[INDEX_Y_OFFSET] = min(r[INDEX_Y_OFFSET], r[INDEX_VIRT_HEIGHT] - r[INDEX_YRES])
        r[INDEX_BANK] &= (self.vram_size >> 16) - 1

    # -- dispi register access ----------------------------------------------------------------------------
    def read_reg(self, index: int) -> int:
        r = self.r
        if index == INDEX_VIDEO_MEMORY_64K:
            return self.vram_size >> 16
        if index >= NUM_REGS:
            return 0
        if r[INDEX_ENABLE] & DISPI_GETCAPS and index in (INDEX_XRES, INDEX_YRES, INDEX_BPP):
            return (MAX_XRES, MAX_YRES, MAX_BPP)[index - INDEX_XRES]
        return r[index]

    def write_reg(self, index: int, value: int) -> None:
        r = self.r
        value &= 0xFFFF
        self.regs.generation += 1
        if index == INDEX_ID:
            if ID0 <= value <= ID5:
                r[INDEX_ID] = value
        elif index in (INDEX_XRES, INDEX_YRES, INDEX_BANK, INDEX_VIRT_WIDTH, INDEX_X_OFFSET, INDEX_Y_OFFSET):
            r[index] = value
            self._fixup()
        elif index == INDEX_BPP:
            r[INDEX_BPP] = 8 if value == 0 else value
            self._fixup()
        elif index == INDEX_ENABLE:
            was = r[INDEX_ENABLE] & DISPI_ENABLED
            r[INDEX_ENABLE] = value & (DISPI_ENABLED | DISPI_GETCAPS | DISPI_8BIT_DAC | DISPI_LFB_ENABLED
                                       | DISPI_NOCLEARMEM)
            if value & DISPI_ENABLED and not was:
                # Enabling a mode starts scan-out at the top of memory with the virtual width = XRES.
                r[INDEX_VIRT_WIDTH] = r[INDEX_XRES]
                r[INDEX_X_OFFSET] = r[INDEX_Y_OFFSET] = 0
                self._fixup()
                if not value & DISPI_NOCLEARMEM:
                    _, yres, _, line, _ = self.mode()
                    ctypes.memset(self.host_address, 0, min(yres * line, self.vram_size))
            self.regs.dac_8bit = bool(value & DISPI_8BIT_DAC)
            if self.regs.on_decode_change is not None:
                self.regs.on_decode_change()      # a VBE mode takes the legacy window over (or gives it back)

    def io_read(self, port: int, size: int) -> int:
        if port == VBE_DISPI_IOPORT_INDEX:
            return self.index
        if port == VBE_DISPI_IOPORT_DATA:
            return self.read_reg(self.index) & ((1 << (8 * size)) - 1)
        return 0xFF

    def io_write(self, port: int, size: int, value: int) -> None:
        if port == VBE_DISPI_IOPORT_INDEX:
            self.index = value & 0xFFFF
        elif port == VBE_DISPI_IOPORT_DATA:
            if size == 1:
                value = (self.read_reg(self.index) & 0xFF00) | (value & 0xFF)
            self.write_reg(self.index, value)

    # -- banked window (0xA0000-0xAFFFF while a VBE mode is enabled) ---------------------------------------
    def window_read(self, offset: int) -> int | None:
        if not self.enabled or offset >= 0x10000:
            return None
        return self.vram[(self.r[INDEX_BANK] << 16) + offset]

    def window_write(self, offset: int, value: int) -> bool:
        if not self.enabled or offset >= 0x10000:
            return False
        self.vram[(self.r[INDEX_BANK] << 16) + offset] = value
        self.regs.generation += 1
        return True

    # -- framebuffer BAR access ---------------------------------------------------------------------------
    def fb_read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > self.vram_size:
            return (1 << (8 * size)) - 1
        return int.from_bytes(self.vram[offset:offset + size], "little")

    def fb_write(self, offset: int, size: int, value: int) -> None:
        if offset < 0 or offset + size > self.vram_size:
            return
        self.vram[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self.regs.generation += 1

class _FramebufferBar:
    """BAR0 handler: the MMIO bus calls it with absolute addresses, unless the PCI bus mapped the BAR as guest
    RAM (then `on_ram_mapping` hears of it: writes through RAM do not bump the change counter)."""

    def __init__(self, vbe: BochsVbe) -> None:
        self.vbe = vbe
        self.bar: Bar | None = None
        self.on_ram_mapping: Callable[[bool], None] | None = None

    def ram_mapping_changed(self, mapped: bool) -> None:
        if self.on_ram_mapping is not None:
            self.on_ram_mapping(mapped)

    @property
    def ram_backing(self) -> tuple[int, int]:
        """(host address, size) of the memory behind this BAR, for backends that map it as guest RAM."""
        return self.vbe.host_address, self.vbe.vram_size

    def _offset(self, addr: int) -> int:
        return addr - (self.bar.mapped_at or 0)

    def mmio_read(self, addr: int, size: int) -> int:
        return self.vbe.fb_read(self._offset(addr), size)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.vbe.fb_write(self._offset(addr), size, value)


class _RegisterBar:
    """BAR2 handler: EDID, the VGA ports, the dispi registers and QEMU's extension registers."""

    def __init__(self, vbe: BochsVbe, regs: VgaRegisters) -> None:
        self.vbe = vbe
        self.regs = regs
        self.bar: Bar | None = None

    def _offset(self, addr: int) -> int:
        return addr - (self.bar.mapped_at or 0)

    def mmio_read(self, addr: int, size: int) -> int:
        off = self._offset(addr)
        value = 0
        for i in range(size):
            value |= self._read_byte(off + i) << (8 * i)
        return value

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        off = self._offset(addr)
        if MMIO_DISPI <= off < MMIO_DISPI + 2 * 11 and size >= 2 and not off & 1:
            for i in range(0, size, 2):
                self.vbe.write_reg((off + i - MMIO_DISPI) // 2, (value >> (8 * i)) & 0xFFFF)
            return
        if off == MMIO_QEXT + 4 and size == 4:
            self.vbe.big_endian = value == QEXT_BIG_ENDIAN
            self.regs.generation += 1
            return
        for i in range(size):
            self._write_byte(off + i, (value >> (8 * i)) & 0xFF)

    def _read_byte(self, off: int) -> int:
        if MMIO_VGA_PORTS <= off < MMIO_VGA_PORTS + 0x20:
            return self.regs.read_port(0x3C0 + off - MMIO_VGA_PORTS)
        if MMIO_DISPI <= off < MMIO_DISPI + 2 * 11:
            return (self.vbe.read_reg((off - MMIO_DISPI) // 2) >> (8 * (off & 1))) & 0xFF
        if MMIO_QEXT <= off < MMIO_QEXT + 8:
            word = QEXT_SIZE if off < MMIO_QEXT + 4 else (QEXT_BIG_ENDIAN if self.vbe.big_endian
                                                           else QEXT_LITTLE_ENDIAN)
            return (word >> (8 * (off & 3))) & 0xFF
        return 0            # EDID block (absent) and reserved space

    def _write_byte(self, off: int, value: int) -> None:
        if MMIO_VGA_PORTS <= off < MMIO_VGA_PORTS + 0x20:
            self.regs.write_port(0x3C0 + off - MMIO_VGA_PORTS, value)
        elif MMIO_DISPI <= off < MMIO_DISPI + 2 * 11:
            index = (off - MMIO_DISPI) // 2
            old = self.vbe.read_reg(index)
            shift = 8 * (off & 1)
            self.vbe.write_reg(index, (old & ~(0xFF << shift)) | (value << shift))


class VgaPciFunction(PciDevice):
    """PCI 1234:1111 with the framebuffer at BAR0 and the register block at BAR2.

    With direct kernel boot no firmware assigns BARs; `set_firmware_resources` records addresses to program at
    every reset (memory decode and legacy I/O on), as a PC BIOS does for the boot display.
    """

    def __init__(self, vbe: BochsVbe, regs: VgaRegisters) -> None:
        super().__init__(PCI_VENDOR, PCI_DEVICE, PCI_CLASS_VGA, revision=2,
                         subsystem_vendor_id=PCI_SUBSYSTEM_VENDOR, subsystem_id=PCI_SUBSYSTEM)
        self.fb_handler = _FramebufferBar(vbe)
        self.reg_handler = _RegisterBar(vbe, regs)
        self.fb_bar = Bar(size=vbe.vram_size, is_io=False, handler=self.fb_handler, prefetchable=True)
        self.reg_bar = Bar(size=MMIO_BAR_SIZE, is_io=False, handler=self.reg_handler)
        self.fb_handler.bar = self.fb_bar
        self.reg_handler.bar = self.reg_bar
        self.add_bar(0, self.fb_bar)
        self.add_bar(2, self.reg_bar)
        self._firmware: tuple[int, int] | None = None

    def set_firmware_resources(self, fb_address: int, mmio_address: int) -> None:
        if fb_address % self.fb_bar.size or mmio_address % self.reg_bar.size:
            raise ValueError("BAR addresses must be aligned to the BAR sizes")
        self._firmware = (fb_address, mmio_address)
        self._apply_firmware()

    def _apply_firmware(self) -> None:
        if self._firmware is None:
            return
        fb, mmio_addr = self._firmware
        self.config_write(0x10, 4, fb)
        self.config_write(0x18, 4, mmio_addr)
        self.config_write(0x04, 2, 0x0003)      # I/O space + memory space

    def reset(self) -> None:
        super().reset()
        self._apply_firmware()
