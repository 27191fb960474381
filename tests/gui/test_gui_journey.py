"""Issues 6 and 11's "done means", literally, as one user journey through the real widgets (pytest-qt, offscreen):
the New VM wizard defines a direct-boot VM from the tests' Debian kernel and busybox initramfs on the software CPU,
with a new 1 GiB qcow2 disk; the main window lists it shut off; Run boots it in its own process under the private
Vireo service (the serial tab shows the marker); typed into the serial tab, the guest finds /dev/vda of 1 GiB, makes
a file system on it and writes a file; Pause and Resume follow in the row; Shut Down presses the ACPI power button
and the guest's acpid powers off by itself; Run again, and the guest reads the file back; qemu-img reads the image
as a clean 1 GiB qcow2; the definition survives a restart of the app, next to a corrupt definition file shown as
an error row; Delete, answered through its dialog, removes the row, the definition and the disk. Two Linux boots.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QPoint, QSettings, Qt, QTimer  # noqa: E402
from PyQt6.QtWidgets import QApplication, QCheckBox, QMessageBox, QRadioButton, QWizard  # noqa: E402

from core.config import ConfigStore  # noqa: E402
from core.host import VmState  # noqa: E402
from tests.gui.test_gui import vm_rows, xdg  # noqa: E402,F401  (xdg: the fixture, reused)
from tests.helpers.dialogs import answer_question  # noqa: E402
from tests.helpers.wizard import wizard_of

BOOT_TIMEOUT_MS = 120_000     # ~2.2 s to the prompt on the software CPU here; slow CI machines get headroom
STATE_TIMEOUT_MS = 15_000
CMDLINE = "console=ttyS0 vireo.action=shell"
CORRUPT = "77777777-7777-4777-8777-777777777777.json"
GIB = 1024 ** 3
# Typed into the serial tab: the disk drivers (the initramfs loads none by itself in the shell action), then the
# disk's size as the guest's block layer reports it, in 512-byte sectors.
LOAD_DISK = ("for m in virtio_pci virtio_blk crc32c_generic ext4; do modprobe $m; done; "
             "until [ -e /dev/vda ]; do sleep 0.1; done; echo VIREO-VDA-SECTORS=$(cat /sys/block/vda/size)")
WRITE_FILE = ("mke2fs -q /dev/vda && mkdir -p /mnt && mount -t ext2 /dev/vda /mnt && "
              "echo journey-was-here > /mnt/proof && umount /mnt && sync && echo VIREO-WROTE''-OK")
READ_FILE = ("mkdir -p /mnt && mount -t ext2 -o ro /dev/vda /mnt && echo VIREO-READ=$(cat /mnt/proof) && "
             "umount /mnt")


def click(qtbot, widget, wait_ms: int = 10_000) -> None:
    """Click the widget as a person would: once it is enabled (a lifecycle button is greyed out while the VM's
    previous operation -- Apply, a force-off -- finishes on its worker), failing if it stays disabled."""
    try:
        qtbot.waitUntil(widget.isEnabled, timeout=wait_ms)
    except qtbot.TimeoutError:
        raise AssertionError(f"{widget.objectName() or widget.text()} is disabled") from None
    pos = QPoint()   # the centre
    if isinstance(widget, (QCheckBox, QRadioButton)):
        # These stretch across their layout but answer clicks only on the indicator and label, at the left.
        pos = QPoint(8, widget.height() // 2)
    qtbot.mouseClick(widget, Qt.MouseButton.LeftButton, pos=pos)


def type_into(qtbot, edit, text: str) -> None:
    """Select what the field holds and type over it, as a user does."""
    edit.setFocus()
    edit.selectAll()
    qtbot.keyClick(edit, Qt.Key.Key_Backspace)
    qtbot.keyClicks(edit, text)


def toolbar_button(window, action):
    button = window.toolbar.widgetForAction(action)
    assert button is not None, f"{action.text()} is not on the toolbar"
    return button


def serial_text(terminal) -> str:
    """The serial terminal's scrollback plus its screen: the marker may have scrolled off by the time we look."""
    screen = terminal.screen
    lines = ["".join(line[x].data for x in range(screen.columns)) for line in screen.history.top]
    return "\n".join(lines + list(screen.display))


