"""The console widget on a real guest (issue 5's done-means, pytest-qt): Debian's kernel on the software CPU runs
a busybox shell on tty1 (init.sh's `shell` action with vireo.console=tty1); keys typed into the ConsoleView go
through the PS/2 path (set-2 codes -> i8042 -> translation to set 1 -> atkbd -> the VT's keymap) to the shell, and
the command's output appears on the VGA text screen and in the widget's frame."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PyQt6.QtCore import Qt  # noqa: E402
from PyQt6.QtTest import QTest  # noqa: E402

from app.widgets.console import ConsoleWindow  # noqa: E402
from core.devices.vga_font import glyph_bitmap  # noqa: E402
from core.display.renderer import Renderer, text_snapshot  # noqa: E402
from core.keymap import Ps2InputSink, char_to_key  # noqa: E402

CMDLINE = "console=ttyS0 console=tty0 vireo.action=shell vireo.console=tty1"
PROMPT = "vireo:~#"
LIGHT_GREY = 0xFFAAAAAA

# Qt keys of the engine key names the typed commands use (letters, digits, space, minus).
QT_KEYS = {**{c: getattr(Qt.Key, f"Key_{c.upper()}") for c in "abcdefghijklmnopqrstuvwxyz0123456789"},
           "space": Qt.Key.Key_Space, "minus": Qt.Key.Key_Minus}


def type_keys(view, text: str) -> None:
    """Type like a person: Shift pressed and released around shifted characters, then Enter."""
    for ch in text:
        name, shift = char_to_key(ch)
        if shift:
            QTest.keyPress(view, Qt.Key.Key_Shift)
        QTest.keyClick(view, QT_KEYS[name], Qt.KeyboardModifier.ShiftModifier if shift else
                       Qt.KeyboardModifier.NoModifier)
        if shift:
            QTest.keyRelease(view, Qt.Key.Key_Shift, Qt.KeyboardModifier.ShiftModifier)
    QTest.keyClick(view, Qt.Key.Key_Return)


@pytest.fixture
def guest(debian_kernel, busybox_initramfs):
    from core.machine import Machine, MachineConfig, MachineState

    serial = bytearray()
    machine = Machine(MachineConfig(kernel=str(debian_kernel), initrd=str(busybox_initramfs), cmdline=CMDLINE,
                                    memory_mib=256, accel="software"), serial_output=serial.extend)
    yield machine, serial
    if machine.state in (MachineState.RUNNING, MachineState.PAUSED):
        machine.power_off()
        machine.wait(10)


def screen(machine) -> list[str]:
    return text_snapshot(machine.board.vga) or []


def shows_text(frame, row: int, col: int, text: str) -> bool:
    """Whether the frame's 9x16 cells at (row, col...) hold `text`'s glyphs in light grey on black."""
    if frame is None or (frame.width, frame.height) != (720, 400):
        return False
    for i, ch in enumerate(text):
        cell = frame.pixels[row * 16:(row + 1) * 16, (col + i) * 9:(col + i) * 9 + 8]
        if not np.array_equal(cell == LIGHT_GREY, glyph_bitmap(ord(ch))):
            return False
    return True


def test_keys_typed_into_the_console_reach_a_shell_on_tty1(qtbot, guest):
    machine, serial = guest
    window = ConsoleWindow(Renderer(machine.board.vga), Ps2InputSink(machine.board.i8042), "Debian on Vireo")
    qtbot.addWidget(window)
    window.resize(800, 520)
    window.show()
    qtbot.waitExposed(window)
    view = window.view
    view.setFocus()
    machine.start()
    qtbot.waitUntil(lambda: any(line.endswith(PROMPT) for line in screen(machine)), timeout=120_000)
    assert view.frame is not None and view.frame.mode == "text 80x25"
    assert b"BusyBox" not in serial          # the shell is on the VGA's tty1, not on the serial port

    type_keys(view, "echo $((6*7))")
    qtbot.waitUntil(lambda: "42" in screen(machine), timeout=30_000)
    lines = screen(machine)
    assert lines[lines.index("42") - 1].endswith("# echo $((6*7))")
    # The row is read again at each check: the newline after "42" (or the prompt) scrolls a full screen by one.
    qtbot.waitUntil(lambda: "42" in screen(machine) and shows_text(view.frame, screen(machine).index("42"), 0, "42"),
                    timeout=5_000)

    # "Type clipboard text" path: the widget types a string as key events on a timer.
    view.type_text("uname -m\n")
    qtbot.waitUntil(lambda: "x86_64" in screen(machine), timeout=30_000)
    assert machine.board.i8042.dropped_keys == 0

    type_keys(view, "poweroff")
    assert machine.wait(30).value == "shutoff", machine.reason
