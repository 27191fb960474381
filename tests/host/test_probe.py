"""LocalHost.probe_file (core/host/probe.py): what a file chosen as a kernel, initrd, disk or ISO is, read from its
first bytes (issue 17: a README was accepted as the kernel, and the failure only came at start). Real fixtures where
there are some — Debian's bzImages, the busybox initramfs, qcow2 images made by the project's own image code and
by qemu-img — and, for ISO images, volume descriptors laid out by tests/helpers/iso.py as ECMA-119 8.4 (primary
volume descriptor) and El Torito 1.0 2.0 (boot record volume descriptor) describe them: xorriso/genisoimage are
not installed on the test machines.

Also: a disk asked for under a "folder" that is a file is a one-line error naming that file.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from core.config import ConfigStore
from core.host import FileProbe, HostError, LocalHost
from tests.helpers.iso import write_iso
from tests.helpers.runner import in_ci


@pytest.fixture
def host(tmp_path: Path) -> LocalHost:
    h = LocalHost(ConfigStore(tmp_path / "vms"), runtime_dir=str(tmp_path / "run"))
    yield h
    h.close()


@pytest.fixture
def readme(tmp_path: Path) -> Path:
    path = tmp_path / "README"
    path.write_text("Vireo\n=====\n\nA virtual machine manager. Run `vireo` to start.\n")
    return path


def test_debian_kernels_are_named_with_version_and_protocol(host: LocalHost, debian_kernel: Path,
                                                             debian_kernel_686: Path) -> None:
    probe = host.probe_file(str(debian_kernel), "kernel")
    assert probe.ok and probe.message == ""
    assert probe.kind.startswith("Linux kernel bzImage 6.1.")
    assert probe.kind.endswith("-amd64 (boot protocol 2.15)")
    assert host.probe_file(str(debian_kernel_686), "kernel").kind.split(" ")[3].endswith("-686")


def test_multiboot_kernels_by_layout(host: LocalHost, tmp_path: Path) -> None:
    from tests.boot.test_boot_multiboot import aout_kernel, elf32_kernel

    elf = tmp_path / "kernel-elf.mb"
    elf.write_bytes(elf32_kernel())
    assert host.probe_file(str(elf), "kernel") == FileProbe(True, "Multiboot kernel (ELF)")
    aout = tmp_path / "kernel-aout.mb"
    aout.write_bytes(aout_kernel()[0])
    assert host.probe_file(str(aout), "kernel") == FileProbe(True, "Multiboot kernel (a.out kludge)")


def test_text_file_is_refused_for_every_role_naming_it(host: LocalHost, readme: Path) -> None:
    for role, noun in (("kernel", "not a kernel"), ("initrd", "not an initrd"), ("disk", "not a disk image"),
                       ("iso", "not an ISO image")):
        probe = host.probe_file(str(readme), role)
        assert probe == FileProbe(False, f"text file ({noun})", probe.message)
        assert probe.message.startswith(f"{readme} is a text file, not ") and "\n" not in probe.message


def test_initramfs_and_other_archives(host: LocalHost, busybox_initramfs: Path, debian_kernel: Path,
                                      tmp_path: Path) -> None:
    assert host.probe_file(str(busybox_initramfs), "initrd") == FileProbe(True, "gzip-compressed cpio initramfs")
    newc = tmp_path / "initrd.cpio"
    newc.write_bytes(b"070701" + b"0" * 104 + b"TRAILER!!!\0")
    assert host.probe_file(str(newc), "initrd").kind == "cpio initramfs (newc, uncompressed)"
    xz = tmp_path / "initrd.xz"
    xz.write_bytes(b"\xfd7zXZ\x00" + bytes(32))
    assert host.probe_file(str(xz), "initrd").kind == "xz-compressed cpio initramfs"
    # The wrong file in each slot says what it is.
    wrong = host.probe_file(str(debian_kernel), "initrd")
    assert not wrong.ok and wrong.kind == "Linux kernel bzImage (not an initrd)"
    wrong = host.probe_file(str(busybox_initramfs), "kernel")
    assert not wrong.ok and "not a Linux bzImage or Multiboot kernel" in wrong.message


def test_truncated_kernel_is_refused_with_the_boot_loaders_reason(host: LocalHost, debian_kernel: Path,
                                                                  tmp_path: Path) -> None:
    cut = tmp_path / "vmlinuz-cut"
    cut.write_bytes(debian_kernel.read_bytes()[:256 * 1024])
    probe = host.probe_file(str(cut), "kernel")
    assert not probe.ok and "is truncated" in probe.message and str(cut) in probe.message


def test_disks_qcow2_by_both_makers_raw_and_text(host: LocalHost, readme: Path, tmp_path: Path) -> None:
    ours = tmp_path / "ours.qcow2"
    host.create_disk(str(ours), 1 << 30, fmt="qcow2")
    assert host.probe_file(str(ours), "disk") == FileProbe(True, "qcow2 disk image, 1 GiB virtual")
    theirs = tmp_path / "theirs.qcow2"
    if shutil.which("qemu-img"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(theirs), "3G"], check=True)
        assert host.probe_file(str(theirs), "disk").kind == "qcow2 disk image, 3 GiB virtual"
    elif in_ci():
        pytest.fail("CI: qemu-img is not installed", pytrace=False)
    raw = tmp_path / "disk.raw"
    host.create_disk(str(raw), 512 << 20)
    assert host.probe_file(str(raw), "disk") == FileProbe(True, "raw disk image, 512 MiB")
    empty = tmp_path / "empty.img"
    empty.touch()
    assert not host.probe_file(str(empty), "disk").ok
    # A qcow2 image is a disk, not a kernel.
    assert host.probe_file(str(ours), "kernel").kind == "qcow2 disk image (not a kernel)"


def test_iso_volume_id_el_torito_and_size(host: LocalHost, tmp_path: Path, readme: Path) -> None:
    bootable = write_iso(tmp_path / "debian.iso", "Debian 12.8.0 amd64 n", el_torito=True, size=612 << 20)
    assert host.probe_file(str(bootable), "iso") == FileProbe(
        True, "ISO 9660 image 'Debian 12.8.0 amd64 n', bootable (El Torito), 612 MiB",
        volume_id="Debian 12.8.0 amd64 n")
    assert host.probe_file(str(bootable), "boot-iso") == host.probe_file(str(bootable), "iso")
    data = write_iso(tmp_path / "data.iso", "BACKUP", el_torito=False)
    # A data disc serves a CD-ROM drive, not an install: the firmware has nothing to boot on it.
    assert host.probe_file(str(data), "iso") == FileProbe(
        True, "ISO 9660 image 'BACKUP', 128 KiB, not bootable (a data disc: no El Torito boot record)",
        volume_id="BACKUP")
    assert host.probe_file(str(data), "boot-iso") == FileProbe(
        False, "not a bootable ISO", f"{data} is an ISO 9660 image but not a bootable ISO (no El Torito boot "
                                     "record): choose an installer or live ISO")
    assert host.probe_file(str(readme), "boot-iso").message == (f"{readme} is a text file, not an ISO 9660 CD/DVD "
                                                                "image: choose another file")
    assert host.probe_file(str(bootable), "kernel").kind == "ISO 9660 image (not a kernel)"


def test_probe_reads_a_bounded_head(host: LocalHost, tmp_path: Path) -> None:
    # A FIFO is refused before any read (it would block), and a large sparse image is probed from its head.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(HostError, match="not a regular file"):
        host.probe_file(str(fifo), "disk")
    big = tmp_path / "big.raw"
    with open(big, "wb") as f:
        f.truncate(20 << 30)
    assert host.probe_file(str(big), "disk") == FileProbe(True, "raw disk image, 20 GiB")


def test_missing_unreadable_folder_and_bad_role_are_one_line_errors(host: LocalHost, readme: Path,
                                                                    tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(HostError, match=f"^{missing}: no such file; check the path$"):
        host.probe_file(str(missing), "kernel")
    with pytest.raises(HostError, match="is a folder: choose a file"):
        host.probe_file(str(tmp_path), "kernel")
    with pytest.raises(HostError, match="unknown file role 'bios'"):
        host.probe_file(str(readme), "bios")
    if os.geteuid() != 0:
        readme.chmod(0)
        with pytest.raises(HostError, match=f"^{readme}: cannot open: Permission denied$"):
            host.probe_file(str(readme), "kernel")


def test_images_folder_that_is_a_file_is_a_one_line_error(host: LocalHost, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from core.config import images_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    images = images_dir()
    images.parent.mkdir(parents=True)
    images.write_text("not a folder")
    for target in (images / "web.qcow2", images / "sub" / "web.raw"):
        with pytest.raises(HostError) as err:
            host.create_disk(str(target), 1 << 20, fmt="qcow2" if target.suffix == ".qcow2" else "raw")
        assert str(err.value) == (f"cannot create {target}: {images} is a file, not a folder; move it away or "
                                  "choose another place")
    assert images.read_text() == "not a folder"
