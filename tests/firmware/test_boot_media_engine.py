"""Issue 12's "done means", on Vireo's engine (software CPU): the boot media of tests/fixtures/boot_media.py boot
through SeaBIOS from the IDE CD-ROM exactly as tests/boot_media/test_boot_media_qemu.py shows they do on QEMU --
GRUB's and ISOLINUX's menus read from the VGA text screen, Enter pressed on the PS/2 keyboard, the initramfs marker
on the serial port; Debian's installer reaching its first screen; memtest86+ (El Torito floppy emulation) running;
an install onto a blank disk that then boots alone through SeaBIOS and GRUB on IDE and on virtio-blk; and a blank
disk leaving "No bootable device" on screen with the VM still running.

The GRUB ISO and the install also run under KVM where /dev/kvm is hardware virtualization; they skip saying why on
kvm_pvm, which cannot run Linux. SeaBIOS itself under KVM (kvm_pvm included) is tested in
tests/firmware/test_seabios.py.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.machine import DiskSpec, MachineState
from tests.helpers import boot_media as bm
from tests.helpers.accel import ACCELS, require_hardware_kvm
from tests.helpers.vireo_machine import VireoMachine


@pytest.mark.parametrize("accel", ACCELS)
def test_grub_iso_menu_on_screen_then_enter_boots_linux(accel: str) -> None:
    require_hardware_kvm(accel)
    with VireoMachine(cdroms=[str(bm.grub_iso())], memory_mib=512, accel=accel) as vm:
        vm.wait_for_screen(bm.LINUX_TITLES[0], 60)
        screen = vm.wait_for_screen(bm.LINUX_TITLES[1], 10)    # GRUB draws the menu one entry at a time
        assert any(bm.LINUX_TITLES[0] in line for line in screen)
        time.sleep(0.5)                      # GRUB waits for a key: nothing boots on its own
        assert bm.BOOT_OK not in vm.output
        vm.sendkey("ret")
        vm.expect(bm.BOOT_OK, 120)
        vm.expect(bm.POWEROFF, 60)
        assert vm.wait_exit(30) == MachineState.SHUTOFF


def test_isolinux_iso_menu_on_screen_then_enter_boots_linux() -> None:
    with VireoMachine(cdroms=[str(bm.isolinux_iso())], memory_mib=512) as vm:
        vm.wait_for_screen(bm.ISOLINUX_MENU_TITLE, 60)
        vm.wait_for_screen(bm.LINUX_TITLES[0], 10)
        vm.sendkey("ret")
        vm.expect(bm.BOOT_OK, 120)
        assert vm.wait_exit(60) == MachineState.SHUTOFF


def test_debian_installer_reaches_its_first_screen() -> None:
    with VireoMachine(cdroms=[str(bm.debian_installer_iso())], memory_mib=bm.DI_MEMORY_MIB) as vm:
        vm.wait_for_screen(bm.DI_TITLES[0], 60)
        vm.sendkey("ret")
        vm.expect(bm.DI_INITRD_START, 60)
        vm.expect(bm.DI_INITRD_DONE, 60)          # GRUB read the 40 MB initrd.gz from the CD
        vm.expect(bm.DI_KERNEL_STARTED, 60)
        vm.expect(bm.DI_FIRST_SCREEN, 180)
        assert vm.state == MachineState.RUNNING


def test_memtest86_from_a_floppy_emulation_iso_runs() -> None:
    with VireoMachine(cdroms=[str(bm.memtest_iso())], memory_mib=256) as vm:
        vm.wait_for_screen(bm.MEMTEST_TITLE, 90)
        vm.wait_for_screen(bm.MEMTEST_RUNNING, 90)
        assert vm.state == MachineState.RUNNING


def test_blank_disk_shows_no_bootable_device_and_stays_running(tmp_path: Path) -> None:
    disk = bm.blank_disk(tmp_path / "blank.raw")
    with VireoMachine(disks=[DiskSpec(str(disk), format="raw", bus="ide")], memory_mib=128) as vm:
        vm.wait_for_screen(bm.NO_BOOTABLE_DEVICE, 60)
        time.sleep(1)
        assert vm.state == MachineState.RUNNING, vm.machine.reason


def test_boot_once_lasts_until_the_first_reset(tmp_path: Path) -> None:
    """QEMU's -boot once=d, which the wizard's install uses: the first boot tries the CD (GRUB's menu shows), and
    after a reset the lasting order, here the blank disk alone, so SeaBIOS finds nothing to boot."""
    disk = bm.blank_disk(tmp_path / "blank.raw")
    with VireoMachine(cdroms=[str(bm.grub_iso())], disks=[DiskSpec(str(disk), format="raw", bus="ide")],
                      memory_mib=256, boot=["disk"], boot_once=["cd", "disk"]) as vm:
        vm.wait_for_screen(bm.LINUX_TITLES[0], 60)
        vm.machine.reset()
        vm.wait_for_screen(bm.NO_BOOTABLE_DEVICE, 60)
        assert not any(bm.LINUX_TITLES[0] in line for line in vm.text_screen())
        assert vm.state == MachineState.RUNNING


@pytest.mark.parametrize("accel", ACCELS)
@pytest.mark.parametrize("bus", ["ide", "virtio"])
def test_install_onto_a_blank_disk_then_boot_it_alone(tmp_path: Path, bus: str, accel: str) -> None:
    require_hardware_kvm(accel)
    disk = bm.blank_disk(tmp_path / "disk.qcow2", fmt="qcow2")
    spec = DiskSpec(str(disk), format="qcow2", bus=bus)
    with VireoMachine(cdroms=[str(bm.installer_iso())], disks=[spec], memory_mib=512, accel=accel) as vm:
        vm.expect(bm.INSTALLER_START, 120)
        found = vm.expect(bm.INSTALL_DISK, 60)
        assert found.group(1) == ("sda" if bus == "ide" else "vda")
        vm.expect(bm.INSTALL_OK, 120)
        assert vm.wait_exit(60) == MachineState.SHUTOFF
    with VireoMachine(disks=[DiskSpec(str(disk), format="qcow2", bus=bus)], memory_mib=512, accel=accel) as vm:
        vm.expect(bm.GRUB_DISK_MARKER, 60)           # SeaBIOS ran the disk's MBR, GRUB its core image
        vm.expect(bm.BOOT_OK, 120)
        assert vm.wait_exit(60) == MachineState.SHUTOFF
