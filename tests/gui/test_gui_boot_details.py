"""The VM window's Details pages for firmware boot (issue 12), through the real widgets (pytest-qt, offscreen) against
the sandboxed local service; every Apply is read back from the host and from the definition file:

  * CD-ROM: each drive shows its ISO and what the host says it is; Change… (the file dialog), Eject, Remove Drive
    and Add CD-ROM Drive change the definition on Apply; a README is refused in red and Apply stays disabled; the
    IDE controller's four places (IDE disks and CD-ROMs) disable Add CD-ROM Drive and say why.
  * Boot Options: the boot order list (checkable, reorderable with Up/Down), boot-once CD, another firmware file,
    and a kernel cleared, which takes its row out of the list; an untouched page changes nothing.
  * Disks: the bus of each disk.
  * A running VM (booting a kernel directly, as the engine does today) takes another disc and boot order for its
    next start; its drives, disks and firmware are locked."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtCore import Qt  # noqa: E402

from app.ui.file_check import GREY, RED  # noqa: E402
from core.config import BootConfig, CdromConfig, ConfigStore, DiskConfig, VmConfig  # noqa: E402
from core.host import VmState  # noqa: E402
from tests.gui.test_gui import app_parts, reload, xdg  # noqa: E402,F401
from tests.gui.test_gui_journey import click, type_into  # noqa: E402
from tests.helpers.dialogs import choose_file  # noqa: E402
from tests.helpers.iso import write_iso  # noqa: E402

TIMEOUT_MS = 10_000
CD_ROM_PAGE, BOOT_PAGE, DISKS_PAGE = 5, 3, 4


def _details(qtbot, window, bridge, cfg: VmConfig, page: int):
    ConfigStore().save(cfg)
    reload(qtbot, bridge)
    window.open_vm((bridge, cfg.uuid), "details")
    details = window.vm_windows[cfg.uuid].details
    qtbot.waitExposed(details)
    details.pages.setCurrentRow(page)
    assert not details.apply_button.isEnabled()                # nothing edited yet
    return details


def _apply(qtbot, details, host, uuid: str) -> dict:
    """Click Apply, wait for the host to hold the edit and the form to reload; the definition file's JSON."""
    before = host.get(uuid).config
    # `applied` comes once the form has reloaded the saved definition: acting before it, a late reload would undo
    # the next edit.
    with qtbot.waitSignal(details.applied, timeout=TIMEOUT_MS):
        click(qtbot, details.apply_button)
    assert host.get(uuid).config != before and not details.apply_button.isEnabled()
    return json.loads(ConfigStore().path_for(uuid).read_text())


def _drive(details, number: int):
    return details.cdrom_page.drives[number - 1]


