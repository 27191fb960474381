"""The console widget offscreen: it shows the guest's frame, follows mode changes, and sends set-2 scan codes."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PIL import Image  # noqa: E402
from PyQt6.QtCore import QPoint, Qt  # noqa: E402
from PyQt6.QtGui import QGuiApplication  # noqa: E402
from PyQt6.QtTest import QTest  # noqa: E402

from app.widgets.console import ConsoleWindow  # noqa: E402
from core.devices.vga import Vga  # noqa: E402
from core.display.renderer import Renderer  # noqa: E402
from core.keymap import combo_events, text_events  # noqa: E402


class RecordingSink:
    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.mouse: list[tuple[int, int, int]] = []

    def key_event(self, set2_bytes: bytes) -> None:
        self.keys.append(bytes(set2_bytes))

    def mouse_event(self, dx: int, dy: int, buttons: int) -> None:
        self.mouse.append((dx, dy, buttons))


def put_text(vga: Vga, row: int, col: int, text: str, attr: int) -> None:
    for i, ch in enumerate(text.encode("cp437")):
        vga.memory.mmio_write(0xB8000 + 2 * (row * 80 + col + i), 2, ch | (attr << 8))


@pytest.fixture
def console(qtbot):
    vga = Vga()
    sink = RecordingSink()
    window = ConsoleWindow(Renderer(vga), sink, title="test console")
    qtbot.addWidget(window)
    window.resize(800, 520)
    window.show()
    qtbot.waitExposed(window)
    window.view.setFocus()
    yield window, vga, sink
    vga.close()


def test_shows_the_text_frame(console, qtbot, tmp_path):
    window, vga, _ = console
    put_text(vga, 0, 0, "Vireo console", 0x4F)                     # bright white on red
    put_text(vga, 12, 30, "\u2588" * 20, 0x0A)                      # a light green bar in the middle
    qtbot.waitUntil(lambda: window.view.frame is not None and window.view.frame.mode == "text 80x25", timeout=15_000)
    window.view.refresh(force=True)
    window.view.repaint()
    shot = tmp_path / "widget.png"
    assert window.view.grab().save(str(shot))
    img = np.asarray(Image.open(shot).convert("RGB"))
    target = window.view.target_rect()
    assert abs(target.width() / target.height() - 720 / 400) < 0.02    # aspect kept
    scale = target.width() / 720
    # Centre of the bar: column 40, row 12 of the 9x16 cells.
    x = int(target.x() + (40 * 9 + 4) * scale)
    y = int(target.y() + (12 * 16 + 8) * scale)
    assert tuple(img[y, x]) == (85, 255, 85)
    # Top-left cell background is red (attribute 0x4F).
    assert tuple(img[int(target.y() + 1 * scale), int(target.x() + 8 * scale)]) == (170, 0, 0)
    window.save_screenshot(str(tmp_path / "frame.png"))
    frame_png = Image.open(tmp_path / "frame.png")
    assert frame_png.size == (720, 400)
    assert frame_png.getpixel((40 * 9 + 4, 12 * 16 + 8)) == (85, 255, 85)


def test_key_press_sends_set2_make_and_break(console, qtbot):
    window, _, sink = console
    QTest.keyClick(window.view, Qt.Key.Key_A)
    QTest.keyClick(window.view, Qt.Key.Key_Left)                    # extended key: E0 prefix
    QTest.keyClick(window.view, Qt.Key.Key_Tab)                     # not eaten by focus navigation
    assert sink.keys == [b"\x1c", b"\xf0\x1c", b"\xe0\x6b", b"\xe0\xf0\x6b", b"\x0d", b"\xf0\x0d"]


def test_ctrl_alt_toggles_grab_and_status_line(console, qtbot):
    window, _, sink = console
    view = window.view

    def chord(*keys):
        for key in keys:
            QTest.keyPress(view, key)
        for key in reversed(keys):
            QTest.keyRelease(view, key)

    chord(Qt.Key.Key_Control, Qt.Key.Key_Alt)
    assert view.grabbed
    assert "release" in window.status.text()
    assert sink.keys == [b"\x14", b"\x11", b"\xf0\x11", b"\xf0\x14"]   # the guest still sees the keys
    chord(Qt.Key.Key_Alt, Qt.Key.Key_Control)
    assert not view.grabbed
    assert "grab" in window.status.text()
    # Ctrl+Alt+key is a key combination for the guest, not a grab toggle.
    chord(Qt.Key.Key_Control, Qt.Key.Key_Alt, Qt.Key.Key_F2)
    assert not view.grabbed
    assert sink.keys[-6:] == combo_events("ctrl_l", "alt_l", "f2")


def test_send_key_menu(console):
    window, _, sink = console
    window.send_key_actions["Ctrl+Alt+Del"].trigger()
    assert sink.keys == [b"\x14", b"\x11", b"\xe0\x71", b"\xe0\xf0\x71", b"\xf0\x11", b"\xf0\x14"]
    sink.keys.clear()
    window.send_key_actions["Ctrl+Alt+F7"].trigger()
    assert sink.keys == combo_events("ctrl_l", "alt_l", "f7")
    assert sink.keys[2] == b"\x83"


def test_type_clipboard_text(console, qtbot):
    window, _, sink = console
    QGuiApplication.clipboard().setText("ls -l /\n")
    window.type_clipboard_action.trigger()
    qtbot.waitUntil(lambda: window.view.typing_pending == 0, timeout=3000)
    assert sink.keys == text_events("ls -l /\n")[0]
    assert sink.keys[:2] == [b"\x4b", b"\xf0\x4b"]                   # 'l'
    # Done typing, the status line says so (not "Typing 8 characters" for ever), then gives way to the hint.
    qtbot.waitUntil(lambda: window.status.text() == "Typed 8 characters", timeout=1000)
    qtbot.waitUntil(lambda: "Typ" not in window.status.text(), timeout=10_000)


def test_follows_mode_change_and_one_to_one(console, qtbot):
    window, vga, _ = console
    qtbot.waitUntil(lambda: window.view.frame is not None, timeout=15_000)
    sizes = []
    window.view.frameSizeChanged.connect(lambda w, h: sizes.append((w, h)))
    for index, value in ((3, 32), (1, 640), (2, 480), (4, 0x41)):
        vga.vbe.write_reg(index, value)
    qtbot.waitUntil(lambda: sizes == [(640, 480)], timeout=15_000)
    assert "vbe 640x480x32" in window.status.text()
    window.one_to_one_action.trigger()
    target = window.view.target_rect()
    assert (target.width(), target.height()) == (640, 480)


def test_mouse_buttons_and_motion_reach_the_sink(console, qtbot):
    window, _, sink = console
    view = window.view
    QTest.mousePress(view, Qt.MouseButton.LeftButton, pos=QPoint(100, 100))
    QTest.mouseMove(view, QPoint(110, 95))
    QTest.mouseRelease(view, Qt.MouseButton.LeftButton, pos=QPoint(110, 95))
    assert sink.mouse[0] == (0, 0, 1)
    assert (10, -5, 1) in sink.mouse
    assert sink.mouse[-1] == (0, 0, 0)


def test_focus_loss_releases_held_keys(console, qtbot):
    window, _, sink = console
    QTest.keyPress(window.view, Qt.Key.Key_Shift)
    QTest.keyPress(window.view, Qt.Key.Key_B)
    window.view.release_all_keys()
    assert sorted(sink.keys[2:]) == sorted([b"\xf0\x12", b"\xf0\x32"])
