"""The manager GUI driven through its real widgets with pytest-qt (offscreen): the main window lists VMs and
error rows, the wizard defines a VM (and its disk), the VM window's tabs, the serial terminal renders guest output
and turns keys into bytes, Details applies edits, Delete removes definition and disk. With a working engine, a VM
boots from the tests' Debian kernel and the event loop keeps answering while its vCPU is busy."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QSettings, Qt, QTimer  # noqa: E402
from PyQt6.QtWidgets import QApplication, QCheckBox, QMessageBox, QWizard  # noqa: E402

from core.config import BootConfig, ConfigStore, DiskConfig, VmConfig  # noqa: E402
from core.host import VmState  # noqa: E402
from tests.helpers.console_view import event_loop_stall  # noqa: E402
from tests.helpers.dialogs import answer_question  # noqa: E402
from tests.helpers.wizard import wizard_of


@pytest.fixture
def xdg(local_service) -> Path:
    """The sandbox's root: config/ and data/ are XDG_CONFIG_HOME and XDG_DATA_HOME of this process and of the
    private Vireo service the manager starts (tests/helpers/service.py)."""
    return local_service.root


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    # Enough for the pages' own checks (it exists, it is readable); the host's probe refuses it as a kernel, so a
    # test that reaches Finish (which asks the host again) chooses the real kernel.
    path = tmp_path / "vmlinuz-test"
    path.write_bytes(b"\0" * 4096)
    return path


def make_app(qtbot, xdg: Path):
    from app.ui.main_window import MainWindow, local_bridge

    bridge = local_bridge()       # as launch() makes it: a client of the service, connected on a worker
    host = bridge.host
    window = MainWindow([bridge], QSettings(str(xdg / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    window.show()
    ready = []
    bridge.when_ready(lambda: ready.append(True))       # the host's first read, on a bridge worker
    qtbot.waitUntil(lambda: bool(ready), timeout=10_000)
    return host, bridge, window


def reload(qtbot, bridge) -> None:
    """The host re-reads the definition files the test wrote, and the bridge's cache (so the window) follows."""
    done = []
    bridge.reload(then=lambda: done.append(True))
    qtbot.waitUntil(lambda: bool(done), timeout=10_000)


@pytest.fixture
def app_parts(qtbot, xdg):
    parts = make_app(qtbot, xdg)
    yield parts
    host, bridge, window = parts
    for w in list(window.vm_windows.values()):
        w.close()
    bridge.shutdown()
    host.close()


def define(name: str, kernel: Path | str = "/boot/vmlinuz", **kw) -> VmConfig:
    cfg = VmConfig(name=name, boot=BootConfig(kernel=str(kernel), cmdline="console=ttyS0"), **kw)
    ConfigStore().save(cfg)
    return cfg


def vm_rows(window) -> dict[str, str]:
    host_item = window.host_items[0]
    rows = {}
    for i in range(host_item.childCount()):
        child = host_item.child(i)
        rows[child.text(0)] = child.text(1)
    return rows


def press(qtbot, action, timeout: int = 15_000) -> None:
    """Click an action as a person does: once it is enabled. The row can show a new state (the host's state
    event) while the request that caused it is still in flight, and the VM's actions stay off until its reply;
    QAction.trigger() on a disabled action does nothing at all."""
    qtbot.waitUntil(action.isEnabled, timeout=timeout)
    action.trigger()


def error_dialogs() -> list[QMessageBox]:
    return [w for w in QApplication.topLevelWidgets()
            if isinstance(w, QMessageBox) and w.objectName() == "errorDialog" and w.isVisible()]


