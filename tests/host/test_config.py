"""VM definitions (core/config.py): validation, JSON round trip, atomic writes, malformed files reported and
never overwritten, XDG locations."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.config import (
    BootConfig,
    CdromConfig,
    ConfigError,
    ConfigStore,
    DiskConfig,
    NicConfig,
    VmConfig,
    atomic_write,
    images_dir,
    running_vm_takes,
    vms_dir,
)


def make(name: str = "debian", **kw) -> VmConfig:
    return VmConfig(name=name, boot=BootConfig(kernel="/boot/vmlinuz", initrd="/boot/initrd.img",
                                               cmdline="console=ttyS0"), **kw)


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    cfg = make(memory_mib=1024, vcpus=2, accel="software", autostart=True, notes="lab box\nsecond line",
               disks=[DiskConfig(path="/var/lib/x.img", format="raw", readonly=True)],
               nics=[NicConfig(mac="52:54:00:12:34:56", forwards=["tcp:127.0.0.1:2222-:22"]),
                     NicConfig(backend="tap", tap="vtap0", bridge="br0", mac="52:54:00:12:34:57")])
    store = ConfigStore(tmp_path)
    path = store.save(cfg)
    assert path == tmp_path / f"{cfg.uuid}.json"
    loaded, errors = store.load_all()
    assert errors == []
    assert loaded == [cfg]
    assert json.loads(path.read_text())["schema"] == 1
    assert os.stat(path).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("change, words", [
    (dict(name=""), "name is empty"),
    (dict(name="a/b"), "name 'a/b'"),
    (dict(memory_mib=8), "memory_mib 8 MiB is out of range"),
    (dict(memory_mib=True), "expected a whole number"),
    (dict(vcpus=0), "vcpus 0 is out of range"),
    (dict(accel="qemu"), "accel 'qemu': use one of auto, kvm, software"),
    (dict(uuid="nope"), "uuid 'nope'"),
    (dict(boot=BootConfig(kernel="", initrd="/boot/initrd.img")), "boot.initrd is set but boot.kernel is empty"),
    (dict(boot=BootConfig(kernel="vmlinuz")), "relative path"),
    (dict(boot=BootConfig(kernel="/k", cmdline="x" * 3000)), "boot.cmdline is 3000 bytes"),
    (dict(disks=[DiskConfig(path="/a.img", format="vmdk")]), "disks[0].format 'vmdk'"),
    (dict(disks=[DiskConfig(path="/a.img"), DiskConfig(path="/a.img")]), "attached twice"),
    (dict(nics=[NicConfig(mac="53:54:00:12:34:56")]), "multicast"),
    (dict(nics=[NicConfig(forwards=["tcp:2222:22"])]), "nics[0]"),
    (dict(nics=[NicConfig(backend="tap")]), "nics[0] tap ''"),
    (dict(nics=[NicConfig(backend="slirp")]), "nics[0] backend 'slirp'"),
    (dict(nics=[NicConfig(mac="52:54:00:12:34:56"), NicConfig(mac="52:54:00:12:34:56")]), "nics[1].mac"),
    (dict(disks=[DiskConfig(path="/a.img", bus="scsi")]), "disks[0].bus 'scsi': use one of virtio, ide"),
    (dict(cdroms=[CdromConfig("isos/debian.iso")]), "cdroms[0].path 'isos/debian.iso' is a relative path"),
    (dict(cdroms=[CdromConfig("/a.img")], disks=[DiskConfig(path="/a.img")]), "cdroms[0].path /a.img is also "
                                                                               "attached as a disk"),
    (dict(cdroms=[CdromConfig(), CdromConfig()], disks=[DiskConfig(path=f"/{n}.img", bus="ide") for n in "abc"]),
     "3 IDE disks and 2 CD-ROM drives make 5 IDE drives: the IDE controller holds 4"),
    (dict(boot=BootConfig(kernel="/k", order=["cd", "floppy"])), "boot.order 'floppy' is not a boot device: use "
                                                                 "cd, disk, kernel"),
    (dict(boot=BootConfig(order=["disk", "disk"])), "lists a device twice"),
    (dict(boot=BootConfig(order=["kernel", "cd"])), "boot.order lists kernel but boot.kernel is empty"),
    (dict(boot=BootConfig(firmware="bios.bin")), "boot.firmware 'bios.bin' is a relative path"),
])
def test_validation_messages_are_one_clear_line(change: dict, words: str) -> None:
    cfg = make().copy(**change)
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_firmware_boot_definition_round_trips_and_old_files_still_load(tmp_path: Path) -> None:
    """No kernel is valid now (the firmware boots the CD or the disk); CD-ROM drives, the IDE bus, the boot order,
    the firmware file and the boot-once flag survive the JSON; a file written before they existed loads with
    none of them (no drives, the automatic order: its kernel)."""
    cfg = VmConfig(name="installer", disks=[DiskConfig(path="/img/new.img", bus="ide")],
                   cdroms=[CdromConfig("/isos/debian.iso"), CdromConfig("")],
                   boot=BootConfig(order=["disk", "cd"], cd_once=True, firmware="/opt/bios.bin"))
    cfg.validate()
    store = ConfigStore(tmp_path)
    data = json.loads(store.save(cfg).read_text())
    assert data["cdroms"] == [{"path": "/isos/debian.iso"}, {"path": ""}]
    assert data["boot"] == {"kernel": "", "initrd": "", "cmdline": "", "order": ["disk", "cd"],
                            "firmware": "/opt/bios.bin", "cd_once": True}
    assert store.load_all() == ([cfg], [])
    assert cfg.boot_devices() == ["cd", "disk"] and cfg.copy(boot=BootConfig(order=["disk", "cd"])).boot_devices() \
        == ["disk", "cd"]
    old = {"schema": 1, "name": "old", "uuid": "44444444-4444-4444-8444-444444444444", "memory_mib": 256,
           "boot": {"kernel": "/boot/vmlinuz", "initrd": "", "cmdline": "console=ttyS0"},
           "disks": [{"path": "/img/old.img", "format": "raw", "bus": "virtio", "readonly": False}]}
    loaded = VmConfig.from_dict(old)
    assert loaded.cdroms == [] and loaded.boot.order == [] and not loaded.boot.cd_once
    assert loaded.boot_devices() == ["kernel"] and VmConfig(name="bare").boot_devices() == ["cd", "disk"]


@pytest.mark.parametrize("boot, words", [
    ({"order": "cd"}, "boot.order: expected a list of words"),
    ({"order": ["cd", 3]}, "boot.order: expected a list of words"),
    ({"cd_once": "yes"}, "boot.cd_once: expected bool, found str"),
])
def test_malformed_boot_fields_are_named(boot: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        VmConfig.from_dict({"name": "x", "boot": boot})


def test_malformed_cdroms_are_named() -> None:
    with pytest.raises(ConfigError, match="cdroms: expected a list"):
        VmConfig.from_dict({"name": "x", "cdroms": "/a.iso"})
    with pytest.raises(ConfigError, match=r"cdroms\[0\]: unknown key 'iso'"):
        VmConfig.from_dict({"name": "x", "cdroms": [{"iso": "/a.iso"}]})


def test_what_a_running_vm_takes() -> None:
    running = VmConfig(name="web", cdroms=[CdromConfig("/a.iso")], boot=BootConfig(order=["cd", "disk"]))
    assert running_vm_takes(running, running.copy(name="web2", notes="n", autostart=True))
    assert running_vm_takes(running, running.copy(cdroms=[CdromConfig("")]))                  # eject
    assert running_vm_takes(running, running.copy(boot=BootConfig(order=["disk"], cd_once=True)))
    assert not running_vm_takes(running, running.copy(cdroms=[]))                               # a drive removed
    assert not running_vm_takes(running, running.copy(memory_mib=1024))
    assert not running_vm_takes(running, running.copy(boot=BootConfig(order=["cd", "disk"], firmware="/b.bin")))


def test_host_limits() -> None:
    cfg = make(memory_mib=4096, vcpus=4)
    cfg.validate_for_host(8192, 4)
    with pytest.raises(ConfigError, match="more than this host has"):
        cfg.validate_for_host(2048, 4)
    with pytest.raises(ConfigError, match="more than this host's 2 CPUs"):
        cfg.validate_for_host(8192, 2)


def test_malformed_files_are_reported_skipped_and_never_overwritten(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path)
    good = make("good")
    store.save(good)
    bad_json = tmp_path / "11111111-1111-4111-8111-111111111111.json"
    bad_json.write_text('{"name": "half", ')
    bad_value = make("bad-memory")
    bad_value_path = tmp_path / f"{bad_value.uuid}.json"
    data = bad_value.to_dict()
    data["memory_mib"] = "lots"
    bad_value_path.write_text(json.dumps(data))
    unknown = make("unknown-key")
    data = unknown.to_dict()
    data["colour"] = "blue"
    (tmp_path / f"{unknown.uuid}.json").write_text(json.dumps(data))
    (tmp_path / "22222222-2222-4222-8222-222222222222.json").write_bytes(b"\xff\xfe")

    configs, errors = store.load_all()
    assert [c.name for c in configs] == ["good"]
    by_file = {e.path.name: e.message for e in errors}
    assert "not valid JSON" in by_file[bad_json.name]
    assert "line 1" in by_file[bad_json.name]
    assert "memory_mib: expected int, found str" == by_file[bad_value_path.name]
    assert "unknown key 'colour'" == by_file[f"{unknown.uuid}.json"]
    assert "not UTF-8" in by_file["22222222-2222-4222-8222-222222222222.json"]

    before = bad_value_path.read_bytes()
    bad_value.memory_mib = 256
    with pytest.raises(ConfigError, match="will not overwrite"):
        store.save(bad_value)
    assert bad_value_path.read_bytes() == before


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root reads mode-000 files; a directory in place of the file is unreadable for everyone.
        (tmp_path / "33333333-3333-4333-8333-333333333333.json").mkdir()
    else:
        p = tmp_path / "33333333-3333-4333-8333-333333333333.json"
        p.write_text("{}")
        p.chmod(0)
    configs, errors = ConfigStore(tmp_path).load_all()
    assert configs == []
    assert len(errors) == 1 and "cannot read" in errors[0].message


def test_name_clash_and_uuid_mismatch(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path)
    a = make("twin")
    store.save(a)
    b = make("Twin")
    (tmp_path / f"{b.uuid}.json").write_text(json.dumps(b.to_dict()))
    c = make("moved")
    (tmp_path / "44444444-4444-4444-8444-444444444444.json").write_text(json.dumps(c.to_dict()))
    configs, errors = store.load_all()
    assert len(configs) == 1
    messages = " | ".join(e.message for e in errors)
    assert "already used by" in messages
    assert "does not match its uuid" in messages


def test_atomic_write_leaves_old_content_when_the_write_fails(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "vm.json"
    atomic_write(target, b"old")

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write(target, b"new content")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["vm.json"]  # no temp file left behind


def test_remove_and_missing_directory(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path / "not-yet")
    assert store.load_all() == ([], [])
    cfg = make()
    store.save(cfg)
    store.remove(cfg.uuid)
    assert store.load_all() == ([], [])


def test_xdg_locations(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert vms_dir() == tmp_path / "cfg" / "vireo" / "vms"
    assert images_dir() == tmp_path / "data" / "vireo" / "images"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/path")  # invalid per the spec: ignored
    assert vms_dir() == Path.home() / ".config" / "vireo" / "vms"
