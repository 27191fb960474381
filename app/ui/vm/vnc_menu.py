"""The console toolbar's "VNC" menu: where a VNC viewer reaches this VM's screen (the definition's display.vnc, served
by the VM process while it runs; core/vnc, docs/vnc.md) and "Copy VNC address", which puts vnc://HOST:PORT on the
clipboard. A VM without a VNC console says how to give it one. It reads the VmInfo the window already has: nothing
here calls the host."""
from __future__ import annotations

from PyQt6.QtGui import QAction, QGuiApplication
from PyQt6.QtWidgets import QMenu, QToolButton, QWidget

from core.config import ConfigError
from core.host import VmInfo, VmState

OFF_TEXT = "No VNC console (set display.vnc in the definition, e.g. 127.0.0.1:1)"


class VncMenu:
    def __init__(self, parent: QWidget) -> None:
        self.button = QToolButton(parent)
        self.button.setText("VNC")
        self.button.setToolTip("Where a VNC viewer (TigerVNC, Remmina, noVNC …) reaches this screen")
        self.button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.menu = QMenu(self.button)
        self.address_action = QAction(OFF_TEXT, self.menu)
        self.address_action.setEnabled(False)         # a label: the address itself
        self.copy_action = QAction("Copy VNC address", self.menu)
        self.copy_action.triggered.connect(self.copy)
        self.menu.addAction(self.address_action)
        self.menu.addAction(self.copy_action)
        self.button.setMenu(self.menu)
        self.uri = ""

    def update(self, info: VmInfo) -> None:
        try:
            self.uri = info.config.display.vnc_uri()
        except ConfigError:
            self.uri = ""
        running = info.state in (VmState.RUNNING, VmState.PAUSED)
        if not self.uri:
            text = OFF_TEXT
        else:
            text = self.uri if running else f"{self.uri} (while the VM runs)"
            if info.config.display.vnc_password:
                text += " — password protected"
        self.address_action.setText(text)
        self.copy_action.setEnabled(bool(self.uri))

    def copy(self) -> None:
        if self.uri:
            QGuiApplication.clipboard().setText(self.uri)
