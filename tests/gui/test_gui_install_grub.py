"""The wizard's "Install from an ISO image" with the tests' GRUB ISO (issue 12), watched on the VM's graphical
console as a user watches it: pytest-qt, offscreen, against the sandboxed local service, on the software CPU with
Debian's SeaBIOS.

  1. New VM ▸ Install from an ISO image: the GRUB ISO (named bootable, that line with no gap under it), 256 MiB, a
     new 1 GiB disk on IDE; Finish starts the VM.
  2. The VM window's Console tab (the app's ConsoleView, the VM process's shared console) shows GRUB's menu: the CD
     was booted. The host cleared boot-once as it started the VM, so `vireo dumpconfig` reads the order disk then
     CD with no boot-once.
  3. Enter, pressed in the console view, boots the first entry: Linux reaches the test initramfs, which powers the
     guest off.
  4. Details ▸ CD-ROM shows the ISO in drive 1; Remove Drive, Apply: the definition has no CD-ROM drive.
  5. Run again: only the blank disk is left, and SeaBIOS's "No bootable device" is on the console.

The screen is read back from the view's frames (tests/helpers/console_view.py). The same wizard path with an
installer that writes the disk is tests/gui/test_gui_install_journey.py (serial console); a reboot by the guest
during the install boot is tests/host/test_host_boot_once.py."""
from __future__ import annotations

import os

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtWidgets import QWizard  # noqa: E402

from core.host import VmState  # noqa: E402
from tests.gui.test_gui import vm_rows, xdg  # noqa: E402,F401  (xdg: the fixture start_app needs)
from tests.gui.test_gui_install import dumpconfig  # noqa: E402
from tests.gui.test_gui_install_journey import open_wizard_on_an_iso  # noqa: E402
from tests.gui.test_gui_journey import click, start_app, toolbar_button, type_into  # noqa: E402,F401  (start_app: the fixture)
from tests.helpers import boot_media as bm  # noqa: E402
from tests.helpers.console_view import type_keys, view_lines  # noqa: E402

BOOT_TIMEOUT_MS = 120_000     # SeaBIOS to GRUB's menu is about 1 s here, Enter to the guest's power-off about 10 s
STATE_TIMEOUT_MS = 30_000
CD_ROM_PAGE = 5


def _shows(vm_window, text: str) -> bool:
    display = vm_window.display
    return display is not None and any(text in line for line in view_lines(display.view))


def _wait_screen(qtbot, vm_window, text: str) -> None:
    try:
        qtbot.waitUntil(lambda: _shows(vm_window, text), timeout=BOOT_TIMEOUT_MS)
    except qtbot.TimeoutError:
        lines = view_lines(vm_window.display.view) if vm_window.display is not None else []
        pytest.fail(f"{text!r} not on the console:\n" + "\n".join(lines), pytrace=False)


def _no_gap_under(qtbot, page, line, below) -> None:
    """The host's one-line answer under the ISO field is one line tall and the page's note follows it at the form's
    spacing (word-wrapped labels laid out at a guessed width left a blank line's gap: app/widgets/wrap_label.py)."""
    spacing = page.form.verticalSpacing()
    qtbot.waitUntil(lambda: line.height() == line.fontMetrics().lineSpacing(), timeout=2_000)
    assert below.geometry().top() - line.geometry().bottom() - 1 <= spacing, (line.geometry(), below.geometry())


def test_install_from_the_grub_iso_shows_its_menu_then_the_cd_is_removed(qtbot, start_app) -> None:  # noqa: F811
    iso = bm.grub_iso()
    host, bridge, window = start_app()

    # 1. The wizard.
    wizard, next_button = open_wizard_on_an_iso(qtbot, window, iso)
    check = wizard.boot_page.iso_check
    _no_gap_under(qtbot, wizard.boot_page, check.note, wizard.boot_page.iso_note)
    click(qtbot, next_button)
    type_into(qtbot, wizard.resources_page.memory.lineEdit(), "256")
    click(qtbot, next_button)
    storage = wizard.storage_page
    assert storage.create.isChecked()
    type_into(qtbot, storage.size.lineEdit(), "1")
    storage.bus.setCurrentIndex(storage.bus.findData("ide"))
    click(qtbot, next_button)
    finish = wizard.finish_page
    type_into(qtbot, finish.name, "grub")
    finish.accel.setCurrentIndex(finish.accel.findData("software"))
    assert "boots the ISO once, then the disk" in finish.summary.text()
    with qtbot.waitSignal(wizard.created, timeout=10_000) as created:
        click(qtbot, wizard.button(QWizard.WizardButton.FinishButton))
    uuid, start = created.args
    assert start is True

    # 2. GRUB's menu on the graphical console; boot-once cleared by the start.
    qtbot.waitUntil(lambda: uuid in window.vm_windows, timeout=STATE_TIMEOUT_MS)
    vm_window = window.vm_windows[uuid]
    qtbot.waitUntil(lambda: vm_window.display is not None, timeout=STATE_TIMEOUT_MS)
    vm_window.show_tab("console")
    _wait_screen(qtbot, vm_window, "GNU GRUB")
    _wait_screen(qtbot, vm_window, bm.LINUX_TITLES[0])
    saved = dumpconfig("grub")
    assert saved["boot"]["cd_once"] is False and saved["boot"]["order"] == ["disk", "cd"], saved["boot"]
    assert saved["cdroms"] == [{"path": str(iso)}]

    # 3. Enter in the console view: the first entry boots Linux, whose initramfs powers the guest off.
    view = vm_window.display.view
    qtbot.waitUntil(lambda: view.sink is not None, timeout=STATE_TIMEOUT_MS)
    view.setFocus()
    type_keys(view, "\n")
    qtbot.waitUntil(lambda: vm_rows(window).get("grub") == "Shut off", timeout=BOOT_TIMEOUT_MS)
    assert host.get(uuid).reason == "guest powered off", host.get(uuid).reason

    # 4. Details ▸ CD-ROM: the ISO is in drive 1; Remove Drive, Apply.
    vm_window.show_tab("details")
    details = vm_window.details
    details.pages.setCurrentRow(CD_ROM_PAGE)
    [drive] = details.cdrom_page.drives
    assert drive.edit.text() == str(iso) and drive.remove.isVisible() and drive.remove.isEnabled()
    click(qtbot, drive.remove)
    assert details.cdrom_page.drives == []
    click(qtbot, details.apply_button)
    qtbot.waitUntil(lambda: host.get(uuid).config.cdroms == [], timeout=10_000)
    assert dumpconfig("grub")["cdroms"] == []

    # 5. Run: the blank disk alone.
    click(qtbot, toolbar_button(window, window.vm_actions.run))
    vm_window.show_tab("console")
    _wait_screen(qtbot, vm_window, bm.NO_BOOTABLE_DEVICE)
    assert not _shows(vm_window, "GNU GRUB")
    assert host.get(uuid).state == VmState.RUNNING
    host.force_off(uuid)
