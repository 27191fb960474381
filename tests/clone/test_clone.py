"""Cloning a VM (core/host/clone.py through the service, `vireo clone`; docs/clone-and-move.md): a clone boots the
Debian kernel with its copied disk as /dev/vda, what it writes leaves the original's file as it was (checksummed
before and after), a linked clone's image names its backing file as `qemu-img info` reads it, the clone has a new
uuid and MAC, and a running VM is refused with one line."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import DiskConfig, NicConfig, VmConfig
from core.host import HostError, VmState
from core.storage import open_image
from tests.guests.build import guest_path
from tests.helpers.runner import REPO_ROOT
from tests.helpers.service import ServiceSandbox
from tests.service.test_local_service import LOAD_VIRTIO_BLK, boot_to_shell, run, shell_vm, wait_state

MARK = b"VIREO-ORIGINAL-DATA".ljust(512, b"\0")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _original(local_service: ServiceSandbox, host, kernel: Path, initrd: Path, fmt: str = "qcow2"):
    """A shut-off shell VM whose disk (in the images folder) starts with MARK."""
    image = local_service.data_home / "vireo" / "images" / f"orig.{fmt}"
    host.create_disk(str(image), 64 << 20, fmt=fmt)
    with open_image(str(image)) as dev:
        dev.write(0, MARK)
        dev.flush()
    return host.define(shell_vm("orig", kernel, initrd, disks=[DiskConfig(path=str(image), format=fmt)])), image


def _boot_and_overwrite(host, uuid: str) -> None:
    """Boot the clone: its /dev/vda starts with the original's data; then it writes over it and powers off."""
    uuid, serial = boot_to_shell(host, host.get(uuid).config)
    run(host, uuid, serial, LOAD_VIRTIO_BLK + "head -c 19 /dev/vda; echo", "VIREO-ORIGINAL-DATA")
    run(host, uuid, serial, "echo clone-wrote > /tmp/f && dd if=/tmp/f of=/dev/vda bs=512 count=1 conv=fsync "
                            "2>/dev/null && echo dd-$?", "dd-0")
    host.force_off(uuid)
    wait_state(host, uuid, VmState.SHUTOFF, 30)


def test_a_full_clone_boots_and_leaves_the_original_alone(local_service: ServiceSandbox, debian_kernel: Path,
                                                          busybox_initramfs: Path) -> None:
    host = local_service.connect()
    orig, image = _original(local_service, host, debian_kernel, busybox_initramfs)
    host.snapshot_create(orig.uuid, "pristine", "before the clone")
    before = _sha(image)
    seen: list[tuple[int, int]] = []
    clone = host.clone(orig.uuid, "copy", progress=lambda done, total: seen.append((done, total)))
    assert clone.name == "copy" and clone.uuid != orig.uuid
    new_disk = Path(clone.config.disks[0].path)
    assert new_disk.parent == image.parent and new_disk != image and clone.config.disks[0].format == "qcow2"
    assert seen and seen[-1][0] == seen[-1][1] > 0, seen          # progress reached the whole copy
    assert [(s.name, s.description) for s in host.snapshot_list(clone.uuid)] == [("pristine", "before the clone")]
    _boot_and_overwrite(host, clone.uuid)
    assert _sha(image) == before                                   # the original's file is byte for byte the same
    with open_image(str(new_disk), read_only=True) as dev:
        assert dev.read(0, 12) == b"clone-wrote\n"
    assert host.get(orig.uuid).config.disks[0].path == str(image)


def test_a_linked_clone_names_its_backing_file(local_service: ServiceSandbox, debian_kernel: Path,
                                               busybox_initramfs: Path) -> None:
    host = local_service.connect()
    orig, image = _original(local_service, host, debian_kernel, busybox_initramfs, fmt="raw")
    clone = host.clone(orig.uuid, "thin", linked=True)
    disk = clone.config.disks[0]
    assert disk.format == "qcow2" and Path(disk.path).parent == image.parent
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", disk.path], check=True,
                                     capture_output=True, text=True).stdout)
    base = Path(info["full-backing-filename"])
    assert info["backing-filename"] == base.name         # named beside it: the pair can move as one (move.py)
    assert info["format"] == "qcow2" and base.is_file() and base != image
    assert info.get("backing-filename-format") == "raw"
    # The original reads the same base through its own overlay at its old path: the base is written by neither.
    mine = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image)], check=True,
                                     capture_output=True, text=True).stdout)
    assert mine["format"] == "qcow2" and Path(mine["full-backing-filename"]) == base
    assert host.get(orig.uuid).config.disks[0].format == "qcow2"
    base_sum, orig_sum = _sha(base), _sha(image)
    _boot_and_overwrite(host, clone.uuid)
    assert _sha(base) == base_sum and _sha(image) == orig_sum
    with open_image(str(image), read_only=True) as dev:
        assert dev.read(0, len(MARK)) == MARK
    assert subprocess.run(["qemu-img", "check", disk.path], capture_output=True).returncode == 0
    # Deleting the original with its disks keeps the base the clone still reads.
    result = host.delete(orig.uuid, delete_disks=True)
    assert base.is_file() and str(image) in result