def test_main_window_lists_vms_and_reports_a_corrupt_file(qtbot, xdg) -> None:
    define("web", memory_mib=256)
    define("db", vcpus=1)
    vms = ConfigStore().directory
    (vms / "66666666-6666-4666-8666-666666666666.json").write_text('{"name": 42}')
    host, bridge, window = make_app(qtbot, xdg)
    try:
        rows = vm_rows(window)
        assert rows["db"] == "Shut off" and rows["web"] == "Shut off"
        errors = [text for text in rows if text.startswith("Cannot load 66666666")]
        assert errors and "name: expected str" in errors[0]
        label = window.tree.itemWidget(window.host_items[0], 0)
        assert host.info().cpu_model in label.text() and "GiB" in label.text()
        accel = window.vm_items[bridge.find("web").uuid].text(2)
        assert accel.startswith(("Software CPU", "KVM", "auto"))
        # Nothing running: Run and Delete work on the selection, Pause and Shut Down do not.
        window.select_vm(bridge.find("web").uuid)
        assert window.vm_actions.run.isEnabled() and window.vm_actions.delete.isEnabled()
        assert not window.vm_actions.pause.isEnabled() and not window.vm_actions.shutdown.isEnabled()
    finally:
        bridge.shutdown()


def test_wizard_defines_a_vm_with_a_new_disk(qtbot, app_parts, debian_kernel, xdg) -> None:
    kernel = debian_kernel
    host, bridge, window = app_parts
    window.new_vm()
    wizard = wizard_of(qtbot, window)
    qtbot.waitExposed(wizard)
    assert wizard.source_page.iso.isChecked()                 # installing from an ISO is the usual way
    wizard.source_page.kernel.setChecked(True)
    wizard.next()
    assert not wizard.button(QWizard.WizardButton.NextButton).isEnabled()   # no kernel yet
    wizard.boot_page.kernel.setText(str(xdg / "missing"))
    assert "no such file" in wizard.boot_page.error.text()
    wizard.boot_page.kernel.setText(str(kernel))
    wizard.boot_page.cmdline.setText("console=ttyS0 quiet")
    assert wizard.button(QWizard.WizardButton.NextButton).isEnabled()
    wizard.next()
    assert wizard.resources_page.memory.maximum() == host.info().memory_mib
    assert wizard.resources_page.cpus.maximum() == host.info().cpus
    wizard.resources_page.memory.setValue(300)
    wizard.next()
    wizard.storage_page.create.setChecked(True)
    wizard.storage_page.size.setValue(0.1)
    wizard.next()
    assert wizard.finish_page.name.text() == "vmlinuz-amd64"
    wizard.finish_page.name.setText("lab")
    wizard.finish_page.customize.setChecked(True)   # do not start: Details opens instead
    assert "300 MiB" in wizard.finish_page.summary.text()
    with qtbot.waitSignal(wizard.created, timeout=30_000) as created:
        wizard.button(QWizard.WizardButton.FinishButton).click()
    uuid, start = created.args
    assert start is False
    saved = json.loads((ConfigStore().directory / f"{uuid}.json").read_text())
    assert saved["name"] == "lab" and saved["memory_mib"] == 300
    assert saved["boot"] == {"kernel": str(kernel), "initrd": "", "cmdline": "console=ttyS0 quiet", "order": [],
                             "firmware": "", "cd_once": False}
    assert saved["cdroms"] == []
    disk = Path(saved["disks"][0]["path"])
    assert disk.parent == xdg / "data" / "vireo" / "images" and disk.stat().st_size == int(0.1 * 1024 ** 3) // 512 * 512
    qtbot.waitUntil(lambda: "lab" in vm_rows(window), timeout=15_000)
    # "Customize before install" opened the VM window on Details.
    vm_window = window.vm_windows[uuid]
    assert vm_window.tabs.currentWidget() is vm_window.details
    # The definition is the service's: another client (a restarted app) sees it.
    from app.ui.main_window import local_bridge
    other = local_bridge()
    qtbot.waitUntil(lambda: other.facts is not None, timeout=10_000)
    try:
        assert [v.name for v in other.vms()] == ["lab"]
    finally:
        other.shutdown(close_host=True)


def test_wizard_refuses_a_duplicate_name(qtbot, app_parts, kernel) -> None:
    define("taken")
    host, bridge, window = app_parts
    reload(qtbot, bridge)
    window.new_vm()
    wizard = wizard_of(qtbot, window)
    wizard.source_page.kernel.setChecked(True)
    wizard.next()
    wizard.boot_page.kernel.setText(str(kernel))
    wizard.next()
    wizard.next()
    wizard.next()
    wizard.finish_page.name.setText("Taken")
    assert "already exists" in wizard.finish_page.error.text()
    assert not wizard.button(QWizard.WizardButton.FinishButton).isEnabled()


