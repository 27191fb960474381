"""`main.py run` with firmware boot: --disk ...,bus=, --cdrom, --boot, --firmware, with one-line errors for bad
values, and a boot sector booted from a virtio-blk disk through SeaBIOS, read back from the screen dump."""
from __future__ import annotations

import pytest

from tests.firmware.bootsector import MARKER, write_disk
from tests.firmware.conftest import require_seabios
from tests.helpers.accel import require_accel
from tests.helpers.runner import run_vireo


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    return lines[0]


@pytest.mark.parametrize("args,needles", [
    (["--boot", "floppy"], ("--boot floppy", "kernel, cd, disk")),
    (["--boot", "cd,cd"], ("--boot cd,cd", "twice")),
    (["--boot", "kernel"], ("boot from kernel", "no kernel")),
    (["--cdrom", "/nonexistent/x.iso"], ("--cdrom", "no such file")),
    (["--firmware", "/nonexistent/bios.bin"], ("--firmware", "no such file")),
    (["--initrd", "/etc/hostname"], ("--initrd", "needs --kernel")),
    (["--boot-menu-wait", "70000"], ("boot menu wait 70000 ms", "0..65535")),
])
def test_bad_firmware_boot_options_are_one_line_errors(args, needles):
    code, _, err = run_vireo([*args, "--accel", "software", "--timeout", "5"], timeout=60)
    assert code == 2, err
    line = one_line_error(err)
    for needle in needles:
        assert needle in line, line


def test_bad_disk_bus_is_a_one_line_error(tmp_path):
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(512))
    code, _, err = run_vireo(["--disk", f"{disk},bus=scsi", "--accel", "software"], timeout=60)
    assert code == 2
    line = one_line_error(err)
    assert "bus=virtio|ide" in line and "'bus=scsi'" in line


def test_firmware_that_is_not_a_bios_image(tmp_path):
    require_seabios()
    bad = tmp_path / "bios.bin"
    bad.write_bytes(b"\0" * 1000)
    code, _, err = run_vireo(["--firmware", bad, "--accel", "software"], timeout=60)
    assert code == 2
    line = one_line_error(err)
    assert str(bad) in line and "multiple of 64 KiB" in line and "seabios" in line


@pytest.mark.parametrize("debugcon", [False, True])
def test_runner_boots_a_disk_through_seabios(tmp_path, debugcon):
    require_accel("software")
    require_seabios()
    disk = tmp_path / "mbr.img"
    write_disk(disk)
    dump = tmp_path / "screen.png"
    code, _, err = run_vireo(["--disk", f"{disk},format=raw,bus=virtio", "--boot", "disk", "--accel", "software",
                              "--serial", "none", "--boot-menu-wait", "0", "--timeout", "6", "--screendump", dump,
                              *(["--debugcon"] if debugcon else [])],
                             timeout=90)
    assert code == 1 and "timeout" in err          # the boot sector halts; the run ends at its --timeout
    text = (tmp_path / "screen.txt").read_text()
    assert "SeaBIOS (version" in text and MARKER in text, text
    # --debugcon: SeaBIOS's log (and what the boot sector writes to port 0x402) on stderr; none without it.
    assert ("Booting from Hard Disk..." in err and MARKER in err) == debugcon, err
