"""Issue 17, defect 7: fullscreen had no way out on screen, and scaling could only keep the aspect ratio or be 1:1.
Now a floating bar at the top of a fullscreen console offers Send key (the toolbar's own menu), Scale (keep aspect
ratio, stretch to fill, 1:1) and Exit fullscreen. Driven through the real widgets (pytest-qt) on a VGA device and
its renderer, without a VM: the VM window's Console tab and the runner's ConsoleWindow."""
from __future__ import annotations

import os

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QPoint, QRect, Qt  # noqa: E402
from PyQt6.QtTest import QTest  # noqa: E402

from app.ui.vm.console_tab import VmConsoleTab  # noqa: E402
from app.widgets import fullscreen_bar  # noqa: E402
from app.widgets.console import ConsoleView, ConsoleWindow  # noqa: E402
from app.widgets.console_scale import frame_target_rect  # noqa: E402
from core.devices.vga import Vga  # noqa: E402
from core.display.renderer import Renderer  # noqa: E402
from core.keymap import combo_events  # noqa: E402
from tests.display.test_console import RecordingSink, put_text  # noqa: E402
from tests.helpers.dialogs import choose_from_popup  # noqa: E402

BLUE = (0, 0, 170)          # VGA colour 1, the background of attribute 0x1F


@pytest.fixture
def vga():
    vga = Vga()
    for row in range(25):                      # the whole 720x400 text screen blue: the letterbox shows as black
        put_text(vga, row, 0, " " * 80, 0x1F)
    yield vga
    vga.close()


def _bar_texts(bar) -> list[str]:
    return [b.text() for b in (bar.send_key_button, bar.scale_button, bar.exit_button) if b.isVisible()]


def _black_share(widget, rect: QRect) -> float:
    """The share of `rect` (in widget coordinates) that the widget draws pure black."""
    image = widget.grab().toImage()
    points = [(x, y) for x in range(rect.left(), rect.right() + 1) for y in range(rect.top(), rect.bottom() + 1)]
    return sum(image.pixelColor(x, y).rgb() & 0xFFFFFF == 0 for x, y in points) / len(points)


def test_scale_modes_place_a_720x400_frame_in_1280x720() -> None:
    # Keep aspect ratio: scaled by 16/9 to 1280x711, centred, a black band of 4 and 5 pixels above and below.
    assert frame_target_rect(720, 400, 1280, 720, "keep") == QRect(0, 4, 1280, 711)
    assert frame_target_rect(720, 400, 1280, 720, "stretch") == QRect(0, 0, 1280, 720)
    assert frame_target_rect(720, 400, 1280, 720, "1:1") == QRect(280, 160, 720, 400)
    # A 4:3 screen on a 16:9 display is pillarboxed instead.
    assert frame_target_rect(1024, 768, 1280, 720, "keep") == QRect(160, 0, 960, 720)


def test_scale_mode_changes_the_drawn_pixels_at_the_letterbox_edge(qtbot, vga) -> None:
    view = ConsoleView(Renderer(vga))
    qtbot.addWidget(view)
    view.resize(1280, 720)
    view.show()
    qtbot.waitExposed(view)
    qtbot.waitUntil(lambda: view.frame is not None and view.frame.mode == "text 80x25", timeout=15_000)
    assert view.scale_mode == "keep"                   # the default keeps the guest's shape

    def pixel(x: int, y: int) -> tuple[int, int, int]:
        image = view.grab().toImage()
        colour = image.pixelColor(x, y)
        return colour.red(), colour.green(), colour.blue()

    assert view.target_rect() == QRect(0, 4, 1280, 711)
    assert pixel(640, 1) == (0, 0, 0)                  # the letterbox band
    assert pixel(640, 8) == BLUE
    assert pixel(640, 718) == (0, 0, 0)
    view.set_scale_mode("stretch")
    assert view.target_rect() == QRect(0, 0, 1280, 720)
    assert pixel(640, 1) == BLUE
    assert pixel(640, 718) == BLUE
    view.set_scale_mode("1:1")
    assert pixel(640, 150) == (0, 0, 0) and pixel(640, 170) == BLUE
    with pytest.raises(ValueError, match="unknown scale mode 'zoom': use one of keep, stretch, 1:1"):
        view.set_scale_mode("zoom")


@pytest.fixture
def tab(qtbot, vga, monkeypatch):
    monkeypatch.setattr(fullscreen_bar, "REVEAL_MS", 300)       # the bar's hiding is waited for below
    # The tab's fullscreen needs no host: the view is fed straight from a VGA device.
    tab = VmConsoleTab(None, "no-vm")
    qtbot.addWidget(tab)
    sink = RecordingSink()
    tab.view.set_source(Renderer(vga), sink)
    tab.resize(800, 520)
    tab.show()
    qtbot.waitExposed(tab)
    yield tab, sink
    tab.set_fullscreen(False)


