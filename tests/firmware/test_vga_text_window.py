"""The VGA text window 0xB8000 mapped as guest RAM while the text mode makes it a linear store
(core/devices/vga_text_window.py), driven by a real boot sector on SeaBIOS and its VGA BIOS: text the guest writes
straight into B800:0000 shows on the screen (the model's character cells and the rendered frame), survives a
save and restore, and a switch to mode 13h and back (INT 10h) gives the window back to the planar model and takes
it again, each picture right. Also the plane window 0xA0000 (core/devices/vga_plane_window.py): a glyph stored
and read back in the font access state a VGA BIOS uses goes through plane 2 mapped as RAM, and shows."""
from __future__ import annotations

import time

import numpy as np
import pytest

from core.display.renderer import Renderer
from core.keymap import Ps2InputSink, break_code, make_code
from core.machine import DiskSpec, MachineState
from tests.firmware.conftest import wait_for_screen
from tests.helpers.accel import ACCELS
from tests.helpers.screen_text import frame_text
from tests.helpers.software_guest import assemble
from tests.state.helpers import Running

FIRST = "vireo-vga: written through B800 row 2"
SECOND = "vireo-vga: back in mode 03h, row 5"
PIXEL_ROW, PIXEL_COLOUR = 10, 4                 # mode 13h: 32 pixels of DAC colour 4 (EGA red) on line 10

SOURCE = f"""
    .code16
    .globl _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    movw $0x7c00, %sp
    sti
    movb $0x01, %ah
    movw $0x2000, %cx
    int $0x10                    # no cursor (it would hide a character of the frame's text)
    movw $first, %si
    movw $(2 * 160), %di
    call put                     # straight into video memory, no BIOS call
    xorb %ah, %ah
    int $0x16                    # wait for a key
    movw $0x0013, %ax
    int $0x10                    # 320x200x256 (chain-4): the window is no linear text store any more
    movw $0xa000, %ax
    movw %ax, %es
    movw $({PIXEL_ROW} * 320), %di
    movb ${PIXEL_COLOUR}, %al
    movw $32, %cx
    rep stosb
    xorb %ah, %ah
    int $0x16
    movw $0x0003, %ax
    int $0x10                    # text again (the VGA BIOS clears the screen)
    movb $0x01, %ah
    movw $0x2000, %cx
    int $0x10
    movw $second, %si
    movw $(5 * 160), %di
    call put
1:  hlt
    jmp 1b

put:                             # %si: NUL-terminated text to B800:%di, yellow on blue
    movw $0xb800, %ax
    movw %ax, %es
    movb $0x1e, %ah
2:  lodsb
    testb %al, %al
    jz 3f
    stosw
    jmp 2b
3:  ret

first:  .asciz "{FIRST}"
second: .asciz "{SECOND}"
    .org 510
    .byte 0x55, 0xaa
"""


def _disk(path) -> str:
    code = assemble(SOURCE, 16, 0x7C00)
    assert len(code) == 512
    with open(path, "wb") as f:
        f.write(code)
        f.truncate(1 << 20)
    return str(path)


def _press(machine, key: str) -> None:
    keyboard = Ps2InputSink(machine.board.i8042)
    keyboard.key_event(make_code(key))
    keyboard.key_event(break_code(key))


def _frame(machine):
    return Renderer(machine.board.vga).render(force=True)


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("accel", ACCELS)
def test_text_written_through_the_mapped_window_shows_and_modes_switch(firmware_machine, accel, tmp_path):
    machine = firmware_machine(accel, disks=[DiskSpec(_disk(tmp_path / "mbr.img"), format="raw")], boot=["disk"])
    text = machine.board.vga.memory.text
    machine.start()
    lines = wait_for_screen(machine, FIRST, timeout=120)
    assert lines[2] == FIRST, lines
    # The guest's stores went to RAM, not through the MMIO model: the window is taken and mapped.
    assert text.owned and text.mapped
    assert frame_text(_frame(machine))[2] == FIRST
    cells = machine.board.vga.memory.planes
    assert bytes(cells[1][2 * 80 * 2:2 * 80 * 2 + 2 * len(FIRST):2]) == b"\x1e" * len(FIRST)   # the attributes

    _press(machine, "a")
    vga = machine.board.vga

    _wait(lambda: not vga.in_text_mode(), 30, "the guest never left text mode")
    assert not text.owned and not text.mapped          # mode 13h: the planar (chain-4) model serves the window
    # The picture: 320x200, line 10's first 32 pixels EGA red (DAC 4), nothing else red.
    red = (0xAA, 0, 0)

    def line_drawn() -> bool:
        rgb = _frame(machine).rgb
        return rgb.shape[:2] == (200, 320) and (rgb[PIXEL_ROW, :32] == red).all()

    _wait(line_drawn, 30, "mode 13h line not drawn")
    is_red = (_frame(machine).rgb == red).all(axis=-1)
    assert is_red.sum() == 32, np.argwhere(is_red)[:40]

    _press(machine, "b")
    lines = wait_for_screen(machine, SECOND, timeout=30)
    assert lines[5] == SECOND and FIRST not in lines, lines
    assert text.owned and text.mapped
    assert frame_text(_frame(machine))[5] == SECOND
    assert machine.state == MachineState.RUNNING


