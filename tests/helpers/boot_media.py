"""The firmware tests' boot media (issue 12) for the tests and benchmarks that boot them: where each is, the texts
that prove each boot reached its goal, and blank disks.

The media are built by tests/fixtures/boot_media.py (run by tests/fixtures/build.py, so by ./run-tests); its
docstring says what each holds and how it is made. Each path function returns the file or skips the test saying how
to get it (fails under CI=true). The proof under QEMU + SeaBIOS is tests/boot_media/test_boot_media_qemu.py, whose
steps (and QEMU TCG timings) are the reference for the same tests on Vireo's engine:

  grub_iso()       GRUB's menu shows LINUX_TITLES (serial and VGA text screen) and waits; Enter boots the first
                   entry: BOOT_OK then POWEROFF on the serial port, and the guest powers off.
  isolinux_iso()   ISOLINUX's menu.c32 shows ISOLINUX_MENU_TITLE and LINUX_TITLES and waits; Enter: the same.
  debian_installer_iso()  GRUB shows DI_TITLES and boots the first after DI_TIMEOUT s (or on Enter): Debian's
                   installer draws DI_FIRST_SCREEN on the serial port; Down, Enter instead draws it on the Bochs
                   framebuffer (installer_screen_drawn() on a screen dump). Needs DI_MEMORY_MIB of RAM, else it
                   stops at a "Low memory" screen. From Enter to DI_KERNEL_STARTED on the serial port, GRUB loads
                   the kernel and the 40 MB initrd from the CD through the BIOS.
  memtest_iso()    Debian's memtest86+ (El Torito floppy emulation) draws MEMTEST_TITLE on the VGA text screen, then
                   MEMTEST_RUNNING once its first test runs. It writes nothing on the serial port.
  installer_iso()  boots at once into the installer: with a blank disk (blank_disk()) attached on IDE or virtio it
                   prints INSTALL_OK and powers off (INSTALL_FAILED=<what> on error); then the disk alone boots
                   through the BIOS and GRUB: GRUB_DISK_MARKER, BOOT_OK, POWEROFF.
  A blank disk alone: SeaBIOS shows NO_BOOTABLE_DEVICE on the VGA text screen and keeps retrying (the VM runs on).
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.fixtures import boot_media as builder
from tests.helpers.runner import FIXTURES_OUT, in_ci, require_fixture

MEDIA_DIR = builder.media_dir(FIXTURES_OUT)

LINUX_TITLES = builder.LINUX_TITLES
ISOLINUX_MENU_TITLE = builder.ISOLINUX_MENU_TITLE
DI_TITLES = builder.DI_TITLES
DI_INITRD_START = builder.DI_INITRD_START
DI_INITRD_DONE = builder.DI_INITRD_DONE
DI_TIMEOUT = builder.DI_TIMEOUT
DISK_TITLE = builder.DISK_TITLE
GRUB_DISK_MARKER = builder.GRUB_DISK_MARKER

BOOT_OK = "VIREO-BOOT-OK"                   # tests/fixtures/init.sh, the test initramfs
POWEROFF = "VIREO-POWEROFF"
INSTALLER_START = "VIREO-INSTALLER-START"   # tests/fixtures/install.sh
INSTALL_OK = "VIREO-INSTALL-OK"
INSTALL_FAILED = "VIREO-INSTALL-FAILED="
# Up to the line's end: the serial output arrives in pieces, and "…:1" may be the start of "…:131072".
INSTALL_DISK = re.compile(r"VIREO-INSTALL-DISK=(\w+):(\d+)\r?\n")
DI_FIRST_SCREEN = "Select a language"       # the title of the installer's first dialog, "[!!] Select a language"
DI_KERNEL_STARTED = "Linux version"         # the installer's kernel is not quiet: its first line, once GRUB has
                                            # read it and the 40 MB initrd.gz from the CD
DI_MEMORY_MIB = 1024
MEMTEST_TITLE = "Memtest86+ v"               # top left of memtest86+'s screen, e.g. "Memtest86+ v6.10"
MEMTEST_RUNNING = re.compile(r"Test #\d+ +\[")   # e.g. "Test #3  [Moving inversions, 1s & 0s]"
NO_BOOTABLE_DEVICE = "No bootable device"   # SeaBIOS, when every boot entry failed
BLANK_DISK_BYTES = 64 << 20


def _media(name: str, what: str) -> Path:
    return require_fixture(MEDIA_DIR / name, what)


def grub_iso() -> Path:
    return _media(builder.GRUB_ISO, "GRUB ISO (grub-mkrescue)")


def isolinux_iso() -> Path:
    return _media(builder.ISOLINUX_ISO, "ISOLINUX ISO")


def debian_installer_iso() -> Path:
    return _media(builder.DI_ISO, "Debian installer ISO")


def installer_iso() -> Path:
    return _media(builder.INSTALLER_ISO, "Vireo test installer ISO")


def memtest_iso() -> Path:
    """Debian's memtest86+ ISO as shipped (not built here)."""
    return require_debian_file(builder.MEMTEST_ISO, "memtest86+")


def require_debian_file(path: Path, package: str) -> Path:
    """`path`, or skip (fail under CI=true) saying which Debian package provides it."""
    if path.exists():
        return path
    reason = f"{path} not found: install Debian's {package} (./run-tests does, as root)"
    if in_ci():
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


def blank_disk(path: Path, fmt: str = "raw", size: int = BLANK_DISK_BYTES) -> Path:
    """Create an empty disk image of `size` bytes: raw (sparse) or qcow2 (with qemu-img, Debian's qemu-utils)."""
    if fmt == "raw":
        with open(path, "wb") as f:
            f.truncate(size)
    elif fmt == "qcow2":
        done = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"qemu-img create {path} failed: {done.stderr.strip()}")
    else:
        raise ValueError(f"disk format {fmt!r}: use raw or qcow2")
    return path


def installer_screen_drawn(rgb_colors: dict[tuple[int, int, int], int], pixels: int) -> bool:
    """Whether a screen's colours are those of the installer's first dialog on the framebuffer: mostly the dialog's
    grey (170,170,170), a frame of the newt blue (0,0,170) and the red (170,0,0) of the highlighted language.

    `rgb_colors` maps each colour to its pixel count (e.g. from PIL's Image.getcolors), `pixels` is the screen's size.
    """
    def share(color: tuple[int, int, int]) -> float:
        return rgb_colors.get(color, 0) / pixels

    return share((170, 170, 170)) > 0.5 and share((0, 0, 170)) > 0.03 and share((170, 0, 0)) > 0.002
