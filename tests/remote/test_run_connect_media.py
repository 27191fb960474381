"""`main.py run --connect … --disk/--cdrom` (issue 17, remote parity): the transient VM on the SSH host gets the
disks (format read from the image there when not given) and ISOs named by their paths on that host; the guest
(the tests' Debian kernel and busybox initramfs, software CPU) writes a file system on the disk and reads the
disc, and qemu-img checks the image afterwards. Options a remote run cannot take are one line each."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import pytest

from core.storage import create_image
from tests.helpers.remote import REPO_PYTHON
from tests.remote.test_remote import cli, server  # noqa: F401
from tests.storage.test_ide_linux import _need

MIB = 1024 * 1024


def _run(server, *args: str) -> subprocess.CompletedProcess:  # noqa: F811
    return cli(server, "run", "--connect", server.uri(python=REPO_PYTHON), "--identity", str(server.user_key),
               "--accept-new-host-key", "--accel", "software", "--serial", "stdio", "--timeout", "120", *args)


def test_run_connect_attaches_disks_and_cdroms_on_the_host(server, tmp_path, debian_kernel,  # noqa: F811
                                                           busybox_initramfs) -> None:
    disk = tmp_path / "scratch.img"            # a qcow2 named .img: the host reads the format from its header
    create_image(str(disk), "qcow2", 64 * MIB)
    boot = ["--kernel", str(debian_kernel), "--initrd", str(busybox_initramfs), "--memory", "256"]
    result = _run(server, *boot, "--append", "console=ttyS0 vireo.action=disk-write", "--disk", str(disk))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    out = result.stdout.replace("\r\n", "\n")
    assert f"VIREO-DISK-SIZE=vda:{64 * MIB}" in out and "VIREO-DISK-OK" in out
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        assert not os.environ.get("CI"), "qemu-img is missing (Debian's qemu-utils)"
    else:
        info = json.loads(subprocess.run([qemu_img, "info", "--output=json", str(disk)], check=True,
                                         capture_output=True, text=True).stdout)
        assert info["format"] == "qcow2" and info["actual-size"] > 1 * MIB     # the guest's writes are in it
        subprocess.run([qemu_img, "check", str(disk)], check=True, capture_output=True)

    _need("xorriso", "xorriso")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "notes.txt").write_bytes(b"read over --connect\n")
    iso = tmp_path / "notes.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-V", "NOTES", "-o", str(iso), str(tree)],
                   check=True, capture_output=True)
    result = _run(server, *boot, "--append", "console=ttyS0 vireo.action=cdrom-read", "--cdrom", str(iso))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    digest = hashlib.sha256(b"read over --connect\n").hexdigest()
    assert f"VIREO-CD-SUM=notes.txt:{digest}" in result.stdout and "VIREO-CD-OK" in result.stdout


@pytest.mark.parametrize(("args", "line"), [
    (["--disk", "scratch.img"], "vireo: --disk scratch.img: give an absolute path on the remote host"),
    (["--disk", "/x.img,cache=none"], "vireo: --disk /x.img: cache=none is not available with --connect"),
    (["--cdrom", "a.iso"], "vireo: --cdrom a.iso: give an absolute path on the remote host"),
    (["--boot", "floppy"], "vireo: --boot floppy: 'floppy' is not a boot device; give a comma list of"),
    (["--boot-menu-wait", "0"], "vireo: --boot-menu-wait 0 is not available with --connect yet"),
])
def test_run_connect_refuses_what_it_cannot_take(server, args, line) -> None:  # noqa: F811
    result = _run(server, "--kernel", "/boot/vmlinuz", *args)
    assert result.returncode == 2 and result.stderr.startswith(line), result.stderr
    assert len(result.stderr.splitlines()) == 1
