"""Moving a VM between this computer's service and an SSH host (core/remote/move.py over Host.migrate's steps,
core/host/move.py; `vireo move`; docs/clone-and-move.md), against the real sshd of tests/helpers/remote.py. The
guest is tests/guests/counter.s: saved here, moved, resumed there, its counter carries on from where it stopped;
and back again with the CLI. A name taken on the destination, no room there, and a peer that disconnects mid-copy
each give one line and leave the source as it was."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.config import DiskConfig, VmConfig
from core.connect import move_vm
from core.host import HostError, VmState
from core.remote.host import RemoteHost
from core.remote.ssh import parse_uri
from tests.guests.build import guest_path
from tests.helpers.remote import REPO_PYTHON, SshServer
from tests.helpers.runner import REPO_ROOT
from tests.helpers.service import ServiceSandbox


class _Trust:
    def confirm_host_key(self, *args) -> bool:
        return True

    def secret(self, *args):
        return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = SshServer(tmp_path_factory.mktemp("move-ssh")).start()
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(srv.root / "client-cache")     # where the agent's bundle is packed
    yield srv
    srv.stop()
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = saved


def _remote(server: SshServer) -> RemoteHost:
    target = parse_uri(server.uri(python=REPO_PYTHON))
    target.identity = str(server.user_key)
    target.known_hosts = server.known_hosts
    host = RemoteHost(target, _Trust())
    host.connect()
    return host


class Serial:
    def __init__(self) -> None:
        self.data = bytearray()
        self.cond = threading.Condition()

    def __call__(self, data: bytes) -> None:
        with self.cond:
            self.data += data
            self.cond.notify_all()

    def counters(self) -> list[int]:
        with self.cond:
            return [int(n) for n in re.findall(rb"counter: (\d+)", bytes(self.data))]

    def wait_above(self, value: int, timeout: float = 30) -> list[int]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [int(n) for n in re.findall(rb"counter: (\d+)", bytes(self.data))]
                if got and got[-1] > value:
                    return got
                left = deadline - time.monotonic()
                assert left > 0, f"the counter did not pass {value}: {got[-5:]}"
                self.cond.wait(min(left, 0.2))


def _wait(host, uuid: str, state: VmState, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while host.get(uuid).state != state:
        assert time.monotonic() < deadline, f"{host.get(uuid).state}, not {state}"
        time.sleep(0.05)


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _counter_vm(host, folder: Path, name: str) -> VmConfig:
    disk = folder / f"{name}.qcow2"
    host.create_disk(str(disk), 4 << 20, fmt="qcow2")
    cfg = VmConfig(name=name, memory_mib=32, accel="software", disks=[DiskConfig(str(disk), "qcow2")])
    cfg.boot.kernel = str(guest_path("counter"))
    cfg.display.type = "none"
    return host.define(cfg).config


def _run_and_save(host, uuid: str, above: int = 4) -> int:
    """Start the VM (unless it runs), let its counter pass `above`, save it; the last counter printed."""
    serial = Serial()
    host.subscribe_serial(uuid, serial)
    if host.get(uuid).state != VmState.RUNNING:
        host.start(uuid)
    serial.wait_above(above)
    host.save(uuid)
    _wait(host, uuid, VmState.SHUTOFF)
    host.unsubscribe_serial(uuid, serial)
    return serial.counters()[-1]


def _resume(host, uuid: str, last: int) -> list[int]:
    """Start the moved VM: it resumes from its saved state, the counter going on from `last`."""
    serial = Serial()
    host.subscribe_serial(uuid, serial)
    host.start(uuid)
    got = serial.wait_above(last + 3)
    host.unsubscribe_serial(uuid, serial)
    return got


def test_a_saved_vm_moves_to_the_ssh_host_resumes_there_and_comes_back(local_service: ServiceSandbox,
                                                                       server: SshServer) -> None:
    local = local_service.connect()
    remote = _remote(server)
    try:
        images = local_service.data_home / "vireo" / "images"
        cfg = _counter_vm(local, images, "mover")
        local.snapshot_create(cfg.uuid, "before", "taken shut off")      # inside the disk, described beside it
        last = _run_and_save(local, cfg.uuid)
        state = local_service.vms_dir / "saved" / f"{cfg.uuid}.state"
        assert state.is_file()
        described = local_service.vms_dir / "snapshots" / f"{cfg.uuid}.json"
        carried = state.stat().st_size + Path(cfg.disks[0].path).stat().st_size + described.stat().st_size
        seen: list[tuple[int, int]] = []
        moved = move_vm(local, remote, cfg.uuid, lambda d, t: seen.append((d, t)))
        assert moved.uuid == cfg.uuid and moved.state == VmState.SHUTOFF
        assert seen and seen[-1] == (carried, carried)          # progress went to the end of every file
        # The source let go only now: definition, disk and saved state are gone here.
        assert cfg.uuid not in [v.uuid for v in local.list_vms()]
        assert not Path(cfg.disks[0].path).exists() and not state.exists()
        remote_disk = moved.config.disks[0].path
        assert remote_disk.startswith(str(server.data_home)) and os.path.isfile(remote_disk)
        assert (server.config_home / "vireo" / "vms" / "saved" / f"{cfg.uuid}.state").is_file()
        assert [(s.name, s.description) for s in remote.snapshot_list(cfg.uuid)] == [("before", "taken shut off")]
        assert not (local_service.vms_dir / "snapshots" / f"{cfg.uuid}.json").exists()
        after = _resume(remote, cfg.uuid, last)
        assert after[0] == last + 1, (last, after[:5])             # carried on, not booted afresh
        # And back, by the CLI: saved there, moved to this computer, resumed here.
        again = _run_and_save(remote, cfg.uuid, after[-1])
        env = dict(server.client_env(), **local_service.env)
        result = subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), "move", "mover", "--to", "local",
                                 "--connect", server.uri(python=REPO_PYTHON), "--identity", str(server.user_key)],
                                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and result.stderr == "", result
        assert "Domain 'mover' moved to Local" in result.stdout
        remote.reload()
        deadline = time.monotonic() + 10
        while cfg.uuid in [v.uuid for v in remote.list_vms()]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not os.path.exists(remote_disk)
        local.reload()
        deadline = time.monotonic() + 10
        while cfg.uuid not in [v.uuid for v in local.list_vms()]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        back = _resume(local, cfg.uuid, again)
        assert back[0] == again + 1, (again, back[:5])
        assert [s.name for s in local.snapshot_list(cfg.uuid)] == ["before"]
        local.force_off(cfg.uuid)
    finally:
        remote.close()


def _intact(host, uuid: str, disk: str, digest: str, state: Path) -> None:
    assert host.get(uuid).state == VmState.SHUTOFF
    assert _sha(disk) == digest and state.is_file()


def test_bad_moves_say_why_in_one_line_and_keep_the_source(local_service: ServiceSandbox,
                                                          server: SshServer) -> None:
    local = local_service.connect()
    remote = _remote(server)
    try:
        images = local_service.data_home / "vireo" / "images"
        cfg = _counter_vm(local, images, "stayer")
        _run_and_save(local, cfg.uuid)
        state = local_service.vms_dir / "saved" / f"{cfg.uuid}.state"
        digest = _sha(cfg.disks[0].path)

        # A VM of that name on the destination.
        twin = remote.define(VmConfig(name="STAYER", accel="software"))
        with pytest.raises(HostError) as err:
            move_vm(local, remote, cfg.uuid)
        assert "already exists" in str(err.value) and "\n" not in str(err.value)
        remote.delete(twin.uuid)
        _intact(local, cfg.uuid, cfg.disks[0].path, digest, state)

        # No room there: a sparse disk larger than the destination's free space.
        big = images / "big.raw"
        st = os.statvfs(str(server.data_home))
        with open(big, "wb") as f:
            f.truncate((st.f_bavail * st.f_frsize + (1 << 40)) // 512 * 512)
        roomy = local.define(VmConfig(name="roomy", accel="software", disks=[DiskConfig(str(big))]))
        with pytest.raises(HostError) as err:
            move_vm(local, remote, roomy.uuid)
        assert "not enough space" in str(err.value) and "\n" not in str(err.value)
        assert local.get(roomy.uuid).state == VmState.SHUTOFF and big.is_file()
        assert "roomy" not in [v.name for v in remote.list_vms()]

        # The peer disconnects mid-copy.
        def cut(done: int, total: int) -> None:
            remote._drop_transport()
        with pytest.raises(HostError) as err:
            move_vm(local, remote, cfg.uuid, cut)
        assert "stayer keeps it" in str(err.value) or "Local keeps it" in str(err.value)
        assert "\n" not in str(err.value)
        _intact(local, cfg.uuid, cfg.disks[0].path, digest, state)
        remote.connect()
        assert cfg.uuid not in [v.uuid for v in remote.list_vms()]
        # Nothing half-done counts as a VM there; a later move goes through.
        moved = move_vm(local, remote, cfg.uuid)
        assert moved.state == VmState.SHUTOFF and os.path.isfile(moved.config.disks[0].path)
        remote.delete(moved.uuid, delete_disks=True)
    finally:
        remote.close()


def test_a_linked_clone_and_its_original_move_with_their_shared_base(local_service: ServiceSandbox,
                                                                     server: SshServer) -> None:
    """A linked clone's overlay goes with its backing file; the original (now an overlay on the same base) then
    finds that base there already, checked by its SHA-256 and shared, not copied again. Both start there."""
    import json
    import subprocess as sp

    local = local_service.connect()
    remote = _remote(server)
    try:
        images = local_service.data_home / "vireo" / "images"
        cfg = _counter_vm(local, images, "linkbase")
        clone = local.clone(cfg.uuid, "linked1", linked=True)
        moved = move_vm(local, remote, clone.uuid)
        top = moved.config.disks[0].path
        info = json.loads(sp.run(["qemu-img", "info", "--output=json", "--backing-chain", top], check=True,
                                 capture_output=True, text=True).stdout)
        assert len(info) == 2 and Path(info[1]["filename"]).parent == Path(top).parent   # the base came along
        base_there = info[1]["filename"]
        assert sp.run(["qemu-img", "check", top], capture_output=True).returncode == 0
        assert local.get(cfg.uuid).state == VmState.SHUTOFF              # the original still reads its base here
        again = move_vm(local, remote, cfg.uuid)
        top2 = again.config.disks[0].path
        info2 = json.loads(sp.run(["qemu-img", "info", "--output=json", "--backing-chain", top2], check=True,
                                  capture_output=True, text=True).stdout)
        assert info2[1]["filename"] == base_there                         # one base, shared by both
        for uuid in (clone.uuid, cfg.uuid):
            serial = Serial()
            remote.subscribe_serial(uuid, serial)
            remote.start(uuid)
            serial.wait_above(2)
            remote.force_off(uuid)
    finally:
        remote.close()
