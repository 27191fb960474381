"""Remote hosts in the main window: the File ▸ Add Connection… action, the remembered connections (QSettings
"connections/list": host, port, user, key file path, authentication kind, remote python — never a secret),
connecting in the background, and the host row's connection state.

Each remote host gets its own HostBridge like the local one. Connecting runs on the bridge's worker (SSH
handshake, maybe prompts, maybe the agent upload), so the window stays responsive; the host row says
"connecting…", then shows the host's facts and VMs, or the connection error in red. A remembered host is not
connected at start-up (no prompt storm when the manager opens): double-click its row, or use its context menu,
to connect — and any request on one of its VMs reconnects first.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict

from PyQt6.QtCore import QObject, QSettings, Qt, pyqtSignal
from PyQt6.QtGui import QAction, QBrush, QColor
from PyQt6.QtWidgets import QMenu, QTreeWidgetItem

from app.host_bridge import HostBridge
from app.ui.connection_dialog import AddConnectionDialog, QtPrompter
from core.connect import LibvirtHost, RemoteHost, SshTarget, is_libvirt_uri, parse_uri
from core.host import HostError

log = logging.getLogger(__name__)

SETTINGS_KEY = "connections/list"
REMEMBERED_FIELDS = ("host", "port", "user", "identity", "auth", "python")


class _ConnectionSignal(QObject):
    changed = pyqtSignal(str, str)      # connection state, message (queued from whatever thread)


def remembered(settings: QSettings) -> list[tuple[SshTarget, bool | None]]:
    raw = settings.value(SETTINGS_KEY, "[]")
    try:
        items = json.loads(raw if isinstance(raw, str) else "[]")
    except ValueError:
        return []
    out = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("host"), str):
            continue
        fields = {k: item[k] for k in REMEMBERED_FIELDS if k in item}
        try:
            # True: copy unicorn unasked; False: never; None (or an older file's missing key): ask once.
            copy = item.get("copy_unicorn")
            out.append((SshTarget(**fields), copy if isinstance(copy, bool) else None))
        except TypeError:
            continue
    return out


class RemoteHosts:
    """Owns the remote HostBridges of one MainWindow."""

    def __init__(self, window) -> None:
        self.window = window
        self.settings: QSettings = window.settings
        self.prompter = QtPrompter(window)
        self.signals: dict[int, _ConnectionSignal] = {}
        self.add_action = QAction("Add &Connection…", window)
        self.add_action.setObjectName("addConnectionAction")
        self.add_action.setToolTip("Manage the virtual machines of another computer over SSH, or a libvirt host's")
        self.add_action.triggered.connect(self.add_dialog)
        window.tree.itemDoubleClicked.connect(self._double_clicked)
        for target, copy_unicorn in remembered(self.settings):
            self.add(target, copy_unicorn, connect=False, remember=False)
        from app.ui.libvirt_connections import LibvirtHosts
        self.libvirt = LibvirtHosts(window)      # libvirt URIs: rows of their own (app/ui/libvirt_connections.py)

    # -- adding ----------------------------------------------------------------------------------------------
    def add_dialog(self) -> AddConnectionDialog:
        dialog = AddConnectionDialog(self.window)
        dialog.accepted.connect(lambda: self.libvirt.add(dialog.uri()) if dialog.kind() == "libvirt"
                                else self.add(dialog.target(), dialog.copy_unicorn))
        dialog.open()
        self.dialog = dialog
        return dialog

    def add_uri(self, uri: str) -> int | None:
        if is_libvirt_uri(uri):                  # `vireo --connect qemu:///session`
            return self.libvirt.add(uri, remember=False)
        try:
            target = parse_uri(uri)
        except HostError as exc:
            from app.ui.dialogs import show_error
            show_error(self.window, f"Connecting to {uri}", str(exc))
            return None
        return self.add(target, connect=True, remember=False)

    def find(self, target: SshTarget) -> int | None:
        for index, bridge in enumerate(self.window.bridges):
            host = bridge.host
            if isinstance(host, RemoteHost) and (host.target.host, host.target.port, host.target.user) == \
                    (target.host, target.port, target.user):
                return index
        return None

    def add(self, target: SshTarget, copy_unicorn: bool | None = None, connect: bool = True,
            remember: bool = True) -> int:
        index = self.find(target)
        if index is None:
            host = RemoteHost(target, self.prompter, copy_unicorn=copy_unicorn)
            signal = _ConnectionSignal()
            host.add_connection_listener(lambda state, message, s=signal: s.changed.emit(state, message))
            bridge = HostBridge(host)
            index = self.window.add_bridge(bridge)
            self.window.remote_rows.add(index)
            signal.changed.connect(lambda state, message, i=index: self._connection_changed(i, state, message))
            bridge.factsChanged.connect(lambda i=index: self._show_state(i))
            self.signals[index] = signal
            self._show_state(index)
        if remember:
            self._remember()
        if connect:
            self.connect(index)
        return index

    def _remember(self) -> None:
        items = []
        for bridge in self.window.bridges:
            host = bridge.host
            if isinstance(host, RemoteHost):
                fields = {k: v for k, v in asdict(host.target).items() if k in REMEMBERED_FIELDS}
                items.append({**fields, "copy_unicorn": host.copy_unicorn})
        self.settings.setValue(SETTINGS_KEY, json.dumps(items))
        self.settings.sync()

    def forget(self, index: int) -> None:
        """Disconnect and drop from the remembered list (the row stays greyed until the window closes)."""
        bridge = self.window.bridges[index]
        if isinstance(bridge.host, RemoteHost):
            self.disconnect(index)
            self._remember_without(index)

    def _remember_without(self, index: int) -> None:
        gone = self.window.bridges[index].host.target
        items = [(t, c) for t, c in remembered(self.settings)
                 if (t.host, t.port, t.user) != (gone.host, gone.port, gone.user)]
        self.settings.setValue(SETTINGS_KEY, json.dumps([{**{k: v for k, v in asdict(t).items()
                                                             if k in REMEMBERED_FIELDS}, "copy_unicorn": c}
                                                         for t, c in items]))

    # -- connecting ------------------------------------------------------------------------------------------
    def connect(self, index: int) -> None:
        bridge = self.window.bridges[index]
        host = bridge.host
        if isinstance(host, LibvirtHost):
            return self.libvirt.connect(index)
        if not isinstance(host, RemoteHost) or host.connected or host.state == "connecting":
            return
        bridge.call(f"Connecting to {host.name}", host.connect, failed=lambda message: None)

    def disconnect(self, index: int) -> None:
        bridge = self.window.bridges[index]
        bridge.call(f"Disconnecting from {bridge.host.name}", bridge.host.close, failed=lambda message: None)

    def _double_clicked(self, item: QTreeWidgetItem, column: int) -> None:
        data = item.data(0, Qt.ItemDataRole.UserRole)
        if data and data[0] == "host":
            self.connect(data[1])

    def context_menu(self, index: int, menu: QMenu) -> None:
        host = self.window.bridges[index].host
        if isinstance(host, LibvirtHost):
            return self.libvirt.context_menu(index, menu)
        if not isinstance(host, RemoteHost):
            return
        if host.connected:
            menu.addAction("Disconnect", lambda: self.disconnect(index))
        else:
            menu.addAction("Connect", lambda: self.connect(index))
        menu.addAction("Remove Connection", lambda: self.forget(index))

    def _connection_changed(self, index: int, state: str, message: str) -> None:
        bridge = self.window.bridges[index]
        if state == "connected":
            bridge.refresh(facts=True)       # the rows follow when the read is in (factsChanged, vmsChanged)
        self._show_state(index)
        self.window.statusBar().showMessage(message, 6000)

    def _show_state(self, index: int) -> None:
        """The host row: facts when connected, else the state or the error, in red."""
        bridge = self.window.bridges[index]
        host: RemoteHost = bridge.host
        item = self.window.host_items.get(index)
        if item is None:
            return
        if host.connected:
            item.setText(0, "")
            self.window._host_label(item, bridge)
            report = host.report
            if report is not None and not report.software_cpu:
                item.setToolTip(0, f"{item.toolTip(0)}\n{report.software_cpu_reason}")
            return
        self.window.tree.removeItemWidget(item, 0)
        if host.state == "connecting":
            text, color = f"{host.name} — connecting…", "#555555"
        elif host.state == "disconnected" and host.error == "not connected":
            text, color = f"{host.name} — not connected (double-click to connect)", "#555555"
        else:
            text, color = f"{host.name} — {host.error}", "#b3261e"
        item.setText(0, text)
        item.setToolTip(0, text)
        item.setForeground(0, QBrush(QColor(color)))
