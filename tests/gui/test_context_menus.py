"""The main window's right-click menus (issue 17, defect 13), by the row under the pointer: a host row offers
Reload Definitions even while a VM is selected (it used to get the VM's menu, or none for this computer); a
definition file that failed to load offers Copy Path and Show File; a VM row selects itself and gets the VM menu."""
from __future__ import annotations

import os

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtWidgets import QApplication  # noqa: E402

from app.ui.context_menus import menu_for  # noqa: E402
from core.config import ConfigStore  # noqa: E402
from tests.gui.test_gui import app_parts, define, vm_rows, xdg  # noqa: E402,F401  (fixtures, reused)

BROKEN = "88888888-8888-4888-8888-888888888888.json"


def _texts(menu) -> list[str]:
    return [a.text() for a in menu.actions() if not a.isSeparator()]


def _row(window, prefix: str):
    host_item = window.host_items[0]
    return next(host_item.child(i) for i in range(host_item.childCount())
                if host_item.child(i).text(0).startswith(prefix))


def test_host_error_and_vm_rows_have_their_own_menus(qtbot, app_parts) -> None:  # noqa: F811
    host, bridge, window = app_parts
    first = define("first")
    (ConfigStore().directory / BROKEN).write_text('{"name": ')
    done = []
    bridge.reload(then=lambda: done.append(True))
    qtbot.waitUntil(lambda: bool(done), timeout=10_000)
    window.select_vm(first.uuid)

    # The host row, with a VM selected: the host's menu, not the VM's.
    host_menu = menu_for(window, window.host_items[0])
    assert host_menu is not None and host_menu is not window.vm_menu
    assert _texts(host_menu) == ["Reload Definitions"]
    # A definition added by hand shows after Reload Definitions.
    later = define("added-by-hand")
    assert "added-by-hand" not in vm_rows(window)
    next(a for a in host_menu.actions() if a.text() == "Reload Definitions").trigger()
    qtbot.waitUntil(lambda: "added-by-hand" in vm_rows(window), timeout=10_000)

    # The broken file's row: Copy Path puts the file's path on the clipboard; Show File is offered (local host).
    error_menu = menu_for(window, _row(window, "Cannot load " + BROKEN))
    assert _texts(error_menu) == ["Copy Path", "Show File"]
    assert all(a.isEnabled() for a in error_menu.actions())
    next(a for a in error_menu.actions() if a.text() == "Copy Path").trigger()
    assert QApplication.clipboard().text() == str(ConfigStore().directory / BROKEN)

    # A VM row: it becomes the selection and gets the Virtual Machine menu.
    assert menu_for(window, window.vm_items[later.uuid]) is window.vm_menu
    assert window.selected()[1] == later.uuid
