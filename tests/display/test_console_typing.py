"""Issue 17, defect 8, through the real widgets (pytest-qt, offscreen): the VM window's Console tab types the host
clipboard into a running guest ("Type clipboard text") and its status line says "Typing N characters" only while
it types — then "Typed N characters" for a few seconds, then its usual hint. The guest is the tests' Debian kernel
with a busybox shell on tty1, on the software CPU, under the private Vireo service (as in test_console_manager)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QSettings  # noqa: E402
from PyQt6.QtGui import QGuiApplication  # noqa: E402

from core.config import BootConfig, ConfigStore, VmConfig  # noqa: E402
from core.host import VmState  # noqa: E402
from tests.display.test_console_manager import CMDLINE, _prompt_shown, _screen  # noqa: E402
from tests.gui.test_gui import reload  # noqa: E402
from tests.gui.test_gui_journey import click  # noqa: E402

TEXT = "echo clip-$((6*7))-ok\n"          # the shell's answer, clip-42-ok, is on a line of its own


@pytest.fixture
def xdg(local_service) -> Path:
    return local_service.root


def test_typing_status_ends_when_the_clipboard_is_typed(qtbot, xdg, debian_kernel, busybox_initramfs) -> None:
    from app.ui.main_window import MainWindow, local_bridge

    bridge = local_bridge()
    host = bridge.host
    window = MainWindow([bridge], QSettings(str(xdg / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    try:
        cfg = VmConfig(name="typist", memory_mib=256, accel="software",
                       boot=BootConfig(kernel=str(debian_kernel), initrd=str(busybox_initramfs), cmdline=CMDLINE))
        ConfigStore().save(cfg)
        window.show()
        reload(qtbot, bridge)
        vm_window = window.open_vm((bridge, cfg.uuid))
        qtbot.waitExposed(vm_window)
        bridge.lifecycle("start", cfg.uuid)
        qtbot.waitUntil(lambda: vm_window.display is not None, timeout=30_000)
        tab = vm_window.display
        qtbot.waitUntil(lambda: tab.view.sink is not None, timeout=10_000)
        qtbot.waitUntil(lambda: _prompt_shown(tab), timeout=120_000)
        hint = tab.status.text()

        QGuiApplication.clipboard().setText(TEXT)
        click(qtbot, tab.toolbar.widgetForAction(tab.type_clipboard_action))
        assert tab.status.text() == f"Typing {len(TEXT)} characters"
        # The note is shown when the last key is sent and passes after NOTE_MS, so it is awaited before the echo:
        # a loaded host's guest can take longer than the note lasts to draw it.
        qtbot.waitUntil(lambda: tab.status.text() == f"Typed {len(TEXT)} characters", timeout=30_000)
        qtbot.waitUntil(lambda: "clip-42-ok" in _screen(tab), timeout=30_000)      # the guest got every key
        qtbot.waitUntil(lambda: tab.status.text() == hint, timeout=15_000)   # a passing note

        bridge.lifecycle("force_off", cfg.uuid)
        qtbot.waitUntil(lambda: host.get(cfg.uuid).state == VmState.SHUTOFF, timeout=15_000)
    finally:
        for w in list(window.vm_windows.values()):
            w.close()
        for vm in host.list_vms():
            if vm.state in (VmState.RUNNING, VmState.PAUSED):
                host.force_off(vm.uuid)
        bridge.shutdown()
        host.close()
