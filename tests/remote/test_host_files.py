"""Host.files() (core/host/files.py): an SSH host's files over SFTP on the connection the host holds, against a real
sshd (tests/helpers/remote.py), and this machine's; the same answers from both for the same folder, and one-line
errors naming the path and the host."""
from __future__ import annotations

import time

import pytest

from core.host import HostError
from core.host.files import LocalFiles
from core.remote.host import RemoteHost
from core.remote.ssh import parse_uri
from tests.gui.test_remote_gui import _Trusting, server  # noqa: F401
from tests.helpers.remote import REPO_PYTHON


@pytest.fixture
def remote(server):  # noqa: F811
    target = parse_uri(server.uri(python=REPO_PYTHON))
    target.identity = str(server.user_key)
    host = RemoteHost(target, _Trusting())
    host.connect()
    yield host
    host.close()


def test_sftp_lists_finds_and_removes_files_as_this_machine_sees_them(remote, tmp_path) -> None:
    tmp_path = tmp_path / "shown"            # (tmp_path itself holds the sshd's files)
    tmp_path.mkdir()
    (tmp_path / "b-disk.qcow2").write_bytes(b"\0" * 1536)
    (tmp_path / "A-folder").mkdir()
    (tmp_path / "link-to-folder").symlink_to(tmp_path / "A-folder")
    files = remote.files()
    assert not files.local and LocalFiles().local
    listed = files.listdir(str(tmp_path))
    assert listed == LocalFiles().listdir(str(tmp_path))
    assert [(e.name, e.is_dir, e.size) for e in listed] == [("A-folder", True, 0), ("link-to-folder", True, 0),
                                                           ("b-disk.qcow2", False, 1536)]
    assert files.exists(str(tmp_path / "b-disk.qcow2")) and not files.exists(str(tmp_path / "nope"))
    files.remove(str(tmp_path / "b-disk.qcow2"))
    assert not (tmp_path / "b-disk.qcow2").exists()
    assert files.home().startswith("/")


def test_sftp_errors_name_the_path_and_the_host(remote, tmp_path) -> None:
    files = remote.files()
    with pytest.raises(HostError) as missing:
        files.listdir(str(tmp_path / "nope"))
    assert str(missing.value) == f"cannot list {tmp_path / 'nope'} on {remote.name}: it does not exist"
    with pytest.raises(HostError) as gone:
        files.remove(str(tmp_path / "nope"))
    assert str(gone.value) == f"cannot remove {tmp_path / 'nope'} on {remote.name}: it does not exist"
    remote.close()
    with pytest.raises(HostError, match="is not connected: connect to it first"):
        remote.files().listdir(str(tmp_path))


def test_the_remote_images_folder_is_listed_and_its_used_images_kept(remote, server) -> None:  # noqa: F811
    from core.config import DiskConfig, VmConfig

    folder = server.data_home / "vireo" / "images"
    remote.create_disk(str(folder / "used.qcow2"), 1 << 30, "qcow2")
    remote.create_disk(str(folder / "free.img"), 1 << 20, "raw")
    remote.define(VmConfig(name="user", memory_mib=64, disks=[DiskConfig(str(folder / "used.qcow2"), "qcow2")]))
    listed = {e.path: (e.format, e.virtual_size, e.used_by) for e in remote.list_images()}
    assert listed == {str(folder / "free.img"): ("raw", 1 << 20, ""),
                      str(folder / "used.qcow2"): ("qcow2", 1 << 30, "used by VM 'user'")}
    with pytest.raises(HostError, match="is used by VM 'user': remove it from that VM first"):
        remote.delete_image(str(folder / "used.qcow2"))
    remote.delete_image(str(folder / "free.img"))
    assert not (folder / "free.img").exists() and (folder / "used.qcow2").exists()


def test_the_remote_hosts_load_counters_come_through_the_service(remote) -> None:
    from core.host import rates

    first = remote.host_counters()
    time.sleep(0.2)         # /proc/stat counts in clock ticks (10 ms): a few of them apart
    second = remote.host_counters()
    assert second.timestamp > first.timestamp and second.cpu_total > first.cpu_total
    assert 0 < first.memory_used_mib < first.memory_total_mib
    cpu, mem, disk, net = rates(first, second)
    assert 0 <= cpu <= 100 and mem == second.memory_used_mib and disk >= 0 and net >= 0
