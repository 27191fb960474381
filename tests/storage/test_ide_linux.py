"""IDE seen from inside the guest: Debian's kernel on the software CPU, booted directly (no firmware: the board sets
the PIIX3's IDE function up as firmware would), drives the PIIX3 IDE controller with ata_piix.

- An ATA disk is /dev/sda: the guest makes an ext2 file system on it, writes files of random data, powers off; a
  second boot reads them back with the same sha256, and the host's e2fsprogs read the same bytes from the image.
- An ISO 9660 image made here with xorriso is /dev/sr0: the guest reads the whole disc raw and the files through
  the file system, with the sha256 the host computed.
Both go through bus-master DMA, not PIO: the controller model counts the transfers and the bytes, and only the
few IDENTIFY blocks move by PIO. The CD's raw read rate is printed (run with -s to see it).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from core.machine import DiskSpec, Machine, MachineConfig, MachineState
from core.storage import create_image
from tests.helpers.initrd import initrd_with_current_init
from tests.helpers.runner import in_ci

DISK_SIZE = 64 << 20
DISK_SUM = re.compile(r"VIREO-DISK-SUM=(sd[a-z]):([\w.]+):([0-9a-f]{64})")
CD_SUM = re.compile(r"VIREO-CD-SUM=([\w.]+):([0-9a-f]{64})")
PIO_BUDGET = 64 << 10          # IDENTIFY data and the odd sense/inquiry block; anything bulk must be DMA


def boot(kernel: Path, initrd: Path, action: str, *, disks: list[DiskSpec] = (), cdroms: list[str] = (),
         timeout: float = 240) -> tuple[str, dict[str, int]]:
    """Run the guest to power-off; return its console output and the IDE controller's counters."""
    serial = bytearray()
    config = MachineConfig(kernel=str(kernel), initrd=str(initrd), memory_mib=256, accel="software",
                           cmdline=f"console=ttyS0 quiet vireo.action={action}", disks=list(disks),
                           cdroms=list(cdroms), display="none")
    machine = Machine(config, serial_output=serial.extend)
    machine.start()
    state = machine.wait(timeout)
    if state not in (MachineState.SHUTOFF, MachineState.CRASHED):
        machine.power_off()
        machine.wait(10)
    out = serial.decode(errors="replace")
    assert state == MachineState.SHUTOFF, f"state {state.value} ({machine.reason})\n{out[-3000:]}"
    assert "VIREO-ERROR" not in out, out[-3000:]
    assert machine.board.ide is not None
    return out, machine.board.ide.stats()


def files_by_disk(sums: dict[tuple[str, str], str]) -> list[tuple[tuple[str, str], ...]]:
    """Each disk's files and digests, without the disk's name: ata_piix probes its two channels in parallel, so
    which disk becomes sda can change from one boot to the next (as on real hardware, hence UUIDs in fstab)."""
    disks: dict[str, list[tuple[str, str]]] = {}
    for (dev, name), digest in sums.items():
        disks.setdefault(dev, []).append((name, digest))
    return sorted(tuple(sorted(files)) for files in disks.values())


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        reason = f"{tool} (Debian package {package}) is not installed"
        if in_ci():
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)


def test_linux_writes_ide_disks_and_reads_them_back_after_power_off(debian_kernel, busybox_initramfs, tmp_path):
    initrd = initrd_with_current_init(busybox_initramfs, tmp_path)
    raw, qcow = tmp_path / "ide.raw", tmp_path / "ide.qcow2"
    create_image(str(raw), "raw", DISK_SIZE)
    create_image(str(qcow), "qcow2", DISK_SIZE)
    disks = [DiskSpec(str(raw), format="raw", bus="ide"), DiskSpec(str(qcow), format="qcow2", bus="ide")]
    out, stats = boot(debian_kernel, initrd, "sd-write", disks=disks)
    assert "VIREO-DISK-OK" in out, out[-3000:]
    assert f"VIREO-DISK-SIZE=sda:{DISK_SIZE}" in out and f"VIREO-DISK-SIZE=sdb:{DISK_SIZE}" in out, out[-3000:]
    written = {(dev, name): digest for dev, name, digest in DISK_SUM.findall(out)}
    assert sorted(written) == [(d, n) for d in ("sda", "sdb") for n in ("big.bin", "odd.bin", "small.bin")], out[-3000:]
    assert written[("sda", "big.bin")] != written[("sdb", "big.bin")]
    # ata_piix drove the disks by bus-master DMA: 2 x 3 MiB of files went that way, not through the data port.
    assert stats["dma_transfers"] > 0 and stats["dma_bytes"] >= 6 << 20, stats
    assert stats["pio_bytes"] < PIO_BUDGET, stats

    if shutil.which("debugfs") and shutil.which("e2fsck"):
        fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        data = subprocess.run(["debugfs", "-R", "cat /big.bin", str(raw)], capture_output=True, check=True).stdout
        # The raw image holds one of the two disks' big.bin, byte for byte (either may have been named sda).
        assert hashlib.sha256(data).hexdigest() in {written[("sda", "big.bin")], written[("sdb", "big.bin")]}

    out, stats = boot(debian_kernel, initrd, "sd-read", disks=disks)
    assert "VIREO-DISK-OK" in out, out[-3000:]
    read_back = {(dev, name): digest for dev, name, digest in DISK_SUM.findall(out)}
    assert files_by_disk(read_back) == files_by_disk(written), out[-3000:]
    assert stats["dma_bytes"] >= 6 << 20 and stats["pio_bytes"] < PIO_BUDGET, stats


def test_linux_mounts_an_iso_on_the_ide_cdrom_and_reads_it_by_dma(debian_kernel, busybox_initramfs, tmp_path):
    _need("xorriso", "xorriso")
    initrd = initrd_with_current_init(busybox_initramfs, tmp_path)
    tree = tmp_path / "tree"
    tree.mkdir()
    files = {"hello.txt": b"Vireo reads ISO 9660 through ATAPI.\n", "random.bin": os.urandom(8 << 20)}
    for name, data in files.items():
        (tree / name).write_bytes(data)
    iso = tmp_path / "disc.iso"
    made = subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-V", "VIREO_TEST", "-o", str(iso), str(tree)],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    out, stats = boot(debian_kernel, initrd, "cdrom-read", cdroms=[str(iso)])
    assert "VIREO-CD-OK" in out, out[-3000:]
    sums = dict(CD_SUM.findall(out))
    assert sums == {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}, out[-3000:]
    raw_bytes, seconds = re.search(r"VIREO-CD-RAW=(\d+):([\d.]+)", out).groups()
    assert int(raw_bytes) == iso.stat().st_size
    # The raw read and the files: at least the disc once, and twice the big file, by DMA.
    assert stats["dma_transfers"] > 0 and stats["dma_bytes"] >= iso.stat().st_size, stats
    assert stats["pio_bytes"] < PIO_BUDGET, stats
    print(f"\nLinux read the {int(raw_bytes) / 1e6:.1f} MB CD raw by DMA in {seconds} s: "
          f"{int(raw_bytes) / 1e6 / max(float(seconds), 0.01):.1f} MB/s")
