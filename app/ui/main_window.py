"""The manager's main window: hosts as top-level rows (their CPU, cores, memory and KVM support) with their VMs
beneath (state, accelerator and why, a CPU sparkline), definition files that failed to load as error rows, the
toolbar and menus acting on the selected VM, and launch(), the Qt application's entry point.

Everything here runs on the GUI thread; every Host call goes through a HostBridge worker, and what the window
shows comes from the bridge's cache.
"""
from __future__ import annotations

import argparse
import logging
import sys

from PyQt6.QtCore import QSettings, QSize, Qt
from PyQt6.QtGui import QAction, QBrush, QColor, QFont, QKeySequence
from PyQt6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QHeaderView,
    QLabel,
    QMainWindow,
    QMessageBox,
    QToolBar,
    QTreeWidget,
    QTreeWidgetItem,
    QWidget,
)

from app.host_bridge import HostBridge
from app.icons import action_icon, app_icon, resource_icon, state_icon
from app.ui import preferences
from app.ui.actions import VmActions
from app.ui.dialogs import confirm_delete, disk_users, show_error
from app.widgets.graphs import preload as preload_graphs
from core.connect import LocalServiceHost
from core.host import DeleteResult, Host, VmInfo, VmState

log = logging.getLogger(__name__)

COL_NAME, COL_STATE, COL_ACCEL, COL_CPU = range(4)
ROLE = Qt.ItemDataRole.UserRole


def accel_text(info: VmInfo) -> tuple[str, str]:
    """(short text, tooltip) for the accelerator column."""
    names = {"kvm": "KVM", "software": "Software CPU"}
    if not info.accel:
        return (f"{info.config.accel} (not available)" if info.accel_reason and "not" in info.accel_reason
                else info.config.accel), info.accel_reason
    short = names.get(info.accel, info.accel)
    if info.config.accel == "auto":
        short += " (auto)"
    return short, info.accel_reason


