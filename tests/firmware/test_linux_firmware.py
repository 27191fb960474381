"""A Linux kernel given with firmware boot goes through SeaBIOS: fw_cfg carries the kernel, initrd and command line,
QEMU's linuxboot_dma.bin option ROM (Debian's qemu-system-data) loads them, and Debian's kernel reaches the test
initramfs. With two CPUs, the AP that SeaBIOS counted and left halted with interrupts off wakes for Linux's
INIT/SIPI."""
from __future__ import annotations

import os
import time

import pytest

from core.boot.firmware_config import LINUXBOOT_ROM
from core.machine import Machine, MachineConfig, MachineState
from tests.firmware.conftest import require_seabios
from tests.helpers.accel import require_accel
from tests.helpers.runner import in_ci


def require_linuxboot_rom() -> None:
    if not os.path.isfile(LINUXBOOT_ROM):
        reason = f"{LINUXBOOT_ROM} not found: install Debian's qemu-system-data"
        if in_ci():
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)


def boot_info(kernel, initrd, cpus: int, until: bytes, timeout: float = 150) -> tuple[Machine, str]:
    """Boot the initramfs's `info` action through SeaBIOS on the software CPU until `until` is on the serial
    console; return the (still running or powered off) machine and the serial text."""
    require_accel("software")
    require_seabios()
    require_linuxboot_rom()
    serial = bytearray()
    config = MachineConfig(kernel=str(kernel), initrd=str(initrd), cmdline="console=ttyS0 vireo.action=info",
                           firmware="/usr/share/seabios/bios-256k.bin", cpus=cpus, memory_mib=256,
                           accel="software", boot_menu_wait_ms=0, debugcon=True)
    machine = Machine(config, serial_output=serial.extend)
    assert machine.board.firmware_boot and not config.direct_kernel_boot
    machine.start()
    deadline = time.monotonic() + timeout
    while until not in serial and time.monotonic() < deadline and machine.state == MachineState.RUNNING:
        time.sleep(0.1)
    return machine, serial.decode(errors="replace")


def stop(machine: Machine) -> None:
    if machine.state in (MachineState.RUNNING, MachineState.PAUSED):
        machine.power_off()
        machine.wait(10)


def test_kernel_and_initrd_through_seabios_and_linuxboot(debian_kernel, busybox_initramfs):
    machine, out = boot_info(debian_kernel, busybox_initramfs, 1, b"VIREO-NPROC=")
    try:
        assert "VIREO-BOOT-OK" in out and "VIREO-NPROC=1" in out, out[-3000:]
        assert "vireo.action=info" in out                     # the command line from fw_cfg
        log = machine.board.debugcon.output
        assert "Booting from ROM..." in log                   # the linuxboot option ROM's boot entry
    finally:
        stop(machine)


def test_ap_halted_by_seabios_wakes_for_linux(debian_kernel, busybox_initramfs):
    probe = Machine(MachineConfig(accel="software", boot_menu_wait_ms=0, memory_mib=64))
    try:
        offered = bool(probe.board.acpi_fw_cfg_files(probe.config))
    finally:
        probe.board.close()
    if not offered:
        # Without Vireo's tables Linux reads SeaBIOS's MP table, which lists one logical CPU per package.
        pytest.skip("Vireo's ACPI tables are not offered to the firmware yet (Board.acpi_fw_cfg_files, "
                    "core/boot/acpi_fw_cfg.py): Linux only finds CPUs through them")
    machine, out = boot_info(debian_kernel, busybox_initramfs, 2, b"VIREO-NPROC=")
    try:
        assert "Found 2 cpu(s)" in machine.board.debugcon.output     # SeaBIOS woke the AP and left it halted
        assert "smp: Brought up 1 node, 2 CPUs" in out and "VIREO-NPROC=2" in out, out[-3000:]
    finally:
        stop(machine)
