"""Answering the GUI's modal questions and popup menus the way a user does, for pytest-qt tests: each helper is
armed before the click that opens the modal (whose exec() blocks the test until it is answered) and clicks the
named button or menu item once it shows."""
from __future__ import annotations

from PyQt6.QtCore import Qt, QTimer
from PyQt6.QtGui import QAction
from PyQt6.QtWidgets import QApplication, QMenu, QMessageBox

POLL_MS = 20


def answer_question(qtbot, button: str, asked: list[str]) -> None:
    """When a modal QMessageBox opens, record its text in `asked` and click its button labelled `button`."""
    def answer() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(POLL_MS, answer)
            return
        asked.append(box.text())
        choice = next((b for b in box.buttons() if b.text().replace("&", "") == button), None)
        assert choice is not None, f"the question {box.text()!r} has no {button!r} button"
        qtbot.mouseClick(choice, Qt.MouseButton.LeftButton)

    QTimer.singleShot(0, answer)


def choose_from_popup(qtbot, action: QAction, offered: list[tuple[str, bool]]) -> None:
    """When a popup menu opens, record its items as (text, enabled) in `offered` and click `action` in it."""
    def choose() -> None:
        menu = QApplication.activePopupWidget()
        if not isinstance(menu, QMenu):
            QTimer.singleShot(POLL_MS, choose)
            return
        offered.extend((a.text().replace("&", ""), a.isEnabled()) for a in menu.actions() if not a.isSeparator())
        assert action in menu.actions(), f"{action.text()!r} is not in the menu"
        qtbot.mouseClick(menu, Qt.MouseButton.LeftButton, pos=menu.actionGeometry(action).center())

    QTimer.singleShot(0, choose)
