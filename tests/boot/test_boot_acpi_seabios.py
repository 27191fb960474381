"""The fw_cfg ACPI files (core/boot/acpi_fw_cfg.py) run by the real firmware: Debian's SeaBIOS 1.16.2 under QEMU
(TCG), which is given them with -fw_cfg while QEMU's own ACPI is off (so the table loader and tables are Vireo's
alone). SeaBIOS's debug port (0x402) log shows it found the FADT through our XSDT, parsed our DSDT, set up the PS/2
keyboard the DSDT lists, and placed PCI BARs inside the windows the DSDT announces, including 64-bit ones above RAM
when a 2 GiB BAR does not fit below 4 GiB."""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from core.boot.acpi import layout_acpi_tables
from core.boot.acpi_dsdt import pci_windows
from core.boot.acpi_fw_cfg import firmware_acpi_files

QEMU = shutil.which("qemu-system-x86_64")
SEABIOS = Path("/usr/share/seabios/bios-256k.bin")
pytestmark = [pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed (Debian qemu-system-x86)"),
              pytest.mark.skipif(not SEABIOS.exists(), reason=f"{SEABIOS} not installed (Debian seabios)")]
MiB, GiB = 1 << 20, 1 << 30


def run_seabios(tmp_path: Path, files: dict[str, bytes], memory_mib: int, *extra: str, timeout: float = 90) -> str:
    """SeaBIOS's debug log up to "No bootable device." (the VM has no disks), then QEMU is stopped."""
    log = tmp_path / "seabios.log"
    args = [QEMU, "-machine", "pc,acpi=off", "-accel", "tcg", "-m", str(memory_mib), "-smp", "2", "-nodefaults",
            "-display", "none", "-bios", str(SEABIOS), "-chardev", f"file,id=dbg,path={log}",
            "-device", "isa-debugcon,iobase=0x402,chardev=dbg", *extra]
    for name, data in files.items():
        path = tmp_path / name.replace("/", "_")
        path.write_bytes(data)
        args += ["-fw_cfg", f"name={name},file={path}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and "No bootable device" in log.read_text(errors="replace"):
                break
            time.sleep(0.2)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
    text = log.read_text(errors="replace") if log.exists() else ""
    assert "No bootable device" in text, f"SeaBIOS did not finish POST:\n{text[-3000:]}\n{err.decode()[-2000:]}"
    return text


@pytest.mark.parametrize("memory_mib,low,high,extra", [
    (256, 256 * MiB, 0, ()),
    # 4 GiB: QEMU (like Vireo) keeps 3 GiB below 4 GiB. A 2 GiB 64-bit BAR (ivshmem) cannot fit the 32-bit window,
    # so SeaBIOS moves the 64-bit BARs above RAM.
    (4096, 3 * GiB, 1 * GiB, ("-object", "memory-backend-ram,id=shm,size=2G", "-device", "ivshmem-plain,memdev=shm")),
])
def test_seabios_loads_our_tables(tmp_path, memory_mib, low, high, extra):
    files = firmware_acpi_files(2, low, high)
    log = run_seabios(tmp_path, files, memory_mib, *extra)
    w = pci_windows(low, high)
    assert f"PCI: 32: {w.mem32[0]:016x} - {w.mem32[1]:016x}" in log
    m64 = re.search(r"PCI: 64: ([0-9a-f]{16}) - ([0-9a-f]{16})", log)
    if extra:
        assert m64, log
        start, end = int(m64.group(1), 16), int(m64.group(2), 16)
        assert w.mem64[0] <= start < end <= w.mem64[1]
    else:
        assert m64 is None
    for addr in re.findall(r"bar \d, addr ([0-9a-f]+), size [0-9a-f]+ \[(?:mem|prefmem)\]", log):
        a = int(addr, 16)
        assert w.mem32[0] <= a < w.mem32[1] or w.mem64[0] <= a < w.mem64[1]
    assert re.search(r"table\(50434146\)=0x[0-9a-f]+ \(via xsdt\)", log), log     # 'FACP' through our XSDT
    layout = layout_acpi_tables(2, w)
    dsdt_len, = struct.unpack_from("<I", layout.tables, layout.offsets[b"DSDT"] + 4)
    assert "ACPI: parse DSDT at 0x" in log and f"(len {dsdt_len})" in log      # ours, not one of its own
    assert "PS2 keyboard initialized" in log and "no PS/2 keyboard" not in log
