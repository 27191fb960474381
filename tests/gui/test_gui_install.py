"""The New VM wizard's firmware paths (issue 12), through the real widgets (pytest-qt, offscreen) against the
sandboxed local service, each definition read back with `vireo dumpconfig` as a user at a shell would:

  * Install from an ISO image (the default way): the host names the ISO under its field — a README, or a data disc
    with no El Torito boot record, is refused in red and Next stays disabled; a bootable one is named in grey. The
    storage page offers a new disk, here on IDE; the summary says "boots the ISO once, then the disk"; the VM is
    defined with the ISO in a CD-ROM drive, the new disk, boot order disk then CD with boot-once CD, and no kernel.
  * Import an existing disk image needs no kernel now: the firmware boots the image's own boot loader. A kernel is
    an advanced choice, whose root= follows the bus chosen for the disk.

Starting such a VM needs the engine's firmware boot; those end-to-end tests come with it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtWidgets import QWizard  # noqa: E402

from app.ui.file_check import GREY, RED  # noqa: E402
from tests.gui.test_gui import app_parts, xdg  # noqa: E402,F401
from tests.gui.test_gui_journey import click, type_into  # noqa: E402
from tests.helpers.dialogs import choose_file  # noqa: E402
from tests.helpers.iso import write_iso  # noqa: E402
from tests.helpers.runner import REPO_ROOT  # noqa: E402
from tests.helpers.wizard import wizard_of

TIMEOUT_MS = 10_000


def dumpconfig(name: str) -> dict:
    """The definition as `vireo dumpconfig NAME` prints it (the CLI reaches the same sandboxed service)."""
    result = subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), "dumpconfig", name], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return json.loads(result.stdout)


def _settled(check, text: str) -> bool:
    return not check.pending and text in check.note.text()


def _open(qtbot, window):
    window.new_vm()
    wizard = wizard_of(qtbot, window)
    qtbot.waitExposed(wizard)
    return wizard, wizard.button(QWizard.WizardButton.NextButton)


def test_install_from_an_iso_defines_cd_once_then_the_new_disk(qtbot, app_parts, tmp_path: Path) -> None:  # noqa: F811
    host, bridge, window = app_parts
    iso = write_iso(tmp_path / "debian-12-netinst.iso", "Debian 12 amd64", size=3 << 20)
    data = write_iso(tmp_path / "drivers.iso", "DRIVERS", el_torito=False)
    readme = tmp_path / "README"
    readme.write_text("Installing Debian\n")
    wizard, next_button = _open(qtbot, window)
    source = wizard.source_page
    assert source.iso.isChecked()                                   # the usual way is the first and the default
    assert source.firmware_note.isVisibleTo(source) == (not bridge.capabilities.firmware_boot)
    click(qtbot, next_button)
    page = wizard.boot_page
    assert page.title() == "Installation media" and page.iso.isVisible()
    assert not page.kernel.isVisible() and not page.disk.isVisible()
    assert not next_button.isEnabled()                              # no ISO yet

    type_into(qtbot, page.iso, str(readme))
    qtbot.waitUntil(lambda: _settled(page.iso_check, "text file"), timeout=TIMEOUT_MS)
    assert page.iso_check.note.styleSheet() == RED and not next_button.isEnabled()
    type_into(qtbot, page.iso, str(data))
    qtbot.waitUntil(lambda: _settled(page.iso_check, "not a bootable ISO"), timeout=TIMEOUT_MS)
    assert page.iso_check.note.text() == (f"{data} is an ISO 9660 image but not a bootable ISO (no El Torito boot "
                                          "record): choose an installer or live ISO")
    assert not next_button.isEnabled()
    # Browse…, as a user does: the file dialog, the ISO's name typed into it.
    titles: list[str] = []
    choose_file(qtbot, str(iso), titles)
    click(qtbot, page.iso_row.findChild(type(next_button)))
    assert titles == ["Choose an ISO image"] and page.iso.text() == str(iso)
    qtbot.waitUntil(lambda: _settled(page.iso_check, "bootable (El Torito)"), timeout=TIMEOUT_MS)
    assert page.iso_check.note.text() == "ISO 9660 image 'Debian 12 amd64', bootable (El Torito), 3 MiB"
    assert page.iso_check.note.styleSheet() == GREY and next_button.isEnabled()

    click(qtbot, next_button)
    type_into(qtbot, wizard.resources_page.memory.lineEdit(), "512")
    click(qtbot, next_button)
    storage = wizard.storage_page
    assert storage.create.isChecked()                               # an install needs a disk to install to
    type_into(qtbot, storage.size.lineEdit(), "1")
    storage.bus.setCurrentIndex(storage.bus.findData("ide"))
    click(qtbot, next_button)
    finish = wizard.finish_page
    assert finish.name.text() == "debian-12-netinst"
    summary = finish.summary.text()
    for words in ("debian-12-netinst.iso", "boots the ISO once, then the disk", "new 1 GiB raw disk on IDE",
                  "512 MiB"):
        assert words in summary, (words, summary)
    click(qtbot, finish.customize)                                  # define it; starting it needs the engine
    with qtbot.waitSignal(wizard.created, timeout=TIMEOUT_MS) as created:
        click(qtbot, wizard.button(QWizard.WizardButton.FinishButton))
    uuid, start = created.args
    assert start is False

    saved = dumpconfig("debian-12-netinst")
    assert saved["uuid"] == uuid and saved["memory_mib"] == 512
    assert saved["cdroms"] == [{"path": str(iso)}]
    assert saved["boot"] == {"kernel": "", "initrd": "", "cmdline": "", "order": ["disk", "cd"],
                             "firmware": "", "cd_once": True}
    [disk] = saved["disks"]
    assert (disk["format"], disk["bus"]) == ("raw", "ide")
    assert os.path.getsize(disk["path"]) == 1 << 30


def test_a_live_iso_without_a_new_disk_boots_the_cd(qtbot, app_parts, tmp_path: Path) -> None:  # noqa: F811
    host, bridge, window = app_parts
    iso = write_iso(tmp_path / "rescue.iso", "RESCUE")
    wizard, next_button = _open(qtbot, window)
    click(qtbot, next_button)
    type_into(qtbot, wizard.boot_page.iso, str(iso))
    qtbot.waitUntil(lambda: _settled(wizard.boot_page.iso_check, "bootable"), timeout=TIMEOUT_MS)
    click(qtbot, next_button)
    click(qtbot, next_button)
    click(qtbot, wizard.storage_page.none)
    click(qtbot, next_button)
    assert "boots the ISO (no disk to install to)" in wizard.finish_page.summary.text()
    click(qtbot, wizard.finish_page.customize)
    with qtbot.waitSignal(wizard.created, timeout=TIMEOUT_MS):
        click(qtbot, wizard.button(QWizard.WizardButton.FinishButton))
    saved = dumpconfig("rescue")
    assert saved["disks"] == [] and saved["cdroms"] == [{"path": str(iso)}]
    assert saved["boot"]["order"] == ["cd"] and saved["boot"]["cd_once"] is False


def test_import_boots_the_disk_through_the_firmware_without_a_kernel(qtbot, app_parts,  # noqa: F811
                                                                    tmp_path: Path) -> None:
    host, bridge, window = app_parts
    image = tmp_path / "server.qcow2"
    host.create_disk(str(image), 1 << 30, fmt="qcow2")
    wizard, next_button = _open(qtbot, window)
    click(qtbot, wizard.source_page.disk)
    click(qtbot, next_button)
    page = wizard.boot_page
    assert page.title() == "Disk image"
    assert not page.kernel.isVisible() and not page.cmdline.isVisible() and not page.direct.isChecked()
    type_into(qtbot, page.disk, str(image))
    qtbot.waitUntil(lambda: _settled(page.disk_check, "qcow2 disk image, 1 GiB virtual"), timeout=TIMEOUT_MS)
    assert next_button.isEnabled()                                  # no kernel asked for
    page.bus.setCurrentIndex(page.bus.findData("ide"))
    for _ in range(3):
        click(qtbot, next_button)
    finish = wizard.finish_page
    summary = finish.summary.text()
    assert "the disk image's own boot loader, through the firmware (SeaBIOS)" in summary
    assert f"existing qcow2 image {image} on IDE" in summary and "Command line" not in summary
    click(qtbot, finish.customize)
    with qtbot.waitSignal(wizard.created, timeout=TIMEOUT_MS):
        click(qtbot, wizard.button(QWizard.WizardButton.FinishButton))
    saved = dumpconfig("server")
    assert saved["boot"] == {"kernel": "", "initrd": "", "cmdline": "", "order": ["disk"], "firmware": "",
                             "cd_once": False}
    assert saved["disks"] == [{"path": str(image), "format": "qcow2", "bus": "ide", "readonly": False}]
    assert saved["cdroms"] == []


def test_import_with_a_kernel_given_directly(qtbot, app_parts, tmp_path: Path, debian_kernel: Path) -> None:  # noqa: F811
    host, bridge, window = app_parts
    image = tmp_path / "root.img"
    image.write_bytes(bytes(1 << 20))
    wizard, next_button = _open(qtbot, window)
    click(qtbot, wizard.source_page.disk)
    click(qtbot, next_button)
    page = wizard.boot_page
    type_into(qtbot, page.disk, str(image))
    click(qtbot, page.direct)                                      # the advanced choice: a kernel, no firmware
    assert page.kernel.isVisible() and page.cmdline.isVisible()
    assert page.cmdline.text() == "console=tty0 console=ttyS0 root=/dev/vda"
    assert not next_button.isEnabled()                              # the kernel is needed now
    page.bus.setCurrentIndex(page.bus.findData("ide"))
    assert page.cmdline.text() == "console=tty0 console=ttyS0 root=/dev/sda"   # the root follows the bus
    type_into(qtbot, page.kernel, str(debian_kernel))
    qtbot.waitUntil(lambda: _settled(page.kernel_check, "Linux kernel") and not page.disk_check.pending,
                    timeout=TIMEOUT_MS)
    assert next_button.isEnabled()
    for _ in range(3):
        click(qtbot, next_button)
    assert "(direct kernel boot)" in wizard.finish_page.summary.text()
    type_into(qtbot, wizard.finish_page.name, "direct-import")
    click(qtbot, wizard.finish_page.customize)
    with qtbot.waitSignal(wizard.created, timeout=TIMEOUT_MS):
        click(qtbot, wizard.button(QWizard.WizardButton.FinishButton))
    saved = dumpconfig("direct-import")
    assert saved["boot"]["kernel"] == str(debian_kernel) and saved["boot"]["order"] == []
    assert saved["boot"]["cmdline"] == "console=tty0 console=ttyS0 root=/dev/sda"
    assert [(d["path"], d["bus"]) for d in saved["disks"]] == [(str(image), "ide")]


def test_going_back_to_another_way_takes_back_what_the_wizard_chose(qtbot, app_parts,  # noqa: F811
                                                                    tmp_path: Path) -> None:
    """The new disk offered for an ISO install and the name suggested from the ISO follow the user back to another
    way (an import); a name typed and a disk choice clicked stay."""
    host, bridge, window = app_parts
    iso = write_iso(tmp_path / "alpine-3.20.iso", "ALPINE")
    image = tmp_path / "old-server.img"
    image.write_bytes(bytes(1 << 20))
    wizard, next_button = _open(qtbot, window)
    click(qtbot, next_button)
    type_into(qtbot, wizard.boot_page.iso, str(iso))
    qtbot.waitUntil(lambda: _settled(wizard.boot_page.iso_check, "bootable"), timeout=TIMEOUT_MS)
    for _ in range(3):
        click(qtbot, next_button)
    assert wizard.storage_page.create.isChecked() and wizard.finish_page.name.text() == "alpine-3.20"
    for _ in range(4):
        wizard.back()
    click(qtbot, wizard.source_page.disk)
    click(qtbot, next_button)
    type_into(qtbot, wizard.boot_page.disk, str(image))
    qtbot.waitUntil(lambda: not wizard.boot_page.disk_check.pending, timeout=TIMEOUT_MS)
    click(qtbot, next_button)
    click(qtbot, next_button)
    assert wizard.storage_page.none.isChecked()                     # the offer is taken back
    click(qtbot, wizard.storage_page.create)                        # the user's own choice stays
    click(qtbot, next_button)
    finish = wizard.finish_page
    assert finish.name.text() == "old-server"
    summary = finish.summary.text()
    assert "own boot loader" in summary and "new 20 GiB raw disk" in summary and "alpine" not in summary
    type_into(qtbot, finish.name, "kept-name")
    wizard.back()
    click(qtbot, next_button)
    assert finish.name.text() == "kept-name" and wizard.storage_page.create.isChecked()
