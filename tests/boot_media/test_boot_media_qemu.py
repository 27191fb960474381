"""Each boot medium of the firmware tests (issue 12) boots under QEMU's TCG with SeaBIOS (Debian's bios-256k.bin, the
firmware Vireo uses): the reference that Vireo's own firmware tests repeat on its engine, step by step.

The media are described in tests/fixtures/boot_media.py and tests/helpers/boot_media.py. CD-ROMs are QEMU's -cdrom
(the PIIX IDE secondary master, an ATAPI drive), the first boot device (-boot order=d), so SeaBIOS boots them by El
Torito; disks are -drive if=ide (primary master) or if=virtio (virtio-blk PCI). Keys are pressed on the PS/2
keyboard (monitor sendkey), the text screen is read from VGA memory, and markers from the serial port COM1.
The timeouts allow for a loaded machine; under plain TCG each boot takes 1 s (menus) to about 20 s (the installer).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import boot_media as media
from tests.helpers.qemu_machine import SEABIOS, QemuMachine, qemu_binary
from tests.helpers.runner import in_ci

CD_FIRST = ["-boot", "order=d"]


@pytest.fixture(autouse=True)
def _need_qemu() -> None:
    missing = [what for what, ok in (("qemu-system-x86_64 (Debian package qemu-system-x86)", qemu_binary()),
                                     (f"{SEABIOS} (Debian package seabios)", SEABIOS.exists())) if not ok]
    if missing:
        reason = f"{' and '.join(missing)} not installed (./run-tests installs them, as root)"
        if in_ci():
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def machines() -> Iterator[list[QemuMachine]]:
    """The QEMUs a test started, killed at its end even when it fails."""
    started: list[QemuMachine] = []
    yield started
    for m in started:
        m.close()


def boot(machines: list[QemuMachine], drives: list[str], **kwargs) -> QemuMachine:
    m = QemuMachine(drives, **kwargs)
    machines.append(m)
    return m


def screen_text(screen: list[str]) -> str:
    return "\n".join(line.rstrip() for line in screen)


def test_grub_iso_menu_waits_then_boots_linux(machines: list[QemuMachine]) -> None:
    m = boot(machines, ["-cdrom", str(media.grub_iso()), *CD_FIRST])
    # GRUB draws the entries in order, so the last one's title means the menu is complete.
    m.expect(media.LINUX_TITLES[-1], 60)
    screen = screen_text(m.wait_for_screen(media.LINUX_TITLES[-1], 10))
    assert "GNU GRUB" in screen and media.LINUX_TITLES[0] in screen, screen
    assert "executed automatically" not in screen, "the menu must wait for a key (timeout -1)"
    m.sendkey("ret")
    m.expect(media.BOOT_OK, 120)
    m.expect(media.POWEROFF, 30)
    m.wait_exit(30)


def test_isolinux_iso_menu_waits_then_boots_linux(machines: list[QemuMachine]) -> None:
    m = boot(machines, ["-cdrom", str(media.isolinux_iso()), *CD_FIRST])
    m.expect("ISOLINUX", 60)
    m.expect(media.LINUX_TITLES[-1], 30)
    screen = screen_text(m.wait_for_screen(media.LINUX_TITLES[-1], 10))
    assert media.ISOLINUX_MENU_TITLE in screen and media.LINUX_TITLES[0] in screen, screen
    assert "Automatic boot" not in screen, "the menu must wait for a key (TIMEOUT 0)"
    m.sendkey("ret")
    m.expect(media.BOOT_OK, 120)
    m.expect(media.POWEROFF, 30)
    m.wait_exit(30)


def test_debian_installer_reaches_its_first_screen_on_serial(machines: list[QemuMachine]) -> None:
    m = boot(machines, ["-cdrom", str(media.debian_installer_iso()), *CD_FIRST], memory_mib=media.DI_MEMORY_MIB)
    m.expect(media.DI_TITLES[-1], 60)
    m.sendkey("ret")       # the first entry, without waiting for GRUB's timeout
    m.expect(media.DI_FIRST_SCREEN, 240)
    assert "Low memory" not in m.output


@pytest.mark.skipif(not os.environ.get("VIREO_BOOT_MEDIA_SLOW"),
                    reason="the installer on the framebuffer takes ~30 s under TCG: set VIREO_BOOT_MEDIA_SLOW=1")
def test_debian_installer_draws_its_first_screen_on_the_framebuffer(machines: list[QemuMachine]) -> None:
    m = boot(machines, ["-cdrom", str(media.debian_installer_iso()), *CD_FIRST], memory_mib=media.DI_MEMORY_MIB)
    m.expect(media.DI_TITLES[-1], 60)
    m.sendkey("down")
    m.sendkey("ret")
    while True:
        image = m.screendump()
        colors = {rgb: n for n, rgb in image.getcolors(image.width * image.height) or []}
        if media.installer_screen_drawn(colors, image.width * image.height):
            break
        assert m.elapsed() < 300, f"no installer dialog on the {image.size} screen after {m.elapsed():.0f} s"
        time.sleep(1)
    assert image.size[0] >= 800


def test_memtest86plus_iso_uses_floppy_emulation() -> None:
    """Debian's memtest86+ ISO boots by El Torito floppy emulation (a 1.44 MB image), the path SeaBIOS maps to
    drive 0x00; the ISO's other image is for UEFI."""
    xorriso = shutil.which("xorriso")
    if xorriso is None:
        reason = "xorriso is not installed (Debian package xorriso)"
        pytest.fail(f"CI: {reason}") if in_ci() else pytest.skip(reason)
    report = subprocess.run([xorriso, "-indev", str(media.memtest_iso()), "-report_el_torito", "plain"],
                            capture_output=True, text=True, timeout=60).stdout
    bios = [line for line in report.splitlines() if line.startswith("El Torito boot img") and " BIOS " in line]
    assert len(bios) == 1 and " fd1.4 " in bios[0], report