def test_vm_window_tabs_details_apply_and_revert(qtbot, app_parts) -> None:
    host, bridge, window = app_parts
    cfg = define("editme", memory_mib=256)
    reload(qtbot, bridge)
    window.select_vm(cfg.uuid)
    window.open_action.trigger()
    vm_window = window.vm_windows[cfg.uuid]
    qtbot.waitExposed(vm_window)
    assert [vm_window.tabs.tabText(i) for i in range(vm_window.tabs.count())] == \
        ["Serial Console", "Details", "Snapshots", "Performance"]
    assert "shut off" in vm_window.console.banner_text.text()
    details = vm_window.details
    assert [details.pages.item(i).text() for i in range(details.pages.count())] == \
        ["Overview", "CPU", "Memory", "Boot Options", "Disks", "CD-ROM", "Network", "Display", "Serial"]
    assert not details.apply_button.isEnabled()
    details.memory.setValue(512)
    details.cmdline.setText("console=ttyS0 loglevel=4")
    assert details.apply_button.isEnabled()
    details.revert_button.click()
    assert details.memory.value() == 256
    details.memory.setValue(640)
    details.apply_button.click()
    qtbot.waitUntil(lambda: host.get(cfg.uuid).config.memory_mib == 640, timeout=15_000)
    assert json.loads(ConfigStore().path_for(cfg.uuid).read_text())["memory_mib"] == 640
    qtbot.waitUntil(lambda: not details.apply_button.isEnabled(), timeout=15_000)
    # A bad MAC is refused on the NIC page as it is typed, in one line, and keeps Apply disabled with the reason.
    nic = details.nic_page
    assert not nic.mac.isEnabled() and "no network card" in nic.status.text()
    nic.add_card.click()
    assert nic.backend.currentData() == "user" and nic.mac.isEnabled() and details.apply_button.isEnabled()
    nic.mac.setText("zz:54:00:12:34:56")
    assert "MAC 'zz:54:00:12:34:56'" in nic.mac_error.text() and "\n" not in nic.mac_error.text()
    assert not details.apply_button.isEnabled() and "MAC" in details.apply_button.toolTip()
    nic.mac.setText("53:54:00:12:34:56")
    assert "multicast" in nic.mac_error.text() and not details.apply_button.isEnabled()
    details.revert_button.click()
    vm_window.show_tab("performance")
    assert vm_window.performance is not None
    assert "not running" in vm_window.performance.summary.text()


