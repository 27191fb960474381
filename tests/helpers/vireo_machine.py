"""Vireo's engine booting through SeaBIOS, driven the way tests/helpers/qemu_machine.py drives QEMU: wait for text
on the serial port or the VGA text screen, press keys on the PS/2 keyboard, type on the serial port. The firmware
tests and bench/firmware_boot.py run the same steps on both, so each Vireo test has its QEMU reference.

    with VireoMachine(cdroms=[iso], memory_mib=512) as vm:
        vm.wait_for_screen("Vireo test Linux", 60)
        vm.sendkey("ret")
        vm.expect("VIREO-BOOT-OK", 120)

Key names are QEMU's `sendkey` names where they differ from core/keymap.py's ("ret", "esc", "down", "spc").
"""
from __future__ import annotations

import re
import threading
import time

from core.display.renderer import text_snapshot
from core.keymap import break_code, make_code
from core.machine import DiskSpec, Machine, MachineConfig, MachineState

_QEMU_KEY_NAMES = {"ret": "enter", "spc": "space", "bspace": "backspace", "pgup": "pageup", "pgdn": "pagedown"}


class VireoMachine:
    """A Machine booting through the firmware (no kernel given), started at construction. SeaBIOS's Esc menu is
    off unless `boot_menu_wait_ms` asks for it, as in QEMU without -boot menu=on."""

    def __init__(self, *, cdroms: list[str] | None = None, disks: list[DiskSpec] | None = None,
                 memory_mib: int = 512, cpus: int = 1, accel: str = "software", boot: list[str] | None = None,
                 firmware: str | None = None, boot_menu_wait_ms: int = 0,
                 boot_once: list[str] | None = None) -> None:
        self._out = bytearray()
        self._cond = threading.Condition()
        self._mark = 0
        config = MachineConfig(memory_mib=memory_mib, cpus=cpus, accel=accel, cdroms=list(cdroms or []),
                               disks=list(disks or []), boot=list(boot or []), firmware=firmware,
                               boot_menu_wait_ms=boot_menu_wait_ms, boot_once=list(boot_once or []))
        self.started = time.monotonic()
        self.machine = Machine(config, serial_output=self._serial)
        self.machine.start()

    # ---- serial console -------------------------------------------------------------------------------------
    def _serial(self, data: bytes) -> None:
        with self._cond:
            self._out += data
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return self._out.decode(errors="replace")

    def expect(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait until `pattern` appears on the serial port after the previous match; return the match."""
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                text = self._out.decode(errors="replace")
                found = regex.search(text, self._mark)
                if found:
                    self._mark = found.end()
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.machine.state in (MachineState.SHUTOFF, MachineState.CRASHED):
                    raise TimeoutError(f"{regex.pattern!r} not on the serial port after {timeout} s "
                                       f"(state {self.machine.state.value} {self.machine.reason}); serial tail:\n"
                                       f"{text[-3000:]}")
                self._cond.wait(min(remaining, 0.5))

    def send(self, text: str | bytes) -> None:
        self.machine.serial_input(text.encode() if isinstance(text, str) else text)

    # ---- keyboard and screen --------------------------------------------------------------------------------
    def sendkey(self, key: str) -> None:
        """Press and release a key (QEMU's names, "-"-joined combinations like "ctrl-alt-delete")."""
        names = [_QEMU_KEY_NAMES.get(k, k) for k in key.split("-")]
        names = [{"ctrl": "ctrl_l", "alt": "alt_l", "shift": "shift_l"}.get(n, n) for n in names]
        i8042 = self.machine.board.i8042
        for name in names:
            i8042.press_key(make_code(name))
            time.sleep(0.02)
        for name in reversed(names):
            i8042.press_key(break_code(name))
            time.sleep(0.02)

    def text_screen(self) -> list[str]:
        """The VGA text screen's lines ([] in a graphics mode)."""
        vga = self.machine.board.vga
        return (text_snapshot(vga) or []) if vga is not None else []

    def wait_for_screen(self, pattern: str | re.Pattern[str], timeout: float) -> list[str]:
        """Poll the VGA text screen until a line contains `pattern`; return the screen, or raise TimeoutError
        showing the last one."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.text_screen()
            if any((pattern in line) if isinstance(pattern, str) else pattern.search(line) for line in screen):
                return screen
            if time.monotonic() > deadline or self.machine.state in (MachineState.SHUTOFF, MachineState.CRASHED):
                raise TimeoutError(f"{pattern!r} not on the VGA text screen after {timeout} s (state "
                                   f"{self.machine.state.value} {self.machine.reason}); screen:\n"
                                   + "\n".join(screen))
            time.sleep(0.1)

    # ---- life cycle -----------------------------------------------------------------------------------------
    def wait_exit(self, timeout: float) -> MachineState:
        """Wait for the guest to power off; return the final state (TimeoutError if it keeps running)."""
        state = self.machine.wait(timeout)
        if state not in (MachineState.SHUTOFF, MachineState.CRASHED):
            raise TimeoutError(f"VM still running after {timeout} s; serial tail:\n{self.output[-3000:]}")
        return state

    @property
    def state(self) -> MachineState:
        return self.machine.state

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def close(self) -> None:
        if self.machine.state not in (MachineState.SHUTOFF, MachineState.CRASHED):
            self.machine.power_off()
        self.machine.wait(10)

    def __enter__(self) -> VireoMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
