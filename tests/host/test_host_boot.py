"""LocalHost (core/host/local.py) and firmware boot definitions: the one-shot boot.cd_once is cleared in the saved
definition by the start that used it (QEMU's -boot once=d: the next start follows the boot order), a running VM's
CD-ROM disc and boot order can change for its next start while its hardware cannot, and a start is refused with
one line for a missing ISO or firmware file, and for a firmware boot on an engine that declares none.

The start that clears the flag is a real VM process booting Debian's kernel: with no firmware boot in the engine
yet, the host is told it has one (capabilities) so the start goes ahead; the kernel then boots after the CD, or
directly, which is all this test needs of it."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from core.config import BootConfig, CdromConfig, ConfigStore, DiskConfig, VmConfig
from core.host import EventKind, HostCapabilities, HostError, LocalHost, VmState
from tests.helpers.iso import write_iso


@pytest.fixture
def runtime_dir() -> str:
    path = tempfile.mkdtemp(prefix="vireo-boot-")      # short: UNIX socket paths must fit in 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def host(tmp_path: Path, runtime_dir: str) -> LocalHost:
    h = LocalHost(ConfigStore(tmp_path / "vms"), runtime_dir=runtime_dir)
    yield h
    for info in h.list_vms():
        if info.state.active:
            h.force_off(info.uuid)
    h.close()


def _firmware_boot(host: LocalHost, monkeypatch: pytest.MonkeyPatch, able: bool) -> None:
    monkeypatch.setattr(host, "capabilities", lambda: HostCapabilities(disks=True, firmware_boot=able))


def test_boot_once_is_cleared_by_the_start_and_a_running_vm_takes_a_new_disc(
        host: LocalHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, debian_kernel: Path,
        busybox_initramfs: Path) -> None:
    _firmware_boot(host, monkeypatch, True)
    iso, other = write_iso(tmp_path / "install.iso"), write_iso(tmp_path / "tools.iso", "TOOLS", el_torito=False)
    cfg = VmConfig(name="install", memory_mib=128, cdroms=[CdromConfig(str(iso))],
                   boot=BootConfig(kernel=str(debian_kernel), initrd=str(busybox_initramfs),
                                   cmdline="console=ttyS0 vireo.action=shell", order=["kernel", "cd"], cd_once=True))
    info = host.define(cfg)
    events = []
    host.add_listener(events.append)
    host.start(info.uuid)
    assert host.get(info.uuid).state in (VmState.RUNNING, VmState.PAUSED)
    now = host.get(info.uuid).config
    assert not now.boot.cd_once and now.boot.order == ["kernel", "cd"]
    saved = json.loads(host.store.path_for(info.uuid).read_text())
    assert saved["boot"]["cd_once"] is False and saved["cdroms"] == [{"path": str(iso)}]
    assert (EventKind.UPDATED, info.uuid) in [(e.kind, e.uuid) for e in events]

    # Running: another disc and the boot order are kept for the next start; the hardware is not.
    swapped = now.copy(cdroms=[CdromConfig(str(other))])
    swapped.boot.order = ["cd", "kernel"]
    host.define(swapped)
    assert host.get(info.uuid).config.cdroms == [CdromConfig(str(other))]
    assert json.loads(host.store.path_for(info.uuid).read_text())["boot"]["order"] == ["cd", "kernel"]
    for change in (dict(memory_mib=256), dict(cdroms=[]), dict(disks=[DiskConfig(path=str(tmp_path / "x.img"))])):
        with pytest.raises(HostError) as refused:
            host.define(swapped.copy(**change))
        assert "shut it down before changing its hardware" in str(refused.value)
        assert "CD-ROM discs and boot order" in str(refused.value) and "\n" not in str(refused.value)
    host.force_off(info.uuid)
    # A start without the flag changes nothing in the definition.
    before = host.store.path_for(info.uuid).read_bytes()
    host.start(info.uuid)
    host.force_off(info.uuid)
    assert host.store.path_for(info.uuid).read_bytes() == before


@pytest.mark.parametrize("able, change, words", [
    (False, {}, "install boots through firmware (cd, disk), which this host's engine cannot do yet"),
    (True, {"cdroms": [CdromConfig("/nonexistent/debian.iso")]}, "CD-ROM 1 image /nonexistent/debian.iso: no such "
                                                                  "file"),
    (True, {"boot": BootConfig(firmware="/nonexistent/bios.bin")}, "firmware /nonexistent/bios.bin: no such file"),
])
def test_start_refusals_are_one_line_before_any_process(host: LocalHost, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, able: bool, change: dict,
                                                        words: str) -> None:
    _firmware_boot(host, monkeypatch, able)
    iso = write_iso(tmp_path / "debian.iso")
    cfg = VmConfig(name="install", cdroms=[CdromConfig(str(iso))], boot=BootConfig(cd_once=True)).copy(**change)
    info = host.define(cfg)
    with pytest.raises(HostError) as refused:
        host.start(info.uuid)
    assert words in str(refused.value) and "\n" not in str(refused.value)
    after = host.get(info.uuid)
    assert after.state == VmState.SHUTOFF and "failed to start" in after.reason
    assert after.config.boot.cd_once is cfg.boot.cd_once         # a start that did not happen keeps the flag
    assert host.list_vms()[0].config == cfg
