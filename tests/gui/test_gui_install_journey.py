"""Issue 12's GUI path end to end, as one user journey through the real widgets (pytest-qt, offscreen) against the
sandboxed local service, on the software CPU with Debian's SeaBIOS:

  1. The New VM wizard's default way, "Install from an ISO image": the tests' installer ISO, 512 MiB, a new 1 GiB
     disk on virtio; Finish starts it at once.
  2. The VM boots the ISO (boot-once CD): the serial tab shows the installer partitioning /dev/vda and finishing,
     and the guest powers off by itself. The host cleared boot-once when it started the VM, so the definition now
     boots the disk first.
  3. Details ▸ CD-ROM: Eject the installer, Apply.
  4. Run again: with no disc, SeaBIOS boots the disk the installer wrote; GRUB on it prints its marker and boots
     Linux, which reaches the test initramfs and powers off. qemu-img reads the disk as a partitioned raw image.

The same install on the engine alone is tests/firmware/test_boot_media_engine.py; this one checks what the wizard,
the host's boot-once handling and the Details page add to it."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtWidgets import QWizard  # noqa: E402

from core.host import VmState  # noqa: E402
from tests.gui.test_gui import vm_rows, xdg  # noqa: E402,F401  (xdg: the fixture start_app needs)
from tests.gui.test_gui_install import dumpconfig  # noqa: E402
from tests.gui.test_gui_journey import click, serial_text, start_app, toolbar_button, type_into, wait_serial  # noqa: E402,F401  (start_app: the fixture)
from tests.helpers import boot_media as bm  # noqa: E402
from tests.helpers.wizard import wizard_of

INSTALL_TIMEOUT_MS = 240_000      # ~25 s here on the software CPU (SeaBIOS, GRUB, Linux, the install)
STATE_TIMEOUT_MS = 30_000
CD_ROM_PAGE = 5


def open_wizard_on_an_iso(qtbot, window, iso):
    """New VM ▸ its default way (Install from ISO) ▸ `iso` typed in and found bootable; the wizard and its Next."""
    click(qtbot, toolbar_button(window, window.new_action))
    wizard = wizard_of(qtbot, window)
    qtbot.waitExposed(wizard)
    next_button = wizard.button(QWizard.WizardButton.NextButton)
    assert wizard.source_page.iso.isChecked()
    click(qtbot, next_button)
    type_into(qtbot, wizard.boot_page.iso, str(iso))
    check = wizard.boot_page.iso_check
    qtbot.waitUntil(lambda: not check.pending and "bootable (El Torito)" in check.note.text(), timeout=10_000)
    return wizard, next_button


def test_install_from_an_iso_in_the_wizard_then_boot_the_installed_disk(qtbot, start_app) -> None:  # noqa: F811
    installer = bm.installer_iso()
    host, bridge, window = start_app()

    # 1. The wizard: its default way, the ISO, memory, a new disk on virtio; Finish starts the VM.
    wizard, next_button = open_wizard_on_an_iso(qtbot, window, installer)
    click(qtbot, next_button)
    type_into(qtbot, wizard.resources_page.memory.lineEdit(), "512")
    click(qtbot, next_button)
    storage = wizard.storage_page
    assert storage.create.isChecked()
    type_into(qtbot, storage.size.lineEdit(), "1")
    storage.bus.setCurrentIndex(storage.bus.findData("virtio"))
    click(qtbot, next_button)
    finish = wizard.finish_page
    type_into(qtbot, finish.name, "installed")
    finish.accel.setCurrentIndex(finish.accel.findData("software"))
    assert not finish.customize.isChecked()
    assert "boots the ISO once, then the disk" in finish.summary.text()
    with qtbot.waitSignal(wizard.created, timeout=10_000) as created:
        click(qtbot, wizard.button(QWizard.WizardButton.FinishButton))
    uuid, start = created.args
    assert start is True
    [disk] = host.get(uuid).config.disks
    disk_path = disk.path

    # 2. It boots the ISO: the installer runs on the serial tab and powers the guest off.
    qtbot.waitUntil(lambda: uuid in window.vm_windows, timeout=STATE_TIMEOUT_MS)
    vm_window = window.vm_windows[uuid]
    vm_window.show_tab("serial")
    term = vm_window.console.terminal
    wait_serial(qtbot, term, bm.INSTALLER_START, INSTALL_TIMEOUT_MS)
    wait_serial(qtbot, term, "VIREO-INSTALL-DISK=vda:", INSTALL_TIMEOUT_MS)
    wait_serial(qtbot, term, bm.INSTALL_OK, INSTALL_TIMEOUT_MS)
    qtbot.waitUntil(lambda: vm_rows(window).get("installed") == "Shut off", timeout=INSTALL_TIMEOUT_MS)
    assert host.get(uuid).reason == "guest powered off", host.get(uuid).reason
    saved = dumpconfig("installed")
    assert saved["boot"]["cd_once"] is False and saved["boot"]["order"] == ["disk", "cd"], saved["boot"]
    assert saved["cdroms"] == [{"path": str(installer)}]

    # 3. Details ▸ CD-ROM: Eject, Apply.
    vm_window.show_tab("details")
    details = vm_window.details
    details.pages.setCurrentRow(CD_ROM_PAGE)
    drive = details.cdrom_page.drives[0]
    assert drive.edit.text() == str(installer)
    click(qtbot, drive.eject)
    click(qtbot, details.apply_button)
    qtbot.waitUntil(lambda: [c.path for c in host.get(uuid).config.cdroms] == [""], timeout=10_000)
    assert dumpconfig("installed")["cdroms"] == [{"path": ""}]

    # 4. Run: the installed disk boots through SeaBIOS and GRUB into Linux, which powers off.
    vm_window.show_tab("serial")
    term.clear()
    click(qtbot, toolbar_button(window, window.vm_actions.run))
    wait_serial(qtbot, term, bm.GRUB_DISK_MARKER, INSTALL_TIMEOUT_MS)
    wait_serial(qtbot, term, bm.BOOT_OK, INSTALL_TIMEOUT_MS)
    qtbot.waitUntil(lambda: vm_rows(window).get("installed") == "Shut off", timeout=INSTALL_TIMEOUT_MS)
    assert host.get(uuid).state == VmState.SHUTOFF
    assert bm.INSTALLER_START not in serial_text(term)      # the second boot did not run the installer again

    # The disk, as qemu-img and sfdisk read it: a raw image holding a partition table.
    info = subprocess.run(["qemu-img", "info", disk_path], capture_output=True, text=True, check=True).stdout
    assert "file format: raw" in info
    mbr = Path(disk_path).read_bytes()[:512]
    assert mbr[510:512] == b"\x55\xaa", "the installer wrote no MBR"

