"""The VM actions shared by the main window and each VM window: Run, Pause, Shut Down ▾ (Shut Down, Reboot,
Save, Force Reset, Force Off), Delete — and which of them make sense in each state. Force Off asks first
(app/ui/dialogs.py confirm_force_off): it loses whatever the guest had not written out."""
from __future__ import annotations

from collections.abc import Callable

from PyQt6.QtCore import QEvent, QObject
from PyQt6.QtGui import QAction
from PyQt6.QtWidgets import QMenu, QToolBar, QToolButton, QWidget

from app.icons import action_icon
from app.ui import preferences
from app.ui.dialogs import confirm_force_off
from core.host import VmInfo, VmState


class ShutdownButton(QToolButton):
    """The toolbar's "Shut Down ▾": its default action is the graceful Shut Down, its menu holds Reboot, Force
    Reset and Force Off. A QToolButton takes its enabled state from its default action, which is off for a
    paused VM — and that locked Force Reset and Force Off away in the VM window, whose toolbar is its only way
    to them. So the button follows its menu instead; while the default action is off a click opens the menu."""

    def sync(self) -> None:
        menu, default = self.menu(), self.defaultAction()
        if menu is None or default is None:       # still being put together
            return
        self.setEnabled(menu.isEnabled())
        self.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup if default.isEnabled()
                          else QToolButton.ToolButtonPopupMode.InstantPopup)

    def actionEvent(self, event: QEvent) -> None:
        super().actionEvent(event)      # re-applies the default action's state (enabled among it)…
        self.sync()                     # …which the menu's state overrides


class VmActions(QObject):
    """QActions acting on whichever VM `current()` returns (None: nothing selected)."""

    def __init__(self, parent: QWidget, current: Callable[[], VmInfo | None],
                 run: Callable[[str, str], None], delete: Callable[[], None] | None = None) -> None:
        super().__init__(parent)
        self.current = current
        self._parent, self._run = parent, run
        self._buttons: list[ShutdownButton] = []

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
        self.save = act("Sa&ve", "shutdown", "Save the virtual machine's state to disk and stop it: Run resumes it "
                        "where it was", "save")
        self.reset = act("Force &Reset", "reset", "Reset the virtual machine at once, as the reset button does",
                         "force_reset")
        self.off = act("Force &Off", "off", "Pull the plug: stop the virtual machine at once (asks first)",
                       handler=self._force_off)
        self.delete = act("&Delete…", "delete", "Delete the virtual machine (asks about its disk images)",
                          handler=delete) if delete else None
        self.shutdown_menu = QMenu("Shut &Down", parent)
        self.shutdown_menu.setIcon(action_icon("shutdown"))
        for a in (self.shutdown, self.reboot, self.save, self.reset, self.off):
            self.shutdown_menu.addAction(a)
        self.update()

    def _do(self, run: Callable[[str, str], None], action: str) -> None:
        info = self.current()
        if info is None:
            return
        if action == "start" and info.state == VmState.PAUSED:
            action = "resume"
        run(action, info.uuid)

    def _force_off(self) -> None:
        info = self.current()
        if info is None:
            return
        if preferences.current().confirm_force_off and not confirm_force_off(self._parent, info):
            return
        # The question was modal, the VM was not: it may have stopped by itself meanwhile.
        info = self.current()
        if info is not None and info.state in (VmState.RUNNING, VmState.PAUSED):
            self._run("force_off", info.uuid)

    def add_to_toolbar(self, bar: QToolBar) -> None:
        bar.addAction(self.run)
        bar.addAction(self.pause)
        button = ShutdownButton(bar)
        button.setDefaultAction(self.shutdown)
        button.setMenu(self.shutdown_menu)
        button.sync()
        button.setToolButtonStyle(bar.toolButtonStyle())
        bar.toolButtonStyleChanged.connect(button.setToolButtonStyle)
        button.setObjectName("shutdownButton")
        bar.addWidget(button)
        self._buttons.append(button)
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
        self.save.setEnabled(not busy and state in (VmState.RUNNING, VmState.PAUSED))
        self.off.setEnabled(state in (VmState.RUNNING, VmState.PAUSED))
        self.shutdown_menu.setEnabled(state in (VmState.RUNNING, VmState.PAUSED))
        for button in self._buttons:
            button.sync()
        if self.delete:
            self.delete.setEnabled(not busy and state in (VmState.SHUTOFF, VmState.CRASHED))
