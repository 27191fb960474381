"""LocalHost (core/host/local.py), the engine side the service runs, used in-process here: definitions, events,
deletion with disks, host info, serial fan-out, errors that are one line, and the whole lifecycle of a VM, which
runs in a process of its own (core.vmproc)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from core.config import BootConfig, ConfigStore, DiskConfig, VmConfig
from core.host import EventKind, HostError, LocalHost, VmState
from core.hoststats import resident_bytes, thread_cpu_seconds


def vm(name: str = "alpha", kernel: str = "/boot/vmlinuz", **kw) -> VmConfig:
    return VmConfig(name=name, boot=BootConfig(kernel=kernel, cmdline="console=ttyS0"), **kw)


@pytest.fixture
def runtime_dir() -> str:
    # Short: the VM processes' sockets live here, and a UNIX socket path must fit in 108 bytes (unix(7)).
    path = tempfile.mkdtemp(prefix="vireo-host-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def host(tmp_path: Path, runtime_dir: str) -> LocalHost:
    h = LocalHost(ConfigStore(tmp_path / "vms"), runtime_dir=runtime_dir)
    yield h
    # VM processes outlive a LocalHost that closes (the next service adopts them): end them here.
    for info in h.list_vms():
        if info.state.active:
            h.force_off(info.uuid)
    h.close()


def test_define_list_update_persist(host: LocalHost, tmp_path: Path, runtime_dir: str) -> None:
    events = []
    host.add_listener(events.append)
    info = host.define(vm("beta", memory_mib=256))
    host.define(vm("alpha"))
    assert [v.name for v in host.list_vms()] == ["alpha", "beta"]
    assert info.state == VmState.SHUTOFF
    updated = info.config.copy(memory_mib=384, notes="more RAM")
    host.define(updated)
    assert host.get(info.uuid).config.memory_mib == 384
    assert [e.kind for e in events] == [EventKind.DEFINED, EventKind.DEFINED, EventKind.UPDATED]
    again = LocalHost(ConfigStore(tmp_path / "vms"), runtime_dir=runtime_dir)
    assert {v.name: v.config.memory_mib for v in again.list_vms()} == {"alpha": 512, "beta": 384}


def test_define_rejects_bad_and_clashing_definitions(host: LocalHost) -> None:
    host.define(vm("alpha"))
    with pytest.raises(HostError, match="a VM named 'alpha' already exists"):
        host.define(vm("ALPHA"))
    with pytest.raises(HostError, match="vcpus 999 is out of range"):
        host.define(vm("x", vcpus=999))
    too_much = host.info().memory_mib + 1024
    with pytest.raises(HostError, match="more than this host has"):
        host.define(vm("y", memory_mib=too_much))


def test_delete_keeps_or_removes_disks(host: LocalHost, tmp_path: Path) -> None:
    disk = tmp_path / "images" / "a.img"
    host.create_disk(str(disk), 1 << 20)
    assert disk.stat().st_size == 1 << 20
    a = host.define(vm("a", disks=[DiskConfig(path=str(disk))]))
    b = host.define(vm("b", disks=[DiskConfig(path=str(disk))]))
    removed = host.delete(a.uuid, delete_disks=False)
    assert disk.exists() and removed == [str(host.store.path_for(a.uuid))]
    removed = host.delete(b.uuid, delete_disks=True)
    assert not disk.exists() and str(disk) in removed
    assert host.list_vms() == []
    with pytest.raises(HostError, match="no VM with uuid"):
        host.get(a.uuid)


def test_delete_keeps_a_disk_another_vm_lists_and_says_why(host: LocalHost, tmp_path: Path) -> None:
    shared, own = tmp_path / "shared.img", tmp_path / "own.img"
    host.create_disk(str(shared), 1 << 20)
    host.create_disk(str(own), 1 << 20)
    host.define(vm("web", disks=[DiskConfig(path=str(shared))]))
    # The importer names the same file by another spelling: still the same file.
    alias = str(tmp_path / "sub" / ".." / "shared.img")
    (tmp_path / "sub").mkdir()
    imported = host.define(vm("imported", disks=[DiskConfig(path=alias), DiskConfig(path=str(own))]))
    result = host.delete(imported.uuid, delete_disks=True)
    assert shared.exists() and not own.exists()
    assert list(result) == [str(host.store.path_for(imported.uuid)), str(own)]
    assert [(k.path, k.reason) for k in result.kept] == [(alias, "used by VM 'web'")]


def test_delete_keeps_the_backing_file_of_another_vms_overlay(host: LocalHost, tmp_path: Path) -> None:
    from core.storage import create_image

    base, overlay = tmp_path / "base.qcow2", tmp_path / "snap" / "overlay.qcow2"
    host.create_disk(str(base), 1 << 20, fmt="qcow2")
    overlay.parent.mkdir()
    create_image(str(overlay), "qcow2", None, backing_file="../base.qcow2", backing_format="qcow2")
    old = host.define(vm("old", disks=[DiskConfig(path=str(base), format="qcow2")]))
    host.define(vm("snapshot", disks=[DiskConfig(path=str(overlay), format="qcow2")]))
    result = host.delete(old.uuid, delete_disks=[str(base)])
    assert base.exists() and overlay.exists()
    assert [(k.path, k.reason) for k in result.kept] == [
        (str(base), f"backing file of {overlay} (VM 'snapshot')")]
    assert list(result) == [str(host.store.path_for(old.uuid))]


def test_delete_removes_only_the_chosen_disks(host: LocalHost, tmp_path: Path) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    host.create_disk(str(a), 1 << 20)
    host.create_disk(str(b), 1 << 20)
    info = host.define(vm("two", disks=[DiskConfig(path=str(a)), DiskConfig(path=str(b))]))
    with pytest.raises(HostError, match=r"/elsewhere.img is not a disk of two: choose among"):
        host.delete(info.uuid, delete_disks=["/elsewhere.img"])
    assert host.get(info.uuid) is not None and a.exists()
    result = host.delete(info.uuid, delete_disks=[str(b)])
    assert a.exists() and not b.exists() and result.kept == []
    assert list(result) == [str(host.store.path_for(info.uuid)), str(b)]


def test_create_disk_progress_and_no_overwrite(host: LocalHost, tmp_path: Path) -> None:
    seen = []
    path = tmp_path / "d.img"
    host.create_disk(str(path), 8 << 20, preallocate=True, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (8 << 20, 8 << 20)
    assert path.stat().st_blocks * 512 >= 8 << 20      # preallocated, not sparse
    with pytest.raises(HostError, match="already exists"):
        host.create_disk(str(path), 1 << 20)
    seen.clear()
    qcow = tmp_path / "q.qcow2"
    host.create_disk(str(qcow), 1 << 30, fmt="qcow2", progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 1 << 30) and seen[-1] == (1 << 30, 1 << 30)
    from core.storage import open_image
    with open_image(str(qcow)) as dev:
        assert (dev.format_name, dev.size) == ("qcow2", 1 << 30)
    assert qcow.stat().st_size < 1 << 20                   # thin: metadata only
    check = subprocess.run(["qemu-img", "check", str(qcow)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with pytest.raises(HostError, match="already exists"):
        host.create_disk(str(qcow), 1 << 20, fmt="qcow2")
    with pytest.raises(HostError, match="preallocation applies to raw"):
        host.create_disk(str(tmp_path / "p.qcow2"), 1 << 20, fmt="qcow2", preallocate=True)


def test_corrupt_file_is_an_error_not_a_crash(tmp_path: Path, runtime_dir: str) -> None:
    d = tmp_path / "vms"
    d.mkdir()
    (d / "55555555-5555-4555-8555-555555555555.json").write_text("{nope")
    h = LocalHost(ConfigStore(d), runtime_dir=runtime_dir)
    assert h.list_vms() == []
    (err,) = h.load_errors()
    assert "not valid JSON" in err.message


def test_delete_broken_definition_removes_only_a_load_error(host: LocalHost, tmp_path: Path) -> None:
    good = host.define(vm("good"))
    directory = tmp_path / "vms"
    broken = directory / "66666666-6666-4666-8666-666666666666.json"
    broken.write_text('{"name": ')
    outside = tmp_path / "precious.json"
    outside.write_text("{nope")
    host.reload()
    assert [e.path for e in host.load_errors()] == [broken]
    events = []
    host.add_listener(events.append)
    # Anything but the load error's own path is refused, with one line naming it: a loaded definition, a file
    # outside the directory, the broken file spelled another way, the directory itself.
    for path in (directory / f"{good.uuid}.json", outside, directory / ".." / "vms" / broken.name, directory):
        with pytest.raises(HostError, match="is not a definition file that failed to load") as exc:
            host.delete_broken_definition(str(path))
        assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    assert outside.exists() and broken.exists() and (directory / f"{good.uuid}.json").exists() and not events

    host.delete_broken_definition(str(broken))
    assert not broken.exists() and host.load_errors() == []
    assert [(e.kind, e.uuid) for e in events] == [(EventKind.UPDATED, broken.stem)]
    assert [i.name for i in host.list_vms()] == ["good"]
    with pytest.raises(HostError, match="is not a definition file that failed to load"):
        host.delete_broken_definition(str(broken))      # once gone, it is no longer a load error


def test_start_failure_is_one_line_and_leaves_the_vm_shut_off(host: LocalHost, tmp_path: Path) -> None:
    info = host.define(vm("missing-kernel", kernel=str(tmp_path / "no-such-kernel")))
    states = []
    host.add_listener(lambda e: states.append((e.state, e.reason)))
    with pytest.raises(HostError) as exc:
        host.start(info.uuid)
    assert "no such file" in str(exc.value) and "\n" not in str(exc.value)
    assert states[0] == (VmState.STARTING, "")
    assert states[-1][0] == VmState.SHUTOFF and "failed to start" in states[-1][1]
    assert host.get(info.uuid).state == VmState.SHUTOFF
    for op in (host.pause, host.resume, host.shutdown, host.force_off, host.force_reset):
        with pytest.raises(HostError, match="is shut off"):
            op(info.uuid)
    assert host.stats(info.uuid) is None


def test_serial_subscription_gets_history_then_live_output(host: LocalHost) -> None:
    info = host.define(vm("serial"))
    inner = host._vm(info.uuid)
    host._on_serial(inner, b"early boot\r\n")
    got = []
    assert host.subscribe_serial(info.uuid, got.append) == b"early boot\r\n"
    host._on_serial(inner, b"login: ")
    host.unsubscribe_serial(info.uuid, got.append)
    host._on_serial(inner, b"ignored")
    assert got == [b"login: "]


def test_host_info_is_plausible(host: LocalHost) -> None:
    info = host.info()
    assert info.cpus >= 1 and info.cores >= 1 and info.memory_mib > 64
    assert info.cpu_model
    assert isinstance(info.kvm_usable, bool) and info.kvm_reason


def test_thread_cpu_time_and_resident_memory() -> None:
    spent = {}

    def spin() -> None:
        # Busy until the kernel's own per-thread clock says 0.15 s: a loaded machine only stretches the wall time.
        t0, c0 = thread_cpu_seconds(threading.get_native_id()), time.thread_time()
        deadline = time.monotonic() + 10
        while time.thread_time() - c0 < 0.15 and time.monotonic() < deadline:
            pass
        spent["proc"] = thread_cpu_seconds(threading.get_native_id()) - t0
        spent["clock"] = time.thread_time() - c0

    t = threading.Thread(target=spin)
    t.start()
    t.join()
    assert spent["clock"] >= 0.15
    assert abs(spent["proc"] - spent["clock"]) < 0.03
    import ctypes
    import mmap
    m = mmap.mmap(-1, 1 << 20)
    anchor = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(anchor)
    assert resident_bytes(addr, 1 << 20) == 0
    m[0:3 * 4096] = b"x" * (3 * 4096)
    assert resident_bytes(addr, 1 << 20) == 3 * 4096
    del anchor
    m.close()


# -- a real VM process ------------------------------------------------------------------------------------------

def test_lifecycle_on_a_real_machine(host: LocalHost, debian_kernel: Path, busybox_initramfs: Path) -> None:
    cfg = VmConfig(name="debian", memory_mib=256,
                   boot=BootConfig(kernel=str(debian_kernel), initrd=str(busybox_initramfs),
                                   cmdline="console=ttyS0 vireo.action=shell"))
    info = host.define(cfg)
    out = bytearray()
    lock = threading.Condition()

    def on_serial(data: bytes) -> None:
        with lock:
            out.extend(data)
            lock.notify_all()

    def expect(pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with lock:
            while not re.search(pattern, out.decode(errors="replace")):
                left = deadline - time.monotonic()
                assert left > 0, f"{pattern!r} not seen; console:\n{out.decode(errors='replace')[-2000:]}"
                lock.wait(left)

    states = []
    host.add_listener(lambda e: e.kind == EventKind.STATE and states.append(e.state))
    host.subscribe_serial(info.uuid, on_serial)
    host.start(info.uuid)
    assert host.get(info.uuid).state == VmState.RUNNING
    assert host.get(info.uuid).accel in ("kvm", "software")
    host.stats(info.uuid)
    expect(r"VIREO-BOOT-OK", 240)
    expect(r"vireo:~# ", 60)
    stats = host.stats(info.uuid)
    assert stats is not None and stats.cpu_seconds > 0 and stats.memory_resident_mib > 1
    host.send_serial(info.uuid, b"echo vireo-$((6*7))\n")
    expect(r"vireo-42", 30)
    host.pause(info.uuid)
    assert host.get(info.uuid).state == VmState.PAUSED
    host.resume(info.uuid)
    host.force_off(info.uuid)
    assert host.get(info.uuid).state == VmState.SHUTOFF
    assert states == [VmState.STARTING, VmState.RUNNING, VmState.PAUSED, VmState.RUNNING, VmState.SHUTOFF]
    assert os.path.exists(host.store.path_for(info.uuid))
