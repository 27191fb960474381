"""The manager with a libvirt connection (pytest-qt, offscreen, against the private libvirtd): File ▸ Add
Connection ▸ libvirt shows the domain beside Vireo's VMs with its CPU samples, Run starts it, the VM window's
console shows its text screen through VNC and takes typed keys, its serial console echoes through libvirt's
stream, Shut Down powers it off through the guest, Run starts it again; the URI is remembered; a URI whose daemon
is down shows one line in its row."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("PyQt6.QtWidgets")

from PyQt6.QtCore import QSettings  # noqa: E402

from core.host.api import VmState  # noqa: E402
from tests.helpers.libvirtd import DOMAIN, text_lines, vga_bios_glyphs  # noqa: E402


def make_window(qtbot, tmp_path: Path):
    from app.ui.main_window import MainWindow, local_bridge

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow([local_bridge()], settings)
    qtbot.addWidget(window)
    window.show()
    return window


def children(window, index: int) -> list[str]:
    item = window.host_items[index]
    return [item.child(i).text(0) for i in range(item.childCount())]


def test_a_libvirt_domain_in_the_manager(qtbot, tmp_path, libvirtd, local_service):
    window = make_window(qtbot, tmp_path)
    dialog = window.remote_hosts.add_dialog()
    dialog.kind_combo.setCurrentIndex(dialog.kind_combo.findData("libvirt"))
    assert dialog.uri_edit.isVisibleTo(dialog) and not dialog.host_edit.isVisibleTo(dialog)
    dialog.uri_edit.setText("not a uri")
    assert not dialog.buttons.button(dialog.buttons.StandardButton.Ok).isEnabled()
    dialog.uri_edit.setText(libvirtd.uri)
    dialog.accept()
    index = len(window.bridges) - 1
    bridge = window.bridges[index]
    qtbot.waitUntil(lambda: DOMAIN in children(window, index), timeout=30000)
    assert json.loads(window.settings.value("connections/libvirt")) == [libvirtd.uri]
    [uuid] = [v.uuid for v in bridge.vms() if v.name == DOMAIN]
    assert bridge.info(uuid).state == VmState.SHUTOFF

    window.select_vm(uuid)
    window.vm_actions.run.trigger()
    qtbot.waitUntil(lambda: bridge.info(uuid).state == VmState.RUNNING, timeout=30000)
    # Its CPU graph fills from the host's samples, as a Vireo VM's does.
    qtbot.waitUntil(lambda: len(bridge.history(uuid)) >= 2, timeout=30000)
    assert uuid in window.sparklines

    vm_window = window.open_vm((bridge, uuid))
    qtbot.waitUntil(lambda: vm_window.display is not None, timeout=30000)
    vm_window.show_tab("console")
    view = vm_window.display.view
    glyphs = vga_bios_glyphs()
    seen: list[str] = []

    def screen() -> list[str]:
        frame = view.frame
        if frame is not None and (frame.width, frame.height) == (720, 400):
            seen[:] = text_lines(frame, glyphs)
        return seen

    qtbot.waitUntil(lambda: any(line.startswith("vireo:~#") for line in screen()), timeout=120000)
    typed, skipped = view.type_text("echo gui-$((6*7))\n")
    assert skipped == 0 and typed > 0
    qtbot.waitUntil(lambda: "gui-42" in screen(), timeout=30000)
    # The Serial Console tab reaches ttyS0 through libvirt's stream: what is typed there goes into the guest and
    # its line discipline echoes it back.
    vm_window.show_tab("serial")
    term = vm_window.console.terminal
    qtbot.waitUntil(lambda: uuid in bridge._serial_open, timeout=30000)
    qtbot.waitUntil(lambda: not term.read_only, timeout=10000)
    qtbot.keyClicks(term, "serialping")
    qtbot.waitUntil(lambda: "serialping" in term.text(), timeout=30000)

    window.select_vm(uuid)
    window.vm_actions.shutdown.trigger()      # the guest's acpid is listening once its prompt shows
    qtbot.waitUntil(lambda: bridge.info(uuid).state == VmState.SHUTOFF, timeout=60000)
    assert bridge.info(uuid).reason == "shut down by the guest"
    window.vm_actions.run.trigger()
    qtbot.waitUntil(lambda: bridge.info(uuid).state == VmState.RUNNING, timeout=30000)
    bridge.lifecycle("force_off", uuid)
    qtbot.waitUntil(lambda: bridge.info(uuid).state == VmState.SHUTOFF, timeout=30000)
    vm_window.close()
    window.close()

    # A new window connects to the remembered URI by itself.
    window2 = make_window(qtbot, tmp_path)
    index2 = next(i for i, b in enumerate(window2.bridges) if getattr(b.host, "uri", "") == libvirtd.uri)
    qtbot.waitUntil(lambda: DOMAIN in children(window2, index2), timeout=30000)
    window2.close()


def test_a_down_uri_shows_one_line_in_its_row(qtbot, tmp_path, local_service):
    window = make_window(qtbot, tmp_path)
    uri = f"qemu:///session?socket={tmp_path}/no-daemon/libvirt-sock"
    index = window.remote_hosts.add_uri(uri)
    row = window.host_items[index]
    qtbot.waitUntil(lambda: "cannot connect" in row.text(0), timeout=20000)
    assert "\n" not in row.text(0) and uri in row.text(0)
    assert window.isEnabled()
    window.close()
