"""The boot media builder (tests/fixtures/boot_media.py), without booting anything: the boot loaders' configs say
what the firmware tests rely on, the installer's initramfs puts install.sh at /init, the ISOs have the El Torito
records and files their boot needs, and a second build with nothing changed does no work.
"""
from __future__ import annotations

import gzip
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures import newc
from tests.helpers import boot_media as media
from tests.helpers.runner import FIXTURES_OUT, in_ci

builder = media.builder


def _xorriso() -> str:
    path = shutil.which("xorriso")
    if path is None:
        reason = "xorriso is not installed (Debian package xorriso)"
        if in_ci():
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)
    return path


def _el_torito(iso: Path) -> list[list[str]]:
    """The El Torito boot image records of `iso` as xorriso reports them: N, platform, bootable, emulation,
    load segment, header, load size, LBA."""
    done = subprocess.run([_xorriso(), "-indev", str(iso), "-report_el_torito", "plain"], capture_output=True,
                          text=True, timeout=60)
    return [line.split(":", 1)[1].split() for line in done.stdout.splitlines()
            if line.startswith("El Torito boot img")]


def _files(iso: Path, under: str) -> set[str]:
    done = subprocess.run([_xorriso(), "-indev", str(iso), "-find", under, "-type", "f"], capture_output=True,
                          text=True, timeout=60)
    return {line.strip("'") for line in done.stdout.splitlines() if line.startswith("'")}


def test_grub_menu_waits_on_screen_and_serial() -> None:
    cfg = builder.grub_linux_cfg()
    assert "set timeout=-1" in cfg
    assert "terminal_output console serial" in cfg and "terminal_input console serial" in cfg
    titles = re.findall(r'^menuentry "([^"]+)"', cfg, re.MULTILINE)
    assert titles == list(media.LINUX_TITLES)
    assert "console=tty0 console=ttyS0 quiet vireo.action=poweroff" in cfg


def test_isolinux_menu_waits_on_screen_and_serial() -> None:
    cfg = builder.isolinux_cfg()
    assert cfg.startswith("SERIAL 0 115200\n")
    assert "UI menu.c32" in cfg and "TIMEOUT 0" in cfg and f"MENU TITLE {media.ISOLINUX_MENU_TITLE}" in cfg
    assert re.findall(r"MENU LABEL (.+)", cfg) == list(media.LINUX_TITLES)


def test_installer_configs() -> None:
    di = builder.debian_installer_cfg()
    assert re.findall(r'^menuentry "([^"]+)"', di, re.MULTILINE) == list(media.DI_TITLES)
    assert f"set timeout={media.DI_TIMEOUT}" in di
    first, second = di.split("menuentry")[1:]
    assert "console=ttyS0" in first and "console=" not in second
    assert "/boot/installer.cpio.gz" in builder.installer_cfg() and "set timeout=0" in builder.installer_cfg()
    disk = builder.disk_cfg()
    assert "set timeout=0" in disk and f'echo "{media.GRUB_DISK_MARKER}"' in disk and media.DISK_TITLE in disk


def test_installer_initramfs_puts_install_sh_at_init() -> None:
    base = gzip.compress(newc.write([newc.Entry("init", stat.S_IFREG | 0o755, b"#!/bin/sh\nold\n")]), mtime=0)
    blob = builder.installer_initramfs(base)
    assert blob.startswith(base)
    # The second archive starts 4-byte aligned after the first (the kernel skips the zeros between them).
    second = blob[len(base):]
    pad = len(second) - len(second.lstrip(b"\0"))
    assert (len(base) + pad) % 4 == 0
    entries = newc.read(gzip.decompress(second[pad:]))
    assert [(e.name, e.data) for e in entries] == [("init", builder.INSTALL_SCRIPT.read_bytes())]
    assert entries[0].mode == stat.S_IFREG | 0o755


def test_grub_isos_boot_by_no_emulation_el_torito() -> None:
    for iso in (media.grub_iso(), media.debian_installer_iso(), media.installer_iso()):
        bios = [r for r in _el_torito(iso) if r[1] == "BIOS"]
        assert len(bios) == 1 and bios[0][3] == "none", (iso, bios)


def test_isolinux_iso_boot_record() -> None:
    iso = media.isolinux_iso()
    assert [r[1:4] + [r[6]] for r in _el_torito(iso)] == [["BIOS", "y", "none", "4"]]
    assert {f"/isolinux/{m}" for m in builder.ISOLINUX_MODULES} <= _files(iso, "/isolinux")


def test_installer_iso_carries_what_it_installs(tmp_path: Path) -> None:
    iso = media.installer_iso()
    files = _files(iso, "/")
    assert {"/install/boot.img", "/install/core.img", "/install/grub.cfg", "/boot/vmlinuz",
            "/boot/initramfs.cpio.gz", "/boot/installer.cpio.gz", "/boot/grub/i386-pc/normal.mod",
            "/boot/grub/i386-pc/linux.mod"} <= files
    core = tmp_path / "core.img"
    subprocess.run([_xorriso(), "-osirrox", "on", "-indev", str(iso), "-extract", "/install/core.img", str(core)],
                   capture_output=True, timeout=60, check=True)
    # install.sh puts core.img in sectors 1..2047, before the partition; diskboot.img (its first sector) holds
    # the blocklist of the rest, which grub-mkimage fills in: starting at sector 2.
    size = core.stat().st_size
    assert 0 < size <= 2047 * 512
    first = core.read_bytes()[:512]
    start, length = int.from_bytes(first[0x1F4:0x1FC], "little"), int.from_bytes(first[0x1FC:0x1FE], "little")
    assert start == 2 and length == -(-size // 512) - 1


def test_second_build_does_no_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    media.grub_iso()          # the inputs exist (skip or CI failure otherwise)
    monkeypatch.setenv("VIREO_BOOT_MEDIA", str(tmp_path))
    names = [builder.GRUB_ISO, builder.ISOLINUX_ISO]
    assert builder.build_all(FIXTURES_OUT, only=names) == 0
    built = {n: (tmp_path / n).stat().st_mtime_ns for n in names}
    start = time.monotonic()
    assert builder.build_all(FIXTURES_OUT, only=names) == 0
    assert time.monotonic() - start < 5.0      # checking the inputs, with room for a loaded host
    assert {n: (tmp_path / n).stat().st_mtime_ns for n in names} == built