def test_serial_console_renders_guest_output_and_sends_keys(qtbot, app_parts) -> None:
    host, bridge, window = app_parts
    cfg = define("console")
    reload(qtbot, bridge)
    vm_window = window.open_vm((bridge, cfg.uuid))
    term = vm_window.console.terminal
    qtbot.waitUntil(lambda: cfg.uuid in bridge._serial_open, timeout=15_000)    # subscribed on a bridge worker
    # Output arriving on the service connection's reader thread reaches the widget through the bridge's queued
    # signal (a guest really printing is the journey tests'; this is the terminal's rendering).
    import threading
    t = threading.Thread(target=host._on_serial,
                         args=(cfg.uuid, b"Linux version 6.1\r\n\x1b[1;32mVIREO-BOOT-OK\x1b[0m\r\nvireo:~# "
                                         b"\x1b[2Jcleared\r\n$ "))
    t.start()
    t.join()
    qtbot.waitUntil(lambda: "cleared" in term.text(), timeout=15_000)
    assert "VIREO-BOOT-OK" not in term.text()        # ESC[2J really cleared the screen
    assert term.screen.cursor.x == 2
    # Keys become VT100 bytes; nothing is sent while the VM is shut off.
    sent = []
    term.inputData.connect(sent.append)
    qtbot.keyClicks(term, "ls")
    assert sent == []
    term.read_only = False
    qtbot.keyClicks(term, "ls")
    qtbot.keyClick(term, Qt.Key.Key_Return)
    qtbot.keyClick(term, Qt.Key.Key_Up)
    qtbot.keyClick(term, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClick(term, Qt.Key.Key_Tab)
    assert b"".join(sent) == b"ls\r\x1b[A\x03\t"
    vm_window.grab()   # paints without error


def test_delete_removes_definition_and_disk_when_asked(qtbot, app_parts, xdg, monkeypatch) -> None:
    host, bridge, window = app_parts
    disk = xdg / "data" / "disk.img"
    disk.write_bytes(b"\0" * 512)
    keep = define("keep-disk", disks=[DiskConfig(path=str(disk))])
    drop = define("drop-disk", disks=[DiskConfig(path=str(disk))])
    reload(qtbot, bridge)
    import app.ui.main_window as mw

    monkeypatch.setattr(mw, "confirm_delete", lambda parent, info, used_by: (True, False))
    window.select_vm(keep.uuid)
    window.vm_actions.delete.trigger()
    qtbot.waitUntil(lambda: "keep-disk" not in vm_rows(window), timeout=15_000)
    assert disk.exists()
    monkeypatch.setattr(mw, "confirm_delete", lambda parent, info, used_by: (True, True))
    window.select_vm(drop.uuid)
    window.vm_actions.delete.trigger()
    qtbot.waitUntil(lambda: "drop-disk" not in vm_rows(window), timeout=15_000)
    assert not disk.exists()
    assert ConfigStore().load_all() == ([], [])


def test_delete_dialog_offers_each_disk_and_keeps_the_one_another_vm_uses(qtbot, app_parts, xdg) -> None:
    host, bridge, window = app_parts
    shared, own, spare = (xdg / "data" / n for n in ("shared.img", "own.img", "spare.img"))
    for disk in (shared, own, spare):
        disk.write_bytes(b"\0" * 512)
    define("web", disks=[DiskConfig(path=str(shared))])
    imported = define("imported", disks=[DiskConfig(path=str(shared)), DiskConfig(path=str(own)),
                                         DiskConfig(path=str(spare))])
    reload(qtbot, bridge)
    seen: list[tuple[str, bool, bool, bool]] = []

    def answer() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, answer)
            return
        for check in box.findChildren(QCheckBox, "deleteDisk"):
            seen.append((check.text(), check.isEnabled(), check.isChecked(), check.isVisible()))
            if check.property("path") == str(spare):
                qtbot.mouseClick(check, Qt.MouseButton.LeftButton)        # the user keeps this one
        delete = next(b for b in box.buttons() if b.text() == "Delete")
        qtbot.mouseClick(delete, Qt.MouseButton.LeftButton)

    QTimer.singleShot(0, answer)
    window.select_vm(imported.uuid)
    window.vm_actions.delete.trigger()
    qtbot.waitUntil(lambda: "imported" not in vm_rows(window), timeout=10_000)
    assert seen == [(f"{shared} (used by web)", False, False, True), (str(own), True, True, True),
                    (str(spare), True, True, True)]
    assert shared.exists() and spare.exists() and not own.exists()
    qtbot.waitUntil(lambda: window.statusBar().currentMessage().startswith("Deleted imported"), timeout=15_000)
    assert window.statusBar().currentMessage() == "Deleted imported (2 files removed)"


def test_delete_reports_a_disk_the_host_kept(qtbot, app_parts, xdg, monkeypatch) -> None:
    """The dialog sees only what the bridge lists; the host keeps a disk another VM uses whatever it is asked,
    and the window says so."""
    host, bridge, window = app_parts
    shared = xdg / "data" / "shared.img"
    shared.write_bytes(b"\0" * 512)
    define("web", disks=[DiskConfig(path=str(shared))])
    stale = define("stale", disks=[DiskConfig(path=str(shared))])
    reload(qtbot, bridge)
    import app.ui.main_window as mw

    monkeypatch.setattr(mw, "confirm_delete", lambda parent, info, used_by: (True, [str(shared)]))
    window.select_vm(stale.uuid)
    window.vm_actions.delete.trigger()
    qtbot.waitUntil(lambda: "stale" not in vm_rows(window), timeout=10_000)
    qtbot.waitUntil(lambda: "kept" in window.statusBar().currentMessage(), timeout=15_000)
    assert window.statusBar().currentMessage() == f"Deleted stale (1 file removed); kept {shared}: used by VM 'web'"
    assert shared.exists()