def test_mapped_text_survives_save_and_restore(tmp_path):
    """Saved while the window is mapped: the record holds the guest's text, and the restored machine shows it
    and keeps running."""
    from core.machine import MachineConfig
    from tests.helpers.accel import require_accel
    require_accel("software")
    state = tmp_path / "vga.state"
    first = Running(MachineConfig(memory_mib=64, accel="software", boot_menu_wait_ms=0, boot=["disk"],
                                  disks=[DiskSpec(_disk(tmp_path / "mbr.img"), format="raw")]))
    try:
        wait_for_screen(first.machine, FIRST, timeout=120)
        assert first.machine.board.vga.memory.text.mapped
        first.machine.save(str(state))
        assert first.machine.wait(10) == MachineState.SHUTOFF
    finally:
        first.close()
    second = Running(state_file=str(state))
    try:
        vga = second.machine.board.vga
        assert not vga.memory.text.owned             # restored planes are the truth until the guest touches it
        lines = wait_for_screen(second.machine, FIRST, timeout=5)
        assert lines[2] == FIRST
        assert frame_text(_frame(second.machine))[2] == FIRST
        _press(second.machine, "a")                  # the guest carries on: mode 13h
        _wait(lambda: not vga.in_text_mode(), 30, "the restored guest never left text mode")
        assert second.machine.state == MachineState.RUNNING, second.machine.reason
    finally:
        second.close()


# -- the plane window (core/devices/vga_plane_window.py): a font loaded as a VGA BIOS loads one ------------------
GLYPH_ROWS = (0xF0, 0x0F) * 8                   # character 01h's new glyph: alternating half rows
FONT_OK, FONT_BAD = "vireo-vga: glyph read back", "vireo-vga: glyph read back WRONG"
FONT_ROW, FONT_COL = 3, 10

FONT_SOURCE = f"""
    .code16
    .globl _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    movw $0x7c00, %sp
    sti
    movb $0x01, %ah
    movw $0x2000, %cx
    int $0x10                    # no cursor
    movw $0x3c4, %dx             # font access, as SeaVGABIOS's get_font_access:
    movw $0x0100, %ax
    outw %ax, %dx                #   sequencer in synchronous reset
    movw $0x0402, %ax
    outw %ax, %dx                #   map mask: plane 2
    movw $0x0704, %ax
    outw %ax, %dx                #   memory mode: sequential (odd/even off), no chain-4
    movw $0x0300, %ax
    outw %ax, %dx
    movw $0x3ce, %dx
    movw $0x0204, %ax
    outw %ax, %dx                #   read map select: plane 2
    movw $0x0005, %ax
    outw %ax, %dx                #   write mode 0, read mode 0, no host odd/even
    movw $0x0406, %ax
    outw %ax, %dx                #   memory map A0000 64 KiB, text
    movw $0xa000, %ax
    movw %ax, %es
    movw $32, %di                # character 01h's glyph: 32 bytes per character in map 0
    movw $8, %cx
1:  movw $0x0ff0, %es:(%di)
    addw $2, %di
    loop 1b
    movb %es:32, %bl             # read back through the window: the first row
    movb %es:33, %bh
    xorb %ah, %ah
    int $0x16                    # wait for a key, still in font access
    movw $0x3c4, %dx             # back to text access, as release_font_access
    movw $0x0100, %ax
    outw %ax, %dx
    movw $0x0302, %ax
    outw %ax, %dx
    movw $0x0204, %ax
    outw %ax, %dx
    movw $0x0300, %ax
    outw %ax, %dx
    movw $0x3ce, %dx
    movw $0x0004, %ax
    outw %ax, %dx
    movw $0x1005, %ax
    outw %ax, %dx
    movw $0x0e06, %ax
    outw %ax, %dx
    movw $0xb800, %ax
    movw %ax, %es
    movw $(({FONT_ROW} * 80 + {FONT_COL}) * 2), %di
    movw $0x0f01, %ax            # character 01h, bright white on black
    stosw
    movw $ok, %si
    cmpw $0x0ff0, %bx
    je 2f
    movw $bad, %si
2:  movw $(({FONT_ROW} + 1) * 160), %di
    movb $0x07, %ah
3:  lodsb
    testb %al, %al
    jz 4f
    stosw
    jmp 3b
4:  hlt
    jmp 4b

ok:  .asciz "{FONT_OK}"
bad: .asciz "{FONT_BAD}"
    .org 510
    .byte 0x55, 0xaa
"""


@pytest.mark.parametrize("accel", ACCELS)
def test_font_loaded_through_the_mapped_plane_shows(firmware_machine, accel, tmp_path):
    disk = tmp_path / "font.img"
    code = assemble(FONT_SOURCE, 16, 0x7C00)
    assert len(code) == 512
    disk.write_bytes(code + bytes((1 << 20) - 512))
    machine = firmware_machine(accel, disks=[DiskSpec(str(disk), format="raw")], boot=["disk"])
    window = machine.board.vga.memory.plane_window
    machine.start()
    # Mapped twice: for the VGA BIOS's own font load at its mode set, then for the guest's (waiting for a key).
    _wait(lambda: window.maps >= 2 and window.mapped_plane == 2, 120, "plane 2 not mapped for the guest's glyph")
    maps = window.maps
    _press(machine, "a")
    lines = wait_for_screen(machine, FONT_OK, timeout=30)
    assert lines[FONT_ROW + 1] == FONT_OK, lines
    assert window.mapped_plane is None and machine.board.vga.memory.text.owned
    # The glyph on the screen: cell (row 3, column 10), 9x16 pixels; each row's left or right half lit.
    rgb = _frame(machine).rgb
    cell = rgb[FONT_ROW * 16:(FONT_ROW + 1) * 16, FONT_COL * 9:FONT_COL * 9 + 8]
    lit = (cell == (0xFF, 0xFF, 0xFF)).all(axis=-1)
    for row, bits in enumerate(GLYPH_ROWS):
        assert lit[row].tolist() == [bool(bits >> (7 - x) & 1) for x in range(8)], (row, lit[row])
    assert window.maps == maps
