"""The manager with a remote host (pytest-qt, offscreen, against a real sshd from tests/helpers/remote.py): the Add
Connection dialog connects in the background, the host row shows the remote host's facts and its VMs, the
connection is remembered (host, port, user, key path — no secret), an unreachable host shows its error in its row,
and quitting leaves the remote VMs alone."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("PyQt6.QtWidgets")

from PyQt6.QtCore import QSettings  # noqa: E402

from core.config import BootConfig, VmConfig  # noqa: E402
from core.remote.host import RemoteHost  # noqa: E402
from core.remote.known_hosts import KnownHosts  # noqa: E402
from core.remote.ssh import parse_uri  # noqa: E402
from tests.helpers.remote import REPO_PYTHON, SshServer  # noqa: E402


class _Trusting:
    def confirm_host_key(self, *args) -> bool:
        return True

    def secret(self, *args, **kw):
        return None


@pytest.fixture
def server(tmp_path, monkeypatch):
    srv = SshServer(tmp_path / "ssh").start()
    monkeypatch.setenv("HOME", str(srv.client_home))              # ~/.ssh/known_hosts of the client
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "local-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "local-data"))
    # The host is known already: the dialog test is about connecting, not about the host-key question.
    KnownHosts().add("127.0.0.1", srv.port, "ssh-ed25519", base64.b64decode(srv.host_public_key()))
    yield srv
    srv.stop()


@pytest.fixture
def remote_vm(server):
    """A VM defined on the remote host beforehand, through the agent."""
    target = parse_uri(server.uri(python=REPO_PYTHON))
    target.identity = str(server.user_key)
    host = RemoteHost(target, _Trusting())
    host.connect()
    info = host.define(VmConfig(name="remote-box", memory_mib=64, boot=BootConfig("/boot/remote-kernel")))
    host.close()
    return info


def make_window(qtbot, tmp_path: Path, local_service):
    from app.ui.main_window import MainWindow, local_bridge

    bridge = local_bridge()
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow([bridge], settings)
    qtbot.addWidget(window)
    window.show()
    return window


def children(window, index: int) -> list[str]:
    item = window.host_items[index]
    return [item.child(i).text(0) for i in range(item.childCount())]


def test_add_connection_dialog_shows_the_remote_host_and_its_vms(qtbot, tmp_path, server, remote_vm, local_service):
    window = make_window(qtbot, tmp_path, local_service)
    dialog = window.remote_hosts.add_dialog()
    dialog.host_edit.setText("127.0.0.1")
    dialog.port_spin.setValue(server.port)
    dialog.user_edit.setText(server.user)
    dialog.auth_combo.setCurrentIndex(dialog.auth_combo.findData("key"))
    dialog.key_edit.setText(str(server.user_key))
    dialog.python_edit.setText(REPO_PYTHON)
    dialog.accept()
    index = len(window.bridges) - 1
    assert index == 1
    host = window.bridges[index].host
    qtbot.waitUntil(lambda: host.connected and "remote-box" in children(window, index), timeout=30000)
    # The row's label is made once the host's facts are read, which may come after its VM rows.
    qtbot.waitUntil(lambda: window.tree.itemWidget(window.host_items[index], 0) is not None, timeout=30000)
    label = window.tree.itemWidget(window.host_items[index], 0)
    assert f"{server.user}@127.0.0.1:{server.port}" in label.text()
    assert "CPUs" in label.text()
    # Remembered without secrets, and quitting leaves the remote VM alone (its agent keeps it).
    saved = json.loads(window.settings.value("connections/list"))
    assert saved == [{"host": "127.0.0.1", "port": server.port, "user": server.user,
                      "identity": str(server.user_key), "auth": "key", "python": REPO_PYTHON,
                      "copy_unicorn": None}]
    window.close()
    assert not host.connected
    # A new window finds it remembered, not yet connected; a double-click connects.
    window2 = make_window(qtbot, tmp_path, local_service)
    assert len(window2.bridges) == 2
    row = window2.host_items[1]
    assert "not connected" in row.text(0)
    window2.tree.itemDoubleClicked.emit(row, 0)
    host2 = window2.bridges[1].host
    qtbot.waitUntil(lambda: host2.connected and "remote-box" in children(window2, 1), timeout=30000)
    window2.close()


def test_an_unreachable_host_shows_its_error_in_its_row(qtbot, tmp_path, server, local_service):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]           # nothing listens there once the socket is closed
    window = make_window(qtbot, tmp_path, local_service)
    target = parse_uri(f"ssh://{server.user}@127.0.0.1:{closed_port}")
    index = window.remote_hosts.add(target, remember=False)
    row = window.host_items[index]
    qtbot.waitUntil(lambda: "cannot connect" in row.text(0), timeout=20000)
    assert "refused" in row.text(0).lower()
    # The window answered all along (the connection ran on a worker): it still does.
    assert window.isEnabled()
    window.close()
    assert os.environ["HOME"] == str(server.client_home)


def test_a_host_without_unicorn_is_asked_about_once(qtbot, tmp_path, server, local_service):
    """Issue 17: the software CPU's module is offered to a host that lacks it (here the system python3, without
    unicorn), asked once per host: No keeps the host KVM-only, and the next connection does not ask again."""
    from app.ui.connections import remembered
    from core.remote import choices
    from tests.helpers.dialogs import answer_question

    system_python = "/usr/bin/python3"
    if not os.path.exists(system_python):
        pytest.skip("no system python3")
    window = make_window(qtbot, tmp_path, local_service)
    dialog = window.remote_hosts.add_dialog()
    assert dialog.unicorn_check.isChecked()              # offered by default
    dialog.host_edit.setText("127.0.0.1")
    dialog.port_spin.setValue(server.port)
    dialog.user_edit.setText(server.user)
    dialog.auth_combo.setCurrentIndex(dialog.auth_combo.findData("key"))
    dialog.key_edit.setText(str(server.user_key))
    dialog.python_edit.setText(system_python)
    asked: list[str] = []
    answer_question(qtbot, "No", asked)
    dialog.accept()
    index = len(window.bridges) - 1
    host = window.bridges[index].host
    qtbot.waitUntil(lambda: host.connected, timeout=60_000)
    label = f"{server.user}@127.0.0.1:{server.port}"
    assert asked == [f"Copy the software CPU to {label}?"]
    assert host.report is not None and not host.report.software_cpu
    assert not any(u.startswith("unicorn") for u in host.report.uploaded)
    assert choices.get(label, "copy_unicorn") is False
    assert remembered(window.settings)[0][1] is None        # the setting is "ask"; the answer is kept apart
    # Connected again: the answer stands, nothing is asked.
    # At once, as a user may: the Connect can begin while the Disconnect's close() still runs on its worker
    # (tests/remote/test_connect_race.py holds each interleaving).
    window.remote_hosts.disconnect(index)
    qtbot.waitUntil(lambda: not host.connected, timeout=10_000)
    window.remote_hosts.connect(index)
    try:
        qtbot.waitUntil(lambda: host.connected, timeout=60_000)
    except Exception:
        pytest.fail(f"not connected again: state {host.state!r}, error {host.error!r}")
    qtbot.wait(200)
    assert asked == [f"Copy the software CPU to {label}?"]
    window.close()
    qtbot.waitUntil(lambda: not host.connected, timeout=10_000)
