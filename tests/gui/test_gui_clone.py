"""Clone… in the main window (app/ui/clone_dialog.py, issue 15): the Virtual Machine menu (a VM row's right-click
menu) opens a dialog asking the name and full or linked; Clone runs on a bridge worker while the event loop keeps
turning, the progress bar reaches the end, the clone appears in the list with its own disk file, and a linked
clone's image names its backing file (`qemu-img info`). A taken name is refused in the dialog with the host's
line, and a running VM cannot be cloned (the action is off)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtWidgets import QDialogButtonBox  # noqa: E402

from app.ui.clone_dialog import CloneDialog  # noqa: E402
from core.config import DiskConfig  # noqa: E402
from core.storage import create_image, open_image  # noqa: E402
from tests.guests.build import guest_path  # noqa: E402
from tests.gui.test_gui import app_parts, define, reload, vm_rows, xdg  # noqa: E402,F401  (fixtures, reused)


def _vm_with_disk(root: Path, name: str, fmt: str = "qcow2", **kw):
    folder = root / "data" / "vireo" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / f"{name}.{fmt}"
    create_image(str(image), fmt, 8 << 20)
    with open_image(str(image)) as dev:
        dev.write(0, b"GUI-ORIGINAL".ljust(512, b"\0"))
        dev.flush()
    return define(name, disks=[DiskConfig(str(image), fmt)], **kw), image


def _open(qtbot, window, uuid: str) -> CloneDialog:
    window.select_vm(uuid)
    assert "Clo&ne…" in [a.text() for a in window.vm_menu.actions()]      # in the menu a VM row right-click shows
    assert window.clone_move.clone.isEnabled()
    window.clone_move.clone.trigger()
    qtbot.waitUntil(lambda: window.clone_move.dialog is not None and window.clone_move.dialog.isVisible(),
                    timeout=15_000)
    return window.clone_move.dialog


def _click_clone(dialog: CloneDialog) -> None:
    dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).click()


def test_the_clone_dialog_makes_a_linked_clone(qtbot, app_parts, xdg) -> None:  # noqa: F811
    host, bridge, window = app_parts
    orig, image = _vm_with_disk(xdg, "gui-orig", fmt="raw")
    reload(qtbot, bridge)
    dialog = _open(qtbot, window, orig.uuid)
    assert dialog.name.text() == "gui-orig-clone" and dialog.full.isChecked()
    dialog.name.setText("gui-linked")
    dialog.linked.setChecked(True)
    closed: list[int] = []
    dialog.finished.connect(closed.append)
    _click_clone(dialog)
    qtbot.waitUntil(lambda: "gui-linked" in vm_rows(window), timeout=30_000)
    qtbot.waitUntil(lambda: bool(closed), timeout=10_000)     # closed (accepted) once the clone is listed
    assert closed == [1]
    clone = next(i for i in bridge.vms() if i.name == "gui-linked")
    disk = clone.config.disks[0].path
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", disk], check=True, capture_output=True,
                                     text=True).stdout)
    assert info["format"] == "qcow2" and Path(info["full-backing-filename"]).parent == image.parent
    with open_image(disk, read_only=True) as dev:
        assert dev.read(0, 12) == b"GUI-ORIGINAL"
    assert window.selected() is not None and window.selected()[1] == clone.uuid


def test_a_full_clone_shows_progress_and_a_taken_name_is_refused(qtbot, app_parts, xdg) -> None:  # noqa: F811
    host, bridge, window = app_parts
    orig, image = _vm_with_disk(xdg, "gui-full")
    define("taken")
    reload(qtbot, bridge)
    dialog = _open(qtbot, window, orig.uuid)
    dialog.name.setText("taken")
    _click_clone(dialog)
    qtbot.waitUntil(lambda: "already exists" in dialog.message.text(), timeout=30_000)
    assert dialog.isVisible() and dialog.name.isEnabled() and "\n" not in dialog.message.text()
    values: list[int] = []
    dialog.progress.valueChanged.connect(values.append)
    dialog.name.setText("gui-copy")
    _click_clone(dialog)
    qtbot.waitUntil(lambda: "gui-copy" in vm_rows(window), timeout=30_000)
    assert values and values[-1] == 100
    clone = next(i for i in bridge.vms() if i.name == "gui-copy")
    assert clone.config.disks[0].path != str(image) and os.path.isfile(clone.config.disks[0].path)


def test_a_running_vm_cannot_be_cloned(qtbot, app_parts, xdg) -> None:  # noqa: F811
    host, bridge, window = app_parts
    orig, _ = _vm_with_disk(xdg, "gui-busy", memory_mib=32, accel="software")
    cfg = orig.copy()
    cfg.boot.kernel, cfg.boot.cmdline = str(guest_path("counter")), ""
    cfg.display.type = "none"
    reload(qtbot, bridge)
    host.define(cfg)
    host.start(orig.uuid)
    try:
        qtbot.waitUntil(lambda: vm_rows(window).get("gui-busy") == "Running", timeout=30_000)
        window.select_vm(orig.uuid)
        qtbot.waitUntil(lambda: not window.clone_move.clone.isEnabled(), timeout=5_000)
        dialog = CloneDialog(bridge, bridge.info(orig.uuid), window)
        qtbot.addWidget(dialog)
        assert "running" in dialog.message.text()
        assert not dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).isEnabled()
    finally:
        host.force_off(orig.uuid)
