"""The main window's right-click menus, chosen by the row under the pointer (not by the selection): a VM row gets
the Virtual Machine menu (after selecting that row); a host row gets Reload Definitions (the host re-reads its
definition files), Host Details… (app/ui/host_details.py) and, for an SSH host, Connect or Disconnect and Remove
Connection; a definition file that failed to load gets Copy Path, on this computer Show File (its folder in the
desktop's file manager), and Delete Definition (after a question; the host deletes only a file that is one of its
load errors: Host.delete_broken_definition).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from PyQt6.QtCore import Qt, QUrl
from PyQt6.QtGui import QDesktopServices, QGuiApplication
from PyQt6.QtWidgets import QMenu, QTreeWidgetItem

from app.ui.dialogs import confirm_delete_definition
from app.ui.host_details import show_host_details
from core.connect import LocalServiceHost

if TYPE_CHECKING:
    from app.ui.main_window import MainWindow

ROLE = Qt.ItemDataRole.UserRole


def menu_for(window: MainWindow, item: QTreeWidgetItem | None) -> QMenu | None:
    """The menu for the row `item`, or None when it has none (the "no VMs yet" hint)."""
    data = item.data(0, ROLE) if item is not None else None
    if not data:
        return None
    kind, index = data[0], data[1]
    if kind == "vm":
        window.tree.setCurrentItem(item)
        return window.vm_menu
    menu = QMenu(window)
    bridge = window.bridges[index]
    if kind == "host":
        window.remote_hosts.context_menu(index, menu)
        if menu.actions():
            menu.addSeparator()
        reload = menu.addAction("Reload Definitions",
                                lambda: bridge.reload(then=lambda: window.statusBar().showMessage(
                                    f"Definitions of {bridge.host.name} re-read", 4000)))
        reload.setToolTip("Read the VM definition files again (after editing them by hand)")
        reload.setEnabled(bridge.facts is not None and bridge.facts.info is not None)
        menu.addAction("Host Details…", lambda: show_host_details(window, bridge)).setToolTip(
            "The host's CPU, memory and KVM, its VMs, and its Vireo service")
    elif kind == "error":
        path = data[3] if len(data) > 3 else ""
        menu.addAction("Copy Path", lambda: QGuiApplication.clipboard().setText(path)).setEnabled(bool(path))
        local = isinstance(bridge.host, LocalServiceHost)      # a remote host's file is not in our file manager
        show = menu.addAction("Show File", lambda: QDesktopServices.openUrl(
            QUrl.fromLocalFile(os.path.dirname(path))))
        show.setEnabled(bool(path) and local)
        menu.addSeparator()
        menu.addAction("Delete Definition", lambda: delete_definition(window, index, path)).setEnabled(bool(path))
    return menu if menu.actions() else None


def delete_definition(window: MainWindow, index: int, path: str) -> None:
    """Ask, then have the host delete the broken definition file `path`; the rows follow from the re-read list."""
    if not confirm_delete_definition(window, path):
        return
    bridge = window.bridges[index]
    host = bridge.host

    def deleted(_: object) -> None:
        bridge.refresh(then=lambda: window.statusBar().showMessage(f"{path} deleted", 4000))

    bridge.call(f"Deleting {os.path.basename(path)}", lambda: host.delete_broken_definition(path), deleted)