def test_console_tab_fullscreen_has_a_floating_bar_with_a_way_out(qtbot, tab) -> None:
    tab, sink = tab
    assert tab.fullscreen_bar is None
    tab.fullscreen_action.trigger()
    full = tab._fullscreen
    assert full is not None and full.isFullScreen()
    bar = tab.fullscreen_bar
    qtbot.waitUntil(bar.isVisible, timeout=1000)
    assert bar.parentWidget() is full and tab.view.parentWidget() is full
    assert _bar_texts(bar) == ["Send key", "Scale", "Exit fullscreen"]
    assert "Ctrl+Alt+Enter" in bar.exit_button.toolTip()
    assert bar.y() == 0 and abs(bar.geometry().center().x() - full.width() // 2) <= 1
    # The fullscreen window's black background stays behind the view: the bar's buttons are not black on black.
    assert _black_share(bar, bar.exit_button.geometry()) < 0.5
    # Send key is the toolbar's own menu, not a copy of the key list.
    assert bar.send_key_button.menu() is tab.send_key_button.menu()
    offered: list[tuple[str, bool]] = []
    choose_from_popup(qtbot, tab.send_key_actions["Ctrl+Alt+Del"], offered)
    qtbot.mouseClick(bar.send_key_button, Qt.MouseButton.LeftButton)
    assert ("Ctrl+Alt+F12", True) in offered
    assert sink.keys == combo_events("ctrl_l", "alt_l", "delete")
    # Scale from the bar: the view stretches, and the toolbar's Scale menu shows the same choice.
    stretch = next(a for a in bar.scale_menu.actions() if a.text() == "Stretch to fill")
    offered.clear()
    choose_from_popup(qtbot, stretch, offered)
    qtbot.mouseClick(bar.scale_button, Qt.MouseButton.LeftButton)
    assert offered == [("Keep aspect ratio", True), ("Stretch to fill", True), ("1:1", True)]
    assert tab.view.scale_mode == "stretch"
    assert [a.text() for a in tab.scale_menu.actions() if a.isChecked()] == ["Stretch to fill"]
    # The bar goes after a moment, and comes back when the pointer reaches the top edge.
    QTest.mouseMove(tab.view, QPoint(full.width() // 2, full.height() // 2))
    qtbot.waitUntil(lambda: not bar.isVisible(), timeout=3000)
    assert bar.y() == -bar.height()                    # it slid up out of sight
    QTest.mouseMove(tab.view, QPoint(full.width() // 2, 0))
    qtbot.waitUntil(bar.isVisible, timeout=1000)
    assert bar.y() == 0
    qtbot.mouseClick(bar.exit_button, Qt.MouseButton.LeftButton)
    assert tab._fullscreen is None and tab.fullscreen_bar is None
    assert tab.view.parentWidget() is tab
    qtbot.waitUntil(tab.view.isVisible, timeout=1000)     # the layout shows it back on the next event loop turn
    # The bar's Scale menu went with it; the toolbar's still follows the view.
    one_to_one = next(a for a in tab.scale_menu.actions() if a.text() == "1:1")
    choose_from_popup(qtbot, one_to_one, [])
    qtbot.mouseClick(tab.scale_button, Qt.MouseButton.LeftButton)
    assert tab.view.scale_mode == "1:1" and one_to_one.isChecked()
    tab.view.set_scale_mode("keep")
    assert [a.text() for a in tab.scale_menu.actions() if a.isChecked()] == ["Keep aspect ratio"]


def test_console_window_fullscreen_bar_leaves_fullscreen(qtbot, vga) -> None:
    window = ConsoleWindow(Renderer(vga), RecordingSink(), title="test console")
    qtbot.addWidget(window)
    window.resize(800, 520)
    window.show()
    qtbot.waitExposed(window)
    assert not window.fullscreen_bar.isVisible()
    window.fullscreen_action.trigger()
    assert window.isFullScreen() and not window.menuBar().isVisible()
    bar = window.fullscreen_bar
    qtbot.waitUntil(bar.isVisible, timeout=1000)
    assert _bar_texts(bar) == ["Send key", "Scale", "Exit fullscreen"]
    assert bar.send_key_button.menu() is window.send_menu
    qtbot.mouseClick(bar.exit_button, Qt.MouseButton.LeftButton)
    assert not window.isFullScreen() and not bar.isVisible()
    assert window.menuBar().isVisible() and not window.fullscreen_action.isChecked()
    # Out of fullscreen the top edge brings no bar; back in, it shows again.
    assert not bar.active
    QTest.mouseMove(window.view, QPoint(100, 0))
    assert not bar.isVisible()
    QTest.keyClick(window.view, Qt.Key.Key_Return,
                   Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier)
    qtbot.waitUntil(lambda: window.isFullScreen() and bar.isVisible(), timeout=1000)
