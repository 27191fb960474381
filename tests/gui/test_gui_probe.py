"""The wizard asks the host what each chosen boot file is (app/ui/file_check.py over the Host API's probe_file,
issue 17): a README chosen as the kernel (or imported as the disk) is named in red under its field and Next stays
disabled; Debian's kernel, the busybox initramfs and a qcow2 image are named in grey and Next is enabled. Next
clicked before the debounced answer does not carry the README through: Finish asks the host again and refuses
with its line. Driven through the real widgets (pytest-qt, offscreen) against the sandboxed local service."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtWidgets import QWizard  # noqa: E402

from app.ui.file_check import GREY, RED  # noqa: E402
from tests.gui.test_gui import app_parts, xdg  # noqa: E402,F401
from tests.gui.test_gui_journey import click, type_into  # noqa: E402
from tests.helpers.wizard import wizard_of

TIMEOUT_MS = 10_000


@pytest.fixture
def readme(tmp_path: Path) -> Path:
    path = tmp_path / "README.md"
    path.write_text("# Vireo\n\nA virtual machine manager for Linux.\n")
    return path


def _settled(check, text: str) -> bool:
    return not check.pending and text in check.note.text()


def test_kernel_field_names_the_file_and_blocks_next_on_a_readme(qtbot, app_parts, readme, debian_kernel,  # noqa: F811
                                                                 busybox_initramfs) -> None:
    host, bridge, window = app_parts
    window.new_vm()
    wizard = wizard_of(qtbot, window)
    qtbot.waitExposed(wizard)
    wizard.source_page.kernel.setChecked(True)
    wizard.next()
    page = wizard.boot_page
    next_button = wizard.button(QWizard.WizardButton.NextButton)
    check = page.kernel_check

    page.kernel.setText(str(readme))
    assert check.pending and check.note.text() == ""        # debounced: the host is asked once typing pauses
    qtbot.waitUntil(lambda: _settled(check, "text file"), timeout=TIMEOUT_MS)
    assert check.note.text() == (f"{readme} is a text file, not a Linux bzImage or Multiboot kernel: choose "
                                 "another file")
    assert check.note.styleSheet() == RED and check.note.isVisible()
    assert not next_button.isEnabled()

    page.kernel.setText(str(debian_kernel))
    qtbot.waitUntil(lambda: _settled(check, "Linux kernel"), timeout=TIMEOUT_MS)
    assert check.note.text().startswith("Linux kernel bzImage 6.1.")
    assert check.note.text().endswith("(boot protocol 2.15)") and check.note.styleSheet() == GREY
    assert next_button.isEnabled()

    # The initrd slot: the kernel is refused there, the initramfs named.
    page.initrd.setText(str(debian_kernel))
    qtbot.waitUntil(lambda: _settled(page.initrd_check, "not an initramfs"), timeout=TIMEOUT_MS)
    assert not next_button.isEnabled()
    page.initrd.setText(str(busybox_initramfs))
    qtbot.waitUntil(lambda: _settled(page.initrd_check, "gzip-compressed cpio initramfs"), timeout=TIMEOUT_MS)
    assert next_button.isEnabled()
    # Emptying the optional initrd clears its line; a file that has gone is named in red.
    page.initrd.setText("")
    assert page.initrd_check.note.text() == "" and not page.initrd_check.pending and next_button.isEnabled()
    gone = readme.parent / "vmlinuz-gone"
    page.kernel.setText(str(gone))
    qtbot.waitUntil(lambda: _settled(check, "no such file"), timeout=TIMEOUT_MS)
    assert check.note.text() == f"{gone}: no such file; check the path" and not next_button.isEnabled()


def test_imported_disk_field_is_checked_too(qtbot, app_parts, readme, debian_kernel, tmp_path) -> None:  # noqa: F811
    host, bridge, window = app_parts
    image = tmp_path / "imported.qcow2"
    host.create_disk(str(image), 2 << 30, fmt="qcow2")
    window.new_vm()
    wizard = wizard_of(qtbot, window)
    qtbot.waitExposed(wizard)
    wizard.source_page.disk.setChecked(True)
    wizard.next()
    page = wizard.boot_page
    next_button = wizard.button(QWizard.WizardButton.NextButton)
    page.kernel.setText(str(debian_kernel))
    page.disk.setText(str(readme))
    qtbot.waitUntil(lambda: _settled(page.disk_check, "text file") and not page.kernel_check.pending,
                    timeout=TIMEOUT_MS)
    assert page.disk_check.note.styleSheet() == RED and not next_button.isEnabled()
    page.disk.setText(str(image))
    qtbot.waitUntil(lambda: _settled(page.disk_check, "qcow2 disk image, 2 GiB virtual"), timeout=TIMEOUT_MS)
    assert next_button.isEnabled()


def test_finish_checks_again_when_next_outran_the_probe(qtbot, app_parts, readme, debian_kernel,  # noqa: F811
                                                        monkeypatch) -> None:
    """Next clicked before the debounced answer used to carry a README through to the definition. The debounce is
    lengthened so the clicks certainly land before it, however loaded the machine: Finish must ask the host itself."""
    import app.ui.file_check as file_check

    monkeypatch.setattr(file_check, "PROBE_DEBOUNCE_MS", 60_000)
    host, bridge, window = app_parts
    window.new_vm()
    wizard = wizard_of(qtbot, window)
    qtbot.waitExposed(wizard)
    next_button = wizard.button(QWizard.WizardButton.NextButton)
    finish_button = wizard.button(QWizard.WizardButton.FinishButton)
    click(qtbot, wizard.source_page.kernel)
    click(qtbot, next_button)
    page = wizard.boot_page
    type_into(qtbot, page.kernel, str(readme))
    for _ in range(3):
        click(qtbot, next_button)
    assert wizard.currentPage() is wizard.finish_page and page.kernel_check.pending
    click(qtbot, finish_button)
    message = f"{readme} is a text file, not a Linux bzImage or Multiboot kernel: choose another file"
    qtbot.waitUntil(lambda: wizard.finish_page.error.text() == message, timeout=TIMEOUT_MS)
    assert not finish_button.isEnabled() and wizard.isVisible()
    assert page.kernel_check.note.text() == message
    bridge.wait_idle()
    assert host.list_vms() == []

    # Back to the kernel, a real one this time, and straight on again: the check at Finish lets it through.
    for _ in range(3):
        wizard.back()
    assert wizard.currentPage() is page
    type_into(qtbot, page.kernel, str(debian_kernel))
    for _ in range(3):
        click(qtbot, next_button)
    assert page.kernel_check.pending and finish_button.isEnabled()
    wizard.finish_page.customize.setChecked(True)        # define it, do not start it
    with qtbot.waitSignal(wizard.created, timeout=TIMEOUT_MS) as created:
        click(qtbot, finish_button)
    uuid, _ = created.args
    assert host.get(uuid).config.boot.kernel == str(debian_kernel)
