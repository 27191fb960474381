"""The Snapshots tab of a VM's window (docs/vm-snapshots.md), virt-manager's snapshot view: the VM's snapshots with
a thumbnail of the screen at the time, name, time taken, the VM's state then (running: with machine state, shut
off: disks only) and description; Create… (name and description), Revert… and Delete… (each confirmed). Every host
call runs on a bridge worker (app/host_bridge.py), so a snapshot that writes the guest's RAM into the disk image
never blocks the window; the buttons are off while one is under way."""
from __future__ import annotations

import time

from PyQt6.QtCore import QSize, Qt
from PyQt6.QtGui import QColor, QIcon, QPixmap
from PyQt6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.host_bridge import HostBridge
from core.host import MAX_DESCRIPTION, VmSnapshot, check_name

THUMB = QSize(96, 72)
STATE_LABELS = {"running": "Running", "paused": "Paused", "shutoff": "Shut off"}
COLUMNS = ("Name", "Taken", "State", "Description")


class CreateSnapshotDialog(QDialog):
    """Name (default: snapshot1, snapshot2, …, as virt-manager offers) and description."""

    def __init__(self, taken: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("createSnapshotDialog")
        self.setWindowTitle("Create Snapshot")
        self.taken = taken
        n = 1
        while f"snapshot{n}" in taken:
            n += 1
        self.name = QLineEdit(f"snapshot{n}", self)
        self.description = QPlainTextEdit(self)
        self.description.setFixedHeight(80)
        self.problem = QLabel("", self)
        self.problem.setStyleSheet("color: #b00020")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel,
                                        self)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Create")
        self.buttons.accepted.connect(self._accept)
        self.buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow("Name:", self.name)
        form.addRow("Description:", self.description)
        form.addRow(self.problem)
        form.addRow(self.buttons)
        self.name.textChanged.connect(lambda _: self.problem.setText(""))

    def _accept(self) -> None:
        name = self.name.text().strip()
        if not check_name(name):
            self.problem.setText("A name is 1 to 255 printable characters, without “/”.")
        elif name in self.taken:
            self.problem.setText(f"There is a snapshot named “{name}” already.")
        elif len(self.description.toPlainText()) > MAX_DESCRIPTION:
            self.problem.setText(f"The description is longer than {MAX_DESCRIPTION} characters.")
        else:
            self.accept()


