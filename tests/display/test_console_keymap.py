"""Scan code set 2 tables and text typing (core/keymap.py)."""
from __future__ import annotations

from core.keymap import EVDEV_KEYS, KEY_NAMES, break_code, combo_events, make_code, text_events


def test_make_and_break_codes():
    assert make_code("a") == b"\x1c" and break_code("a") == b"\xf0\x1c"
    assert make_code("enter") == b"\x5a"
    assert make_code("kp_enter") == b"\xe0\x5a" and break_code("kp_enter") == b"\xe0\xf0\x5a"
    assert make_code("ctrl_r") == b"\xe0\x14" and make_code("ctrl_l") == b"\x14"
    assert make_code("f7") == b"\x83"
    assert make_code("print") == b"\xe0\x12\xe0\x7c" and break_code("print") == b"\xe0\xf0\x7c\xe0\xf0\x12"
    assert make_code("pause") == b"\xe1\x14\x77\xe1\xf0\x14\xf0\x77" and break_code("pause") == b""


def test_every_key_has_distinct_codes_and_evdev_names_exist():
    codes = [make_code(n) for n in KEY_NAMES]
    assert len(set(codes)) == len(codes)
    assert set(EVDEV_KEYS.values()) <= KEY_NAMES
    assert len(KEY_NAMES) >= 104


def test_combo_releases_in_reverse():
    assert combo_events("ctrl_l", "alt_l", "backspace") == [b"\x14", b"\x11", b"\x66", b"\xf0\x66", b"\xf0\x11",
                                                            b"\xf0\x14"]


def test_text_events_use_shift_for_capitals_and_symbols():
    events, skipped = text_events("Hi!\r\n")
    assert skipped == 0
    assert events == [b"\x12", b"\x33", b"\xf0\x33", b"\xf0\x12",        # H
                      b"\x43", b"\xf0\x43",                              # i
                      b"\x12", b"\x16", b"\xf0\x16", b"\xf0\x12",        # !
                      b"\x5a", b"\xf0\x5a"]                              # CR LF -> one Enter
    assert text_events("é")[1] == 1


def test_ps2_sink_reaches_the_i8042_as_translated_set1():
    from core.bus import PortIoBus
    from core.devices.i8042 import I8042
    from core.irq import IrqLine
    from core.keymap import Ps2InputSink

    class Irqs:
        def __init__(self):
            self.raised = []

        def set_irq(self, gsi, level):
            if level:
                self.raised.append(gsi)

    irqs = Irqs()
    pio = PortIoBus()
    kbc = I8042(lambda: None, IrqLine(irqs, 1), IrqLine(irqs, 12))
    kbc.attach(pio)
    pio.write(0x64, 1, 0x20)                          # read the command byte, set XLAT (bit 6), write it back
    ctr = pio.read(0x60, 1)
    pio.write(0x64, 1, 0x60)
    pio.write(0x60, 1, ctr | 0x40)
    sink = Ps2InputSink(kbc)
    sink.key_event(make_code("a"))
    assert pio.read(0x64, 1) & 1                      # output buffer full
    assert pio.read(0x60, 1) == 0x1E                  # set 1 make code of A after translation
    assert 1 in irqs.raised
    sink.key_event(break_code("a"))
    assert pio.read(0x60, 1) == 0x9E
    sink.mouse_event(3, 4, 1)                         # reaches the mouse model (disabled: reporting is off)


def test_screendump_writes_png_and_text(tmp_path):
    from PIL import Image

    from core.devices.vga import Vga
    from core.display.screendump import write_screendump
    vga = Vga()
    for i, ch in enumerate(b"VIREO-MARKER"):
        vga.memory.mmio_write(0xB8000 + 2 * (80 * 24 + i), 2, ch | 0x0700)
    files = write_screendump(vga, tmp_path / "screen.png")
    assert [f.name for f in files] == ["screen.png", "screen.txt"]
    assert Image.open(files[0]).size == (720, 400)
    lines = files[1].read_text().splitlines()
    assert len(lines) == 25 and lines[24] == "VIREO-MARKER"
    vga.vbe.write_reg(4, 0x41)
    assert [f.name for f in write_screendump(vga, tmp_path / "g.png")] == ["g.png"]
    vga.close()
