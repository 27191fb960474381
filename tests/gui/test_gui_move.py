"""Move to Host… in the main window (app/ui/move_dialog.py, issue 15), pytest-qt against a real sshd
(tests/helpers/remote.py): the dialog lists the connected SSH host; a name taken there is refused in the dialog in
one line with the VM left here; then the saved counter guest moves with a progress bar to the end, shows under the
SSH host's row and no longer here, and ("Start it there") resumes there with its counter carrying on."""
from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path

import pytest

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("pytestqt")

from PyQt6.QtCore import QSettings  # noqa: E402
from PyQt6.QtWidgets import QDialogButtonBox  # noqa: E402

from app.ui.move_dialog import MoveDialog, connected  # noqa: E402
from core.config import DiskConfig, VmConfig  # noqa: E402
from core.host import VmState  # noqa: E402
from core.remote.known_hosts import KnownHosts  # noqa: E402
from core.remote.ssh import parse_uri  # noqa: E402
from tests.guests.build import guest_path  # noqa: E402
from tests.helpers.remote import REPO_PYTHON, SshServer  # noqa: E402


@pytest.fixture
def server(tmp_path, monkeypatch, local_service):
    srv = SshServer(tmp_path / "ssh").start()
    monkeypatch.setenv("HOME", str(srv.client_home))              # ~/.ssh/known_hosts of the client
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    KnownHosts().add("127.0.0.1", srv.port, "ssh-ed25519", base64.b64decode(srv.host_public_key()))
    yield srv
    srv.stop()


def _children(window, index: int) -> list[str]:
    item = window.host_items[index]
    return [item.child(i).text(0) for i in range(item.childCount())]


def _counters(data: bytearray) -> list[int]:
    return [int(n) for n in re.findall(rb"counter: (\d+)", bytes(data))]


def _wait_counter(data: bytearray, above: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while not (_counters(data) and _counters(data)[-1] > above):
        assert time.monotonic() < deadline, _counters(data)[-5:]
        time.sleep(0.05)
    return _counters(data)


def test_move_to_host_dialog_moves_a_saved_vm_to_the_ssh_host(qtbot, tmp_path, server, local_service) -> None:
    from app.ui.main_window import MainWindow, local_bridge

    window = MainWindow([local_bridge()], QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    window.show()
    local = window.bridges[0]
    qtbot.waitUntil(lambda: connected(local), timeout=20_000)
    images = local_service.data_home / "vireo" / "images"
    disk = images / "gui-mover.qcow2"
    local.host.create_disk(str(disk), 4 << 20, fmt="qcow2")
    cfg = VmConfig(name="gui-mover", memory_mib=32, accel="software", disks=[DiskConfig(str(disk), "qcow2")])
    cfg.boot.kernel = str(guest_path("counter"))
    cfg.display.type = "none"
    uuid = local.host.define(cfg).uuid
    out = bytearray()
    local.host.subscribe_serial(uuid, out.extend)
    local.host.start(uuid)
    _wait_counter(out, 3)
    local.host.save(uuid)
    qtbot.waitUntil(lambda: local.host.get(uuid).state == VmState.SHUTOFF, timeout=20_000)
    last = _counters(out)[-1]

    target = parse_uri(server.uri(python=REPO_PYTHON))
    target.identity = str(server.user_key)
    index = window.remote_hosts.add(target, copy_unicorn=False, connect=True, remember=False)
    remote = window.bridges[index]
    qtbot.waitUntil(lambda: connected(remote), timeout=60_000)
    twin = remote.host.define(VmConfig(name="GUI-MOVER", accel="software"))
    qtbot.waitUntil(lambda: "gui-mover" in _children(window, 0), timeout=10_000)

    window.select_vm(uuid)
    assert "&Move to Host…" in [a.text() for a in window.vm_menu.actions()]
    window.clone_move.move.trigger()
    dialog: MoveDialog = window.clone_move.dialog
    assert [dialog.hosts.itemText(i) for i in range(dialog.hosts.count())] == [remote.host.name]
    ok = dialog.buttons.button(QDialogButtonBox.StandardButton.Ok)
    ok.click()
    qtbot.waitUntil(lambda: "already exists" in dialog.message.text(), timeout=30_000)
    assert "\n" not in dialog.message.text() and ok.isEnabled()
    assert local.host.get(uuid).state == VmState.SHUTOFF and disk.is_file()

    remote.host.delete(twin.uuid)
    there = bytearray()
    dialog.start_there.setChecked(True)
    values: list[int] = []
    dialog.progress.valueChanged.connect(values.append)
    closed: list[int] = []
    dialog.finished.connect(closed.append)
    ok.click()
    qtbot.waitUntil(lambda: bool(closed), timeout=120_000)
    assert closed == [1] and values and values[-1] == 100
    qtbot.waitUntil(lambda: "gui-mover" in _children(window, index) and "gui-mover" not in _children(window, 0),
                    timeout=10_000)
    assert not disk.exists()

    qtbot.waitUntil(lambda: remote.host.get(uuid).state == VmState.RUNNING, timeout=30_000)  # "Start it there"
    live = bytearray()
    there[:] = remote.host.subscribe_serial(uuid, live.extend)    # what this boot printed so far, then the rest
    deadline = time.monotonic() + 30
    while not (_counters(there + live) and _counters(there + live)[-1] > last + 2):
        assert time.monotonic() < deadline, _counters(there + live)[-5:]
        time.sleep(0.05)
    after = _counters(there + live)
    assert after[0] == last + 1, (last, after[:5])
    remote.host.force_off(uuid)
    for bridge in window.bridges:
        bridge.shutdown()
    remote.host.close()
    assert Path(server.data_home).is_dir()
