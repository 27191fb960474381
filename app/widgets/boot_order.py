"""The boot order editor of the VM window's Boot Options page, as virt-manager's: one row per boot device with a
check box, in the order the firmware tries them. Up and Down (or dragging a row) move the selected row; unchecked
rows keep their place but are not tried. `order()` is the checked devices, top to bottom — what
core.config.BootConfig.order holds."""
from __future__ import annotations

from PyQt6.QtCore import QSize, Qt, pyqtSignal
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.icons import resource_icon

LABELS = {"cd": "CD-ROM", "disk": "Hard disk", "kernel": "Direct kernel"}
_ICONS = {"cd": "hw-cdrom", "disk": "hw-disks", "kernel": "hw-boot"}
_DEVICE = Qt.ItemDataRole.UserRole


class BootOrderList(QWidget):
    changed = pyqtSignal()      # a row was checked, unchecked, moved, added or removed

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.list = QListWidget(self)
        self.list.setObjectName("bootOrder")
        self.list.setIconSize(QSize(20, 20))
        self.list.setDragDropMode(QAbstractItemView.DragDropMode.InternalMove)
        self.list.setDefaultDropAction(Qt.DropAction.MoveAction)
        self.up = QPushButton("Up", self)
        self.up.setObjectName("bootUp")
        self.down = QPushButton("Down", self)
        self.down.setObjectName("bootDown")
        self.up.clicked.connect(lambda: self.move(-1))
        self.down.clicked.connect(lambda: self.move(1))
        buttons = QVBoxLayout()
        buttons.addWidget(self.up)
        buttons.addWidget(self.down)
        buttons.addStretch(1)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.list, 1)
        lay.addLayout(buttons)
        self.list.itemChanged.connect(lambda _item: self.changed.emit())
        self.list.model().rowsMoved.connect(lambda *_: self._moved())
        self.list.currentRowChanged.connect(lambda _row: self._buttons())
        self._buttons()

    # -- contents --------------------------------------------------------------------------------------------
    def set_devices(self, devices: list[str], checked: list[str]) -> None:
        """Rows for `devices`: the checked ones first, in the order of `checked`, then the others."""
        self.list.blockSignals(True)
        try:
            self.list.clear()
            for device in [d for d in checked if d in devices] + [d for d in devices if d not in checked]:
                self._item(device, device in checked)
        finally:
            self.list.blockSignals(False)
        self._buttons()

    def _item(self, device: str, checked: bool, row: int | None = None) -> QListWidgetItem:
        item = QListWidgetItem(resource_icon(_ICONS[device]), LABELS[device])
        item.setData(_DEVICE, device)
        item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsUserCheckable
                      | Qt.ItemFlag.ItemIsDragEnabled)
        item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
        if row is None:
            self.list.addItem(item)
        else:
            self.list.insertItem(row, item)
        return item

    def add_device(self, device: str, checked: bool = True) -> None:
        """A new row at the top (a kernel just given is what the user means to boot)."""
        if device not in self.devices():
            self._item(device, checked, 0)
            self._buttons()
            self.changed.emit()

    def remove_device(self, device: str) -> None:
        """Drop the row; when no row is left checked, every remaining one is (the VM needs something to boot)."""
        for row in range(self.list.count()):
            if self.list.item(row).data(_DEVICE) == device:
                self.list.takeItem(row)
                break
        else:
            return
        if not self.order():
            self.list.blockSignals(True)
            for row in range(self.list.count()):
                self.list.item(row).setCheckState(Qt.CheckState.Checked)
            self.list.blockSignals(False)
        self._buttons()
        self.changed.emit()

    def set_detail(self, device: str, detail: str) -> None:
        """Say what the device is after its name ("CD-ROM — debian.iso")."""
        for row in range(self.list.count()):
            item = self.list.item(row)
            if item.data(_DEVICE) == device:
                self.list.blockSignals(True)
                item.setText(f"{LABELS[device]} — {detail}" if detail else LABELS[device])
                self.list.blockSignals(False)

    def set_checked(self, device: str, checked: bool) -> None:
        for row in range(self.list.count()):
            item = self.list.item(row)
            if item.data(_DEVICE) == device:
                item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)

    def devices(self) -> list[str]:
        return [self.list.item(row).data(_DEVICE) for row in range(self.list.count())]

    def order(self) -> list[str]:
        """The checked devices, top to bottom."""
        return [self.list.item(row).data(_DEVICE) for row in range(self.list.count())
                if self.list.item(row).checkState() == Qt.CheckState.Checked]

    # -- moving ----------------------------------------------------------------------------------------------
    def select(self, device: str) -> None:
        self.list.setCurrentRow(self.devices().index(device))

    def move(self, delta: int) -> None:
        """Move the selected row up (-1) or down (+1)."""
        row = self.list.currentRow()
        target = row + delta
        if row < 0 or not 0 <= target < self.list.count():
            return
        self.list.blockSignals(True)
        item = self.list.takeItem(row)
        self.list.insertItem(target, item)
        self.list.blockSignals(False)
        self.list.setCurrentRow(target)
        self._buttons()
        self.changed.emit()

    def _moved(self) -> None:
        self._buttons()
        self.changed.emit()

    def _buttons(self) -> None:
        # Three rows at most: the list is as tall as its rows (two at least, so the buttons fit beside it).
        rows = max(2, self.list.count())
        self.list.setFixedHeight(rows * max(self.list.sizeHintForRow(0), 22) + 2 * self.list.frameWidth() + 4)
        row = self.list.currentRow()
        self.up.setEnabled(row > 0)
        self.down.setEnabled(0 <= row < self.list.count() - 1)
