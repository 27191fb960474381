"""The VM actions shared by the main window and each VM window: Run, Pause, Shut Down ▾ (Shut Down, Reboot,
Force Reset, Force Off), Delete — and which of them make sense in each state."""
from __future__ import annotations

from collections.abc import Callable

from PyQt6.QtCore import QObject
from PyQt6.QtGui import QAction
from PyQt6.QtWidgets import QMenu, QToolBar, QToolButton, QWidget

from app.icons import action_icon
from core.host import VmInfo, VmState


class VmActions(QObject):
    """QActions acting on whichever VM `current()` returns (None: nothing selected)."""

    def __init__(self, parent: QWidget, current: Callable[[], VmInfo | None],
                 run: Callable[[str, str], None], delete: Callable[[], None] | None = None) -> None:
        super().__init__(parent)
        self.current = current

        def act(text: str, icon: str, tip: str, action: str | None = None, handler=None) -> QAction:
            a = QAction(action_icon(icon), text, parent)
            a.setStatusTip(tip)
            a.setToolTip(tip)
            if action is not None:
                a.triggered.connect(lambda: self._do(run, action))
            elif handler is not None:
                a.triggered.connect(handler)
            return a

        self.run = act("&Run", "run", "Start the virtual machine, or resume it when paused", "start")
        self.pause = act("&Pause", "pause", "Pause the virtual machine (its vCPUs stop; memory is kept)", "pause")
        self.shutdown = act("&Shut Down", "shutdown", "Press the ACPI power button: the guest shuts itself down",
                            "shutdown")
        self.reboot = act("Re&boot", "reboot", "Shut the guest down gracefully, then start it again", "reboot")
        self.reset = act("Force &Reset", "reset", "Reset the virtual machine at once, as the reset button does",
                         "force_reset")
        self.off = act("Force &Off", "off", "Pull the plug: stop the virtual machine at once", "force_off")
        self.delete = act("&Delete…", "delete", "Delete the virtual machine (asks about its disk images)",
                          handler=delete) if delete else None
        self.shutdown_menu = QMenu("Shut &Down", parent)
        self.shutdown_menu.setIcon(action_icon("shutdown"))
        for a in (self.shutdown, self.reboot, self.reset, self.off):
            self.shutdown_menu.addAction(a)
        self.update()

    def _do(self, run: Callable[[str, str], None], action: str) -> None:
        info = self.current()
        if info is None:
            return
        if action == "start" and info.state == VmState.PAUSED:
            action = "resume"
        run(action, info.uuid)

    def add_to_toolbar(self, bar: QToolBar) -> None:
        bar.addAction(self.run)
        bar.addAction(self.pause)
        button = QToolButton(bar)
        button.setDefaultAction(self.shutdown)
        button.setMenu(self.shutdown_menu)
        button.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        button.setToolButtonStyle(bar.toolButtonStyle())
        bar.toolButtonStyleChanged.connect(button.setToolButtonStyle)
        button.setObjectName("shutdownButton")
        bar.addWidget(button)
        if self.delete:
            bar.addAction(self.delete)

    def update(self, busy: bool = False) -> None:
        info = self.current()
        state = info.state if info else None
        self.run.setEnabled(not busy and state in (VmState.SHUTOFF, VmState.CRASHED, VmState.PAUSED))
        self.run.setText("&Resume" if state == VmState.PAUSED else "&Run")
        self.pause.setEnabled(not busy and state == VmState.RUNNING)
        running = state == VmState.RUNNING
        self.shutdown.setEnabled(running)
        self.reboot.setEnabled(running)
        self.reset.setEnabled(state in (VmState.RUNNING, VmState.PAUSED))
        self.off.setEnabled(state in (VmState.RUNNING, VmState.PAUSED))
        self.shutdown_menu.setEnabled(state in (VmState.RUNNING, VmState.PAUSED))
        if self.delete:
            self.delete.setEnabled(not busy and state in (VmState.SHUTOFF, VmState.CRASHED))
