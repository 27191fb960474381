"""The graphical console in the manager: Host.console() (Qt-free: a frame source on the VM's VGA — the VM
process's shared console, mapped — and an input sink into its i8042) and the VM window's Console tab, which appears
when the VM runs, takes keys while it runs, keeps the last picture when it stops, and follows a new start to the new
machine — with Debian's kernel on the software CPU and a busybox shell on tty1, driven through the real widgets
(pytest-qt)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QSettings  # noqa: E402

from core.config import BootConfig, ConfigStore, DisplayConfig, VmConfig  # noqa: E402
from core.host import HostError, LocalHost, VmState  # noqa: E402
from tests.gui.test_gui import reload  # noqa: E402
from tests.helpers.console_view import event_loop_stall, type_keys, view_lines  # noqa: E402

CMDLINE = "console=ttyS0 console=tty0 vireo.action=shell vireo.console=tty1"


@pytest.fixture
def xdg(local_service) -> Path:
    return local_service.root


def test_console_of_a_vm_that_is_not_running_is_a_one_line_error(tmp_path: Path) -> None:
    host = LocalHost(ConfigStore(tmp_path / "vms"), runtime_dir=str(tmp_path / "runtime"))
    try:
        off = host.define(VmConfig(name="off", boot=BootConfig(kernel="/boot/vmlinuz")))
        with pytest.raises(HostError, match=r"^off is shut off: it shows no screen$"):
            host.console(off.uuid)
        blind = host.define(VmConfig(name="blind", boot=BootConfig(kernel="/boot/vmlinuz"),
                                     display=DisplayConfig(type="none")))
        with pytest.raises(HostError, match="has no display"):
            host.console(blind.uuid)
        with pytest.raises(HostError, match="no VM with uuid"):
            host.console("0000")
    finally:
        host.close()


def _screen(tab) -> list[str]:
    return view_lines(tab.view)


def _prompt_shown(tab) -> bool:
    return any(line.endswith("vireo:~#") for line in _screen(tab))


def test_vm_window_console_tab_follows_the_vm(qtbot, xdg, debian_kernel, busybox_initramfs) -> None:
    from app.ui.main_window import MainWindow, local_bridge

    bridge = local_bridge()
    host = bridge.host
    window = MainWindow([bridge], QSettings(str(xdg / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    try:
        cfg = VmConfig(name="debian", memory_mib=256, accel="software",
                       boot=BootConfig(kernel=str(debian_kernel), initrd=str(busybox_initramfs), cmdline=CMDLINE))
        ConfigStore().save(cfg)
        window.show()
        reload(qtbot, bridge)
        vm_window = window.open_vm((bridge, cfg.uuid))
        qtbot.waitExposed(vm_window)
        tabs = lambda: [vm_window.tabs.tabText(i) for i in range(vm_window.tabs.count())]  # noqa: E731
        assert tabs() == ["Serial Console", "Details", "Snapshots", "Performance"]     # never ran: no screen to show

        bridge.lifecycle("start", cfg.uuid)
        qtbot.waitUntil(lambda: vm_window.display is not None, timeout=30_000)
        tab = vm_window.display
        assert tabs() == ["Console", "Serial Console", "Details", "Snapshots", "Performance"]
        assert vm_window.tabs.currentWidget() is tab          # it replaced the serial console in front
        qtbot.waitUntil(lambda: tab.view.sink is not None, timeout=10_000)
        first_session = tab.vm_console.session
        qtbot.waitUntil(lambda: _prompt_shown(tab), timeout=120_000)
        assert tab.view.frame is not None and tab.view.frame.mode == "text 80x25"
        assert not tab.banner.isVisible()

        # The event loop keeps answering while the view polls frames and the vCPU runs.
        stall = event_loop_stall(qtbot)
        assert stall < 0.1, f"event loop stalled {stall * 1000:.0f} ms"

        type_keys(tab.view, "uname -s\n")
        qtbot.waitUntil(lambda: "Linux" in _screen(tab), timeout=30_000)

        bridge.lifecycle("pause", cfg.uuid)
        qtbot.waitUntil(lambda: host.get(cfg.uuid).state == VmState.PAUSED and tab.view.sink is None,
                        timeout=15_000)
        assert "paused" in tab.banner_text.text() and tab.banner.isVisible()
        assert tab.run_button.text() == "Resume"
        bridge.lifecycle("resume", cfg.uuid)
        qtbot.waitUntil(lambda: tab.view.sink is not None, timeout=15_000)

        bridge.lifecycle("force_off", cfg.uuid)
        qtbot.waitUntil(lambda: host.get(cfg.uuid).state == VmState.SHUTOFF and tab.view.sink is None,
                        timeout=15_000)
        assert "last picture" in tab.banner_text.text()
        assert not tab.view.polling and tab.view.frame is not None
        assert "Linux" in _screen(tab)   # the stopped machine's screen is still readable

        # A new start is a new machine: the tab switches to its console. The banner's Run button is greyed out
        # until the force-off call has finished, as the toolbar's Run is.
        qtbot.waitUntil(tab.run_button.isEnabled, timeout=15_000)
        tab.run_button.click()
        try:
            qtbot.waitUntil(lambda: tab.vm_console.session != first_session and tab.view.sink is not None,
                            timeout=30_000)
        except qtbot.TimeoutError:
            raise AssertionError(f"no new console: VM {host.get(cfg.uuid).state}, tab status "
                                 f"{tab.status.text()!r}, banner {tab.banner_text.text()!r}, "
                                 f"session {tab.vm_console.session} (first {first_session})") from None
        # Until the new machine's first frame arrives the view keeps the old picture; then the new screen
        # (a fresh boot's prompt, no `uname` answer) replaces it.
        qtbot.waitUntil(lambda: _prompt_shown(tab) and "Linux" not in _screen(tab), timeout=120_000)
        vm_window.show_tab("details")
        vm_window.show_tab("console")
        assert vm_window.tabs.currentWidget() is tab
        bridge.lifecycle("force_off", cfg.uuid)
        qtbot.waitUntil(lambda: host.get(cfg.uuid).state == VmState.SHUTOFF, timeout=15_000)
    finally:
        for w in list(window.vm_windows.values()):
            w.close()
        bridge.shutdown()
        host.close()
