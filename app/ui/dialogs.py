"""Small dialogs shared by the windows: one-line error messages, the question before Force Off, and the delete
confirmation, which offers each disk image with a checkbox of its own, as virt-manager's delete dialog does; a disk
another VM on the host lists is shown unticked and disabled with its user's name (the host checks again, and keeps
such a disk whatever a client asks: core/host/local.py delete); and the question before a definition file that
failed to load is deleted."""
from __future__ import annotations

import posixpath
from collections.abc import Iterable

from PyQt6.QtWidgets import QCheckBox, QDialogButtonBox, QGridLayout, QMessageBox, QVBoxLayout, QWidget

from app.widgets.text import as_sentence
from core.host import VmInfo


def show_error(parent: QWidget | None, what: str, message: str) -> None:
    """`what` failed: `message` (one line). Non-modal so a burst of failures cannot stack event loops."""
    box = QMessageBox(QMessageBox.Icon.Critical, "Vireo", f"{what} failed", QMessageBox.StandardButton.Ok, parent)
    box.setInformativeText(as_sentence(message, what))
    box.setObjectName("errorDialog")
    box.setModal(False)
    box.show()


def disk_users(info: VmInfo, vms: Iterable[VmInfo]) -> dict[str, str]:
    """Each disk path of `info` that another of `vms` lists too -> that VM's name. Paths are compared as the host
    spells them, normalised but not resolved: they may name files on another machine."""
    mine = {posixpath.normpath(d.path): d.path for d in info.config.disks}
    users: dict[str, str] = {}
    for other in vms:
        if other.uuid == info.uuid:
            continue
        for disk in other.config.disks:
            path = mine.get(posixpath.normpath(disk.path))
            if path is not None:
                users.setdefault(path, other.name)
    return users


def image_users(path: str, vms: Iterable[VmInfo]) -> list[str]:
    """The names of the VMs among `vms` that list the disk image `path`, compared as disk_users compares them
    (the New VM wizard warns before a second VM writes the same image)."""
    wanted = posixpath.normpath(path)
    return [vm.name for vm in vms if any(posixpath.normpath(d.path) == wanted for d in vm.config.disks)]


def confirm_delete(parent: QWidget | None, info: VmInfo,
                   used_by: dict[str, str] | None = None) -> tuple[bool, list[str]]:
    """Ask whether to delete `info` and which of its disk images with it; returns (delete, the paths to delete).
    `used_by` (disk_users) names the disks another VM uses: those are offered unticked and cannot be ticked."""
    used_by = used_by or {}
    box = QMessageBox(QMessageBox.Icon.Warning, "Delete Virtual Machine",
                      f"Delete the virtual machine “{info.name}”?", parent=parent)
    box.setObjectName("deleteDialog")
    box.setInformativeText("Its definition is removed. This cannot be undone.")
    disks: list[QCheckBox] = []
    master = None
    if info.config.disks:
        # The overall switch stays QMessageBox's own checkbox; under it, one box per disk.
        many = len(info.config.disks) > 1
        master = QCheckBox(f"Also delete {'these disk images' if many else 'its disk image'}:", box)
        box.setCheckBox(master)
        panel = QWidget(box)
        panel.setObjectName("deleteDisks")
        column = QVBoxLayout(panel)
        column.setContentsMargins(20, 0, 0, 0)
        for disk in info.config.disks:
            user = used_by.get(disk.path)
            check = QCheckBox(disk.path if user is None else f"{disk.path} (used by {user})", panel)
            check.setObjectName("deleteDisk")
            check.setProperty("path", disk.path)
            check.setChecked(user is None)
            check.setEnabled(user is None)
            if user is not None:
                check.setToolTip(f"{user} uses this disk image too: it is kept")
            column.addWidget(check)
            disks.append(check)
        deletable = [c for c in disks if c.isEnabled()]
        master.setChecked(bool(deletable))
        master.setEnabled(bool(deletable))
        master.toggled.connect(lambda on: [c.setEnabled(on) for c in deletable])
    delete = box.addButton("Delete", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    if disks:
        _add_above_buttons(box, panel)
    box.exec()
    chosen = [str(c.property("path")) for c in disks
              if master is not None and master.isChecked() and c.isEnabled() and c.isChecked()]
    return box.clickedButton() is delete, chosen


def _add_above_buttons(box: QMessageBox, widget: QWidget) -> None:
    """Put `widget` in the message box's grid, between its checkbox and its buttons. Done last: QMessageBox
    rebuilds its layout when its text or checkbox is set."""
    grid = box.layout()
    buttons = box.findChild(QDialogButtonBox)
    if not isinstance(grid, QGridLayout) or buttons is None:
        raise RuntimeError("QMessageBox no longer lays itself out in a grid with a button box")
    row, _, _, span = grid.getItemPosition(grid.indexOf(buttons))
    grid.removeWidget(buttons)
    grid.addWidget(widget, row, 1, 1, max(1, span - 1))
    grid.addWidget(buttons, row + 1, 0, 1, span)


def confirm_force_off(parent: QWidget | None, info: VmInfo) -> bool:
    """Ask before pulling the plug on `info`; True when the user chose Force Off (Cancel is the default, so a
    stray Enter does not cost the guest its unsaved data)."""
    box = QMessageBox(QMessageBox.Icon.Warning, "Force Off", f"Force off {info.name}? The guest loses unsaved data.",
                      parent=parent)
    box.setObjectName("forceOffDialog")
    off = box.addButton("Force Off", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    return box.clickedButton() is off


def confirm_delete_definition(parent: QWidget | None, path: str) -> bool:
    """Ask before deleting a definition file that failed to load; True when the user chose Delete (Cancel is the
    default: the file may hold a definition the user means to repair)."""
    name = posixpath.basename(path) or path
    box = QMessageBox(QMessageBox.Icon.Warning, "Delete Definition",
                      f"Delete the definition file {name}? It cannot be loaded; Vireo never rewrites it.",
                      parent=parent)
    box.setObjectName("deleteDefinitionDialog")
    box.setInformativeText(path)
    delete = box.addButton("Delete", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    return box.clickedButton() is delete
