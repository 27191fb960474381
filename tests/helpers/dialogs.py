"""Answering the GUI's modal questions, file dialogs and popup menus the way a user does, for pytest-qt tests: each
helper is armed before the click that opens the modal (whose exec() blocks the test until it is answered) and
clicks the named button or menu item, or types the file's name, once it shows."""
from __future__ import annotations

from PyQt6.QtCore import Qt, QTimer
from PyQt6.QtGui import QAction
from PyQt6.QtWidgets import QApplication, QDialogButtonBox, QFileDialog, QLineEdit, QMenu, QMessageBox

POLL_MS = 20
# Bumped after every test (tests/gui/conftest.py): a helper still waiting for a dialog its test never opened (the
# question was switched off, say) stops, instead of answering the next test's dialog.
_epoch = [0]


def forget_pending() -> None:
    """Stop every helper still waiting for its dialog."""
    _epoch[0] += 1


def _poll(step) -> None:
    """Run `step` now and every POLL_MS while it returns False, for the current test only."""
    epoch = _epoch[0]

    def run() -> None:
        if epoch == _epoch[0] and step() is False:
            QTimer.singleShot(POLL_MS, run)

    QTimer.singleShot(0, run)


def answer_question(qtbot, button: str, asked: list[str]) -> None:
    """When a modal QMessageBox opens, record its text in `asked` and click its button labelled `button`."""
    def answer() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            return False
        asked.append(box.text())
        choice = next((b for b in box.buttons() if b.text().replace("&", "") == button), None)
        assert choice is not None, f"the question {box.text()!r} has no {button!r} button"
        qtbot.mouseClick(choice, Qt.MouseButton.LeftButton)

    _poll(answer)


def choose_from_popup(qtbot, action: QAction, offered: list[tuple[str, bool]]) -> None:
    """When a popup menu opens, record its items as (text, enabled) in `offered` and click `action` in it."""
    def choose() -> None:
        menu = QApplication.activePopupWidget()
        if not isinstance(menu, QMenu):
            return False
        offered.extend((a.text().replace("&", ""), a.isEnabled()) for a in menu.actions() if not a.isSeparator())
        assert action in menu.actions(), f"{action.text()!r} is not in the menu"
        qtbot.mouseClick(menu, Qt.MouseButton.LeftButton, pos=menu.actionGeometry(action).center())

    _poll(choose)


def choose_file(qtbot, path: str, titles: list[str]) -> None:
    """When a file dialog opens (Qt's own: the tests run without a desktop's native one), record its title in
    `titles`, put `path` in its file name field (as pasted: typing would open the completer's list) and click
    Open."""
    def choose() -> None:
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, QFileDialog):
            return False
        titles.append(dialog.windowTitle())
        edit = dialog.findChild(QLineEdit, "fileNameEdit")
        buttons = dialog.findChild(QDialogButtonBox, "buttonBox")
        assert edit is not None and buttons is not None, "not Qt's file dialog: no file name field or buttons"
        edit.setText(path)
        qtbot.mouseClick(buttons.button(QDialogButtonBox.StandardButton.Open), Qt.MouseButton.LeftButton)

    _poll(choose)