def test_a_clone_gets_a_new_uuid_and_mac_and_a_taken_name_is_refused(local_service: ServiceSandbox) -> None:
    host = local_service.connect()
    image = local_service.data_home / "vireo" / "images" / "net.raw"
    host.create_disk(str(image), 1 << 20)
    orig = host.define(VmConfig(name="net", boot=VmConfig(name="x").boot, accel="software",
                                disks=[DiskConfig(path=str(image))], nics=[NicConfig()]))
    clone = host.clone(orig.uuid, "net2")
    assert clone.uuid != orig.uuid
    assert clone.config.nics[0].mac and clone.config.nics[0].mac != orig.config.nics[0].mac
    files = sorted(os.listdir(image.parent))
    with pytest.raises(HostError) as err:
        host.clone(orig.uuid, "NET2")
    assert "already exists" in str(err.value) and "\n" not in str(err.value)
    assert sorted(os.listdir(image.parent)) == files               # nothing left behind
    with pytest.raises(HostError) as err:
        host.clone(orig.uuid, "../escape")                         # a name is checked before it names files
    assert "name '../escape'" in str(err.value)
    assert sorted(os.listdir(image.parent)) == files and not (image.parent.parent / "escape.raw").exists()


def test_a_running_vm_is_refused_with_one_line(local_service: ServiceSandbox) -> None:
    host = local_service.connect()
    image = local_service.data_home / "vireo" / "images" / "busy.qcow2"
    host.create_disk(str(image), 1 << 20, fmt="qcow2")
    cfg = VmConfig(name="busy", memory_mib=32, accel="software", disks=[DiskConfig(str(image), "qcow2")])
    cfg.boot.kernel = str(guest_path("counter"))
    cfg.display.type = "none"
    info = host.define(cfg)
    host.start(info.uuid)
    try:
        before = _sha(image)
        for linked in (True, False):
            with pytest.raises(HostError) as err:
                host.clone(info.uuid, "busy2", linked=linked)
            assert "running" in str(err.value) and "\n" not in str(err.value)
        assert [v.name for v in host.list_vms()] == ["busy"]
        assert sorted(os.listdir(image.parent)) == ["busy.qcow2"]
    finally:
        host.force_off(info.uuid)
    assert _sha(image) == before


def test_vireo_clone_on_the_command_line(local_service: ServiceSandbox) -> None:
    host = local_service.connect()
    image = local_service.data_home / "vireo" / "images" / "cli.qcow2"
    host.create_disk(str(image), 1 << 20, fmt="qcow2")
    host.define(VmConfig(name="cli", accel="software", disks=[DiskConfig(str(image), "qcow2")]))

    def vireo(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *args], cwd=REPO_ROOT,
                              env=dict(os.environ, **local_service.env), capture_output=True, text=True, timeout=60)

    done = vireo("clone", "cli", "cli-linked", "--linked")
    assert done.returncode == 0 and done.stderr == "", done
    assert "Domain 'cli' cloned as 'cli-linked' (linked clone;" in done.stdout
    again = vireo("clone", "cli", "cli-linked")
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "already exists" in again.stderr
    missing = vireo("clone", "nosuch", "x")
    assert missing.returncode == 2 and "no VM named 'nosuch'" in missing.stderr


def test_a_saved_vm_clones_and_both_run_on(local_service: ServiceSandbox) -> None:
    """A VM with a managed save is cloned (full and linked): each clone boots afresh, and the original still
    resumes from its save afterwards, its counter carrying on, even though a linked clone put its disk content
    under an overlay."""
    import re
    import threading
    import time

    host = local_service.connect()
    image = local_service.data_home / "vireo" / "images" / "saved.qcow2"
    host.create_disk(str(image), 1 << 20, fmt="qcow2")
    cfg = VmConfig(name="saved", memory_mib=32, accel="software", disks=[DiskConfig(str(image), "qcow2")])
    cfg.boot.kernel = str(guest_path("counter"))
    cfg.display.type = "none"
    info = host.define(cfg)

    def run(uuid: str, above: int, save: bool = False) -> list[int]:
        """Start the VM, wait for its counter to pass `above` (then save it); the counters it printed."""
        data, cond = bytearray(), threading.Condition()

        def got(chunk: bytes) -> None:
            with cond:
                data.extend(chunk)
                cond.notify_all()
        host.subscribe_serial(uuid, got)
        host.start(uuid)
        deadline = time.monotonic() + 30
        with cond:
            while True:
                seen = [int(n) for n in re.findall(rb"counter: (\d+)", bytes(data))]
                if seen and seen[-1] > above:
                    break
                assert time.monotonic() < deadline, seen[-5:]
                cond.wait(0.2)
        if save:
            host.save(uuid)
            wait_state(host, uuid, VmState.SHUTOFF, 30)
        host.unsubscribe_serial(uuid, got)
        with cond:
            return [int(n) for n in re.findall(rb"counter: (\d+)", bytes(data))]

    last = run(info.uuid, 3, save=True)[-1]
    for linked in (False, True):
        clone = host.clone(info.uuid, f"saved-{'linked' if linked else 'full'}", linked=linked)
        fresh = run(clone.uuid, 2)
        assert fresh[0] == 1, fresh[:5]                            # booted afresh, not from the original's save
        host.force_off(clone.uuid)
    resumed = run(info.uuid, last + 2)
    assert resumed[0] == last + 1, (last, resumed[:5])            # resumed from the save
    host.force_off(info.uuid)
