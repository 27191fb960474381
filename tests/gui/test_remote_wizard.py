"""Issue 17, defect 2: New VM with a remote host selected creates the VM on that host, through the real widgets
(pytest-qt, offscreen) against a real sshd (tests/helpers/remote.py) whose user's XDG folders differ from the
client's: the host row is clicked, then New; the kernel is chosen in the host's files over SFTP (the location
field, then a double-click in the listing); the storage page names the host's images folder; Finish creates the
disk there and the VM is listed under that host, not under this computer. A remote VM's Details browse its host's
files too (a CD-ROM's Change…, Add Existing Image…), and Apply saves the choice on that host."""
from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QPoint, Qt, QTimer  # noqa: E402
from PyQt6.QtWidgets import QApplication, QFileDialog, QPushButton, QWizard  # noqa: E402

from core.config import CdromConfig, VmConfig  # noqa: E402
from core.remote.host import RemoteHost  # noqa: E402
from core.remote.ssh import parse_uri  # noqa: E402
from tests.gui.test_remote_gui import _Trusting, children, make_window, server  # noqa: E402,F401
from tests.helpers.iso import write_iso  # noqa: E402
from tests.helpers.remote import REPO_PYTHON  # noqa: E402

TIMEOUT_MS = 30_000


def _click(qtbot, widget) -> None:
    # Near the left edge: a radio button or check box only takes a click on its indicator or label.
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton, pos=QPoint(8, widget.height() // 2))


def _click_row(qtbot, view, item, double: bool = False) -> None:
    view.scrollToItem(item)
    pos = view.visualItemRect(item).center()
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    if double:      # the second press of a double-click arrives as the double-click event
        qtbot.mouseDClick(view.viewport(), Qt.MouseButton.LeftButton, pos=pos)


def _button(wizard, which) -> QPushButton:
    return wizard.button(which)


def test_new_vm_on_the_selected_remote_host(qtbot, tmp_path, server, local_service, debian_kernel) -> None:  # noqa: F811
    from app.ui.host_file_dialog import HostFileDialog

    window = make_window(qtbot, tmp_path, local_service)
    target = parse_uri(server.uri(python=REPO_PYTHON))
    target.identity = str(server.user_key)
    index = window.remote_hosts.add(target, remember=False)
    bridge = window.bridges[index]
    qtbot.waitUntil(lambda: bridge.host.connected and bridge.host_info is not None, timeout=TIMEOUT_MS)
    remote_images = server.data_home / "vireo" / "images"
    assert bridge.host_info.images_dir == str(remote_images)

    _click_row(qtbot, window.tree, window.host_items[index])
    qtbot.mouseClick(window.toolbar.widgetForAction(window.new_action), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: getattr(window, "wizard", None) is not None and window.wizard.isVisible(),
                    timeout=TIMEOUT_MS)
    wizard = window.wizard
    assert wizard.bridge is bridge
    assert wizard.windowTitle() == f"New Virtual Machine on {bridge.host.name}"
    assert f"It is made on {bridge.host.name}, from files there." in wizard.source_page.subTitle()
    _click(qtbot, wizard.source_page.kernel)
    _button(wizard, QWizard.WizardButton.NextButton).click()

    page = wizard.boot_page
    qtbot.mouseClick(page.kernel_row.findChild(QPushButton, "browse"), Qt.MouseButton.LeftButton)
    dialog = page.findChild(HostFileDialog)
    assert dialog is not None and dialog.isVisible()
    assert bridge.host.name in dialog.windowTitle()
    qtbot.waitUntil(lambda: dialog.folder != "", timeout=TIMEOUT_MS)        # the remote user's home, over SFTP
    # The remote login's home (sshd's, from passwd), not this client's HOME, which the fixture moved.
    assert dialog.location.text() == pwd.getpwuid(os.getuid()).pw_dir != os.environ["HOME"]
    dialog.location.selectAll()
    qtbot.keyClicks(dialog.location, str(debian_kernel.parent))
    qtbot.keyClick(dialog.location, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: dialog.folder == str(debian_kernel.parent), timeout=TIMEOUT_MS)
    names = [dialog.list.topLevelItem(i).text(0) for i in range(dialog.list.topLevelItemCount())]
    assert debian_kernel.name in names
    item = dialog.list.topLevelItem(names.index(debian_kernel.name))
    assert item.text(1).endswith("MiB")
    _click_row(qtbot, dialog.list, item, double=True)
    assert page.kernel.text() == str(debian_kernel) and not dialog.isVisible()
    qtbot.waitUntil(lambda: not page.kernel_check.pending and "Linux kernel" in page.kernel_check.note.text(),
                    timeout=TIMEOUT_MS)
    _button(wizard, QWizard.WizardButton.NextButton).click()
    _button(wizard, QWizard.WizardButton.NextButton).click()

    storage = wizard.storage_page
    _click(qtbot, storage.create)
    assert storage.where.text() == f"Created in {remote_images} on {bridge.host.name}"
    storage.size.lineEdit().selectAll()
    qtbot.keyClicks(storage.size.lineEdit(), "0.1")
    _button(wizard, QWizard.WizardButton.NextButton).click()

    finish = wizard.finish_page
    assert f"Host</td><td>{bridge.host.name}" in finish.summary.text()
    finish.name.selectAll()
    qtbot.keyClicks(finish.name, "made-remotely")
    _click(qtbot, finish.customize)            # Details opens instead of a start: the test boots nothing
    finish_button = _button(wizard, QWizard.WizardButton.FinishButton)
    qtbot.waitUntil(finish_button.isEnabled, timeout=TIMEOUT_MS)
    finish_button.click()
    qtbot.waitUntil(lambda: "made-remotely" in children(window, index), timeout=TIMEOUT_MS)
    assert "made-remotely" not in children(window, 0)

    disk = remote_images / "made-remotely.img"
    assert disk.stat().st_size == int(0.1 * 1024 ** 3) // 512 * 512
    local_images = Path(os.environ["XDG_DATA_HOME"]) / "vireo" / "images"
    assert not (local_images / "made-remotely.img").exists()
    saved = [json.loads(p.read_text()) for p in (server.config_home / "vireo" / "vms").glob("*.json")]
    made = next(cfg for cfg in saved if cfg["name"] == "made-remotely")
    assert made["boot"]["kernel"] == str(debian_kernel)
    assert [d["path"] for d in made["disks"]] == [str(disk)]
    for vm_window in list(window.vm_windows.values()):
        vm_window.close()
    window.close()
    # The connection's last news (disconnected) is queued from the worker: taken while the window still exists.
    qtbot.waitUntil(lambda: not bridge.host.connected, timeout=TIMEOUT_MS)
    QApplication.processEvents()


def _connected_window(qtbot, tmp_path, server, local_service):  # noqa: F811
    window = make_window(qtbot, tmp_path, local_service)
    target = parse_uri(server.uri(python=REPO_PYTHON))
    target.identity = str(server.user_key)
    index = window.remote_hosts.add(target, remember=False)
    bridge = window.bridges[index]
    qtbot.waitUntil(lambda: bridge.host.connected and bridge.host_info is not None, timeout=TIMEOUT_MS)
    return window, index, bridge


def _refuse_local_file_dialogs(seen: list[str]) -> QTimer:
    """A file dialog of this computer's (modal: it would block the test) is recorded in `seen` and closed."""
    def look() -> None:
        dialog = QApplication.activeModalWidget()
        if isinstance(dialog, QFileDialog):
            seen.append(dialog.windowTitle())
            dialog.reject()

    timer = QTimer()
    timer.timeout.connect(look)
    timer.start(50)
    return timer


def _choose_in(qtbot, dialog, path: Path) -> None:
    """In the host file dialog: type the file's folder in the location field, Enter, double-click the file."""
    qtbot.waitUntil(lambda: dialog.folder != "", timeout=TIMEOUT_MS)
    dialog.location.selectAll()
    qtbot.keyClicks(dialog.location, str(path.parent))
    qtbot.keyClick(dialog.location, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: dialog.folder == str(path.parent), timeout=TIMEOUT_MS)
    names = [dialog.list.topLevelItem(i).text(0) for i in range(dialog.list.topLevelItemCount())]
    _click_row(qtbot, dialog.list, dialog.list.topLevelItem(names.index(path.name)), double=True)


def test_remote_vm_details_browse_its_hosts_files(qtbot, tmp_path, server, local_service) -> None:  # noqa: F811
    from app.ui.host_file_dialog import HostFileDialog

    media = tmp_path / "media"
    media.mkdir()
    iso = write_iso(media / "tools.iso", "TOOLS", el_torito=False)
    image = media / "data.img"
    image.write_bytes(bytes(1 << 20))
    target = parse_uri(server.uri(python=REPO_PYTHON))
    target.identity = str(server.user_key)
    definer = RemoteHost(target, _Trusting())
    definer.connect()
    made = definer.define(VmConfig(name="remote-details", memory_mib=64, cdroms=[CdromConfig("")]))
    definer.close()

    window, index, bridge = _connected_window(qtbot, tmp_path, server, local_service)
    qtbot.waitUntil(lambda: "remote-details" in children(window, index), timeout=TIMEOUT_MS)
    window.open_vm((bridge, made.uuid), "details")
    details = window.vm_windows[made.uuid].details
    qtbot.waitExposed(details)
    pages = [details.pages.item(i).text() for i in range(details.pages.count())]

    local_dialogs: list[str] = []
    watch = _refuse_local_file_dialogs(local_dialogs)
    _click_row(qtbot, details.pages, details.pages.item(pages.index("CD-ROM")))
    drive = details.cdrom_page.drives[0]
    qtbot.mouseClick(drive.change, Qt.MouseButton.LeftButton)
    assert local_dialogs == []          # not this computer's files
    dialog = drive.findChild(HostFileDialog)
    assert dialog is not None and dialog.windowTitle() == f"Choose an ISO image on {bridge.host.name}"
    _choose_in(qtbot, dialog, iso)
    assert drive.edit.text() == str(iso)
    qtbot.waitUntil(lambda: not drive.check.pending and "TOOLS" in drive.check.note.text(), timeout=TIMEOUT_MS)

    _click_row(qtbot, details.pages, details.pages.item(pages.index("Disks")))
    qtbot.mouseClick(details.add_disk, Qt.MouseButton.LeftButton)
    assert local_dialogs == []
    watch.stop()
    dialog = details.findChild(HostFileDialog)
    assert dialog is not None and dialog.windowTitle() == f"Choose a disk image on {bridge.host.name}"
    _choose_in(qtbot, dialog, image)
    assert details.disk_table.rowCount() == 1 and details.disk_table.item(0, 0).text() == str(image)

    qtbot.mouseClick(details.apply_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(bridge.find("remote-details").config.disks), timeout=TIMEOUT_MS)
    cfg = bridge.find("remote-details").config
    assert [c.path for c in cfg.cdroms] == [str(iso)] and [d.path for d in cfg.disks] == [str(image)]
    saved = json.loads((server.config_home / "vireo" / "vms" / f"{made.uuid}.json").read_text())
    assert saved["cdroms"] == [{"path": str(iso)}] and saved["disks"][0]["path"] == str(image)
    for vm_window in list(window.vm_windows.values()):
        vm_window.close()
    window.close()
    qtbot.waitUntil(lambda: not bridge.host.connected, timeout=TIMEOUT_MS)
    QApplication.processEvents()


def test_remote_journey_creates_runs_and_deletes_from_the_gui(qtbot, tmp_path, server, local_service,  # noqa: F811
                                                              debian_kernel, busybox_initramfs) -> None:
    """Issue 17's done-means, on an SSH host from the GUI alone: the wizard makes the VM and its qcow2 disk there,
    Finish starts it, the serial tab shows it boot and takes typing (the guest writes a file system onto the
    disk), Force Off (answered), then Delete with its disk image removes both on that host."""
    from tests.gui.test_gui_journey import (
        BOOT_TIMEOUT_MS,
        GIB,
        LOAD_DISK,
        STATE_TIMEOUT_MS,
        WRITE_FILE,
        answer_delete_dialog,
        type_into,
        type_line,
        wait_serial,
    )
    from tests.helpers.dialogs import answer_question

    window, index, bridge = _connected_window(qtbot, tmp_path, server, local_service)
    # The row under the host that says it has no VMs yet, clicked: New makes the VM on that host too.
    qtbot.waitUntil(lambda: children(window, index) == ["No virtual machines yet — choose New to create one"],
                    timeout=TIMEOUT_MS)
    _click_row(qtbot, window.tree, window.host_items[index].child(0))
    qtbot.mouseClick(window.toolbar.widgetForAction(window.new_action), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: getattr(window, "wizard", None) is not None and window.wizard.isVisible(),
                    timeout=TIMEOUT_MS)
    wizard = window.wizard
    assert wizard.bridge is bridge
    next_button = _button(wizard, QWizard.WizardButton.NextButton)
    _click(qtbot, wizard.source_page.kernel)
    next_button.click()
    type_into(qtbot, wizard.boot_page.kernel, str(debian_kernel))
    type_into(qtbot, wizard.boot_page.initrd, str(busybox_initramfs))
    type_into(qtbot, wizard.boot_page.cmdline, "console=ttyS0 vireo.action=shell")
    qtbot.waitUntil(lambda: next_button.isEnabled() and not wizard.boot_page.kernel_check.pending, timeout=TIMEOUT_MS)
    next_button.click()
    type_into(qtbot, wizard.resources_page.memory.lineEdit(), "256")
    next_button.click()
    storage = wizard.storage_page
    _click(qtbot, storage.create)
    type_into(qtbot, storage.size.lineEdit(), "1")
    storage.format.setCurrentIndex(storage.format.findData("qcow2"))
    next_button.click()
    finish = wizard.finish_page
    type_into(qtbot, finish.name, "far-away")
    finish.accel.setCurrentIndex(finish.accel.findData("software"))
    with qtbot.waitSignal(wizard.created, timeout=TIMEOUT_MS) as created:
        _button(wizard, QWizard.WizardButton.FinishButton).click()
    uuid, start = created.args
    assert start is True
    disk = server.data_home / "vireo" / "images" / "far-away.qcow2"
    assert disk.is_file()

    # Finish started it on that host and opened its window on the serial console.
    qtbot.waitUntil(lambda: uuid in window.vm_windows, timeout=TIMEOUT_MS)
    vm_window = window.vm_windows[uuid]
    term = vm_window.console.terminal
    wait_serial(qtbot, term, "vireo:~#", BOOT_TIMEOUT_MS)
    assert bridge.find("far-away").state.value == "running"
    type_line(qtbot, term, LOAD_DISK)
    wait_serial(qtbot, term, f"VIREO-VDA-SECTORS={GIB // 512}", STATE_TIMEOUT_MS)
    type_line(qtbot, term, WRITE_FILE)
    wait_serial(qtbot, term, "VIREO-WROTE-OK", 60_000)

    window.select_vm(uuid)
    qtbot.waitUntil(lambda: window.vm_actions.off.isEnabled(), timeout=STATE_TIMEOUT_MS)
    asked: list[str] = []
    answer_question(qtbot, "Force Off", asked)
    window.vm_actions.off.trigger()
    assert asked == ["Force off far-away? The guest loses unsaved data."]
    qtbot.waitUntil(lambda: bridge.find("far-away").state.value == "shutoff", timeout=STATE_TIMEOUT_MS)

    window.select_vm(uuid)
    qtbot.waitUntil(lambda: window.vm_actions.delete.isEnabled() and not bridge.busy(uuid), timeout=STATE_TIMEOUT_MS)
    answered: list[str] = []
    answer_delete_dialog(qtbot, answered)
    qtbot.mouseClick(window.toolbar.widgetForAction(window.vm_actions.delete), Qt.MouseButton.LeftButton)
    assert answered == ["Delete the virtual machine “far-away”?", "checkbox"]
    qtbot.waitUntil(lambda: "far-away" not in children(window, index), timeout=STATE_TIMEOUT_MS)
    qtbot.waitUntil(lambda: not disk.exists(), timeout=STATE_TIMEOUT_MS)
    assert not (server.config_home / "vireo" / "vms" / f"{uuid}.json").exists()
    window.close()
    qtbot.waitUntil(lambda: not bridge.host.connected, timeout=TIMEOUT_MS)
    QApplication.processEvents()
