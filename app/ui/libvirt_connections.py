"""libvirt connections in the main window (File ▸ Add Connection ▸ libvirt): each URI (qemu:///session,
qemu:///system, qemu+ssh://…) is a host row beside Vireo's, its domains listed with state and CPU graphs through
the same HostBridge as any host (core.connect.LibvirtHost implements the Host API), the console and serial tabs
of the VM window reading them through libvirt (docs/libvirt.md).

The URIs are remembered in QSettings "connections/libvirt" (a JSON list of strings; libvirt keeps credentials
itself). Connecting runs on the bridge's worker before every full read, bounded by LibvirtHost's timeout, so a URI
that is down gives its one-line error in the host row and the window never waits.
"""
from __future__ import annotations

import json

from PyQt6.QtCore import QSettings
from PyQt6.QtWidgets import QMenu

from app.host_bridge import HostBridge
from core.connect import LibvirtHost
from core.host import HostError

SETTINGS_KEY = "connections/libvirt"


def remembered_uris(settings: QSettings) -> list[str]:
    raw = settings.value(SETTINGS_KEY, "[]")
    try:
        items = json.loads(raw if isinstance(raw, str) else "[]")
    except ValueError:
        return []
    return [u for u in items if isinstance(u, str) and u] if isinstance(items, list) else []


class LibvirtHosts:
    """Owns the libvirt HostBridges of one MainWindow."""

    def __init__(self, window) -> None:
        self.window = window
        self.settings: QSettings = window.settings
        self._wanted: set[str] = set()          # URIs to (re)connect: not those the user disconnected
        for uri in remembered_uris(self.settings):
            self.add(uri, remember=False)

    def find(self, uri: str) -> int | None:
        for index, bridge in enumerate(self.window.bridges):
            if isinstance(bridge.host, LibvirtHost) and bridge.host.uri == uri:
                return index
        return None

    def add(self, uri: str, remember: bool = True) -> int:
        """A row for `uri` (the existing one when it is shown), connecting on the bridge's worker."""
        index = self.find(uri)
        if index is None:
            self._wanted.add(uri)
            host = LibvirtHost(uri, connect=False)
            index = self.window.add_bridge(HostBridge(host, connect=lambda h=host: self._connect_hook(h)))
        elif not self.window.bridges[index].host.connected:
            self.connect(index)
        if remember:
            self._remember()
        return index

    def _remember(self) -> None:
        uris = [b.host.uri for b in self.window.bridges if isinstance(b.host, LibvirtHost)]
        self.settings.setValue(SETTINGS_KEY, json.dumps(uris))
        self.settings.sync()

    def _connect_hook(self, host: LibvirtHost) -> None:
        """On the bridge's worker before each full read: connect unless the user disconnected this row."""
        if host.uri not in self._wanted:
            raise HostError("not connected (double-click to connect)")
        host.connect()

    def connect(self, index: int) -> None:
        self._wanted.add(self.window.bridges[index].host.uri)
        self.window.bridges[index].refresh(facts=True)      # connects first (the bridge's connect hook)

    def disconnect(self, index: int) -> None:
        bridge = self.window.bridges[index]
        self._wanted.discard(bridge.host.uri)
        bridge.call(f"Disconnecting from {bridge.host.name}", bridge.host.close,
                    lambda _: bridge.refresh(facts=True), failed=lambda message: None)

    def forget(self, index: int) -> None:
        """Disconnect and drop from the remembered list (the row stays until the window closes)."""
        gone = self.window.bridges[index].host.uri
        self.disconnect(index)
        self.settings.setValue(SETTINGS_KEY, json.dumps([u for u in remembered_uris(self.settings) if u != gone]))
        self.settings.sync()

    def context_menu(self, index: int, menu: QMenu) -> None:
        host = self.window.bridges[index].host
        if host.connected:
            menu.addAction("Disconnect", lambda: self.disconnect(index))
        else:
            menu.addAction("Connect", lambda: self.connect(index))
        menu.addAction("Remove Connection", lambda: self.forget(index))
