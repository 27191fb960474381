"""The Storage part of Host Details (issue 17, "Host details"): the disk images in the host's images folder with
their format, virtual size, the space they take and the VM that needs each (Host.list_images); New Image… makes
one there (Host.create_disk, with progress), Resize… grows one (Host.resize_image; the host refuses an image a
running VM has open) and Delete… removes one after asking, with the safety of deleting a
VM's disks: an image a VM lists or reads as a backing file cannot be picked, and the host refuses it anyway
(Host.delete_image). Every host call runs on a worker."""
from __future__ import annotations

import posixpath
import re

from PyQt6 import sip
from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.host_bridge import HostBridge
from app.widgets.range_spin import RangeDoubleSpinBox
from app.widgets.text import as_sentence
from core.host import ImageEntry

RED = "color: #b3261e;"
GREY = "color: #666;"


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


class NewImageDialog(QDialog):
    """Name, size and format of a new image in `folder`; the name is checked against `taken`."""

    def __init__(self, folder: str, taken: set[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.folder, self.taken = folder, taken
        self.setObjectName("newImageDialog")
        self.setWindowTitle("New Disk Image")
        form = QFormLayout(self)
        self.name = QLineEdit(self)
        self.name.setObjectName("imageName")
        form.addRow("&Name:", self.name)
        self.size = RangeDoubleSpinBox("Size", self)
        self.size.setObjectName("imageSize")
        self.size.setDecimals(1)
        self.size.setSuffix(" GiB")
        self.size.setAllowedRange(0.1, 16384)
        self.size.setValue(20)
        form.addRow("&Size:", self.size)
        form.addRow("", self.size.error)
        self.format = QComboBox(self)
        self.format.setObjectName("imageFormat")
        self.format.addItem("qcow2 (thin: grows as the guest writes)", "qcow2")
        self.format.addItem("raw", "raw")
        form.addRow("&Format:", self.format)
        self.problem = QLabel(self)
        self.problem.setStyleSheet(RED)
        form.addRow("", self.problem)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel,
                                        self)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form.addRow(self.buttons)
        for signal in (self.name.textChanged, self.size.problemChanged, self.format.currentIndexChanged):
            signal.connect(self._check)
        self._check()

    def file_name(self) -> str:
        ext = ".qcow2" if self.format.currentData() == "qcow2" else ".img"
        name = self.name.text().strip()
        return name if name.endswith(ext) else name + ext

    def path(self) -> str:
        return posixpath.join(self.folder, self.file_name())

    def _check(self, *_: object) -> None:
        name = self.name.text().strip()
        why = ""
        if name and not re.fullmatch(r"[A-Za-z0-9._+-]+", name):
            why = f"Name {name}: use letters, digits and . _ + - only."
        elif name and self.file_name() in self.taken:
            why = f"{self.file_name()} already exists in {self.folder}."
        self.problem.setText(why)
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setEnabled(bool(name) and not why and not self.size.problem())


class ResizeImageDialog(QDialog):
    """The new size of `entry`, at least its current one (images grow; shrinking would lose the guest's data)."""

    def __init__(self, entry: ImageEntry, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("resizeImageDialog")
        self.setWindowTitle(f"Resize {posixpath.basename(entry.path)}")
        form = QFormLayout(self)
        form.addRow("Now:", QLabel(_size(entry.virtual_size), self))
        self.size = RangeDoubleSpinBox("New size", self)
        self.size.setObjectName("newSize")
        self.size.setDecimals(1)
        self.size.setSuffix(" GiB")
        current = entry.virtual_size / 1024 ** 3
        # Shown to one decimal: the least the field offers is the current size rounded up to it.
        self.size.setAllowedRange(-(-round(current * 10, 6) // 1) / 10, 16384, "")
        self.size.setValue(self.size.minimum())
        form.addRow("&New size:", self.size)
        form.addRow("", self.size.error)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel,
                                        self)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form.addRow(self.buttons)
        self.size.problemChanged.connect(
            lambda problem: self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(not problem))

    def new_size(self) -> int:
        return int(self.size.value() * 1024 ** 3) // 512 * 512


class StorageView(QWidget):
    """The images table of one host, its buttons and a status line."""

    _progress = pyqtSignal(int, int)

    def __init__(self, bridge: HostBridge, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.entries: list[ImageEntry] = []
        info = bridge.host_info
        self.folder = info.images_dir if info is not None else ""
        self.setObjectName("hostStorage")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.title = QLabel(f"<b>Storage</b> · disk images in {self.folder or 'the images folder'}", self)
        self.title.setWordWrap(True)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.title)
        self.table = QTableWidget(0, 5, self)
        self.table.setObjectName("imageTable")
        self.table.setHorizontalHeaderLabels(["Name", "Format", "Size", "On disk", "Used by"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        for column in (1, 2, 3):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        lay.addWidget(self.table, 1)
        row = QHBoxLayout()
        self.new_button = QPushButton("New Image…", self)
        self.new_button.setObjectName("newImage")
        self.new_button.clicked.connect(self.new_image)
        self.delete_button = QPushButton("Delete…", self)
        self.delete_button.setObjectName("deleteImage")
        self.delete_button.clicked.connect(self.delete_selected)
        self.resize_button = QPushButton("Resize…", self)
        self.resize_button.setObjectName("resizeImage")
        self.resize_button.clicked.connect(self.resize_selected)
        self.refresh_button = QPushButton("Refresh", self)
        self.refresh_button.clicked.connect(self.refresh)
        for button in (self.new_button, self.resize_button, self.delete_button):
            row.addWidget(button)
        row.addStretch(1)
        row.addWidget(self.refresh_button)
        lay.addLayout(row)
        self.status = QLabel(self)
        self.status.setObjectName("storageStatus")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self._progress.connect(lambda done, total: self._say(f"Creating the image… {100 * done // max(total, 1)} %"))
        self._update_buttons()
        self.refresh()

    def _say(self, text: str, error: bool = False) -> None:
        if not sip.isdeleted(self):
            self.status.setText(text)
            self.status.setStyleSheet(RED if error else GREY)

    def refresh(self) -> None:
        host = self.bridge.host

        def done(entries: object) -> None:
            if sip.isdeleted(self):
                return
            self.entries = list(entries)  # type: ignore[call-overload]
            self._fill()

        self.bridge.call(f"Listing {host.name}'s disk images", host.list_images, done,
                         lambda message: self._say(as_sentence(message), error=True))

    def _fill(self) -> None:
        self.table.setRowCount(len(self.entries))
        for r, entry in enumerate(self.entries):
            cells = [posixpath.basename(entry.path), entry.format or "unreadable",
                     _size(entry.virtual_size) if entry.format else "", _size(entry.allocated),
                     entry.used_by or ("—" if not entry.error else entry.error)]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(entry.path if c == 0 else text)
                if c in (2, 3):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, item)
        self._say(f"{len(self.entries)} image{'s' if len(self.entries) != 1 else ''}")
        self._update_buttons()

    def selected(self) -> ImageEntry | None:
        rows = self.table.selectionModel().selectedRows()
        return self.entries[rows[0].row()] if rows and rows[0].row() < len(self.entries) else None

    def _update_buttons(self) -> None:
        entry = self.selected()
        self.delete_button.setEnabled(entry is not None and not entry.used_by)
        self.delete_button.setToolTip(f"Cannot delete: {entry.used_by}" if entry is not None and entry.used_by
                                      else "")
        self.new_button.setEnabled(bool(self.folder))
        self.resize_button.setEnabled(entry is not None and bool(entry.format))

    def delete_selected(self) -> None:
        entry = self.selected()
        if entry is None or entry.used_by:
            return
        name = posixpath.basename(entry.path)
        box = QMessageBox(QMessageBox.Icon.Warning, "Delete Disk Image",
                          f"Delete the disk image {name}? Its data is lost; this cannot be undone.", parent=self)
        box.setObjectName("deleteImageDialog")
        box.setInformativeText(entry.path)
        delete = box.addButton("Delete", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        if box.clickedButton() is not delete:
            return
        host = self.bridge.host
        self._say(f"Deleting {name}…")

        def done(_result: object) -> None:
            self._say(f"Deleted {name}")
            self.refresh()

        self.bridge.call(f"Deleting {name}", lambda: host.delete_image(entry.path), done,
                         lambda message: self._say(as_sentence(message), error=True))

    def resize_selected(self) -> None:
        entry = self.selected()
        if entry is None or not entry.format:
            return
        dialog = ResizeImageDialog(entry, self)
        dialog.accepted.connect(lambda: self._resize(entry, dialog.new_size()))
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        self.resize_dialog = dialog

    def _resize(self, entry: ImageEntry, new_size: int) -> None:
        host, name = self.bridge.host, posixpath.basename(entry.path)
        self._say(f"Resizing {name}…")

        def done(_result: object) -> None:
            self._say(f"Resized {name} to {_size(new_size)}")
            self.refresh()

        self.bridge.call(f"Resizing {name}", lambda: host.resize_image(entry.path, new_size), done,
                         lambda message: self._say(as_sentence(message), error=True))

    def new_image(self) -> None:
        dialog = NewImageDialog(self.folder, {posixpath.basename(e.path) for e in self.entries}, self)
        dialog.accepted.connect(lambda: self._create(dialog.path(), dialog.size.value(),
                                                     dialog.format.currentData()))
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        self.new_dialog = dialog

    def _create(self, path: str, size_gib: float, fmt: str) -> None:
        host = self.bridge.host
        size = int(size_gib * 1024 ** 3) // 512 * 512
        self._say(f"Creating {posixpath.basename(path)}…")

        def work() -> None:
            host.create_disk(path, size, fmt, False,
                             progress=lambda done, total: self._progress.emit(done >> 20, total >> 20))

        def done(_result: object) -> None:
            self._say(f"Created {posixpath.basename(path)}")
            self.refresh()

        self.bridge.call(f"Creating {posixpath.basename(path)}", work, done,
                         lambda message: self._say(as_sentence(message), error=True))
