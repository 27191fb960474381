"""Answering the GUI's modal questions, file dialogs and popup menus the way a user does, for pytest-qt tests: each
helper is armed before the click that opens the modal (whose exec() blocks the test until it is answered) and
clicks the named button or menu item, or types the file's name, once it shows."""
from __future__ import annotations

from PyQt6.QtCore import Qt, QTimer
from PyQt6.QtGui import QAction
from PyQt6.QtWidgets import QApplication, QDialogButtonBox, QFileDialog, QLineEdit, QMenu, QMessageBox

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


def choose_file(qtbot, path: str, titles: list[str]) -> None:
    """When a file dialog opens (Qt's own: the tests run without a desktop's native one), record its title in
    `titles`, put `path` in its file name field (as pasted: typing would open the completer's list) and click
    Open."""
    def choose() -> None:
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, QFileDialog):
            QTimer.singleShot(POLL_MS, choose)
            return
        titles.append(dialog.windowTitle())
        edit = dialog.findChild(QLineEdit, "fileNameEdit")
        buttons = dialog.findChild(QDialogButtonBox, "buttonBox")
        assert edit is not None and buttons is not None, "not Qt's file dialog: no file name field or buttons"
        edit.setText(path)
        qtbot.mouseClick(buttons.button(QDialogButtonBox.StandardButton.Open), Qt.MouseButton.LeftButton)

    QTimer.singleShot(0, choose)