def test_a_failed_start_shows_one_line_and_the_vm_stays_shut_off(qtbot, app_parts, xdg) -> None:
    host, bridge, window = app_parts
    cfg = define("nokernel", kernel=xdg / "gone")
    reload(qtbot, bridge)
    window.select_vm(cfg.uuid)
    window.vm_actions.run.trigger()
    qtbot.waitUntil(lambda: bool(error_dialogs()), timeout=15_000)
    dialog = error_dialogs()[-1]
    assert dialog.text() == "Starting nokernel failed"
    assert "no such file" in dialog.informativeText()
    # The reason reaches the row with the host's state event, which may come after the start call's error reply
    # (a loaded CI run read the tooltip between the two); the row was "Shut off" before the start as well.
    qtbot.waitUntil(lambda: "failed to start" in window.vm_items[cfg.uuid].toolTip(1), timeout=15_000)
    assert vm_rows(window)["nokernel"] == "Shut off"


# -- with the engine ----------------------------------------------------------------------------------------

def test_debian_vm_runs_pauses_resumes_and_powers_off_from_the_gui(qtbot, app_parts, debian_kernel,
                                                                   busybox_initramfs) -> None:
    host, bridge, window = app_parts
    try:
        _debian_journey(qtbot, host, bridge, window, debian_kernel, busybox_initramfs)
    finally:
        # The VM runs in the service, which outlives the window: stop it before the sandbox goes.
        for vm in host.list_vms():
            if vm.state in (VmState.RUNNING, VmState.PAUSED):
                host.force_off(vm.uuid)
        deadline = time.monotonic() + 15
        while bridge.running() and time.monotonic() < deadline:
            qtbot.wait(50)


def _debian_journey(qtbot, host, bridge, window, debian_kernel, busybox_initramfs) -> None:
    cfg = define("debian", kernel=debian_kernel, memory_mib=256)
    cfg.boot.initrd = str(busybox_initramfs)
    cfg.boot.cmdline = "console=ttyS0 quiet vireo.action=shell"
    ConfigStore().save(cfg)
    reload(qtbot, bridge)
    window.select_vm(cfg.uuid)
    vm_window = window.open_vm((bridge, cfg.uuid))
    window.vm_actions.run.trigger()
    qtbot.waitUntil(lambda: vm_rows(window)["debian"] == "Running", timeout=30000)
    # The GUI thread keeps answering while the vCPU boots the kernel.
    stall = event_loop_stall(qtbot, pause_ms=50)
    assert stall < 0.1, f"event loop stalled {stall * 1000:.0f} ms"
    term = vm_window.console.terminal
    qtbot.waitUntil(lambda: "VIREO-BOOT-OK" in "\n".join(term.screen.display), timeout=240000)
    press(qtbot, window.vm_actions.pause)
    qtbot.waitUntil(lambda: vm_rows(window)["debian"] == "Paused", timeout=15000)
    qtbot.waitUntil(window.vm_actions.run.isEnabled, timeout=15000)   # once the pause request's reply is in
    assert window.vm_actions.run.text() == "&Resume"
    press(qtbot, window.vm_actions.run)
    qtbot.waitUntil(lambda: vm_rows(window)["debian"] == "Running", timeout=15000)
    asked: list[str] = []
    answer_question(qtbot, "Force Off", asked)
    window.vm_actions.off.trigger()
    assert asked == ["Force off debian? The guest loses unsaved data."]
    qtbot.waitUntil(lambda: vm_rows(window)["debian"] == "Shut off", timeout=15000)
    assert host.get(cfg.uuid).state == VmState.SHUTOFF
