"""The main window's "Clone…" (issue 15; docs/clone-and-move.md): a dialog asking the clone's name and whether it is
a full copy or a linked clone (a qcow2 overlay on the original's disk content), then cloning on one of the
bridge's workers (app/host_bridge.py) with a progress bar fed from the host's progress reports (queued into the
GUI thread by a signal), so the window stays responsive while the disks are copied. A refusal (a running VM, a
name taken) shows in the dialog as the host's one line; the dialog stays open to try another name.

CloneMoveActions puts Clone… and Move to Host… (app/ui/move_dialog.py) in the Virtual Machine menu (the VM rows'
right-click menu too)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtGui import QAction
from PyQt6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from core.host import VmInfo

if TYPE_CHECKING:
    from app.host_bridge import HostBridge
    from app.ui.main_window import MainWindow


def _free_name(bridge: HostBridge, base: str) -> str:
    """`base`-clone, or -clone2, … : a name no VM on the host has."""
    taken = {i.name.casefold() for i in bridge.vms()}
    name, n = f"{base}-clone", 2
    while name.casefold() in taken:
        name, n = f"{base}-clone{n}", n + 1
    return name


class CloneDialog(QDialog):
    progressed = pyqtSignal(int, int)       # done, total bytes: emitted on the worker, shown on the GUI thread
    cloned = pyqtSignal(str)                # the clone's uuid

    def __init__(self, bridge: HostBridge, info: VmInfo, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge, self.info = bridge, info
        self.setObjectName("cloneDialog")
        self.setWindowTitle(f"Clone {info.name}")
        self.name = QLineEdit(_free_name(bridge, info.name), self)
        self.name.setObjectName("cloneName")
        self.full = QRadioButton("&Full copy of each disk", self)
        self.full.setToolTip("The clone gets its own copy of every writable disk: independent, takes the space")
        self.linked = QRadioButton("&Linked clone (qcow2 overlay)", self)
        self.linked.setToolTip("The clone's disks are thin qcow2 overlays on the original's disk content, which "
                               "becomes a shared read-only base file; the original gets an overlay of its own")
        self.full.setChecked(True)
        self.progress = QProgressBar(self)
        self.progress.setObjectName("cloneProgress")
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.message = QLabel("", self)
        self.message.setObjectName("cloneMessage")
        self.message.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel,
                                        self)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("&Clone")
        self.buttons.accepted.connect(self.start)
        self.buttons.rejected.connect(self.reject)
        form = QFormLayout()
        form.addRow("&Name:", self.name)
        form.addRow("Disks:", self.full)
        form.addRow("", self.linked)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.message)
        layout.addWidget(self.buttons)
        self.progressed.connect(self._progress, Qt.ConnectionType.QueuedConnection)
        self.running = False
        if info.state.active:
            self._refuse(f"{info.name} is {info.state.label.lower()}: shut it down (or save it) to clone it")

    def _refuse(self, text: str) -> None:
        self.message.setText(text)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(False)

    def _progress(self, done: int, total: int) -> None:
        self.progress.setValue(100 if total <= 0 else min(100, done * 100 // total))

    def start(self) -> None:
        """Clone on a worker; the dialog closes when the clone is defined."""
        name = self.name.text().strip()
        if not name:
            self.message.setText("Give the clone a name")
            return
        self.running = True
        for w in (self.name, self.full, self.linked, self.buttons):
            w.setEnabled(False)
        self.message.setText(f"Cloning {self.info.name} as {name}…")
        host, uuid, linked = self.bridge.host, self.info.uuid, self.linked.isChecked()
        self.bridge.call(f"Cloning {self.info.name}",
                         lambda: host.clone(uuid, name, linked, lambda d, t: self.progressed.emit(d, t)),
                         self._done, self._failed, uuid=uuid)

    def _done(self, clone: VmInfo) -> None:
        self.progress.setValue(100)
        self.message.setText(f"Cloned as {clone.name}")

        def listed() -> None:       # the clone is in the bridge's cache: select it, then close
            self.running = False
            self.cloned.emit(clone.uuid)
            self.accept()
        self.bridge.refresh(then=listed)

    def _failed(self, message: str) -> None:
        self.running = False
        self.message.setText(message)
        self.progress.setValue(0)
        for w in (self.name, self.full, self.linked, self.buttons):
            w.setEnabled(True)

    def reject(self) -> None:
        if not self.running:        # a clone under way finishes (or fails and cleans up) on the host
            super().reject()


class CloneMoveActions:
    """Clone… and Move to Host… in the main window's Virtual Machine menu, for the selected VM."""

    def __init__(self, window: MainWindow) -> None:
        self.window = window
        self.clone = QAction("Clo&ne…", window)
        self.clone.setObjectName("cloneAction")
        self.clone.setToolTip("Copy this shut-off virtual machine under a new name, uuid and MAC address")
        self.clone.setStatusTip(self.clone.toolTip())
        self.clone.triggered.connect(self.open_clone)
        self.move = QAction("&Move to Host…", window)
        self.move.setObjectName("moveAction")
        self.move.setToolTip("Move this shut-off or saved virtual machine, with its disks and saved state, to "
                             "another connected host")
        self.move.setStatusTip(self.move.toolTip())
        self.move.triggered.connect(self.open_move)
        self.dialog: QDialog | None = None

    def add_to(self, menu) -> None:
        menu.addAction(self.clone)
        menu.addAction(self.move)

    def update(self) -> None:
        info = self.window.selected_info()
        idle = info is not None and not info.state.active
        self.clone.setEnabled(idle)
        self.move.setEnabled(idle)

    def open_move(self) -> QDialog | None:
        from app.ui.move_dialog import MoveDialog

        sel, info = self.window.selected(), self.window.selected_info()
        if sel is None or info is None:
            return None
        dialog = MoveDialog(self.window.bridges, sel[0], info, self.window)
        dialog.moved.connect(lambda index, uuid: self.window.statusBar().showMessage(
            f"Moved {info.name} to {self.window.bridges[index].host.name}", 6000))
        dialog.moved.connect(lambda index, uuid: self.window.select_vm(uuid))
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        self.dialog = dialog
        return dialog

    def open_clone(self) -> CloneDialog | None:
        sel, info = self.window.selected(), self.window.selected_info()
        if sel is None or info is None:
            return None
        dialog = CloneDialog(sel[0], info, self.window)
        dialog.cloned.connect(lambda uuid: self.window.statusBar().showMessage(
            f"Cloned {info.name} as {sel[0].info(uuid).name if sel[0].info(uuid) else uuid}", 6000))
        dialog.cloned.connect(self.window.select_vm)
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        self.dialog = dialog
        return dialog

