"""The Snapshots tab of the VM window (app/ui/vm/snapshots_tab.py, issue 15) through its real widgets (pytest-qt,
offscreen) against the sandboxed Vireo service, with a real VM: the Debian kernel's busybox shell guest on the
software CPU, its screen showing the kernel's text, a qcow2 disk. Create (the dialog's name and description) while
it runs lists the snapshot with its time, "Running" and a thumbnail of the screen; the guest's shell then changes a
variable; Revert (confirmed) brings the VM back running with the variable as it was at the snapshot; a shut-off
snapshot reverts to a shut-off VM; Delete (confirmed) removes them from the list and from the image
(`qemu-img snapshot -l`, `qemu-img check` clean). VIREO_SCREENSHOTS=DIR saves a picture of the tab."""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QTimer  # noqa: E402
from PyQt6.QtWidgets import QApplication  # noqa: E402

from app.ui.vm.snapshots_tab import CreateSnapshotDialog  # noqa: E402
from core.config import BootConfig, ConfigStore, DiskConfig, SerialConfig, VmConfig  # noqa: E402
from tests.gui.test_gui import app_parts, reload, vm_rows, xdg  # noqa: E402,F401  (fixtures, reused)
from tests.gui.test_gui_journey import click  # noqa: E402
from tests.helpers.dialogs import answer_question  # noqa: E402

STATE_MS = 60_000
SHOTS = os.environ.get("VIREO_SCREENSHOTS", "")


def _fill_create_dialog(name: str, description: str, seen: list[str]) -> None:
    """When the Create Snapshot dialog opens, type the name and description and press Create."""
    def step() -> None:
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, CreateSnapshotDialog):
            QTimer.singleShot(20, step)
            return
        seen.append(dialog.name.text())
        dialog.name.setText(name)
        dialog.description.setPlainText(description)
        dialog.buttons.button(dialog.buttons.StandardButton.Ok).click()

    QTimer.singleShot(0, step)


def _log_has(log: Path, pattern: str, after: int = 0) -> re.Match[bytes] | None:
    data = log.read_bytes() if log.exists() else b""
    return re.search(pattern.encode(), data[after:])


def _wait_log(qtbot, log: Path, pattern: str, after: int = 0, timeout: int = STATE_MS) -> None:
    try:
        qtbot.waitUntil(lambda: _log_has(log, pattern, after) is not None, timeout=timeout)
    except qtbot.TimeoutError:
        text = log.read_text(errors="replace") if log.exists() else ""
        pytest.fail(f"{pattern!r} not in the serial log:\n{text[-2000:]}", pytrace=False)


def _rows(tab) -> list[tuple[str, str, str, bool]]:
    """(name, state, description, whether a thumbnail of the screen is shown) of each row."""
    tree = tab.tree
    return [(tree.topLevelItem(i).text(0), tree.topLevelItem(i).text(2), tree.topLevelItem(i).text(3),
             tree.topLevelItem(i).icon(0).cacheKey() != tab._blank.cacheKey())
            for i in range(tree.topLevelItemCount())]


def _select(qtbot, tab, name: str) -> None:
    """Click the row of snapshot `name` (once the list shows it)."""
    tree = tab.tree
    qtbot.waitUntil(lambda: name in [tree.topLevelItem(i).text(0) for i in range(tree.topLevelItemCount())],
                    timeout=15_000)
    for i in range(tree.topLevelItemCount()):
        if tree.topLevelItem(i).text(0) == name:
            tree.setCurrentItem(tree.topLevelItem(i))
    qtbot.waitUntil(lambda: tab.selected() == name and tab.delete_button.isEnabled(), timeout=15_000)


def _idle(qtbot, tab) -> None:
    qtbot.waitUntil(lambda: not tab.working, timeout=STATE_MS)


