"""The boot_params.screen_info a BIOS-booted loader would hand Linux for the VGA text console.

Layout: struct screen_info, include/uapi/linux/screen_info.h (0x40 bytes at offset 0 of the zero page, Linux
Documentation/arch/x86/zero-page.rst). With orig_video_isVGA = 1, mode 3, 80 columns, 25 lines, 16-line font and
orig_video_ega_bx's low byte != 0x10 (an EGA/VGA answered INT 10h AH=12h), vgacon drives 0xB8000 and the colour
CRTC ports (drivers/video/console/vgacon.c, vgacon_startup), so `console=tty0` shows on our VGA.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

SCREEN_INFO_SIZE = 0x40
VIDEO_TYPE_VGA = 1           # orig_video_isVGA as arch/x86/boot sets it for a VGA (vgacon: VIDEO_TYPE_VGAC)


@dataclass
class ScreenInfo:
    orig_x: int = 0
    orig_y: int = 0
    orig_video_page: int = 0
    orig_video_mode: int = 3
    orig_video_cols: int = 80
    flags: int = 0
    orig_video_ega_bx: int = 0x0003     # BH=0 colour, BL=3: 256 KiB of display memory
    orig_video_lines: int = 25
    orig_video_isVGA: int = VIDEO_TYPE_VGA
    orig_video_points: int = 16

    def to_bytes(self) -> bytes:
        """The 64-byte struct; fields not set here (ext_mem_k, the VESA/LFB block) are zero."""
        head = struct.pack("<BBHHBBBBHHBBH", self.orig_x, self.orig_y, 0, self.orig_video_page,
                           self.orig_video_mode, self.orig_video_cols, self.flags, 0, self.orig_video_ega_bx, 0,
                           self.orig_video_lines, self.orig_video_isVGA, self.orig_video_points)
        return head + bytes(SCREEN_INFO_SIZE - len(head))


def screen_info_for_text_mode(vga=None) -> ScreenInfo:
    """screen_info for the 80x25 text mode; with a Vga, the cursor position and geometry come from the device."""
    info = ScreenInfo()
    if vga is not None:
        cols, rows = vga.text_geometry()
        x, y = vga.cursor_position()
        info.orig_video_cols, info.orig_video_lines = cols, rows
        info.orig_x, info.orig_y = min(x, 255), min(y, 255)
        info.orig_video_points = (vga.regs.crtc[9] & 0x1F) + 1
    return info
