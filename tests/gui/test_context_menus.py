"""The main window's right-click menus (issue 17, defect 13), by the row under the pointer: a host row offers
Reload Definitions and Host Details… even while a VM is selected (it used to get the VM's menu, or none for this
computer); a definition file that failed to load offers Copy Path, Show File and Delete Definition (asked first;
Cancel keeps the file); a VM row selects itself and gets the VM menu. Host Details shows the host's facts and its
service's version and status, read on a worker."""
from __future__ import annotations

import os
import threading

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QSettings  # noqa: E402
from PyQt6.QtWidgets import QApplication  # noqa: E402

from app.ui.context_menus import menu_for  # noqa: E402
from app.ui.host_details import HostDetailsDialog  # noqa: E402
from core.agent.version import engine_version  # noqa: E402
from core.config import ConfigStore  # noqa: E402
from core.connect import LocalServiceHost  # noqa: E402
from tests.gui.test_gui import app_parts, define, reload, vm_rows, xdg  # noqa: E402,F401  (fixtures, reused)
from tests.gui.test_gui_threads import ThreadRecordingHost  # noqa: E402
from tests.helpers.dialogs import answer_question  # noqa: E402

BROKEN = "88888888-8888-4888-8888-888888888888.json"


def _texts(menu) -> list[str]:
    return [a.text() for a in menu.actions() if not a.isSeparator()]


def _action(menu, text: str):
    return next(a for a in menu.actions() if a.text() == text)


def _rows(window) -> list[str]:
    host_item = window.host_items[0]
    return [host_item.child(i).text(0) for i in range(host_item.childCount())]


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
    assert _texts(host_menu) == ["Reload Definitions", "Host Details…"]
    # A definition added by hand shows after Reload Definitions.
    later = define("added-by-hand")
    assert "added-by-hand" not in vm_rows(window)
    next(a for a in host_menu.actions() if a.text() == "Reload Definitions").trigger()
    qtbot.waitUntil(lambda: "added-by-hand" in vm_rows(window), timeout=10_000)

    # The broken file's row: Copy Path puts the file's path on the clipboard; Show File is offered (local host).
    error_menu = menu_for(window, _row(window, "Cannot load " + BROKEN))
    assert _texts(error_menu) == ["Copy Path", "Show File", "Delete Definition"]
    assert all(a.isEnabled() for a in error_menu.actions())
    next(a for a in error_menu.actions() if a.text() == "Copy Path").trigger()
    assert QApplication.clipboard().text() == str(ConfigStore().directory / BROKEN)

    # A VM row: it becomes the selection and gets the Virtual Machine menu.
    assert menu_for(window, window.vm_items[later.uuid]) is window.vm_menu
    assert window.selected()[1] == later.uuid


def test_delete_definition_asks_and_removes_only_the_broken_file(qtbot, app_parts) -> None:  # noqa: F811
    host, bridge, window = app_parts
    keep = define("keep")
    broken = ConfigStore().directory / BROKEN
    broken.write_text('{"name": ')
    reload(qtbot, bridge)
    question = f"Delete the definition file {BROKEN}? It cannot be loaded; Vireo never rewrites it."

    # Cancel (the default) keeps the file and its row.
    asked: list[str] = []
    answer_question(qtbot, "Cancel", asked)
    _action(menu_for(window, _row(window, "Cannot load " + BROKEN)), "Delete Definition").trigger()
    assert asked == [question]
    bridge.wait_idle()
    qtbot.wait(200)
    assert broken.exists() and any(r.startswith("Cannot load " + BROKEN) for r in _rows(window))

    # Delete: the file goes, then its row; the VM stays.
    answer_question(qtbot, "Delete", asked)
    _action(menu_for(window, _row(window, "Cannot load " + BROKEN)), "Delete Definition").trigger()
    assert asked == [question, question]
    qtbot.waitUntil(lambda: not any(r.startswith("Cannot load") for r in _rows(window)), timeout=10_000)
    assert not broken.exists() and (ConfigStore().directory / f"{keep.uuid}.json").exists()
    assert "keep" in vm_rows(window)


def test_host_details_shows_the_facts_and_the_service_read_on_a_worker(qtbot, xdg) -> None:  # noqa: F811
    from app.ui.main_window import MainWindow, local_bridge

    host = ThreadRecordingHost(LocalServiceHost("Local", reread=True))
    bridge = local_bridge(host)
    window = MainWindow([bridge], QSettings(str(xdg / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    try:
        window.show()
        ready = []
        bridge.when_ready(lambda: ready.append(True))
        qtbot.waitUntil(lambda: bool(ready), timeout=10_000)
        define("one")
        reload(qtbot, bridge)
        _action(menu_for(window, window.host_items[0]), "Host Details…").trigger()
        (dialog,) = [w for w in QApplication.topLevelWidgets() if isinstance(w, HostDetailsDialog) and w.isVisible()]
        info = bridge.facts.info
        assert dialog.text("cpu_model") == info.cpu_model
        assert f"{info.memory_mib} MiB" in dialog.text("memory")
        assert dialog.text("cpus") == f"{info.cpus} logical CPUs, {info.cores} cores"
        assert dialog.text("vms") == "1 defined, 0 running"
        assert dialog.text("kvm_reason") == info.kvm_reason
        # The service's status arrives from a worker: its version, and whether it can run a software CPU.
        qtbot.waitUntil(lambda: dialog.text("software_cpu") != "asking the service…", timeout=10_000)
        assert dialog.text("service_version") == engine_version()
        assert dialog.text("software_cpu").startswith(("available", "not available"))
        assert "agent_status" in host.methods() and host.on_gui_thread() == []
        assert all(t is not threading.main_thread() for name, t in host.calls if name == "agent_status")
        dialog.close()
    finally:
        bridge.shutdown()
        host.close()
