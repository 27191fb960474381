"""One VM's window: the Serial Console (app/ui/vm/serial_tab.py, a terminal on ttyS0), Details
(app/ui/vm/details.py, the hardware list), Snapshots (app/ui/vm/snapshots_tab.py) and Performance
(app/ui/vm/performance.py) tabs, with the lifecycle toolbar. The graphical console (app/ui/vm/console_tab.py, the
guest's VGA screen) joins as the first tab, "Console", once the VM runs (unless its display is none) and stays,
showing the last picture, after it stops.
"""
from __future__ import annotations

from PyQt6.QtCore import QSettings, Qt, pyqtSignal
from PyQt6.QtWidgets import QMainWindow, QPushButton, QTabWidget, QToolBar, QWidget

from app.host_bridge import HostBridge
from app.icons import app_icon, state_icon
from app.ui.actions import VmActions
from app.ui.vm.details import DetailsEditor
from app.ui.vm.serial_tab import SerialConsoleTab
from app.ui.vm.snapshots_tab import SnapshotsTab
from core.host import VmInfo, VmState


class VmWindow(QMainWindow):
    closed = pyqtSignal()

    def __init__(self, bridge: HostBridge, uuid: str, settings: QSettings | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bridge, self.uuid = bridge, uuid
        self.settings = settings or QSettings()
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.setWindowIcon(app_icon())
        self.actions_ = VmActions(self, lambda: bridge.info(uuid), lambda action, u: bridge.lifecycle(action, u))
        bar = QToolBar("VM", self)
        bar.setObjectName("vmToolbar")
        bar.setMovable(False)
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.actions_.add_to_toolbar(bar)
        self.addToolBar(bar)
        self.tabs = QTabWidget(self)
        self.tabs.setDocumentMode(True)
        self.console = SerialConsoleTab(bridge, uuid, self)
        self._bind_run_button(self.console.run_button)
        self.tabs.addTab(self.console, "Serial Console")
        self.details = DetailsEditor(bridge, uuid, self)
        self.tabs.addTab(self.details, "Details")
        self.snapshots = SnapshotsTab(bridge, uuid, self)         # app/ui/vm/snapshots_tab.py
        self.tabs.addTab(self.snapshots, "Snapshots")
        self.performance = None
        self.display = None                                # the graphical console tab, once the VM has run
        self.tabs.addTab(QWidget(self), "Performance")   # built when first shown: pyqtgraph loads then
        self.tabs.currentChanged.connect(self._tab_changed)
        self.setCentralWidget(self.tabs)
        bridge.vmStateChanged.connect(self._state)
        bridge.vmsChanged.connect(self._refresh)
        bridge.busyChanged.connect(self._busy)
        geometry = self.settings.value(f"vm/{uuid}/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(self.console.terminal.sizeHint().width() + 40, self.console.terminal.sizeHint().height() + 110)
        self._refresh()

    def _bind_run_button(self, button: QPushButton) -> None:
        """A banner's Run/Resume button is the toolbar's Run action: it is greyed out while the action is (the
        force-off that stopped the VM may still be finishing when the banner appears), so a click is never
        swallowed by a disabled action."""
        run = self.actions_.run
        button.clicked.connect(run.trigger)
        button.setEnabled(run.isEnabled())
        run.changed.connect(lambda: button.setEnabled(run.isEnabled()))

    def add_console_tab(self, widget: QWidget, title: str = "Console", select: bool = True) -> None:
        """For the framebuffer console: placed first, as the VM's main view."""
        self.tabs.insertTab(0, widget, title)
        if select:
            self.tabs.setCurrentIndex(0)

    def show_tab(self, name: str) -> None:
        """"console": the graphical console when there is one, else the serial console; "serial", "details",
        "performance"."""
        if name == "console" and self.display is not None:
            self.tabs.setCurrentWidget(self.display)
            self.display.view.setFocus()
            return
        index = {"console": self.tabs.indexOf(self.console), "serial": self.tabs.indexOf(self.console),
                 "details": self.tabs.indexOf(self.details),
                 "snapshots": self.tabs.indexOf(self.snapshots), "performance": self.tabs.count() - 1}.get(name, 0)
        self.tabs.setCurrentIndex(index)
        if name in ("console", "serial"):
            self.console.terminal.setFocus()

    def _follow_display(self, info: VmInfo) -> None:
        if self.display is None:
            if not info.state.active or info.state == VmState.STARTING or info.config.display.type == "none":
                return
            from app.ui.vm.console_tab import VmConsoleTab

            self.display = VmConsoleTab(self.bridge, self.uuid, self)
            self._bind_run_button(self.display.run_button)
            # Take the front only from the serial console (where a started VM's window opens), not from a tab
            # the user chose.
            self.add_console_tab(self.display, "Console", select=self.tabs.currentWidget() is self.console)
            if self.tabs.currentWidget() is self.display:
                self.display.view.setFocus()
        self.display.update_state(info)

    def _tab_changed(self, index: int) -> None:
        if index == self.tabs.count() - 1 and self.performance is None:
            from app.ui.vm.performance import PerformanceView

            self.performance = PerformanceView(self.bridge, self.uuid, self)
            self.tabs.blockSignals(True)
            self.tabs.removeTab(index)
            self.tabs.addTab(self.performance, "Performance")
            self.tabs.setCurrentIndex(index)
            self.tabs.blockSignals(False)

    def _state(self, uuid: str, state: str, reason: str) -> None:
        if uuid == self.uuid:
            self._refresh()

    def _busy(self, uuid: str, busy: bool) -> None:
        if uuid == self.uuid:
            self.actions_.update(busy)

    def _refresh(self) -> None:
        info = self.bridge.info(self.uuid)
        if info is None:       # deleted
            self.close()
            return
        self.setWindowTitle(f"{info.name} — {info.state.label} — Vireo")
        self.setWindowIcon(state_icon(info.state.value))
        self.console.update_state(info)
        self._follow_display(info)
        self.actions_.update(self.bridge.busy(self.uuid))

    def closeEvent(self, event) -> None:
        self.settings.setValue(f"vm/{self.uuid}/geometry", self.saveGeometry())
        self.console.close_serial()
        if self.display is not None:
            self.display.close_console()
        for signal, slot in ((self.bridge.vmStateChanged, self._state), (self.bridge.vmsChanged, self._refresh),
                             (self.bridge.busyChanged, self._busy)):
            try:
                signal.disconnect(slot)
            except TypeError:
                pass
        self.closed.emit()
        super().closeEvent(event)
