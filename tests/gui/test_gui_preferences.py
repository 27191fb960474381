"""Preferences (issue 17, "What to add"), through the real widgets (pytest-qt, offscreen) against the sandboxed
local service: Edit ▸ Preferences… sets where new disk images go, the accelerator a new VM asks for, the console's
scaling and grab keys, whether Force Off asks, and the graphs' interval; each is seen where it acts — the hosts'
sampling timers, the wizard's storage page, accelerator and the disk file it creates, a running VM's Console tab
(its scale mode, the key combination that grabs, the status line) and a Force Off that no longer asks."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QSettings, Qt  # noqa: E402
from PyQt6.QtWidgets import QDialogButtonBox, QStyle, QStyleOptionToolButton, QToolBar, QWizard  # noqa: E402

from app.widgets.console_scale import STRETCH  # noqa: E402
from core.config import ConfigStore  # noqa: E402
from core.host import VmState  # noqa: E402
from tests.gui.test_gui import app_parts, define, reload, vm_rows, xdg  # noqa: E402,F401
from tests.gui.test_gui_journey import click  # noqa: E402
from tests.gui.test_gui_paused import _shutdown_button  # noqa: E402
from tests.helpers.dialogs import answer_question, choose_from_popup  # noqa: E402
from tests.helpers.wizard import wizard_of

TIMEOUT_MS = 15_000


def _click_menu_arrow(qtbot, button) -> None:
    """Click the ▾ part of a running VM's Shut Down button (its face does the graceful Shut Down)."""
    opt = QStyleOptionToolButton()
    button.initStyleOption(opt)
    arrow = button.style().subControlRect(QStyle.ComplexControl.CC_ToolButton, opt,
                                          QStyle.SubControl.SC_ToolButtonMenu, button)
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton, pos=arrow.center())


def _set_preferences(qtbot, window, folder: str = "", accel: str = "", scale: str = "", grab: str = "",
                     confirm_force_off: bool | None = None, poll: str = "") -> None:
    """Open Edit ▸ Preferences…, change the fields named (typing into each, as a user does) and click OK."""
    assert window.preferences_action in window.edit_menu.actions()
    window.preferences_action.trigger()
    dialog = window.preferences_dialog
    qtbot.waitExposed(dialog)
    if folder:
        dialog.storage.selectAll()
        qtbot.keyClicks(dialog.storage, folder)
    # A combo box takes the first letters of an entry and selects it, as keyboard users choose.
    for combo, text in ((dialog.accel, accel), (dialog.scale, scale), (dialog.grab_keys, grab)):
        if text:
            qtbot.keyClicks(combo, text)
            assert combo.currentText() == text
    if confirm_force_off is not None and dialog.confirm_force_off.isChecked() != confirm_force_off:
        click(qtbot, dialog.confirm_force_off)
    if poll:
        dialog.poll.lineEdit().selectAll()
        qtbot.keyClicks(dialog.poll.lineEdit(), poll)
    click(qtbot, dialog.buttons.button(QDialogButtonBox.StandardButton.Ok))
    assert not dialog.isVisible()


def test_preferences_set_the_graphs_interval_and_the_wizards_folder_and_accelerator(qtbot, app_parts, tmp_path,  # noqa: F811
                                                                                   debian_kernel) -> None:
    host, bridge, window = app_parts
    assert bridge.stats_timer.interval() == 1000
    folder = tmp_path / "my images"
    _set_preferences(qtbot, window, folder=str(folder), accel="Software CPU", poll="2.5")
    assert bridge.stats_timer.interval() == 2500
    # Kept in the manager's settings file: a new window starts with them.
    saved = QSettings(window.settings.fileName(), QSettings.Format.IniFormat)
    assert saved.value("preferences/poll_interval_ms") == "2500"
    assert saved.value("preferences/storage_folder") == str(folder)

    # An out-of-range interval is shown with its range and OK stays disabled.
    window.preferences_action.trigger()
    dialog = window.preferences_dialog
    qtbot.waitExposed(dialog)
    dialog.poll.lineEdit().selectAll()
    qtbot.keyClicks(dialog.poll.lineEdit(), "0.1")
    assert dialog.poll.error.text() == "Graph interval: 0.1 s is less than 0.25 s."
    assert not dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).isEnabled()
    dialog.poll.lineEdit().selectAll()
    qtbot.keyClicks(dialog.poll.lineEdit(), "3")
    assert dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).isEnabled()
    # So is a relative storage folder (the service would make the image in its own working folder).
    dialog.storage.selectAll()
    qtbot.keyClicks(dialog.storage, "images")
    assert dialog.storage_error.text() == "images: give an absolute path (or leave it empty)."
    assert not dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).isEnabled()
    click(qtbot, dialog.buttons.button(QDialogButtonBox.StandardButton.Cancel))
    assert bridge.stats_timer.interval() == 2500

    window.new_vm()
    wizard = wizard_of(qtbot, window)
    qtbot.waitExposed(wizard)
    click(qtbot, wizard.source_page.kernel)
    wizard.button(QWizard.WizardButton.NextButton).click()
    wizard.boot_page.kernel.setText(str(debian_kernel))
    qtbot.waitUntil(lambda: "Linux kernel" in wizard.boot_page.kernel_check.note.text(), timeout=TIMEOUT_MS)
    wizard.button(QWizard.WizardButton.NextButton).click()
    wizard.button(QWizard.WizardButton.NextButton).click()
    storage = wizard.storage_page
    click(qtbot, storage.create)
    assert storage.where.text() == f"Created in {folder}"
    storage.size.lineEdit().selectAll()
    qtbot.keyClicks(storage.size.lineEdit(), "0.1")
    wizard.button(QWizard.WizardButton.NextButton).click()
    finish = wizard.finish_page
    assert finish.accel.currentData() == "software"
    finish.name.selectAll()
    qtbot.keyClicks(finish.name, "prefs-vm")
    click(qtbot, finish.customize)              # open Details, start nothing
    finish_button = wizard.button(QWizard.WizardButton.FinishButton)
    qtbot.waitUntil(finish_button.isEnabled, timeout=TIMEOUT_MS)
    finish_button.click()
    qtbot.waitUntil(lambda: bridge.find("prefs-vm") is not None, timeout=TIMEOUT_MS)
    info = bridge.find("prefs-vm")
    assert info.config.accel == "software"
    assert [d.path for d in info.config.disks] == [str(folder / "prefs-vm.img")]
    assert (folder / "prefs-vm.img").stat().st_size == int(0.1 * 1024 ** 3) // 512 * 512


