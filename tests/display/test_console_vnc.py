"""Issue 16 in the GUI, through the real widgets (pytest-qt, offscreen) under the private Vireo service: the VM
window's Console tab has a VNC menu showing where a viewer reaches the running VM's screen, and "Copy VNC address"
puts that address on the clipboard; a VNC client connecting there sees the console."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QSettings  # noqa: E402
from PyQt6.QtGui import QGuiApplication  # noqa: E402

from core.config import BootConfig, ConfigStore, DisplayConfig, VmConfig  # noqa: E402
from core.host import VmInfo, VmState  # noqa: E402
from core.vnc.client import VncClient  # noqa: E402
from tests.helpers.vnc import free_display  # noqa: E402


@pytest.fixture
def xdg(local_service) -> Path:
    return local_service.root


def test_console_menu_shows_and_copies_the_vnc_address(qtbot, xdg, debian_kernel, busybox_initramfs) -> None:
    from app.ui.main_window import MainWindow, local_bridge
    from app.ui.vm.vnc_menu import OFF_TEXT
    from tests.gui.test_gui import reload

    bridge = local_bridge()
    host = bridge.host
    window = MainWindow([bridge], QSettings(str(xdg / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    display = free_display()
    try:
        cfg = VmConfig(name="viewed", memory_mib=128, accel="software",
                       display=DisplayConfig(vnc=f"127.0.0.1:{display}"),
                       boot=BootConfig(kernel=str(debian_kernel), initrd=str(busybox_initramfs),
                                       cmdline="console=tty0 vireo.action=shell"))
        ConfigStore().save(cfg)
        window.show()
        reload(qtbot, bridge)
        vm_window = window.open_vm((bridge, cfg.uuid))
        bridge.lifecycle("start", cfg.uuid)
        qtbot.waitUntil(lambda: vm_window.display is not None, timeout=30_000)
        menu = vm_window.display.vnc_menu
        address = f"vnc://127.0.0.1:{5900 + display}"
        qtbot.waitUntil(lambda: menu.address_action.text() == address, timeout=10_000)
        assert menu.button.menu().actions()[1].text() == "Copy VNC address"
        QGuiApplication.clipboard().setText("")
        menu.copy_action.trigger()
        assert QGuiApplication.clipboard().text() == address
        client = VncClient.connect(("127.0.0.1", 5900 + display))
        assert client.screen().shape == (400, 720)
        client.close()

        bridge.lifecycle("force_off", cfg.uuid)
        qtbot.waitUntil(lambda: host.get(cfg.uuid).state == VmState.SHUTOFF, timeout=15_000)
        qtbot.waitUntil(lambda: menu.address_action.text() == f"{address} (while the VM runs)", timeout=5000)
        # A VM without a VNC console says how to give it one, and there is nothing to copy.
        menu.update(VmInfo(cfg.copy(display=DisplayConfig()), VmState.SHUTOFF))
        assert menu.address_action.text() == OFF_TEXT and not menu.copy_action.isEnabled()
    finally:
        for w in list(window.vm_windows.values()):
            w.close()
        for vm in host.list_vms():
            if vm.state in (VmState.RUNNING, VmState.PAUSED):
                host.force_off(vm.uuid)
        bridge.shutdown()
        host.close()