class MainWindow(QMainWindow):
    def __init__(self, bridges: list[HostBridge], settings: QSettings | None = None) -> None:
        super().__init__()
        self.bridges = bridges
        self.settings = settings or QSettings()
        self.preferences = preferences.use(self.settings)
        self.vm_windows: dict[str, QWidget] = {}
        self.setWindowTitle("Vireo Virtual Machine Manager")
        self.setWindowIcon(app_icon())
        self.tree = QTreeWidget(self)
        self.tree.setObjectName("vmTree")
        self.tree.setColumnCount(4)
        self.tree.setHeaderLabels(["Name", "State", "Accelerator", "CPU usage"])
        self.tree.setRootIsDecorated(True)
        self.tree.setUniformRowHeights(False)
        self.tree.setAlternatingRowColors(False)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.tree.setStyleSheet("QTreeView::item { padding: 3px 2px; }")
        header = self.tree.header()
        header.setSectionResizeMode(COL_NAME, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(COL_STATE, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(COL_ACCEL, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(COL_CPU, QHeaderView.ResizeMode.Fixed)
        header.setStretchLastSection(False)
        header.resizeSection(COL_STATE, 110)
        header.resizeSection(COL_ACCEL, 170)
        header.resizeSection(COL_CPU, 140)
        self.tree.itemDoubleClicked.connect(self._double_clicked)
        self.tree.currentItemChanged.connect(lambda *_: self._update_actions())
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._context_menu)
        self.setCentralWidget(self.tree)
        self.host_items: dict[int, QTreeWidgetItem] = {}
        self.vm_items: dict[str, QTreeWidgetItem] = {}
        self.sparklines: dict[str, QWidget] = {}
        self.remote_rows: set[int] = set()
        self._make_actions()
        self._make_menus()
        for index, bridge in enumerate(bridges):
            self._wire_bridge(index, bridge)
        from app.ui.connections import RemoteHosts  # remembered SSH hosts join as further rows
        self.remote_hosts = RemoteHosts(self)
        self.file_menu.insertAction(self.file_menu.actions()[1], self.remote_hosts.add_action)
        self.statusBar().showMessage("Ready", 3000)
        self._restore()

    def _wire_bridge(self, index: int, bridge: HostBridge) -> None:
        bridge.stats_timer.setInterval(self.preferences.poll_interval_ms)
        bridge.vmsChanged.connect(lambda i=index: self._rebuild_host(i))
        bridge.factsChanged.connect(lambda i=index: self._rebuild_host(i))
        bridge.vmStateChanged.connect(lambda uuid, state, reason, i=index: self._state_changed(i, uuid, state,
                                                                                             reason))
        bridge.statsUpdated.connect(self._stats)
        bridge.failed.connect(self._host_call_failed)   # a bound slot: Qt drops it with the window
        bridge.busyChanged.connect(lambda uuid, busy: self._update_actions())
        self._rebuild_host(index)

    def _host_call_failed(self, what: str, message: str) -> None:
        show_error(self, what, message)

    def add_bridge(self, bridge: HostBridge) -> int:
        """Show another host (a remote one) below the others; returns its index."""
        self.bridges.append(bridge)
        self._wire_bridge(len(self.bridges) - 1, bridge)
        return len(self.bridges) - 1

    # -- actions and menus -----------------------------------------------------------------------------------
    def _make_actions(self) -> None:
        self.new_action = QAction(resource_icon("vm-new"), "&New Virtual Machine…", self)
        self.new_action.setShortcut(QKeySequence.StandardKey.New)
        self.new_action.setToolTip("Create a new virtual machine")
        self.new_action.triggered.connect(self.new_vm)
        self.open_action = QAction(action_icon("open"), "&Open", self)
        self.open_action.setToolTip("Open the virtual machine's window: console, details, performance")
        self.open_action.setShortcut(QKeySequence("Ctrl+O"))
        self.open_action.triggered.connect(lambda: self.open_vm(self.selected()))
        self.vm_actions = VmActions(self, self.selected_info, self._lifecycle, self.delete_vm)
        self.preferences_action = QAction("&Preferences…", self)
        self.preferences_action.setObjectName("preferencesAction")
        self.preferences_action.setMenuRole(QAction.MenuRole.PreferencesRole)
        self.preferences_action.triggered.connect(self.edit_preferences)
        self.quit_action = QAction(action_icon("quit"), "&Quit", self)
        self.quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        self.quit_action.triggered.connect(self.close)

    def _make_menus(self) -> None:
        bar = QToolBar("Main", self)
        bar.setObjectName("mainToolbar")
        bar.setMovable(False)
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextUnderIcon)
        bar.addAction(self.new_action)
        bar.addAction(self.open_action)
        bar.addSeparator()
        self.vm_actions.add_to_toolbar(bar)
        self.addToolBar(bar)
        self.toolbar = bar
        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction(self.new_action)
        file_menu.addSeparator()
        self.file_menu = file_menu
        file_menu.addAction(self.quit_action)
        vm_menu = self.menuBar().addMenu("&Virtual Machine")
        vm_menu.addAction(self.open_action)
        vm_menu.addSeparator()
        vm_menu.addAction(self.vm_actions.run)
        vm_menu.addAction(self.vm_actions.pause)
        vm_menu.addMenu(self.vm_actions.shutdown_menu)
        vm_menu.addSeparator()
        from app.ui.clone_dialog import CloneMoveActions  # Clone… (app/ui/clone_dialog.py)
        self.clone_move = CloneMoveActions(self)
        self.clone_move.add_to(vm_menu)
        vm_menu.addAction(self.vm_actions.delete)
        self.vm_menu = vm_menu
        edit_menu = self.menuBar().addMenu("&Edit")
        edit_menu.addAction(self.preferences_action)
        self.edit_menu = edit_menu
        view_menu = self.menuBar().addMenu("&View")
        toggle = bar.toggleViewAction()
        toggle.setText("&Toolbar")
        view_menu.addAction(toggle)
        help_menu = self.menuBar().addMenu("&Help")
        about = help_menu.addAction(action_icon("about"), "&About Vireo")
        about.triggered.connect(self._about)

    def _context_menu(self, pos) -> None:
        from app.ui.context_menus import menu_for
        menu = menu_for(self, self.tree.itemAt(pos))
        if menu is not None:
            menu.exec(self.tree.viewport().mapToGlobal(pos))

    def edit_preferences(self) -> None:
        """The Preferences dialog; OK applies the graphs' interval to every host now (the rest applies to the
        windows opened next)."""
        from app.ui.preferences import PreferencesDialog

        dialog = PreferencesDialog(self.preferences, self)
        dialog.applied.connect(self._preferences_applied)
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        self.preferences_dialog = dialog

    def _preferences_applied(self) -> None:
        for bridge in self.bridges:
            bridge.stats_timer.setInterval(self.preferences.poll_interval_ms)

    def _about(self) -> None:
        QMessageBox.about(self, "About Vireo",
                          "<h3>Vireo</h3><p>A virtual machine manager with its own engine: KVM where the host "
                          "has hardware virtualization, a software CPU everywhere else.</p>")

    # -- selection -------------------------------------------------------------------------------------------
    def selected(self) -> tuple[HostBridge, str] | None:
        item = self.tree.currentItem()
        data = item.data(0, ROLE) if item else None
        if not data or data[0] != "vm":
            return None
        return self.bridges[data[1]], data[2]

    def selected_info(self) -> VmInfo | None:
        sel = self.selected()
        return sel[0].info(sel[1]) if sel else None

    def select_vm(self, uuid: str) -> None:
        item = self.vm_items.get(uuid)
        if item is not None:
            self.tree.setCurrentItem(item)

    def _update_actions(self) -> None:
        sel = self.selected()
        self.open_action.setEnabled(sel is not None)
        self.vm_actions.update(busy=bool(sel and sel[0].busy(sel[1])))
        if hasattr(self, "clone_move"):
            self.clone_move.update()

    # -- the tree --------------------------------------------------------------------------------------------
    def _rebuild_host(self, index: int) -> None:
        bridge = self.bridges[index]
        selected = self.selected()
        item = self.host_items.get(index)
        if item is None:
            item = QTreeWidgetItem(self.tree)
            item.setData(0, ROLE, ("host", index))
            item.setFirstColumnSpanned(True)
            item.setIcon(0, resource_icon("host"))
            item.setFlags(Qt.ItemFlag.ItemIsEnabled)
            self.host_items[index] = item
        if index not in self.remote_rows:     # a remote host's row shows its connection (app/ui/connections.py)
            self._host_label(item, bridge)
        for i in reversed(range(item.childCount())):
            child = item.child(i)
            data = child.data(0, ROLE)
            if data and data[0] == "vm":
                self.vm_items.pop(data[2], None)
                self.sparklines.pop(data[2], None)
            item.removeChild(child)
        for info in bridge.vms():
            child = QTreeWidgetItem(item)
            child.setData(0, ROLE, ("vm", index, info.uuid))
            self.vm_items[info.uuid] = child
            self._fill_vm(child, info)
        for err in bridge.load_errors():
            child = QTreeWidgetItem(item)
            name = getattr(err, "path", None)
            child.setData(0, ROLE, ("error", index, str(err), str(name) if name else ""))
            child.setText(0, f"Cannot load {name.name if name else 'a definition'}: "
                             f"{getattr(err, 'message', str(err))}")
            child.setToolTip(0, f"{err}\nFix or remove the file; Vireo never overwrites it.")
            child.setIcon(0, action_icon("warning"))
            child.setForeground(0, QBrush(QColor("#b3261e")))
            child.setFirstColumnSpanned(True)
            child.setFlags(Qt.ItemFlag.ItemIsEnabled)
        if not item.childCount():
            child = QTreeWidgetItem(item)
            child.setText(0, "No virtual machines yet — choose New to create one")
            child.setForeground(0, QBrush(QColor("#808080")))
            child.setFirstColumnSpanned(True)
            child.setFlags(Qt.ItemFlag.ItemIsEnabled)
        item.setExpanded(True)
        if selected is not None and selected[1] in self.vm_items:
            self.tree.setCurrentItem(self.vm_items[selected[1]])
        elif self.tree.currentItem() is None and self.vm_items:
            self.tree.setCurrentItem(next(iter(self.vm_items.values())))
        self._update_actions()

    def _host_label(self, item: QTreeWidgetItem, bridge: HostBridge) -> None:
        hi = bridge.host_info
        if hi is None:
            self.tree.removeItemWidget(item, 0)
            item.setText(0, f"{bridge.host.name} — {bridge.facts.error if bridge.facts else 'reading…'}")
            return
        item.setText(0, "")
        kvm = ("<span style='color:#2e7d32'>hardware KVM</span>" if hi.kvm_usable and hi.kvm_hardware
               else "<span style='color:#9a6700'>no hardware KVM — VMs use the software CPU</span>")
        label = QLabel(f"<b>{bridge.host.name}</b> <span style='color:#666'>({hi.hostname})</span><br>"
                       f"<small>{hi.cpu_model} · {hi.cpus} CPUs ({hi.cores} cores) · "
                       f"{hi.memory_mib / 1024:.1f} GiB · {kvm}</small>")
        label.setObjectName("hostLabel")
        label.setToolTip(f"KVM: {hi.kvm_reason}\n{hi.system}")
        label.setContentsMargins(2, 3, 2, 3)
        label.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        item.setToolTip(0, label.toolTip())
        item.setSizeHint(0, label.sizeHint() + QSize(0, 8))   # room for the item padding of the style sheet
        self.tree.setItemWidget(item, 0, label)
        self._host_text = label.text()

    def _fill_vm(self, item: QTreeWidgetItem, info: VmInfo) -> None:
        item.setText(COL_NAME, info.name)
        item.setIcon(COL_NAME, state_icon(info.state.value))
        font = item.font(COL_NAME)
        font.setWeight(QFont.Weight.DemiBold if info.state.active else QFont.Weight.Normal)
        item.setFont(COL_NAME, font)
        tip = f"{info.name}\n{info.config.memory_mib} MiB · {info.config.vcpus} vCPU"
        if info.config.notes:
            tip += f"\n{info.config.notes.splitlines()[0]}"
        item.setToolTip(COL_NAME, tip)
        item.setText(COL_STATE, info.state.label)
        item.setToolTip(COL_STATE, info.reason or info.state.label)
        if info.state == VmState.CRASHED or (info.reason.startswith("failed") and not info.state.active):
            item.setForeground(COL_STATE, QBrush(QColor("#b3261e")))
        else:
            item.setForeground(COL_STATE, QBrush())
        text, why = accel_text(info)
        item.setText(COL_ACCEL, text)
        item.setToolTip(COL_ACCEL, why)
        self._sparkline(item, info)

    def _sparkline(self, item: QTreeWidgetItem, info: VmInfo) -> None:
        active = info.state in (VmState.RUNNING, VmState.PAUSED, VmState.STARTING)
        widget = self.sparklines.get(info.uuid)
        if active and widget is None:
            from app.widgets.graphs import sparkline

            widget = sparkline(color="#e0a100" if info.state == VmState.PAUSED else "#2e9e48")
            widget.setObjectName(f"sparkline-{info.name}")
            self.sparklines[info.uuid] = widget
            self.tree.setItemWidget(item, COL_CPU, widget)
        elif not active and widget is not None:
            self.tree.removeItemWidget(item, COL_CPU)
            del self.sparklines[info.uuid]
        item.setText(COL_CPU, "" if active else "—")
        item.setTextAlignment(COL_CPU, Qt.AlignmentFlag.AlignCenter)

    def _state_changed(self, index: int, uuid: str, state: str, reason: str) -> None:
        info = self.bridges[index].info(uuid)
        item = self.vm_items.get(uuid)
        if info is None or item is None:
            self._rebuild_host(index)
            return
        self._fill_vm(item, info)
        self._update_actions()
        if state == VmState.CRASHED.value:
            self.statusBar().showMessage(f"{info.name} crashed: {reason}")
        elif reason:
            self.statusBar().showMessage(f"{info.name}: {info.state.label.lower()} ({reason})", 8000)
        else:
            self.statusBar().showMessage(f"{info.name}: {info.state.label.lower()}", 4000)

    def _stats(self, uuid: str) -> None:
        widget = self.sparklines.get(uuid)
        if widget is None:
            return
        bridge = next((b for b in self.bridges if b.info(uuid)), None)
        if bridge is None:
            return
        history = bridge.history(uuid)
        widget.set_values([s.cpu_percent for s in history])
        if history:
            self.vm_items[uuid].setToolTip(COL_CPU, f"CPU {history[-1].cpu_percent:.0f} %")

    # -- commands --------------------------------------------------------------------------------------------
    def _lifecycle(self, action: str, uuid: str) -> None:
        bridge = next(b for b in self.bridges if b.info(uuid))
        bridge.lifecycle(action, uuid)
        self._update_actions()

    def _double_clicked(self, item: QTreeWidgetItem, column: int) -> None:
        data = item.data(0, ROLE)
        if data and data[0] == "vm":
            self.open_vm((self.bridges[data[1]], data[2]))

    def open_vm(self, sel: tuple[HostBridge, str] | None, tab: str = "console") -> QWidget | None:
        if sel is None:
            return None
        bridge, uuid = sel
        window = self.vm_windows.get(uuid)
        if window is None:
            from app.ui.vm_window import VmWindow

            window = VmWindow(bridge, uuid, self.settings)
            window.closed.connect(lambda u=uuid: self.vm_windows.pop(u, None))
            self.vm_windows[uuid] = window
        window.show_tab(tab)
        window.show()
        window.raise_()
        window.activateWindow()
        return window

    def selected_bridge(self) -> HostBridge:
        """The host of the selected row — the host's own, or any row under it (a VM, an error, the "No virtual
        machines yet" line); the first host when nothing is selected."""
        item = self.tree.currentItem()
        while item is not None and item.parent() is not None:
            item = item.parent()
        data = item.data(0, ROLE) if item else None
        if data and data[0] == "host" and 0 <= data[1] < len(self.bridges):
            return self.bridges[data[1]]
        return self.bridges[0]

    def new_vm(self) -> None:
        """Open the New VM wizard for the selected host once its facts (its limits, capabilities) are known."""
        bridge = self.selected_bridge()
        bridge.when_ready(lambda: self._open_wizard(bridge))

    def _open_wizard(self, bridge: HostBridge) -> None:
        from app.ui.wizard import NewVmWizard

        if bridge.host_info is None:
            show_error(self, "Creating a virtual machine", bridge.facts.error if bridge.facts else "no host")
            return
        wizard = NewVmWizard(bridge, self)
        wizard.created.connect(lambda uuid, start: self._created(bridge, uuid, start))
        wizard.open()
        self.wizard = wizard

    def _created(self, bridge: HostBridge, uuid: str, start: bool) -> None:
        self.select_vm(uuid)
        if start:
            bridge.lifecycle("start", uuid)
            self.open_vm((bridge, uuid), "console")
        else:
            self.open_vm((bridge, uuid), "details")

    def delete_vm(self) -> None:
        sel = self.selected()
        info = self.selected_info()
        if sel is None or info is None:
            return
        bridge, uuid = sel
        # Which disks another VM lists, from the bridge's cache; the host checks again (and backing files too).
        ok, disks = confirm_delete(self, info, disk_users(info, bridge.vms()))
        if not ok:
            return
        window = self.vm_windows.pop(uuid, None)
        if window is not None:
            window.close()

        def done(result: DeleteResult) -> None:
            removed = f"{len(result)} file{'s' if len(result) > 1 else ''} removed"
            kept = result.kept
            if not kept:
                self.statusBar().showMessage(f"Deleted {info.name} ({removed})", 6000)
                return
            # A disk kept is news the user must not miss: it stays in the status bar until the next message.
            why = "; ".join(f"{k.path}: {k.reason}" for k in kept)
            self.statusBar().showMessage(f"Deleted {info.name} ({removed}); kept {why}")

        host = bridge.host
        bridge.call(f"Deleting {info.name}", lambda: host.delete(uuid, disks), done, uuid=uuid)

    # -- window state ----------------------------------------------------------------------------------------
    def _restore(self) -> None:
        geometry = self.settings.value("main/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(860, 520)
        header = self.settings.value("main/header")
        if header is not None:
            self.tree.header().restoreState(header)

    def _save(self) -> None:
        self.settings.setValue("main/geometry", self.saveGeometry())
        self.settings.setValue("main/header", self.tree.header().saveState())
        self.settings.sync()

    def closeEvent(self, event) -> None:
        # The VMs live in the Vireo service, not in this window: they keep running, as under virt-manager.
        self._finish_quit()
        event.accept()

    def _finish_quit(self) -> None:
        self._save()
        for window in list(self.vm_windows.values()):
            window.close()
        for bridge in self.bridges:
            bridge.shutdown(close_host=True)   # forces off whatever still runs (e.g. a guest that ignored ACPI)


def local_bridge(host: Host | None = None) -> HostBridge:
    """This computer, as the first host row: a client of this user's Vireo service (`host`, a new
    LocalServiceHost unless given), which the bridge's first read (on a worker) reaches or starts; a service that
    cannot start shows as the host row's error. A manager that opens re-reads the definition files, as it did when
    VMs lived in it: files edited or added by hand since the service read them show up (or as error rows)."""
    host = host if host is not None else LocalServiceHost("Local", reread=True)
    return HostBridge(host, connect=host.connect)  # type: ignore[attr-defined]  (a service client's)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vireo", description="Vireo virtual machine manager")
    parser.add_argument("--show-vm", metavar="NAME", help="open this VM's console window at start")
    parser.add_argument("--connect", metavar="URI", help="connect to a remote host (ssh://user@host)")
    args, _qt_args = parser.parse_known_args(argv)
    return args


def launch(argv: list[str]) -> int:
    """Run the manager (Qt event loop) and return its exit status."""
    logging.basicConfig(level=logging.WARNING, format="vireo: %(name)s: %(message)s")
    try:
        args = _parse(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "vireo", *argv])
    app.setApplicationName("vireo")
    app.setOrganizationName("vireo")
    app.setApplicationDisplayName("Vireo")
    app.setDesktopFileName("vireo")
    app.setWindowIcon(app_icon())
    bridge = local_bridge()
    preload_graphs()
    window = MainWindow([bridge])
    window.show()
    if args.connect:
        window.remote_hosts.add_uri(args.connect)

    def listed() -> None:   # the host's first read (facts and VM list) is in the bridge's cache
        # (VMs marked autostart are the service's to start, when it starts: core/agent/daemon.py.)
        if args.show_vm:
            info = bridge.find(args.show_vm)
            if info is None:
                show_error(window, f"Opening {args.show_vm}", f"there is no VM named {args.show_vm!r}")
            else:
                window.select_vm(info.uuid)
                window.open_vm((bridge, info.uuid), "console")

    bridge.when_ready(listed)
    return app.exec()