def _check_row(qtbot, order, device: str) -> None:
    """Select the boot order row and toggle its check box with the space bar, as a keyboard user does."""
    rect = order.list.visualItemRect(order.list.item(order.devices().index(device)))
    qtbot.mouseClick(order.list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.keyClick(order.list, Qt.Key.Key_Space)


def test_cdrom_change_eject_add_and_remove_drives(qtbot, app_parts, tmp_path: Path) -> None:  # noqa: F811
    host, bridge, window = app_parts
    installer = write_iso(tmp_path / "debian-12.iso", "Debian 12 amd64")
    tools = write_iso(tmp_path / "tools.iso", "TOOLS", el_torito=False)
    disk = tmp_path / "web.img"
    disk.write_bytes(bytes(1 << 20))
    cfg = VmConfig(name="web", disks=[DiskConfig(path=str(disk))], cdroms=[CdromConfig(str(installer))],
                   boot=BootConfig(order=["disk", "cd"], cd_once=True))
    details = _details(qtbot, window, bridge, cfg, CD_ROM_PAGE)
    page = details.cdrom_page
    assert details.stack.currentWidget() is page and len(page.drives) == 1
    first = _drive(details, 1)
    assert first.title() == "CD-ROM 1 (IDE)" and first.edit.text() == str(installer)
    qtbot.waitUntil(lambda: not first.check.pending and "bootable" in first.check.note.text(), timeout=TIMEOUT_MS)
    assert first.check.note.text() == "ISO 9660 image 'Debian 12 amd64', bootable (El Torito), 128 KiB"

    # Change…: the file dialog; the host names the new disc; Apply keeps it.
    titles: list[str] = []
    choose_file(qtbot, str(tools), titles)
    click(qtbot, first.change)
    assert titles == ["Choose an ISO image"] and first.edit.text() == str(tools)
    qtbot.waitUntil(lambda: not first.check.pending and "TOOLS" in first.check.note.text(), timeout=TIMEOUT_MS)
    assert first.check.note.text().endswith("not bootable (a data disc: no El Torito boot record)")
    assert first.check.note.styleSheet() == GREY
    saved = _apply(qtbot, details, host, cfg.uuid)
    assert saved["cdroms"] == [{"path": str(tools)}]
    assert saved["boot"]["cd_once"] is True and saved["boot"]["order"] == ["disk", "cd"]   # untouched

    # A README is not a disc: red, and Apply waits.
    readme = tmp_path / "README"
    readme.write_text("notes\n")
    first = _drive(details, 1)
    type_into(qtbot, first.edit, str(readme))
    qtbot.waitUntil(lambda: not first.check.pending and first.check.problem != "", timeout=TIMEOUT_MS)
    assert first.check.note.styleSheet() == RED and "is a text file" in first.check.note.text()
    assert not details.apply_button.isEnabled() and "is a text file" in details.apply_button.toolTip()

    # Eject: the drive stays, empty.
    click(qtbot, first.eject)
    assert first.edit.text() == "" and not first.eject.isEnabled() and not first.check.note.isVisible()
    assert _apply(qtbot, details, host, cfg.uuid)["cdroms"] == [{"path": ""}]

    # A second drive with the installer in it; then the first one removed: the installer's drive is left.
    click(qtbot, page.add)
    assert len(page.drives) == 2 and _drive(details, 2).title() == "CD-ROM 2 (IDE)"
    type_into(qtbot, _drive(details, 2).edit, str(installer))
    assert _apply(qtbot, details, host, cfg.uuid)["cdroms"] == [{"path": ""}, {"path": str(installer)}]
    click(qtbot, _drive(details, 1).remove)
    assert [d.edit.text() for d in page.drives] == [str(installer)]
    assert _drive(details, 1).title() == "CD-ROM 1 (IDE)"
    assert _apply(qtbot, details, host, cfg.uuid)["cdroms"] == [{"path": str(installer)}]
    # After the install: the drive goes, the boot order keeps the disk first.
    click(qtbot, _drive(details, 1).remove)
    assert page.drives == [] and page.empty.isVisible()
    saved = _apply(qtbot, details, host, cfg.uuid)
    assert saved["cdroms"] == [] and saved["disks"] == [{"path": str(disk), "format": "raw", "bus": "virtio",
                                                         "readonly": False}]


def test_ide_places_and_the_disk_bus(qtbot, app_parts, tmp_path: Path) -> None:  # noqa: F811
    host, bridge, window = app_parts
    disks = [tmp_path / f"d{n}.img" for n in range(2)]
    for d in disks:
        d.write_bytes(bytes(4096))
    cfg = VmConfig(name="ide", disks=[DiskConfig(path=str(d)) for d in disks], cdroms=[CdromConfig(), CdromConfig()])
    details = _details(qtbot, window, bridge, cfg, DISKS_PAGE)
    buses = [details.disk_table.cellWidget(row, 2) for row in range(2)]
    assert [b.currentText() for b in buses] == ["VirtIO", "VirtIO"]
    buses[0].setCurrentIndex(buses[0].findData("ide"))
    saved = _apply(qtbot, details, host, cfg.uuid)
    assert [d["bus"] for d in saved["disks"]] == ["ide", "virtio"]
    # One IDE disk and two CD-ROM drives: one place left, then none.
    details.pages.setCurrentRow(CD_ROM_PAGE)
    page = details.cdrom_page
    click(qtbot, page.add)
    assert not page.add.isEnabled() and "holds 4 drives" in page.add.toolTip()
    assert _apply(qtbot, details, host, cfg.uuid)["cdroms"] == [{"path": ""}] * 3
    # A second disk on IDE would be a fifth drive: the host refuses it in one line, naming the count.
    details.pages.setCurrentRow(DISKS_PAGE)
    bus = details.disk_table.cellWidget(1, 2)
    bus.setCurrentIndex(bus.findData("ide"))
    from tests.gui.test_gui import error_dialogs
    click(qtbot, details.apply_button)
    qtbot.waitUntil(lambda: bool(error_dialogs()), timeout=TIMEOUT_MS)
    dialog = error_dialogs()[-1]
    assert "2 IDE disks and 3 CD-ROM drives make 5 IDE drives" in dialog.informativeText()
    dialog.close()
    assert [d.bus for d in host.get(cfg.uuid).config.disks] == ["ide", "virtio"]


def test_boot_order_once_firmware_and_kernel_persist(qtbot, app_parts, tmp_path: Path) -> None:  # noqa: F811
    host, bridge, window = app_parts
    iso = write_iso(tmp_path / "rescue.iso", "RESCUE")
    disk = tmp_path / "root.img"
    disk.write_bytes(bytes(1 << 20))
    firmware = tmp_path / "bios.bin"
    firmware.write_bytes(bytes(256 << 10))
    # An older definition: a kernel and no order of its own (it boots the kernel).
    cfg = VmConfig(name="order", disks=[DiskConfig(path=str(disk))], cdroms=[CdromConfig(str(iso))],
                   boot=BootConfig(kernel="/boot/vmlinuz", cmdline="console=ttyS0"))
    details = _details(qtbot, window, bridge, cfg, BOOT_PAGE)
    boot = details.boot_page
    order = boot.order
    assert details.stack.currentWidget() is boot
    assert order.devices() == ["kernel", "cd", "disk"] and order.order() == ["kernel"]
    assert [order.list.item(i).text() for i in range(3)] == ["Direct kernel", "CD-ROM — rescue.iso",
                                                             "Hard disk — root.img"]
    assert boot.order_note.text() == "Each start: the kernel, loaded directly (no firmware runs)."

    _check_row(qtbot, order, "disk")
    _check_row(qtbot, order, "cd")
    click(qtbot, order.up)                                   # the CD-ROM row, selected last, goes to the top
    assert not order.up.isEnabled() and order.devices() == ["cd", "kernel", "disk"]
    _check_row(qtbot, order, "kernel")                       # unchecked: kept in the list, not tried
    assert order.order() == ["cd", "disk"]
    order.select("disk")
    click(qtbot, order.up)
    click(qtbot, order.up)
    assert order.devices() == ["disk", "cd", "kernel"] and order.order() == ["disk", "cd"]
    click(qtbot, boot.cd_once)
    assert boot.order_note.text() == ("Next start: the firmware boots the CD-ROM, else the hard disk. Later starts: "
                                      "the firmware boots the hard disk, else the CD-ROM.")
    boot.firmware.setCurrentIndex(boot.firmware.findData("file"))
    assert boot.firmware_row.isVisible() and not details.apply_button.isEnabled()   # which file?
    assert details.apply_button.toolTip() == "Firmware: choose the image file, or SeaBIOS (Debian)."
    type_into(qtbot, boot.firmware_path, str(firmware))
    saved = _apply(qtbot, details, host, cfg.uuid)
    assert saved["boot"] == {"kernel": "/boot/vmlinuz", "initrd": "", "cmdline": "console=ttyS0",
                             "order": ["disk", "cd"], "firmware": str(firmware), "cd_once": True}

    # The kernel cleared: its row goes; back to Debian's SeaBIOS.
    type_into(qtbot, boot.kernel, "")
    assert order.devices() == ["disk", "cd"]
    boot.firmware.setCurrentIndex(boot.firmware.findData(""))
    saved = _apply(qtbot, details, host, cfg.uuid)
    assert saved["boot"]["kernel"] == "" and saved["boot"]["order"] == ["disk", "cd"]
    assert saved["boot"]["firmware"] == ""
    # Nothing left checked is refused before it reaches the host.
    _check_row(qtbot, order, "disk")
    _check_row(qtbot, order, "cd")
    assert order.order() == [] and not details.apply_button.isEnabled()
    assert details.apply_button.toolTip() == "Boot order: check at least one device to boot from."
    click(qtbot, details.revert_button)
    assert order.order() == ["disk", "cd"] and boot.cd_once.isChecked()


def test_a_running_vm_takes_a_disc_and_boot_order_for_its_next_start(qtbot, app_parts, tmp_path: Path,  # noqa: F811
                                                                      debian_kernel: Path,
                                                                      busybox_initramfs: Path) -> None:
    host, bridge, window = app_parts
    first, second = write_iso(tmp_path / "first.iso", "FIRST"), write_iso(tmp_path / "second.iso", "SECOND")
    cfg = VmConfig(name="running", memory_mib=128, cdroms=[CdromConfig(str(first))],
                   boot=BootConfig(kernel=str(debian_kernel), initrd=str(busybox_initramfs),
                                   cmdline="console=ttyS0 vireo.action=shell"))
    details = _details(qtbot, window, bridge, cfg, CD_ROM_PAGE)
    try:
        bridge.lifecycle("start", cfg.uuid)
        qtbot.waitUntil(lambda: bridge.info(cfg.uuid).state == VmState.RUNNING, timeout=30_000)
        qtbot.waitUntil(lambda: not details.memory.isEnabled(), timeout=TIMEOUT_MS)
        page, drive = details.cdrom_page, _drive(details, 1)
        assert drive.edit.isEnabled() and drive.change.isEnabled() and drive.eject.isEnabled()
        assert not drive.remove.isEnabled() and not page.add.isEnabled()
        assert page.running_note.text() == "The VM is running: a disc changed now is used from its next start."
        assert "CD-ROM discs and the boot order at the next start" in details.lock_note.text()
        assert details.boot_page.order.isEnabled() and not details.boot_page.firmware.isEnabled()
        assert not details.boot_page.kernel_row.isEnabled() and not details.disk_table.isEnabled()
        type_into(qtbot, drive.edit, str(second))
        saved = _apply(qtbot, details, host, cfg.uuid)
        assert saved["cdroms"] == [{"path": str(second)}]
        details.pages.setCurrentRow(BOOT_PAGE)
        _check_row(qtbot, details.boot_page.order, "cd")
        saved = _apply(qtbot, details, host, cfg.uuid)
        assert saved["boot"]["order"] == ["kernel", "cd"]
        assert host.get(cfg.uuid).state == VmState.RUNNING                   # it ran on throughout
    finally:
        if host.get(cfg.uuid).state.active:
            host.force_off(cfg.uuid)
        deadline = time.monotonic() + 15
        while bridge.running() and time.monotonic() < deadline:
            qtbot.wait(50)


def test_boot_once_cleared_by_the_host_under_unapplied_edits_stays_cleared(qtbot, app_parts,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    """The host clears boot-once as the VM starts (LocalHost._boot_once_done: a definition rewritten with only that
    changed). Details with edits not yet applied takes that change, so Apply does not put the flag back; here the
    host is given the same rewrite directly, as starting a firmware VM needs the engine's firmware boot."""
    host, bridge, window = app_parts
    iso = write_iso(tmp_path / "debian.iso")
    cfg = VmConfig(name="once", cdroms=[CdromConfig(str(iso))], boot=BootConfig(order=["disk", "cd"], cd_once=True))
    details = _details(qtbot, window, bridge, cfg, 0)
    type_into(qtbot, details.notes, "installing")
    assert details.apply_button.isEnabled() and details.boot_page.cd_once.isChecked()
    cleared = host.get(cfg.uuid).config.copy()
    cleared.boot.cd_once = False
    host.define(cleared)
    qtbot.waitUntil(lambda: not details.boot_page.cd_once.isChecked(), timeout=TIMEOUT_MS)
    assert details.notes.toPlainText() == "installing" and details.apply_button.isEnabled()
    saved = _apply(qtbot, details, host, cfg.uuid)
    assert saved["notes"] == "installing" and saved["boot"]["cd_once"] is False
