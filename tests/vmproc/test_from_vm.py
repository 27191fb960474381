"""MachineConfig.from_vm: the saved VM definition (core.config.VmConfig) reaches the Machine without a lossy hand
translation, and a setting the engine cannot honour is refused with one line instead of being dropped."""
from __future__ import annotations

import dataclasses

import pytest

from core.config import BootConfig, CdromConfig, DiskConfig, DisplayConfig, NicConfig, SerialConfig, VmConfig
from core.machine import ENGINE_FEATURES, ConfigError, DiskSpec, Machine, MachineConfig

# Every field of a definition is either carried into the MachineConfig, or used by the VM process around its
# Machine (the serial log, core/vmproc/serial_log.py; the VNC server, core/vnc), or belongs to the host side (the
# service keeps it). A field added to VmConfig fails test_every_definition_field_is_accounted_for until from_vm
# decides.
CARRIED = {"memory_mib", "vcpus", "accel", "boot.kernel", "boot.initrd", "boot.cmdline", "boot.order",
           "boot.firmware", "boot.cd_once", "disks.path", "disks.format", "disks.bus", "disks.readonly",
           "cdroms.path", "nics.backend", "nics.model", "nics.mac", "nics.forwards", "nics.tap",
           "nics.bridge", "nics.link", "display.type"}
VM_PROCESS_SIDE = {"serial.log_file", "display.vnc", "display.vnc_password"}
HOST_SIDE = {"name", "uuid", "autostart", "notes", "serial.mode"}


def _field_names(kind: type, prefix: str = "") -> set[str]:
    nested = {"boot": BootConfig, "disks": DiskConfig, "cdroms": CdromConfig, "nics": NicConfig,
              "display": DisplayConfig, "serial": SerialConfig}
    names: set[str] = set()
    for f in dataclasses.fields(kind):
        if not prefix and f.name in nested:
            names |= _field_names(nested[f.name], f"{f.name}.")
        else:
            names.add(prefix + f.name)
    return names


def _vm(**changes) -> VmConfig:
    cfg = VmConfig(name="web", memory_mib=384, vcpus=2, accel="software",
                   boot=BootConfig(kernel="/boot/vmlinuz", initrd="/boot/initrd.img", cmdline="console=ttyS0 quiet"),
                   disks=[DiskConfig("/var/lib/a.qcow2", format="qcow2"),
                          DiskConfig("/var/lib/b.raw", format="raw", readonly=True)])
    return cfg.copy(**changes)


def test_every_definition_field_is_accounted_for():
    assert _field_names(VmConfig) == CARRIED | VM_PROCESS_SIDE | HOST_SIDE


def test_every_engine_field_comes_from_the_definition():
    mc = MachineConfig.from_vm(_vm(), "software")
    assert mc == MachineConfig(
        kernel="/boot/vmlinuz", initrd="/boot/initrd.img", cmdline="console=ttyS0 quiet", memory_mib=384, cpus=2,
        accel="software", display="vga",
        disks=[DiskSpec("/var/lib/a.qcow2", format="qcow2"), DiskSpec("/var/lib/b.raw", format="raw", readonly=True)])


def test_an_empty_initrd_means_none_and_display_none_is_carried():
    cfg = _vm(display=DisplayConfig("none"), boot=BootConfig(kernel="/k", cmdline=""))
    mc = MachineConfig.from_vm(cfg, "kvm")
    assert (mc.initrd, mc.display, mc.accel, mc.kernel) == (None, "none", "kvm", "/k")


@pytest.mark.parametrize("change, words", [
    ({"nics": [NicConfig(forwards=["tcp:127.0.0.1:99999-:22"])]}, ["nics[0]", "99999", "1..65535"]),
    ({"disks": [DiskConfig("/x.img", bus="scsi")]}, ["disks[0].bus", "'scsi'", "virtio, ide"]),
    ({"display": DisplayConfig("spice")}, ["display.type", "'spice'"]),
])
def test_what_the_engine_cannot_honour_is_refused_in_one_line(change, words):
    with pytest.raises(ConfigError) as info:
        MachineConfig.from_vm(_vm(**change), "software")
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_cards_are_carried_with_a_stable_mac():
    """A card without a MAC gets the one derived from the VM's uuid and its place: the same at every start."""
    cfg = _vm(nics=[NicConfig(forwards=["tcp:127.0.0.1:2222-:22"]), NicConfig(backend="tap", tap="vtap0",
                                                                             mac="52:54:00:00:00:07", link=False)])
    first, again = MachineConfig.from_vm(cfg, "software"), MachineConfig.from_vm(cfg, "software")
    assert [n.mac for n in first.nics] == [n.mac for n in again.nics]
    assert first.nics[0].mac.startswith("52:54:00:") and first.nics[1].mac == "52:54:00:00:00:07"
    assert [str(f) for f in first.nics[0].forwards] == ["tcp:127.0.0.1:2222-:22"]
    assert (first.nics[1].backend, first.nics[1].tap) == ("tap", "vtap0")
    assert (first.nics[0].link, first.nics[1].link) == (True, False)      # the link switch as saved