class SnapshotsTab(QWidget):
    def __init__(self, bridge: HostBridge, uuid: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge, self.uuid = bridge, uuid
        self.snapshots: list[VmSnapshot] = []
        self.working = False
        self._reads = 0
        self.dialog: CreateSnapshotDialog | None = None
        blank = QPixmap(THUMB.width(), THUMB.width() * 9 // 16)    # about the shape of a text-mode screen
        blank.fill(QColor("#3c3c3c"))
        self._blank = QIcon(blank)
        self.tree = QTreeWidget(self)
        self.tree.setObjectName("snapshotList")
        self.tree.setColumnCount(len(COLUMNS))
        self.tree.setHeaderLabels(COLUMNS)
        self.tree.setRootIsDecorated(False)
        self.tree.setIconSize(THUMB)
        self.tree.setColumnWidth(0, THUMB.width() + 140)
        self.tree.setColumnWidth(1, 150)
        self.tree.setColumnWidth(2, 80)
        self.tree.itemSelectionChanged.connect(self._update_buttons)
        self.create_button = QPushButton("&Create…", self)
        self.revert_button = QPushButton("&Revert…", self)
        self.delete_button = QPushButton("&Delete…", self)
        self.refresh_button = QPushButton("Re&fresh", self)
        self.create_button.clicked.connect(self.create_snapshot)
        self.revert_button.clicked.connect(self.revert_snapshot)
        self.delete_button.clicked.connect(self.delete_snapshot)
        self.refresh_button.clicked.connect(self.refresh)
        self.status = QLabel("", self)
        self.status.setObjectName("snapshotStatus")
        self.status.setWordWrap(True)
        row = QHBoxLayout()
        for b in (self.create_button, self.revert_button, self.delete_button):
            row.addWidget(b)
        row.addStretch(1)
        row.addWidget(self.refresh_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.status)
        self._update_buttons()             # the list is read when the tab is first shown (showEvent)

    def showEvent(self, event) -> None:
        """Read the list again whenever the tab is shown: the CLI or another window may have changed it."""
        super().showEvent(event)
        if not self.working:
            self.refresh()

    # -- reading --------------------------------------------------------------------------------------------
    def _vm_name(self) -> str:
        info = self.bridge.info(self.uuid)
        return info.name if info is not None else self.uuid

    def refresh(self) -> None:
        host, uuid = self.bridge.host, self.uuid
        self._reads += 1
        seq = self._reads
        self.bridge.call(f"Listing the snapshots of {self._vm_name()}", lambda: host.snapshot_list(uuid),
                         lambda snaps: self._fill(snaps, seq), self._failed)

    def _fill(self, snapshots: list[VmSnapshot], seq: int) -> None:
        if seq != self._reads:
            return          # an older read that finished late (the bridge runs calls on several workers)
        selected = self.selected()
        self.snapshots = snapshots
        self.tree.clear()
        for snap in snapshots:
            item = QTreeWidgetItem([snap.name, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.created)),
                                    STATE_LABELS.get(snap.state, snap.state), snap.description.replace("\n", " ")])
            item.setData(0, Qt.ItemDataRole.UserRole, snap.name)
            item.setToolTip(3, snap.description)
            pixmap = QPixmap()
            if snap.thumbnail and pixmap.loadFromData(snap.thumbnail, "PNG"):
                item.setIcon(0, QIcon(pixmap))
            else:
                item.setIcon(0, self._blank)        # a shut-off VM has no screen; keep the names in line
            item.setSizeHint(0, QSize(THUMB.width(), THUMB.height() + 6))
            self.tree.addTopLevelItem(item)
            if selected is not None and snap.name == selected:
                item.setSelected(True)
        self._update_buttons()

    def selected(self) -> str | None:
        items = self.tree.selectedItems()
        return items[0].data(0, Qt.ItemDataRole.UserRole) if items else None

    def _update_buttons(self) -> None:
        chosen = self.selected() is not None and not self.working
        self.create_button.setEnabled(not self.working)
        self.revert_button.setEnabled(chosen)
        self.delete_button.setEnabled(chosen)

    # -- acting ---------------------------------------------------------------------------------------------
    def _run(self, what: str, fn, done_text: str) -> None:
        self.working = True
        self.status.setText(f"{what}…")
        self._update_buttons()

        def done(_result: object) -> None:
            self.working = False
            self.status.setText(done_text)
            self.refresh()

        self.bridge.call(what, fn, done, self._failed, uuid=self.uuid)

    def _failed(self, message: str) -> None:
        self.working = False
        self.status.setText(message)
        self._update_buttons()

    def create_snapshot(self) -> None:
        self.dialog = CreateSnapshotDialog([s.name for s in self.snapshots], self)
        if self.dialog.exec() != QDialog.DialogCode.Accepted:
            return
        name, desc = self.dialog.name.text().strip(), self.dialog.description.toPlainText()
        host, uuid = self.bridge.host, self.uuid
        self._run(f"Creating snapshot {name}", lambda: host.snapshot_create(uuid, name, desc),
                  f"Snapshot {name} created.")

    def _confirm(self, title: str, text: str, detail: str, button: str) -> bool:
        box = QMessageBox(QMessageBox.Icon.Question, title, text, parent=self)
        box.setObjectName("snapshotQuestion")
        box.setInformativeText(detail)
        go = box.addButton(button, QMessageBox.ButtonRole.AcceptRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return box.clickedButton() is go

    def revert_snapshot(self) -> None:
        name = self.selected()
        snap = next((s for s in self.snapshots if s.name == name), None)
        if snap is None:
            return
        then = ("The VM resumes running from the moment it was taken." if snap.has_state else
                "The VM is shut off and its disks go back to that moment.")
        if not self._confirm("Revert to Snapshot", f"Revert {self._vm_name()} to snapshot “{name}”?",
                             f"{then} What changed since is lost.", "Revert"):
            return
        host, uuid = self.bridge.host, self.uuid
        self._run(f"Reverting to snapshot {name}", lambda: host.snapshot_revert(uuid, name),
                  f"Reverted to snapshot {name}.")

    def delete_snapshot(self) -> None:
        name = self.selected()
        if name is None or not self._confirm("Delete Snapshot", f"Delete snapshot “{name}” of {self._vm_name()}?",
                                             "The VM itself is not changed. This cannot be undone.", "Delete"):
            return
        host, uuid = self.bridge.host, self.uuid
        self._run(f"Deleting snapshot {name}", lambda: host.snapshot_delete(uuid, name),
                  f"Snapshot {name} deleted.")
