"""Shared set-up for the firmware tests: Debian's SeaBIOS (a missing one skips, or fails under CI=true), machines
booted through it in this process, and waiting for text on their VGA screen."""
from __future__ import annotations

import os
import time

import pytest

from core.boot.firmware import DEFAULT_FIRMWARE
from core.display.renderer import text_snapshot
from core.machine import Machine, MachineConfig, MachineState
from tests.helpers.accel import require_accel
from tests.helpers.runner import in_ci

VGA_BIOS = "/usr/share/seabios/vgabios-stdvga.bin"


def require_seabios() -> None:
    missing = [p for p in (DEFAULT_FIRMWARE, VGA_BIOS) if not os.path.isfile(p)]
    if missing:
        reason = f"{', '.join(missing)} not found: install Debian's seabios package (apt-get install seabios)"
        if in_ci():
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)


def screen(machine: Machine) -> list[str]:
    return text_snapshot(machine.board.vga) or []


def wait_for_screen(machine: Machine, text: str, timeout: float, poke=None) -> list[str]:
    """Wait until `text` is on the VGA text screen (calling `poke()` every round while waiting); fail the test
    showing the screen and the firmware's log if it does not come, or if the machine stops."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = screen(machine)
        if any(text in line for line in lines):
            return lines
        if machine.state not in (MachineState.RUNNING, MachineState.PAUSED):
            break
        if poke is not None:
            poke()
        time.sleep(0.05)
    log = machine.board.debugcon.output if machine.board.debugcon is not None else ""
    pytest.fail(f"{text!r} not on the screen (machine {machine.state.value} {machine.reason})\n--- screen ---\n"
                + "\n".join(screen(machine)) + f"\n--- firmware log ---\n{log[-3000:]}", pytrace=False)


@pytest.fixture
def firmware_machine():
    """Factory: firmware_machine(accel, **MachineConfig fields, serial_output=None) -> a built (not started)
    Machine on SeaBIOS, with the debug console unless debugcon=False;
    every machine is powered off after the test."""
    machines: list[Machine] = []

    def build(accel: str = "software", **fields) -> Machine:
        require_accel(accel)
        require_seabios()
        fields.setdefault("boot_menu_wait_ms", 0)
        fields.setdefault("debugcon", True)           # SeaBIOS's log, which the tests read
        serial_output = fields.pop("serial_output", None)
        machine = Machine(MachineConfig(accel=accel, memory_mib=fields.pop("memory_mib", 64), **fields),
                          serial_output=serial_output)
        machines.append(machine)
        return machine

    yield build
    for machine in machines:
        if machine.state in (MachineState.RUNNING, MachineState.PAUSED):
            machine.power_off()
            machine.wait(10)