def test_firmware_boot_from_an_iso_and_an_ide_disk_is_carried():
    """The wizard's install definition: no kernel, the ISO in a drive, the new disk on IDE, disk before CD with
    the CD once: the machine boots the CD first, then the definition's order; no kernel, Debian's SeaBIOS."""
    cfg = _vm(boot=BootConfig(order=["disk", "cd"], cd_once=True),
              disks=[DiskConfig("/var/lib/new.img", bus="ide")],
              cdroms=[CdromConfig("/isos/debian-12.iso"), CdromConfig("")])
    mc = MachineConfig.from_vm(cfg, "software")
    assert mc == MachineConfig(
        kernel=None, initrd=None, cmdline="", memory_mib=384, cpus=2, accel="software", display="vga",
        disks=[DiskSpec("/var/lib/new.img", format="raw", bus="ide")],
        cdroms=["/isos/debian-12.iso"],      # the empty drive is left out: nothing could be inserted into it
        boot=["disk", "cd"], boot_once=["cd", "disk"], firmware=None)
    # The first boot tries the CD; a reset by the guest (the installer's reboot) goes back to disk first.
    assert not mc.direct_kernel_boot and mc.firmware_boot_order == ["disk", "cd"]
    mc.validate()
    # Once the host has cleared the flag, the disk comes first.
    after = MachineConfig.from_vm(cfg.copy(boot=BootConfig(order=["disk", "cd"])), "software")
    assert after.boot == ["disk", "cd"] and after.firmware_boot_order == ["disk", "cd"]


def test_boot_order_and_firmware_file_are_carried_as_given():
    auto = MachineConfig.from_vm(_vm(), "kvm")
    assert auto.boot == [] and auto.firmware is None and auto.direct_kernel_boot   # old definitions: as before
    cfg = _vm(boot=BootConfig(kernel="/k", order=["kernel", "disk"], firmware="/opt/bios.bin"))
    mc = MachineConfig.from_vm(cfg, "kvm")
    assert (mc.boot, mc.firmware, mc.kernel) == (["kernel", "disk"], "/opt/bios.bin", "/k")
    assert not mc.direct_kernel_boot           # a firmware file asked for: the kernel goes through it
    once = MachineConfig.from_vm(_vm(boot=BootConfig(kernel="/k", cd_once=True), cdroms=[CdromConfig("/a.iso")]),
                                 "kvm")
    assert (once.boot, once.boot_once) == ([], ["cd", "kernel"]) and not once.direct_kernel_boot


def test_capabilities_are_declared():
    assert ENGINE_FEATURES == frozenset({"disks", "firmware_boot", "network"})


def test_display_none_builds_a_machine_without_a_display_adapter(debian_kernel):
    with_vga = Machine(MachineConfig(kernel=str(debian_kernel), memory_mib=128, accel="software"))
    without = Machine(MachineConfig.from_vm(
        _vm(boot=BootConfig(kernel=str(debian_kernel)), disks=[], display=DisplayConfig("none"), memory_mib=128,
            vcpus=1), "software"))
    try:
        def pci_ids(m):
            return {(d.config_read(0, 2), d.config_read(2, 2)) for d in m.board.pci.devices.values()}
        assert (0x1234, 0x1111) in pci_ids(with_vga)
        assert without.board.vga is None
        assert (0x1234, 0x1111) not in pci_ids(without)
        before = without.board.pio.unhandled_reads
        without.board.pio.read(0x3CC, 1)                   # the VGA's miscellaneous output register: nobody answers
        assert without.board.pio.unhandled_reads == before + 1
    finally:
        for m in (with_vga, without):
            m.board.close()