def test_snapshots_tab_create_revert_delete(qtbot, app_parts, xdg, debian_kernel, busybox_initramfs) -> None:  # noqa: F811
    host, bridge, window = app_parts
    images = xdg / "data" / "vireo" / "images"
    images.mkdir(parents=True, exist_ok=True)
    disk, log = images / "snapgui.qcow2", xdg / "snapgui-serial.log"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    cfg = VmConfig(name="snapgui", memory_mib=128, accel="software",
                   boot=BootConfig(kernel=str(debian_kernel), initrd=str(busybox_initramfs),
                                   cmdline="console=tty0 console=ttyS0 vireo.action=shell"),
                   disks=[DiskConfig(str(disk), "qcow2")], serial=SerialConfig(log_file=str(log)))
    ConfigStore().save(cfg)
    reload(qtbot, bridge)
    window.open_vm((bridge, cfg.uuid), "details")
    vm_window = window.vm_windows[cfg.uuid]
    vm_window.show_tab("snapshots")
    tab = vm_window.snapshots
    qtbot.waitExposed(tab)
    assert vm_window.tabs.currentWidget() is tab and _rows(tab) == []
    assert not tab.revert_button.isEnabled() and not tab.delete_button.isEnabled()

    # Shut off: a disk-only snapshot.
    seen: list[str] = []
    _fill_create_dialog("cold", "before the first boot", seen)
    click(qtbot, tab.create_button)
    _idle(qtbot, tab)
    qtbot.waitUntil(lambda: [r[:3] for r in _rows(tab)] == [("cold", "Shut off", "before the first boot")],
                    timeout=15_000)
    assert seen == ["snapshot1"]

    bridge.lifecycle("start", cfg.uuid)
    qtbot.waitUntil(lambda: vm_rows(window)["snapgui"] == "Running", timeout=STATE_MS)
    _wait_log(qtbot, log, r"vireo:[^\n#]*# ")
    host.send_serial(cfg.uuid, b"X=before-$((40+2)); echo SET-$X\r")
    _wait_log(qtbot, log, r"SET-before-42")

    _fill_create_dialog("warm", "shell at its prompt", [])
    click(qtbot, tab.create_button)
    _idle(qtbot, tab)
    qtbot.waitUntil(lambda: len(_rows(tab)) == 2, timeout=15_000)
    name, state, description, thumbnail = _rows(tab)[1]
    assert (name, state, description, thumbnail) == ("warm", "Running", "shell at its prompt", True)
    assert "created" in tab.status.text()
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        vm_window.grab().save(os.path.join(SHOTS, "snapshots-tab.png"))

    size = log.stat().st_size
    host.send_serial(cfg.uuid, b"X=after-$((40+3)); echo SET-$X\r")
    _wait_log(qtbot, log, r"SET-after-43", size)

    # Revert, confirmed: running again from the snapshot, the shell's variable as it was.
    _select(qtbot, tab, "warm")
    asked: list[str] = []
    answer_question(qtbot, "Revert", asked)
    click(qtbot, tab.revert_button)
    _idle(qtbot, tab)
    assert asked == ["Revert snapgui to snapshot “warm”?"], asked
    assert tab.status.text() == "Reverted to snapshot warm.", tab.status.text()
    qtbot.waitUntil(lambda: vm_rows(window)["snapgui"] == "Running", timeout=STATE_MS)
    size = log.stat().st_size
    time.sleep(0.2)
    host.send_serial(cfg.uuid, b"echo NOW-$X\r")
    _wait_log(qtbot, log, r"NOW-before-42", size)

    # Revert to the shut-off snapshot: the VM is off.
    _select(qtbot, tab, "cold")
    answer_question(qtbot, "Revert", asked)
    click(qtbot, tab.revert_button)
    _idle(qtbot, tab)
    qtbot.waitUntil(lambda: vm_rows(window)["snapgui"] == "Shut off", timeout=STATE_MS)

    # Delete both, confirmed; the image has none left and is clean.
    for name in ("cold", "warm"):
        _select(qtbot, tab, name)
        answer_question(qtbot, "Delete", asked)
        click(qtbot, tab.delete_button)
        _idle(qtbot, tab)
        qtbot.waitUntil(lambda n=name: n not in [r[0] for r in _rows(tab)], timeout=STATE_MS)
    assert asked[-1] == "Delete snapshot “warm” of snapgui?"
    assert _rows(tab) == []
    listing = subprocess.run(["qemu-img", "snapshot", "-l", str(disk)], capture_output=True, text=True, check=True)
    assert listing.stdout.strip() == ""
    subprocess.run(["qemu-img", "check", "-q", str(disk)], check=True)
