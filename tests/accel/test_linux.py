"""Debian's amd64 kernel with the busybox initramfs on both accelerators (issues 2, 3 and 4's done-means): it boots
to the marker and powers off with 1 and 2 CPUs, `nproc` and /proc/meminfo agree with --cpus/--memory, its log
reaches the VGA text screen, and the serial shell answers.

KVM runs these only where /dev/kvm is hardware virtualization: on our build machines it is kvm_pvm, a software
KVM that cannot run a stock kernel (it fails on instructions such as cmpxchg16b), so they skip there, saying so.
The software CPU's own Linux scenarios (the sha256 workload, module loading, the 686 kernel) are in
tests/software_cpu/test_software_linux.py.
"""
from __future__ import annotations

import re

import pytest

from tests.helpers.accel import ACCELS, require_hardware_kvm
from tests.helpers.runner import run_vireo, run_vireo_interactive

pytestmark = pytest.mark.parametrize("accel", ACCELS)


def _args(kernel, initrd, accel: str, action: str, *extra: str, timeout: float,
          console: str = "console=ttyS0") -> list[str]:
    return ["--kernel", str(kernel), "--initrd", str(initrd), "--append", f"{console} vireo.action={action}",
            "--accel", accel, "--serial", "stdio", "--timeout", str(int(timeout - 10)), *extra]


@pytest.mark.parametrize("cpus", [1, 2])
def test_boots_to_marker_and_powers_off(debian_kernel, busybox_initramfs, accel, cpus, tmp_path):
    require_hardware_kvm(accel)
    extra = ["--cpus", str(cpus), "--memory", "512"]
    console = "console=ttyS0"
    if cpus == 1:
        # The kernel's log also goes to the VGA text console: its writes to 0xB8000 must reach the VGA model
        # (the CPU maps RAM around the 0xA0000-0xBFFFF window), so the screendump's text shows them.
        extra += ["--screendump", str(tmp_path / "screen.png")]
        console = "console=tty0 console=ttyS0"
    status, out, err = run_vireo(_args(debian_kernel, busybox_initramfs, accel, "info", *extra, timeout=120,
                                       console=console), timeout=120)
    assert status == 0, err + out[-3000:]
    assert "VIREO-BOOT-OK" in out and "VIREO-POWEROFF" in out
    assert f"VIREO-NPROC={cpus}" in out
    memtotal = int(out.split("VIREO-MEMTOTAL=")[1].split()[0])
    assert 400_000 < memtotal <= 512 * 1024
    if cpus == 1:
        assert (tmp_path / "screen.png").stat().st_size > 0
        screen = (tmp_path / "screen.txt").read_text()
        assert "Run /init as init process" in screen, screen
        assert "reboot: Power down" in screen, screen


def test_serial_shell_answers_and_poweroff_exits_zero(debian_kernel, busybox_initramfs, accel):
    require_hardware_kvm(accel)
    status, out, err = run_vireo_interactive(
        _args(debian_kernel, busybox_initramfs, accel, "shell", "--memory", "256", timeout=120),
        ["echo $((6*7))", "poweroff"], timeout=120)
    assert status == 0, err + out[-3000:]
    assert "VIREO-BOOT-OK" in out
    assert re.search(r"^42\r?$", out, re.MULTILINE), out[-2000:]
    assert "VIREO-POWEROFF" in out
