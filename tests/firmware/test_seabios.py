"""SeaBIOS (Debian's bios-256k.bin, the QEMU build) on Vireo's board, end to end: it reaches its banner and "No
bootable device" on the VGA text screen with nothing to boot and the machine stays running; Esc at power-on opens
its boot menu listing the devices; it boots an MBR boot sector from a virtio-blk disk; a reset brings the
pristine firmware back; the BIOS area it locks through the PAM registers is read-only to the guest."""
from __future__ import annotations

import time

import pytest

from core.devices.i440fx import PAM0
from core.keymap import Ps2InputSink, break_code, make_code
from core.machine import DiskSpec, MachineState
from tests.firmware.bootsector import AGAIN, MARKER, ROM_LOCKED, ROM_WRITABLE, write_disk, write_reset_disk
from tests.firmware.conftest import screen, wait_for_screen
from tests.helpers.accel import ACCELS

BANNER = "SeaBIOS (version"
NO_BOOT = "No bootable device."


@pytest.mark.parametrize("accel", ACCELS)
def test_no_bootable_device_and_the_machine_stays_running(firmware_machine, accel):
    machine = firmware_machine(accel)
    machine.start()
    lines = wait_for_screen(machine, NO_BOOT, timeout=120)
    assert any(line.startswith(BANNER) for line in lines), lines
    assert not any("Retrying" in line for line in lines)        # etc/boot-fail-wait: no automatic retry
    time.sleep(1.0)
    assert machine.state == MachineState.RUNNING, machine.reason
    assert machine.reset_count == 0
    log = machine.board.debugcon.output
    assert "Running on QEMU (i440fx)" in log and "QEMU fw_cfg DMA interface supported" in log
    assert "Running option rom at c000:0003" in log           # the VGA BIOS, from the expansion ROM BAR


@pytest.mark.parametrize("accel", ACCELS)
def test_boots_a_boot_sector_from_virtio_blk(firmware_machine, accel, tmp_path):
    disk = tmp_path / "mbr.img"
    write_disk(disk)
    machine = firmware_machine(accel, disks=[DiskSpec(str(disk), format="raw")], boot=["disk"])
    machine.start()
    lines = wait_for_screen(machine, ROM_LOCKED, timeout=120)      # a writable BIOS area shows ROM_WRITABLE
    assert MARKER in lines and ROM_WRITABLE not in lines, lines
    log = machine.board.debugcon.output
    assert "Booting from Hard Disk..." in log and MARKER in log
    assert machine.state == MachineState.RUNNING


def test_escape_at_power_on_opens_the_boot_menu(firmware_machine, tmp_path):
    disk = tmp_path / "mbr.img"
    write_disk(disk)
    machine = firmware_machine("software", disks=[DiskSpec(str(disk), format="raw")], boot_menu_wait_ms=5000)
    keyboard = Ps2InputSink(machine.board.i8042)

    def press_escape() -> None:          # as a user does: Esc, again and again, until the menu shows
        keyboard.key_event(make_code("esc"))
        keyboard.key_event(break_code("esc"))

    machine.start()
    lines = wait_for_screen(machine, "Select boot device:", timeout=120, poke=press_escape)
    assert any("Press ESC for boot menu." in line for line in lines), lines
    wait_for_screen(machine, "1. Virtio disk PCI:00:", timeout=10)
    keyboard.key_event(make_code("1"))
    keyboard.key_event(break_code("1"))
    lines = wait_for_screen(machine, MARKER, timeout=60)
    assert machine.state == MachineState.RUNNING


def test_reset_restores_the_power_on_firmware(firmware_machine):
    machine = firmware_machine("software")
    machine.start()
    wait_for_screen(machine, NO_BOOT, timeout=120)
    board = machine.board
    assert board.host_bridge.config[PAM0] == 0x10            # SeaBIOS locked 0xF0000-0xFFFFF
    # Scribble over the shadow copy the firmware runs from: a reset must not run it.
    board.memory.write(0xE0000, b"\xF4" * 0x20000)
    machine.reset()
    deadline = time.monotonic() + 120
    while board.debugcon.output.count(NO_BOOT) < 2 and time.monotonic() < deadline:
        assert machine.state == MachineState.RUNNING, machine.reason
        time.sleep(0.05)
    assert board.debugcon.output.count("Running on QEMU (i440fx)") == 2, board.debugcon.output[-2000:]
    wait_for_screen(machine, NO_BOOT, timeout=30)
    assert machine.reset_count == 1 and machine.state == MachineState.RUNNING
    assert any(line.startswith(BANNER) for line in screen(machine))


@pytest.mark.parametrize("accel,method", [("software", "cf9"), ("software", "i8042"), ("software", "port92"),
                                          ("software", "triple"), ("kvm", "cf9")])
def test_guest_reset_reruns_the_firmware(firmware_machine, tmp_path, accel, method):
    """A reset the guest asks for -- port 0xCF9, the i8042, port 0x92, a triple fault with on_triple_fault=reset
    -- starts SeaBIOS afresh from the ROM (its shadow copy was locked read-only), which boots the disk again."""
    disk = tmp_path / "reset.img"
    write_reset_disk(disk, method)
    machine = firmware_machine(accel, disks=[DiskSpec(str(disk), format="raw")], boot=["disk"],
                               on_triple_fault="reset")
    machine.start()
    deadline = time.monotonic() + 120
    log = machine.board.debugcon
    while AGAIN not in log.output and time.monotonic() < deadline:
        assert machine.state == MachineState.RUNNING, machine.reason
        time.sleep(0.05)
    out = log.output
    assert AGAIN in out, out[-3000:]
    posts = out.count("Running on QEMU (i440fx)")             # once per power-on self test
    assert posts == 2 and out.count(MARKER) == 2 and f"resetting: {method}" in out
    assert machine.reset_count == 1 and machine.state == MachineState.RUNNING


class PortRecorder:
    def __init__(self) -> None:
        self.accesses: list[tuple[str, int]] = []

    def io_read(self, port: int, size: int) -> int:
        self.accesses.append(("in", port))
        return 0

    def io_write(self, port: int, size: int, value: int) -> None:
        self.accesses.append(("out", port))


def test_without_the_debug_console_port_0x402_is_free(firmware_machine):
    """As on QEMU without isa-debugcon: nothing claims port 0x402 (registering another device there works), so
    SeaBIOS's probe of it reads no 0xE9 and the machine keeps no firmware log; it boots all the same."""
    machine = firmware_machine("software", debugcon=False)
    port = PortRecorder()
    machine.board.pio.register(0x402, 1, port)
    machine.start()
    wait_for_screen(machine, NO_BOOT, timeout=120)
    assert machine.board.debugcon is None
    assert ("in", 0x402) in port.accesses          # SeaBIOS's probe reached the port


def test_without_a_display_seabios_talks_on_com1_and_never_touches_smm(firmware_machine):
    """NOGRAPHIC: SeaBIOS's serial console on COM1. Without a PIIX4 power-management function it sets up no SMM,
    so the APM/SMI ports 0xB2-0xB3 (which nothing here serves) are never used."""
    serial = bytearray()
    machine = firmware_machine("software", display="none", serial_output=serial.extend)
    smi = PortRecorder()
    machine.board.pio.register(0xB2, 2, smi)
    machine.start()
    deadline = time.monotonic() + 60
    while NO_BOOT.encode() not in serial and time.monotonic() < deadline:
        time.sleep(0.05)
    text = serial.decode(errors="replace")
    assert BANNER in text and NO_BOOT in text, text[-2000:]
    assert machine.board.vga is None and smi.accesses == []
    assert machine.state == MachineState.RUNNING
