"""Small dialogs shared by the windows: one-line error messages, the delete confirmation (with the choice to
remove disk images too) and the question asked when quitting with VMs running."""
from __future__ import annotations

import enum

from PyQt6.QtWidgets import QCheckBox, QMessageBox, QWidget

from core.host import VmInfo


def show_error(parent: QWidget | None, what: str, message: str) -> None:
    """`what` failed: `message` (one line). Non-modal so a burst of failures cannot stack event loops."""
    box = QMessageBox(QMessageBox.Icon.Critical, "Vireo", f"{what} failed", QMessageBox.StandardButton.Ok, parent)
    box.setInformativeText(message)
    box.setObjectName("errorDialog")
    box.setModal(False)
    box.show()


def confirm_delete(parent: QWidget | None, info: VmInfo) -> tuple[bool, bool]:
    """Ask whether to delete `info`; returns (delete, also delete its disk images)."""
    box = QMessageBox(QMessageBox.Icon.Warning, "Delete Virtual Machine",
                      f"Delete the virtual machine “{info.name}”?", parent=parent)
    box.setInformativeText("Its definition is removed. This cannot be undone.")
    check = None
    if info.config.disks:
        paths = "\n".join(d.path for d in info.config.disks)
        check = QCheckBox(f"Also delete its disk image{'s' if len(info.config.disks) > 1 else ''}", box)
        check.setToolTip(paths)
        box.setCheckBox(check)
        box.setDetailedText(paths)
    delete = box.addButton("Delete", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    return box.clickedButton() is delete, bool(check and check.isChecked())


class QuitChoice(enum.Enum):
    CANCEL = "cancel"
    SHUT_DOWN = "shutdown"
    FORCE_OFF = "force_off"


def ask_quit(parent: QWidget | None, running: list[VmInfo]) -> QuitChoice:
    names = ", ".join(i.name for i in running[:5]) + (" …" if len(running) > 5 else "")
    n = len(running)
    box = QMessageBox(QMessageBox.Icon.Question, "Quit Vireo",
                      f"{n} virtual machine{'s are' if n > 1 else ' is'} running: {names}", parent=parent)
    box.setInformativeText("They run inside Vireo, so quitting stops them. Shut them down first "
                           "(the guests get the ACPI power button and 30 s to power off), or force them off now?")
    shut = box.addButton("Shut Down and Quit", QMessageBox.ButtonRole.AcceptRole)
    force = box.addButton("Force Off and Quit", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    if box.clickedButton() is shut:
        return QuitChoice.SHUT_DOWN
    if box.clickedButton() is force:
        return QuitChoice.FORCE_OFF
    return QuitChoice.CANCEL