def test_preferences_set_the_console_scaling_grab_keys_and_force_off_question(qtbot, app_parts,  # noqa: F811
                                                                             debian_kernel,
                                                                             busybox_initramfs) -> None:
    host, bridge, window = app_parts
    _set_preferences(qtbot, window, scale="Stretch to fill", grab="Ctrl+Alt+Shift", confirm_force_off=False)
    cfg = define("prefs-console", kernel=debian_kernel, memory_mib=256, accel="software")
    cfg.boot.initrd = str(busybox_initramfs)
    cfg.boot.cmdline = "console=tty0 console=ttyS0 quiet vireo.action=shell"
    ConfigStore().save(cfg)
    reload(qtbot, bridge)
    window.select_vm(cfg.uuid)
    vm_window = window.open_vm((bridge, cfg.uuid), tab="serial")
    actions = vm_window.actions_
    try:
        click(qtbot, vm_window.findChild(QToolBar, "vmToolbar").widgetForAction(actions.run))
        qtbot.waitUntil(lambda: vm_window.display is not None, timeout=TIMEOUT_MS)
        tab = vm_window.display
        view = tab.view
        assert view.scale_mode == STRETCH
        assert "Ctrl+Alt+Shift grabs the pointer" in tab.status.text()
        view.setFocus()
        # Ctrl+Alt alone no longer grabs (the guest gets it); Ctrl+Alt+Shift does, and again releases.
        for keys, grabbed in (((Qt.Key.Key_Control, Qt.Key.Key_Alt), False),
                              ((Qt.Key.Key_Control, Qt.Key.Key_Alt, Qt.Key.Key_Shift), True),
                              ((Qt.Key.Key_Control, Qt.Key.Key_Alt, Qt.Key.Key_Shift), False)):
            for key in keys:
                qtbot.keyPress(view, key)
            for key in reversed(keys):
                qtbot.keyRelease(view, key)
            assert view.grabbed == grabbed, keys
            if grabbed:
                assert "press Ctrl+Alt+Shift to release" in tab.status.text()

        # Force Off without the question.
        qtbot.waitUntil(lambda: vm_rows(window)["prefs-console"] == "Running", timeout=TIMEOUT_MS)
        qtbot.waitUntil(lambda: not bridge.busy(cfg.uuid), timeout=TIMEOUT_MS)
        asked: list[str] = []
        answer_question(qtbot, "Force Off", asked)       # would answer (and record) a question if one came
        offered: list[tuple[str, bool]] = []
        choose_from_popup(qtbot, actions.off, offered)
        _click_menu_arrow(qtbot, _shutdown_button(vm_window, "vmToolbar"))
        qtbot.waitUntil(lambda: bool(offered), timeout=5000)
        qtbot.waitUntil(lambda: vm_rows(window)["prefs-console"] == "Shut off", timeout=TIMEOUT_MS)
        assert asked == []
        assert host.get(cfg.uuid).reason == "forced off"
    finally:
        for vm in host.list_vms():
            if vm.state in (VmState.RUNNING, VmState.PAUSED):
                host.force_off(vm.uuid)


def test_preferences_read_back_as_defaults_when_missing_or_malformed(tmp_path: Path) -> None:
    from app.ui.preferences import Preferences

    settings = QSettings(str(tmp_path / "p.ini"), QSettings.Format.IniFormat)
    prefs = Preferences(settings)
    assert (prefs.storage_folder, prefs.accelerator, prefs.console_scale, prefs.grab_keys, prefs.confirm_force_off,
            prefs.poll_interval_ms) == ("", "auto", "keep", "ctrl+alt", True, 1000)
    for key, value in (("accelerator", "warp"), ("console_scale", "huge"), ("grab_keys", "f13"),
                       ("poll_interval_ms", "soon")):
        settings.setValue(f"preferences/{key}", value)
    assert (prefs.accelerator, prefs.console_scale, prefs.grab_keys, prefs.poll_interval_ms) == \
        ("auto", "keep", "ctrl+alt", 1000)
