"""Disks seen from inside the guest: Debian's kernel on the software CPU drives virtio-blk over virtio-pci.

Three boots in all (each ~4 s): one writes ext2 filesystems with files of random data on a raw and a qcow2 disk
at once, the host checks them with the real tools (qemu-img check, e2fsck, debugfs), a second boot reads the
files back; a third writes and fsyncs records in a loop until the test kill -9s the runner, then every record
the guest saw synced must be in both images and the qcow2 metadata must pass qemu-img check.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from core.storage import create_image, open_image
from tests.helpers.runner import VireoSession, run_vireo

DISK_SIZE = 64 << 20
SUM = re.compile(r"VIREO-DISK-SUM=(vd[a-z]):([\w.]+):([0-9a-f]{64})")


def _boot(kernel: Path, initrd: Path, disks: list[str], action: str, timeout: float = 120) -> str:
    args = ["--kernel", kernel, "--initrd", initrd, "--accel", "software", "--timeout", str(timeout - 10),
            "--append", f"console=ttyS0 quiet vireo.action={action}"]
    for d in disks:
        args += ["--disk", d]
    code, out, err = run_vireo(args, timeout=timeout)
    assert code == 0, f"runner exited {code}\n--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-3000:]}"
    assert "VIREO-ERROR" not in out, out[-3000:]
    assert "VIREO-DISK-OK" in out, out[-3000:]
    return out


def _sums(out: str) -> dict[tuple[str, str], str]:
    return {(dev, name): digest for dev, name, digest in SUM.findall(out)}


def _qemu_img_check(path: Path) -> None:
    done = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _host_file_sums(raw_fs: Path, names: list[str]) -> dict[str, str]:
    """The files' sha256 as the host's e2fsprogs read them out of an ext2 image (independent of Vireo)."""
    fsck = subprocess.run(["e2fsck", "-fn", str(raw_fs)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    sums = {}
    for name in names:
        data = subprocess.run(["debugfs", "-R", f"cat /{name}", str(raw_fs)], capture_output=True, check=True).stdout
        sums[name] = hashlib.sha256(data).hexdigest()
    return sums


def test_files_written_by_the_guest_survive_a_reboot_raw_and_qcow2(debian_kernel, busybox_initramfs, tmp_path):
    raw, qcow = tmp_path / "disk.raw", tmp_path / "disk.qcow2"
    create_image(str(raw), "raw", DISK_SIZE)
    create_image(str(qcow), "qcow2", DISK_SIZE)
    # The qcow2 disk with cache=none: guest data through O_DIRECT, metadata through the page cache.
    out = _boot(debian_kernel, busybox_initramfs, [f"{raw},format=raw", f"{qcow},cache=none"], "disk-write")
    assert f"VIREO-DISK-SIZE=vda:{DISK_SIZE}" in out and f"VIREO-DISK-SIZE=vdb:{DISK_SIZE}" in out
    written = _sums(out)
    names = ["big.bin", "odd.bin", "small.bin"]
    assert sorted(written) == sorted((d, n) for d in ("vda", "vdb") for n in names), out[-3000:]
    assert written[("vda", "big.bin")] != written[("vdb", "big.bin")]     # random data, not a constant

    # The host's own tools agree: QEMU's view of the qcow2 image, e2fsprogs' view of both filesystems.
    _qemu_img_check(qcow)
    if shutil.which("debugfs") and shutil.which("e2fsck"):
        flat = tmp_path / "qcow-as-raw"
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow), str(flat)], check=True)
        for dev, image in (("vda", raw), ("vdb", flat)):
            assert _host_file_sums(image, names) == {n: written[(dev, n)] for n in names}
        # Vireo's reading of the qcow2 image is byte for byte what qemu-img reads.
        with open_image(str(qcow), read_only=True) as dev:
            assert hashlib.sha256(dev.read(0, DISK_SIZE)).digest() == hashlib.sha256(flat.read_bytes()).digest()

    out = _boot(debian_kernel, busybox_initramfs, [f"{raw},format=raw", f"{qcow},format=qcow2"], "disk-read")
    assert _sums(out) == written
    _qemu_img_check(qcow)


def test_kill_9_keeps_every_synced_write(debian_kernel, busybox_initramfs, tmp_path):
    raw, qcow = tmp_path / "crash.raw", tmp_path / "crash.qcow2"
    create_image(str(raw), "raw", DISK_SIZE)
    create_image(str(qcow), "qcow2", DISK_SIZE)
    target = 40
    args = ["--kernel", debian_kernel, "--initrd", busybox_initramfs, "--accel", "software",
            "--disk", f"{raw},format=raw", "--disk", f"{qcow},format=qcow2",
            "--append", "console=ttyS0 quiet vireo.action=disk-syncloop"]
    with VireoSession(args) as session:
        session.expect(re.compile(rf"VIREO-SYNCED={target}\r?\n"), timeout=120)
        session.proc.send_signal(signal.SIGKILL)     # mid-loop: more writes are in flight
        session.wait(10)
        out = session.stdout
    assert session.proc.returncode == -signal.SIGKILL
    assert "VIREO-ERROR" not in out, out[-3000:]
    synced = [int(n) for n in re.findall(r"VIREO-SYNCED=(\d+)\r?\n", out)]
    assert synced == list(range(len(synced))) and synced[-1] >= target

    _qemu_img_check(qcow)
    for path in (raw, qcow):
        with open_image(str(path), read_only=True) as dev:
            for n in synced:
                record = dev.read(n * 17 * 4096, 4096)
                assert record == f"VIREO-SEQ {n}\n".encode().ljust(4096, b"\0"), f"{path.name}: record {n} lost"
    # And QEMU reads the same records out of the qcow2 image.
    flat = tmp_path / "crash-as-raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow), str(flat)], check=True)
    with open(flat, "rb") as f:
        for n in synced:
            f.seek(n * 17 * 4096)
            assert f.read(16).startswith(f"VIREO-SEQ {n}\n".encode())


@pytest.fixture(autouse=True)
def _need_qemu_img():
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img (Debian qemu-utils) is needed to check the images")
