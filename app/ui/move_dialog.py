"""The main window's "Move to Host…" (issue 15; docs/clone-and-move.md): a dialog listing the other hosts the
manager is connected to (this computer's service and the SSH hosts of its rows), and a progress bar while the
shut-off or saved VM's definition, disks and saved state go over (core.connect.move_vm, on one of the source
bridge's workers; progress reports are queued into the GUI thread by a signal). A refusal — a name taken there, no
room, the peer gone — shows in the dialog as one line, and the VM stays where it was."""
from __future__ import annotations

from typing import TYPE_CHECKING

from PyQt6.QtCore import Qt, pyqtSignal
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QProgressBar,
    QVBoxLayout,
    QWidget,
)

from core.connect import move_vm
from core.host import VmInfo

if TYPE_CHECKING:
    from app.host_bridge import HostBridge


def connected(bridge: HostBridge) -> bool:
    """The bridge's host answers now (a remote one is connected; this computer's service is reached on demand)."""
    return bool(getattr(bridge.host, "connected", True)) and bridge.facts is not None and bridge.facts.info is not None


class MoveDialog(QDialog):
    progressed = pyqtSignal(int, int)       # done, total bytes: emitted on the worker, shown on the GUI thread
    moved = pyqtSignal(int, str)            # index of the destination bridge, the VM's uuid

    def __init__(self, bridges: list[HostBridge], source: HostBridge, info: VmInfo,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.source, self.info = source, info
        self.setObjectName("moveDialog")
        self.setWindowTitle(f"Move {info.name} to Another Host")
        self.hosts = QComboBox(self)
        self.hosts.setObjectName("moveHosts")
        self.targets: list[tuple[int, HostBridge]] = [(i, b) for i, b in enumerate(bridges)
                                                      if b is not source and connected(b)]
        for _, bridge in self.targets:
            self.hosts.addItem(bridge.host.name)
        self.start_there = QCheckBox("&Start it there afterwards (a saved VM resumes where it stopped)", self)
        self.start_there.setObjectName("moveStart")
        self.start_there.setChecked(False)
        self.progress = QProgressBar(self)
        self.progress.setObjectName("moveProgress")
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.message = QLabel("The VM's definition, disks and saved state go to the chosen host; this host keeps "
                              "its copy until that host has verified everything.", self)
        self.message.setObjectName("moveMessage")
        self.message.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel,
                                        self)
        self.ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok.setText("&Move")
        self.buttons.accepted.connect(self.start)
        self.buttons.rejected.connect(self.reject)
        form = QFormLayout()
        form.addRow("&To host:", self.hosts)
        form.addRow("", self.start_there)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.message)
        layout.addWidget(self.buttons)
        self.progressed.connect(self._progress, Qt.ConnectionType.QueuedConnection)
        self.running = False
        if info.state.active:
            self._refuse(f"{info.name} is {info.state.label.lower()}: save it or shut it down to move it")
        elif not self.targets:
            self._refuse("No other host is connected: add or connect one (File ▸ Add Connection…) first")

    def _refuse(self, text: str) -> None:
        self.message.setText(text)
        self.ok.setEnabled(False)

    def _progress(self, done: int, total: int) -> None:
        self.progress.setValue(100 if total <= 0 else min(100, done * 100 // total))

    def start(self) -> None:
        index, dest = self.targets[self.hosts.currentIndex()]
        self.running = True
        for w in (self.hosts, self.start_there, self.buttons):
            w.setEnabled(False)
        self.message.setText(f"Moving {self.info.name} to {dest.host.name}…")
        start_there = self.start_there.isChecked()
        src_host, dst_host, uuid = self.source.host, dest.host, self.info.uuid

        def done(moved: VmInfo) -> None:
            self.progress.setValue(100)
            self.message.setText(f"{moved.name} is on {dst_host.name} now")
            self.source.refresh()

            def listed() -> None:
                self.running = False
                self.moved.emit(index, moved.uuid)
                if start_there:
                    dest.lifecycle("start", moved.uuid)
                self.accept()
            dest.refresh(then=listed)

        self.source.call(f"Moving {self.info.name}",
                         lambda: move_vm(src_host, dst_host, uuid, lambda d, t: self.progressed.emit(d, t)),
                         done, self._failed, uuid=uuid)

    def _failed(self, message: str) -> None:
        self.running = False
        self.message.setText(message)
        self.progress.setValue(0)
        for w in (self.hosts, self.start_there, self.buttons):
            w.setEnabled(True)

    def reject(self) -> None:
        if not self.running:        # a move under way finishes or fails on its own; the source stays until then
            super().reject()
