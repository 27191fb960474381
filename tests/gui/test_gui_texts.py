"""Issue 17's wizard and dialog texts, driven through the real widgets with pytest-qt (offscreen): the finish page's
summary names the disk format chosen on the storage page, the default kernel command line puts the console on the
screen and on the serial port, the Add Connection dialog's labels show no literal ampersand, and an error dialog's
reason starts with a capital letter."""
from __future__ import annotations

import os
import re

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtWidgets import QAbstractButton, QLabel, QWizard  # noqa: E402

from tests.gui.test_gui import app_parts, define, error_dialogs, kernel, reload, xdg  # noqa: E402,F401
from tests.helpers.wizard import wizard_of


def _to_finish(qtbot, window, kernel_path) -> object:
    window.new_vm()
    wizard = wizard_of(qtbot, window)
    qtbot.waitExposed(wizard)
    wizard.source_page.kernel.setChecked(True)
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


def test_wizard_summary_names_the_format_of_an_imported_disk(qtbot, app_parts, tmp_path) -> None:  # noqa: F811
    host, bridge, window = app_parts
    image = tmp_path / "guest.qcow2"
    image.write_bytes(b"QFI\xfb" + b"\0" * 508)
    window.new_vm()
    wizard = wizard_of(qtbot, window)
    qtbot.waitExposed(wizard)
    wizard.source_page.disk.click()
    wizard.next()
    wizard.boot_page.disk.setText(str(image))
    for _ in range(3):
        wizard.next()
    summary = wizard.finish_page.summary.text()
    assert f"existing qcow2 image {image}" in summary, summary
    # A new disk as well: the summary lists both.
    wizard.back()
    wizard.storage_page.create.click()
    wizard.storage_page.size.setValue(2)
    wizard.next()
    summary = wizard.finish_page.summary.text()
    assert f"existing qcow2 image {image}; new 2 GiB raw disk" in summary, summary
    wizard.button(QWizard.WizardButton.CancelButton).click()


def test_wizard_default_command_line_has_the_screen_and_the_serial_console(qtbot, app_parts, kernel) -> None:  # noqa: F811
    host, bridge, window = app_parts
    window.new_vm()
    wizard = wizard_of(qtbot, window)
    qtbot.waitExposed(wizard)
    wizard.source_page.kernel.setChecked(True)
    wizard.next()
    # ttyS0 last: /dev/console (the initramfs's shell) stays on the serial port; tty0 shows the messages.
    assert wizard.boot_page.cmdline.text() == "console=tty0 console=ttyS0"
    wizard.boot_page.kernel.setText(str(kernel))
    for _ in range(3):
        wizard.next()
    assert "console=tty0 console=ttyS0" in wizard.finish_page.summary.text()
    assert wizard.config().boot.cmdline == "console=tty0 console=ttyS0"
    wizard.button(QWizard.WizardButton.CancelButton).click()


def _visible(text: str) -> str:
    """What a mnemonic-aware widget shows: '&x' is x underlined, '&&' is one ampersand."""
    return re.sub(r"&(.)", r"\1", text)


def test_add_connection_dialog_shows_no_literal_ampersand(qtbot) -> None:
    from app.ui.connection_dialog import AddConnectionDialog

    dialog = AddConnectionDialog()
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitExposed(dialog)
    labels = dialog.findChildren(QLabel)
    assert any(label.text() == "&Key file:" for label in labels)
    for label in labels:
        if "&" not in label.text():
            continue
        # A label draws '&x' as an underlined x only when it has a buddy; without one the '&' is painted. Compare
        # its size with a plain label of the text the user should see.
        probe = QLabel(_visible(label.text()))
        probe.setFont(label.font())
        assert label.sizeHint().width() == probe.sizeHint().width(), f"{label.text()!r} shows its '&'"
        assert label.buddy() is not None
        assert "&" not in _visible(label.text())
    for button in dialog.findChildren(QAbstractButton):
        assert "&" not in _visible(button.text()), button.text()
    # The mnemonic reaches the field: Key file's buddy is the key path edit.
    key_label = next(label for label in labels if label.text() == "&Key file:")
    assert key_label.buddy() is dialog.key_edit


def test_error_dialog_reason_starts_with_a_capital_letter(qtbot, app_parts, xdg) -> None:  # noqa: F811
    host, bridge, window = app_parts
    define("one")
    two = define("two")
    reload(qtbot, bridge)
    vm_window = window.open_vm((bridge, two.uuid))
    qtbot.waitExposed(vm_window)
    vm_window.show_tab("details")
    details = vm_window.details
    details.name.setText("one")          # the host refuses it: "a VM named 'one' already exists on …"
    details.apply_button.click()
    qtbot.waitUntil(lambda: bool(error_dialogs()), timeout=15_000)
    dialog = error_dialogs()[-1]
    reason = dialog.informativeText()
    assert reason.startswith("A VM named 'one' already exists"), reason
    assert "\n" not in reason
    dialog.close()
    # A reason that starts with the VM's name keeps the name as the user spelled it.
    cfg = define("nokernel", kernel=xdg / "gone")
    reload(qtbot, bridge)
    window.select_vm(cfg.uuid)
    window.vm_actions.run.trigger()
    qtbot.waitUntil(lambda: bool(error_dialogs()), timeout=15_000)
    dialog = error_dialogs()[-1]
    assert dialog.informativeText().startswith("nokernel failed to start: kernel "), dialog.informativeText()
    dialog.close()


def test_reasons_become_sentences_but_names_and_keys_keep_their_case() -> None:
    from app.widgets.text import as_sentence

    assert as_sentence("cannot create /x/lab.img: Not a directory", "Creating lab") == \
        "Cannot create /x/lab.img: Not a directory"
    assert as_sentence("the host key of h has changed", "Connecting to h") == "The host key of h has changed"
    assert as_sentence("lab failed to start: kernel /k: no such file", "Starting lab") == \
        "lab failed to start: kernel /k: no such file"
    assert as_sentence("network.mac: expected six hex pairs", "Saving the changes") == \
        "network.mac: expected six hex pairs"
    assert as_sentence("/dev/kvm: permission denied") == "/dev/kvm: permission denied"
    assert as_sentence("") == ""