def test_memtest86plus_draws_its_screen_and_runs(machines: list[QemuMachine]) -> None:
    m = boot(machines, ["-cdrom", str(media.memtest_iso()), *CD_FIRST], memory_mib=256)
    screen = screen_text(m.wait_for_screen(media.MEMTEST_TITLE, 90))
    assert "Memory" in screen, screen
    m.wait_for_screen(media.MEMTEST_RUNNING, 60)


@pytest.mark.parametrize(("bus", "fmt"), [("ide", "raw"), ("virtio", "qcow2")])
def test_install_to_blank_disk_then_boot_it_alone(machines: list[QemuMachine], tmp_path: Path, bus: str,
                                                  fmt: str) -> None:
    disk = media.blank_disk(tmp_path / f"disk.{fmt}", fmt)
    drive = ["-drive", f"file={disk},format={fmt},if={bus}"]
    installer = boot(machines, ["-cdrom", str(media.installer_iso()), *CD_FIRST, *drive])
    installer.expect(media.INSTALLER_START, 120)
    found = installer.expect(media.INSTALL_DISK, 60)
    assert found.group(1) == ("sda" if bus == "ide" else "vda")
    assert int(found.group(2)) * 512 == media.BLANK_DISK_BYTES
    done = installer.expect(re.compile(f"{media.INSTALL_OK}|{media.INSTALL_FAILED}.*"), 120)
    assert done.group(0) == media.INSTALL_OK, done.group(0)
    installer.wait_exit(30)
    if fmt == "raw":
        mbr = disk.read_bytes()[:512]
        assert mbr[510:] == b"\x55\xaa" and mbr[446] == 0x80 and mbr[450] == 0x83
        assert mbr[:440] == media.builder.GRUB_DIR.joinpath("boot.img").read_bytes()[:440]

    m = boot(machines, [*drive, "-boot", "order=c"])
    m.expect(media.GRUB_DISK_MARKER, 60)
    m.expect(media.BOOT_OK, 120)
    m.expect(media.POWEROFF, 30)
    m.wait_exit(30)


def test_blank_disk_is_not_bootable(machines: list[QemuMachine], tmp_path: Path) -> None:
    disk = media.blank_disk(tmp_path / "blank.raw")
    m = boot(machines, ["-drive", f"file={disk},format=raw,if=ide", "-boot", "order=c"])
    m.wait_for_screen(media.NO_BOOTABLE_DEVICE, 60)
    # SeaBIOS waits and retries the boot: the machine keeps running.
    assert m.running and "running" in m.monitor("info status")
