"""Issue 17, defect 6, through the real widgets (pytest-qt, offscreen): a paused VM can be forced off and reset
from its own window and from the main window — the "Shut Down ▾" button stays usable while its default action
(the graceful Shut Down) is not — and Force Off asks "Force off <name>? The guest loses unsaved data." first,
where Cancel leaves the VM as it was. The guest is the tests' Debian kernel and busybox initramfs on the software
CPU, in its own process under the private Vireo service."""
from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PyQt6.QtWidgets import QToolBar, QToolButton  # noqa: E402

from core.config import ConfigStore  # noqa: E402
from core.host import VmState  # noqa: E402
from tests.gui.test_gui import app_parts, define, reload, vm_rows, xdg  # noqa: E402,F401  (fixtures, reused)
from tests.gui.test_gui_journey import click, serial_text, wait_serial  # noqa: E402
from tests.helpers.dialogs import answer_question, choose_from_popup  # noqa: E402

BOOT_TIMEOUT_MS = 120_000
STATE_TIMEOUT_MS = 15_000
BOOTED = "VIREO-BOOT-OK"


def _shutdown_button(window, toolbar_name: str) -> QToolButton:
    bar = window.findChild(QToolBar, toolbar_name)
    button = bar.findChild(QToolButton, "shutdownButton")
    assert button is not None, f"no Shut Down button on {toolbar_name}"
    return button


def _menu_choice(qtbot, button: QToolButton, action) -> list[tuple[str, bool]]:
    """Open the Shut Down button's menu with a click, as a user does, and pick `action`; returns what it offered."""
    offered: list[tuple[str, bool]] = []
    choose_from_popup(qtbot, action, offered)
    click(qtbot, button)
    qtbot.waitUntil(lambda: bool(offered), timeout=5000)
    return offered


def test_paused_vm_is_reset_and_forced_off_from_its_own_window(qtbot, app_parts, debian_kernel,  # noqa: F811
                                                               busybox_initramfs) -> None:
    host, bridge, window = app_parts
    cfg = define("sleeper", kernel=debian_kernel, memory_mib=256, accel="software")
    cfg.boot.initrd = str(busybox_initramfs)
    cfg.boot.cmdline = "console=ttyS0 quiet vireo.action=shell"
    ConfigStore().save(cfg)
    reload(qtbot, bridge)
    window.select_vm(cfg.uuid)
    vm_window = window.open_vm((bridge, cfg.uuid), tab="serial")
    actions = vm_window.actions_
    try:
        click(qtbot, vm_window.findChild(QToolBar, "vmToolbar").widgetForAction(actions.run))
        term = vm_window.console.terminal
        wait_serial(qtbot, term, BOOTED, BOOT_TIMEOUT_MS)
        click(qtbot, vm_window.findChild(QToolBar, "vmToolbar").widgetForAction(actions.pause))
        qtbot.waitUntil(lambda: vm_rows(window)["sleeper"] == "Paused", timeout=STATE_TIMEOUT_MS)
        qtbot.waitUntil(lambda: not bridge.busy(cfg.uuid), timeout=STATE_TIMEOUT_MS)

        # Paused, in the VM's window: the Shut Down button opens its menu, where only the forced actions apply.
        vm_button = _shutdown_button(vm_window, "vmToolbar")
        term.clear()
        offered = _menu_choice(qtbot, vm_button, actions.reset)
        assert offered == [("Shut Down", False), ("Reboot", False), ("Save", True), ("Force Reset", True),
                       ("Force Off", True)]
        qtbot.waitUntil(lambda: not bridge.busy(cfg.uuid), timeout=STATE_TIMEOUT_MS)
        assert host.get(cfg.uuid).state == VmState.PAUSED          # a reset does not resume a paused machine
        # Resumed, the guest starts over: the reset took effect while it was paused.
        click(qtbot, vm_window.findChild(QToolBar, "vmToolbar").widgetForAction(actions.run))
        qtbot.waitUntil(lambda: vm_rows(window)["sleeper"] == "Running", timeout=STATE_TIMEOUT_MS)
        wait_serial(qtbot, term, BOOTED, BOOT_TIMEOUT_MS)
        assert host.get(cfg.uuid).state == VmState.RUNNING, serial_text(term)[-2000:]

        click(qtbot, vm_window.findChild(QToolBar, "vmToolbar").widgetForAction(actions.pause))
        qtbot.waitUntil(lambda: vm_rows(window)["sleeper"] == "Paused", timeout=STATE_TIMEOUT_MS)
        qtbot.waitUntil(lambda: not bridge.busy(cfg.uuid), timeout=STATE_TIMEOUT_MS)

        # The main window's Shut Down button, too; Force Off asks, and Cancel leaves the VM paused.
        main_button = _shutdown_button(window, "mainToolbar")
        asked: list[str] = []
        answer_question(qtbot, "Cancel", asked)
        offered = _menu_choice(qtbot, main_button, window.vm_actions.off)
        assert ("Force Off", True) in offered and ("Shut Down", False) in offered
        qtbot.waitUntil(lambda: bool(asked), timeout=5000)
        assert asked == ["Force off sleeper? The guest loses unsaved data."]
        qtbot.wait(300)
        assert not bridge.busy(cfg.uuid) and host.get(cfg.uuid).state == VmState.PAUSED

        # From the VM's window, answered Force Off: the VM is shut off.
        asked.clear()
        answer_question(qtbot, "Force Off", asked)
        _menu_choice(qtbot, vm_button, actions.off)
        assert asked == ["Force off sleeper? The guest loses unsaved data."]
        qtbot.waitUntil(lambda: vm_rows(window)["sleeper"] == "Shut off", timeout=STATE_TIMEOUT_MS)
        info = host.get(cfg.uuid)
        assert info.state == VmState.SHUTOFF and info.reason == "forced off", info.reason
        assert not vm_button.isEnabled() and not main_button.isEnabled()    # nothing to shut down any more
    finally:
        for vm in host.list_vms():
            if vm.state in (VmState.RUNNING, VmState.PAUSED):
                host.force_off(vm.uuid)
