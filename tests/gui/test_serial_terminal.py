"""The serial console's terminal widget (issue 17, defect 9) through real mouse and wheel events (pytest-qt): a
left-button drag selects text and Copy puts exactly that on the clipboard; the grid follows the pane's size (never
below 80x24); the scroll-back keeps what scrolled off and the wheel brings it back."""
from __future__ import annotations

import os

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PyQt6.QtGui import QMouseEvent, QWheelEvent  # noqa: E402
from PyQt6.QtWidgets import QApplication  # noqa: E402

from app.widgets.terminal import MIN_COLUMNS, MIN_ROWS, SerialTerminal  # noqa: E402


@pytest.fixture
def term(qtbot):
    widget = SerialTerminal()
    qtbot.addWidget(widget)
    widget.resize(widget.sizeHint())
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def _centre(term, row: int, col: int) -> QPoint:
    return QPoint(4 + col * term.cell_w + term.cell_w // 2, 4 + row * term.cell_h + term.cell_h // 2)


def _drag(qtbot, term, start: QPoint, end: QPoint) -> None:
    qtbot.mousePress(term, Qt.MouseButton.LeftButton, pos=start)
    move = QMouseEvent(QMouseEvent.Type.MouseMove, QPointF(end), QPointF(term.mapToGlobal(end)),
                       Qt.MouseButton.NoButton, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(term, move)
    qtbot.mouseRelease(term, Qt.MouseButton.LeftButton, pos=end)


def test_drag_selects_text_and_copy_takes_just_that(qtbot, term) -> None:
    term.feed(b"first line of output\r\nvireo:~# uname -a\r\nLinux vireo 6.1.0\r\n")
    # From "line" on the first row to "uname" on the second.
    _drag(qtbot, term, _centre(term, 0, 6), _centre(term, 1, 13))
    assert term.selected_text() == "line of output\nvireo:~# uname"
    term.copy()
    assert QApplication.clipboard().text() == "line of output\nvireo:~# uname"
    # Ctrl+Shift+C does the same; a drag backwards selects the same stream of text.
    QApplication.clipboard().clear()
    _drag(qtbot, term, _centre(term, 2, 4), _centre(term, 2, 0))
    qtbot.keyClick(term, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert QApplication.clipboard().text() == "Linux"
    term.grab()     # paints the highlight without error
    # New output moves the text: the selection ends, and Copy takes the whole screen again.
    term.feed(b"more\r\n")
    term.copy()
    assert QApplication.clipboard().text().startswith("first line of output\nvireo:~# uname -a")


def test_grid_follows_the_pane_and_scrollback_keeps_old_lines(qtbot, term) -> None:
    term.resize(term.cell_w * 120 + 8, term.cell_h * 40 + 8)
    qtbot.waitUntil(lambda: (term.screen.columns, term.screen.lines) == (120, 40), timeout=15_000)
    term.resize(term.cell_w * 30 + 8, term.cell_h * 10 + 8)
    qtbot.waitUntil(lambda: (term.screen.columns, term.screen.lines) == (MIN_COLUMNS, MIN_ROWS), timeout=15_000)
    term.feed(b"".join(b"line %03d\r\n" % n for n in range(300)))
    assert "line 000" not in term.text() and "line 299" in term.text()
    for _ in range(40):
        pos = QPointF(20, 20)
        wheel = QWheelEvent(pos, QPointF(term.mapToGlobal(pos.toPoint())), QPoint(0, 0), QPoint(0, 120),
                            Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase,
                            False)
        QApplication.sendEvent(term, wheel)
    assert "line 000" in term.text()
    term.feed(b"fresh\r\n")             # new output returns to the bottom
    assert "fresh" in term.text()
