"""The VGA (core/devices/vga*.py) as a state record: the VGA register file with its DAC, the four planes of
legacy video memory and their latches, the Bochs VBE dispi registers, and the linear framebuffer's video memory.
The PCI function (BAR addresses, command register) is saved with the PCI bus.

The planes are saved with the text window's bytes folded in (core/devices/vga_text_window.py), so the record is
the same whether or not the window was mapped as RAM. Video memory goes into the record as bytes (compressed by
the container: an unused framebuffer costs little). Dispi registers loaded from a file go through the model's own
clamping (_fixup), so a lying file cannot make the renderer scan outside video memory.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.devices.vga_bochs import NUM_REGS
from core.devices.vga_memory import PLANE_SIZE
from core.state import fields as f

if TYPE_CHECKING:
    from core.devices.vga import Vga

REGS = {"misc": f.U8, "seq": f.Ints(8, 0, 0xFF), "gc": f.Ints(16, 0, 0xFF), "crtc": f.Ints(32, 0, 0xFF),
        "ac": f.Ints(32, 0, 0xFF), "seq_index": f.u(3), "gc_index": f.u(4), "crtc_index": f.u(6),
        "ac_index": f.u(6), "ac_flipflop": f.BOOL, "feature_control": f.U8, "subsystem_enable": f.u(1),
        "dac": f.Bytes(768), "dac_read_index": f.U8, "dac_write_index": f.U8, "dac_component": f.Int(0, 2),
        "dac_latch": f.Ints(3, 0, 0xFF), "dac_state": f.Int(0, 3), "pel_mask": f.U8, "dac_8bit": f.BOOL}
VBE = {"index": f.U16, "r": f.Ints(NUM_REGS, 0, 0xFFFF), "big_endian": f.BOOL}


def get_state(vga: Vga) -> dict[str, Any]:
    with vga.regs.lock:
        vga.memory.text.fold()           # the planes with what the guest stored through the text window's RAM
        vga.memory.text.sync()
        return {"regs": f.capture(vga.regs, REGS, 0), "planes": bytes(vga.memory.vram),
                "latch": list(vga.memory.latch), "vbe": f.capture(vga.vbe, VBE, 0),
                "vram": bytes(vga.vbe.vram)}


def set_state(vga: Vga, state: Any) -> None:
    f.expect_record(state, "vga", ("regs", "planes", "latch", "vbe", "vram"))
    regs = f.validate(state["regs"], REGS, "vga.regs", 0)
    planes = f.check(state["planes"], f.Bytes(4 * PLANE_SIZE), "vga.planes")
    latch = f.check(state["latch"], f.Ints(4, 0, 0xFF), "vga.latch")
    vbe = f.validate(state["vbe"], VBE, "vga.vbe", 0)
    vram = f.check(state["vram"], f.Bytes(vga.vbe.vram_size, max_length=vga.vbe.vram_size), "vga.vram")
    with vga.regs.lock:
        vga.memory.text.release()        # the loaded planes are the truth; the windows trap until taken again
        vga.memory.plane_window.release()
        f.apply(vga.regs, regs, REGS, 0)
        vga.memory.vram[:] = planes
        vga.memory.latch = latch
        f.apply(vga.vbe, vbe, VBE, 0)
        vga.vbe._fixup()
        vga.vbe.vram[:] = vram
        vga.regs.generation += 1