def wait_serial(qtbot, terminal, marker: str, timeout_ms: int) -> None:
    try:
        qtbot.waitUntil(lambda: marker in serial_text(terminal), timeout=timeout_ms)
    except qtbot.TimeoutError:
        pytest.fail(f"no {marker!r} on the serial tab after {timeout_ms} ms; it shows:\n"
                    + serial_text(terminal).rstrip()[-3000:], pytrace=False)


def answer_delete_dialog(qtbot, answered: list[str]) -> None:
    """When the modal delete question opens, check what it asks and press its Delete button."""
    def answer() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, answer)
            return
        answered.append(box.text())
        # The VM has the wizard's disk: tick "also delete its disk images".
        answered.append("checkbox" if box.checkBox() is not None else "no checkbox")
        if box.checkBox() is not None:
            box.checkBox().setChecked(True)
        delete = next(b for b in box.buttons() if b.text() == "Delete")
        qtbot.mouseClick(delete, Qt.MouseButton.LeftButton)

    QTimer.singleShot(0, answer)


def type_line(qtbot, term, line: str) -> None:
    term.setFocus()
    qtbot.keyClicks(term, line)
    qtbot.keyClick(term, Qt.Key.Key_Return)


@pytest.fixture
def start_app(qtbot, xdg):  # noqa: F811
    """Builds the app as launch() does (a client of the sandbox's Vireo service, tests/helpers/service.py), but
    closes it itself rather than through qtbot.addWidget, whose teardown runs first."""
    from app.ui.main_window import MainWindow, local_bridge

    apps = []

    def start():
        bridge = local_bridge()
        host = bridge.host
        window = MainWindow([bridge], QSettings(str(xdg / "settings.ini"), QSettings.Format.IniFormat))
        window.show()
        apps.append((host, bridge, window))
        ready = []
        bridge.when_ready(lambda: ready.append(True))   # the host's first read, on a bridge worker
        qtbot.waitUntil(lambda: bool(ready), timeout=10_000)
        return host, bridge, window

    yield start
    for _host, bridge, window in apps:
        for w in list(window.vm_windows.values()):
            w.close()
        window.close()          # leaves the VMs running in the service; the sandbox ends them
        bridge.shutdown()


