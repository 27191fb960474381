"""Small dialogs shared by the windows: one-line error messages, the delete confirmation (with the choice to
remove disk images too)."""
from __future__ import annotations

from PyQt6.QtWidgets import QCheckBox, QMessageBox, QWidget

from app.widgets.text import as_sentence
from core.host import VmInfo


def show_error(parent: QWidget | None, what: str, message: str) -> None:
    """`what` failed: `message` (one line). Non-modal so a burst of failures cannot stack event loops."""
    box = QMessageBox(QMessageBox.Icon.Critical, "Vireo", f"{what} failed", QMessageBox.StandardButton.Ok, parent)
    box.setInformativeText(as_sentence(message, what))
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


