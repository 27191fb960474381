"""Choosing a file on another host (issue 17, defect 2): a kernel, ISO or disk image is chosen where the VM will
read it, on the SSH host the VM is created on, by listing that host's folders over SFTP (Host.files(),
core/host/files.py). It looks and behaves like a simple Open dialog — a location field (a folder path opens it, a
file path chooses it), Up, the folder's entries with their sizes (folders first, hidden ones left out), a filter
of name patterns — and every listing runs on a worker, so a slow link never freezes the window.

This computer's own files keep the desktop's file dialog (choose_host_file decides)."""
from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Callable

from PyQt6 import sip
from PyQt6.QtCore import Qt
from PyQt6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QStyle,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.host_bridge import HostBridge
from app.widgets.text import as_sentence
from core.host import FileEntry, HostError


def _patterns(name_filter: str) -> list[tuple[str, list[str]]]:
    """ "ISO images (*.iso);;All files (*)" -> [("ISO images (*.iso)", ["*.iso"]), ("All files (*)", ["*"])]."""
    filters = []
    for part in (name_filter or "All files (*)").split(";;"):
        found = re.search(r"\(([^)]*)\)", part)
        filters.append((part.strip(), found.group(1).split() if found else ["*"]))
    return filters


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


class HostFileDialog(QDialog):
    """Open a file on the bridge's host; `chosen` holds the path once accepted."""

    def __init__(self, bridge: HostBridge, caption: str, name_filter: str = "", start: str = "",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.files = bridge.files
        if self.files is None:
            raise HostError(f"{bridge.host.name} cannot browse its files")
        self.folder = ""
        self.chosen = ""
        self._seq = 0                     # the listing whose answer is shown; older answers are dropped
        self.setObjectName("hostFileDialog")
        self.setWindowTitle(f"{caption} on {bridge.host.name}")
        self.resize(620, 420)
        lay = QVBoxLayout(self)
        top = QHBoxLayout()
        self.location = QLineEdit(self)
        self.location.setObjectName("location")
        self.location.setPlaceholderText("a folder or file on the host")
        self.location.returnPressed.connect(self._go)
        look_in = QLabel("&Look in:", self)
        look_in.setBuddy(self.location)
        top.addWidget(look_in)
        top.addWidget(self.location, 1)
        self.up = QPushButton(self.style().standardIcon(QStyle.StandardPixmap.SP_FileDialogToParent), "", self)
        self.up.setObjectName("up")
        self.up.setToolTip("The parent folder")
        self.up.clicked.connect(lambda: self.open_folder(posixpath.dirname(self.folder.rstrip("/")) or "/"))
        top.addWidget(self.up)
        lay.addLayout(top)
        self.list = QTreeWidget(self)
        self.list.setObjectName("entries")
        self.list.setHeaderLabels(["Name", "Size"])
        self.list.setRootIsDecorated(False)
        self.list.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.list.header().setStretchLastSection(False)
        self.list.header().resizeSection(1, 100)
        self.list.itemDoubleClicked.connect(self._activated)
        self.list.currentItemChanged.connect(lambda *_: self._update_ok())
        lay.addWidget(self.list, 1)
        self.status = QLabel(self)
        self.status.setObjectName("status")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        bottom = QHBoxLayout()
        self.filter = QComboBox(self)
        self.filter.setObjectName("filter")
        for text, patterns in _patterns(name_filter):
            self.filter.addItem(text, patterns)
        self.filter.currentIndexChanged.connect(lambda *_: self._fill())
        bottom.addWidget(self.filter, 1)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open
                                        | QDialogButtonBox.StandardButton.Cancel, self)
        self.buttons.accepted.connect(self._open_selected)
        self.buttons.rejected.connect(self.reject)
        bottom.addWidget(self.buttons)
        lay.addLayout(bottom)
        self._entries: list[FileEntry] = []
        self._update_ok()
        if start:
            self.open_folder(start)
        else:
            self._list(lambda: self.files.home(), lambda home: self.open_folder(home))

    # -- listing (on a worker) -------------------------------------------------------------------------------
    def _list(self, fn: Callable[[], object], done: Callable[[object], None]) -> None:
        self._seq += 1
        seq = self._seq
        self.status.setText("Reading…")

        # An answer may come after the dialog was closed and deleted, or after the user went elsewhere.
        def answered(result: object) -> None:
            if not sip.isdeleted(self) and seq == self._seq:
                done(result)

        def failed(message: str) -> None:
            if not sip.isdeleted(self) and seq == self._seq:
                self.status.setText(as_sentence(message))

        self.bridge.call(f"Browsing {self.bridge.host.name}", fn, answered, failed)

    def open_folder(self, path: str) -> None:
        """List the folder `path`; a path that is not a folder is refused in the status line."""
        path = posixpath.normpath(path) if path else "/"

        def shown(entries: object) -> None:
            self.folder = path
            self.location.setText(path)
            self._entries = list(entries)  # type: ignore[call-overload]
            self.status.setText("")
            self._fill()

        self._list(lambda: self.files.listdir(path), shown)

    def _fill(self) -> None:
        patterns = self.filter.currentData() or ["*"]
        self.list.clear()
        folder_icon = self.style().standardIcon(QStyle.StandardPixmap.SP_DirIcon)
        file_icon = self.style().standardIcon(QStyle.StandardPixmap.SP_FileIcon)
        for entry in self._entries:
            if entry.name.startswith("."):
                continue
            if not entry.is_dir and not any(fnmatch.fnmatch(entry.name, p) for p in patterns):
                continue
            item = QTreeWidgetItem([entry.name, "" if entry.is_dir else _size(entry.size)])
            item.setIcon(0, folder_icon if entry.is_dir else file_icon)
            item.setData(0, Qt.ItemDataRole.UserRole, entry.is_dir)
            item.setTextAlignment(1, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.list.addTopLevelItem(item)
        self._update_ok()

    # -- choosing --------------------------------------------------------------------------------------------
    def _update_ok(self) -> None:
        item = self.list.currentItem()
        self.buttons.button(QDialogButtonBox.StandardButton.Open).setEnabled(item is not None)

    def _activated(self, item: QTreeWidgetItem, _column: int = 0) -> None:
        path = posixpath.join(self.folder, item.text(0))
        if item.data(0, Qt.ItemDataRole.UserRole):
            self.open_folder(path)
        else:
            self._choose(path)

    def _open_selected(self) -> None:
        item = self.list.currentItem()
        if item is not None:
            self._activated(item)

    def _go(self) -> None:
        """Enter in the location field: a folder is opened, any other path is checked to exist and chosen."""
        path = self.location.text().strip()
        if not path:
            return
        if not path.startswith("/"):
            path = posixpath.join(self.folder or "/", path)
        path = posixpath.normpath(path)

        def listed(entries: object) -> None:
            self.folder = path
            self._entries = list(entries)  # type: ignore[call-overload]
            self.status.setText("")
            self._fill()

        def not_a_folder(message: str) -> None:
            # Not a folder: a file that exists is chosen; anything else is the listing's error.
            def exists(found: object) -> None:
                if not current():
                    return
                if found:
                    self._choose(path)
                else:
                    self.status.setText(f"{path} does not exist on {self.bridge.host.name}.")
            self.bridge.call(f"Browsing {self.bridge.host.name}", lambda: self.files.exists(path), exists,
                             lambda m: current() and self.status.setText(as_sentence(m)))

        self._seq += 1
        seq = self._seq

        def current() -> bool:
            return not sip.isdeleted(self) and seq == self._seq

        self.bridge.call(f"Browsing {self.bridge.host.name}", lambda: self.files.listdir(path),
                         lambda r: current() and listed(r), lambda m: current() and not_a_folder(m))

    def _choose(self, path: str) -> None:
        self.chosen = path
        self.accept()


def choose_host_file(bridge: HostBridge, parent: QWidget, caption: str, name_filter: str, current: str,
                     chosen: Callable[[str], None]) -> None:
    """Let the user pick a file on `bridge`'s host and pass its path to `chosen`: the desktop's dialog for this
    computer's files, HostFileDialog (over SFTP) for another host's. `current` (a path) says where to start."""
    files = bridge.files
    if files is None:
        raise HostError(f"{bridge.host.name} cannot browse its files")
    if files.local:
        start = current or files.home()
        path, _ = QFileDialog.getOpenFileName(parent, caption, start, name_filter)
        if path:
            chosen(path)
        return
    dialog = HostFileDialog(bridge, caption, name_filter, posixpath.dirname(current) if current else "", parent)
    dialog.accepted.connect(lambda: chosen(dialog.chosen))
    dialog.finished.connect(dialog.deleteLater)
    dialog.open()