def test_wizard_to_delete_with_a_debian_guest(qtbot, start_app, debian_kernel, busybox_initramfs) -> None:
    t0 = time.monotonic()
    host, bridge, window = start_app()

    # 1. The New VM wizard, page by page, through its widgets.
    click(qtbot, toolbar_button(window, window.new_action))
    wizard = wizard_of(qtbot, window)
    qtbot.waitExposed(wizard)
    next_button = wizard.button(QWizard.WizardButton.NextButton)
    click(qtbot, wizard.source_page.kernel)
    assert wizard.source_page.kernel.isChecked()
    click(qtbot, next_button)
    assert wizard.currentPage() is wizard.boot_page
    assert not next_button.isEnabled()                      # no kernel chosen yet
    type_into(qtbot, wizard.boot_page.kernel, str(debian_kernel))
    type_into(qtbot, wizard.boot_page.initrd, str(busybox_initramfs))
    type_into(qtbot, wizard.boot_page.cmdline, CMDLINE)
    assert wizard.boot_page.error.text() == ""
    click(qtbot, next_button)
    assert wizard.currentPage() is wizard.resources_page
    type_into(qtbot, wizard.resources_page.memory.lineEdit(), "256")
    type_into(qtbot, wizard.resources_page.cpus.lineEdit(), "1")
    click(qtbot, next_button)
    assert wizard.currentPage() is wizard.storage_page
    storage = wizard.storage_page
    click(qtbot, storage.none)
    assert not storage.size.isEnabled()
    click(qtbot, storage.create)                            # changed our mind: a new disk
    assert storage.size.isEnabled()
    type_into(qtbot, storage.size.lineEdit(), "1")
    storage.format.setCurrentIndex(storage.format.findData("qcow2"))
    click(qtbot, next_button)
    assert wizard.currentPage() is wizard.finish_page
    finish = wizard.finish_page
    type_into(qtbot, finish.name, "journey")
    finish.accel.setCurrentIndex(finish.accel.findData("software"))
    # "Customize before install": the wizard defines the VM without starting it, so the list shows it shut off.
    click(qtbot, finish.customize)
    assert finish.customize.isChecked()
    summary = finish.summary.text()
    assert "256 MiB" in summary and CMDLINE in summary and "vmlinuz-amd64 + initramfs-amd64.cpio.gz" in summary
    with qtbot.waitSignal(wizard.created, timeout=30_000) as created:
        click(qtbot, wizard.button(QWizard.WizardButton.FinishButton))
    uuid, start = created.args
    assert start is False
    qtbot.waitUntil(lambda: vm_rows(window).get("journey") == "Shut off", timeout=15_000)
    cfg = host.get(uuid).config
    assert (cfg.memory_mib, cfg.vcpus, cfg.accel) == (256, 1, "software")
    assert [(d.format, d.bus) for d in cfg.disks] == [("qcow2", "virtio")], cfg.disks
    disk = cfg.disks[0].path
    assert os.path.isfile(disk)
    assert (cfg.boot.kernel, cfg.boot.initrd, cfg.boot.cmdline) == (str(debian_kernel), str(busybox_initramfs),
                                                                    CMDLINE)
    assert ConfigStore().path_for(uuid).is_file()
    vm_window = window.vm_windows[uuid]             # opened on Details by "Customize"
    assert vm_window.tabs.currentWidget() is vm_window.details

    # 2. Run from the main window's toolbar; the serial tab shows the guest booting.
    window.select_vm(uuid)
    vm_window.show_tab("serial")
    click(qtbot, toolbar_button(window, window.vm_actions.run))
    qtbot.waitUntil(lambda: vm_rows(window)["journey"] == "Running", timeout=STATE_TIMEOUT_MS)
    assert window.vm_items[uuid].text(2) == "Software CPU" and host.get(uuid).accel == "software"
    term = vm_window.console.terminal
    wait_serial(qtbot, term, "VIREO-BOOT-OK", BOOT_TIMEOUT_MS)
    # The prompt comes after the shell action started acpid, which the graceful shutdown below relies on.
    wait_serial(qtbot, term, "vireo:~#", BOOT_TIMEOUT_MS)
    booted = time.monotonic() - t0
    # acpid is started in the background just before the shell: type into the serial tab, as a user would, to
    # wait until it holds the power button's event device (an event sent before it opens the device is lost).
    term.setFocus()
    qtbot.keyClicks(term, "until ls -l /proc/$(pidof acpid)/fd 2>/dev/null | grep -q input/event; do sleep 0.1; "
                          "done; echo ACPID-READ''Y")
    qtbot.keyClick(term, Qt.Key.Key_Return)
    wait_serial(qtbot, term, "ACPID-READY", STATE_TIMEOUT_MS)
    # The wizard's disk, as the guest sees it: /dev/vda of 1 GiB; a file system and a file go on it.
    type_line(qtbot, term, LOAD_DISK)
    wait_serial(qtbot, term, f"VIREO-VDA-SECTORS={GIB // 512}", STATE_TIMEOUT_MS)
    type_line(qtbot, term, WRITE_FILE)
    wait_serial(qtbot, term, "VIREO-WROTE-OK", 60_000)

    click(qtbot, toolbar_button(window, window.vm_actions.pause))
    qtbot.waitUntil(lambda: vm_rows(window)["journey"] == "Paused", timeout=STATE_TIMEOUT_MS)
    assert host.get(uuid).state == VmState.PAUSED
    qtbot.waitUntil(lambda: window.vm_actions.run.text() == "&Resume" and window.vm_actions.run.isEnabled(),
                    timeout=15_000)
    click(qtbot, toolbar_button(window, window.vm_actions.run))
    qtbot.waitUntil(lambda: vm_rows(window)["journey"] == "Running", timeout=STATE_TIMEOUT_MS)
    assert host.get(uuid).state == VmState.RUNNING

    # 3. Shut Down (the toolbar button's default action is the graceful one): the guest powers itself off.
    shutdown_button = window.findChild(type(toolbar_button(window, window.vm_actions.run)), "shutdownButton")
    assert shutdown_button.defaultAction() is window.vm_actions.shutdown
    qtbot.waitUntil(lambda: shutdown_button.isEnabled(), timeout=15_000)
    click(qtbot, shutdown_button)
    qtbot.waitUntil(lambda: vm_rows(window)["journey"] == "Shut off", timeout=STATE_TIMEOUT_MS)
    info = host.get(uuid)
    assert info.state == VmState.SHUTOFF and info.reason == "guest powered off", info.reason
    wait_serial(qtbot, term, "VIREO-POWER-BUTTON", 5000)

    # The VM again, from the same definition: the file written before is on the disk.
    term.clear()        # the prompt to wait for is the new boot's
    click(qtbot, toolbar_button(window, window.vm_actions.run))
    qtbot.waitUntil(lambda: vm_rows(window)["journey"] == "Running", timeout=STATE_TIMEOUT_MS)
    wait_serial(qtbot, term, "vireo:~#", BOOT_TIMEOUT_MS)
    type_line(qtbot, term, LOAD_DISK + "; " + READ_FILE)
    wait_serial(qtbot, term, "VIREO-READ=journey-was-here", 60_000)
    qtbot.waitUntil(lambda: window.vm_actions.off.isEnabled(), timeout=15_000)
    asked: list[str] = []
    answer_question(qtbot, "Force Off", asked)              # Force Off asks first; the answer is Force Off
    window.vm_actions.off.trigger()                         # Force Off, from the Shut Down button's menu
    assert asked == ["Force off journey? The guest loses unsaved data."]
    qtbot.waitUntil(lambda: vm_rows(window)["journey"] == "Shut off", timeout=STATE_TIMEOUT_MS)
    # The image, as qemu-img reads it: a consistent qcow2 of 1 GiB.
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        assert not os.environ.get("CI"), "qemu-img is missing (Debian's qemu-utils)"
    else:
        info = json.loads(subprocess.run([qemu_img, "info", "--output=json", disk], check=True,
                                         capture_output=True, text=True).stdout)
        assert (info["format"], info["virtual-size"]) == ("qcow2", GIB), info
        subprocess.run([qemu_img, "check", disk], check=True, capture_output=True)

    # 4. Restart the app over the same XDG directories, with a corrupt definition beside ours.
    (ConfigStore().directory / CORRUPT).write_text('{"name": "broken", "memory_mib": ')
    window.close()
    assert not window.isVisible()
    host, bridge, window = start_app()
    rows = vm_rows(window)
    assert rows["journey"] == "Shut off"
    # 6. The corrupt file is an error row naming it, not a crash; the file stays as it was.
    errors = [name for name in rows if name.startswith("Cannot load " + CORRUPT)]
    assert len(errors) == 1, (rows, host.load_errors(), bridge.load_errors(), os.listdir(ConfigStore().directory))
    assert (ConfigStore().directory / CORRUPT).read_text() == '{"name": "broken", "memory_mib": '

    # 5. Delete, answering the question in its dialog.
    window.select_vm(uuid)
    answered: list[str] = []
    answer_delete_dialog(qtbot, answered)
    click(qtbot, toolbar_button(window, window.vm_actions.delete))
    assert answered == ["Delete the virtual machine “journey”?", "checkbox"]
    qtbot.waitUntil(lambda: "journey" not in vm_rows(window), timeout=STATE_TIMEOUT_MS)
    assert not ConfigStore().path_for(uuid).exists()
    qtbot.waitUntil(lambda: not os.path.exists(disk), timeout=STATE_TIMEOUT_MS)
    assert [n for n in vm_rows(window) if n.startswith("Cannot load")] == errors
    assert os.listdir(ConfigStore().directory) == [CORRUPT]
    elapsed = time.monotonic() - t0
    print(f"journey: booted to the prompt after {booted:.1f} s, whole journey {elapsed:.1f} s")
