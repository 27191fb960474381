"""Test plumbing for VM processes: a recorder for a VmProcess's callbacks and a fixture that spawns VM processes
and makes sure none outlives its test."""
from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest

from core.config import BootConfig, VmConfig
from core.vmproc.handle import VmProcess
from tests.helpers.screen_text import frame_text

PROMPT = re.compile(rb"vireo:[^\n#]*# ")
_ECHO_TICK = re.compile(r"serialecho: tick \d+\r\n")


def without_echo_ticks(text: str) -> str:
    """serialecho's output less its once-a-second tick lines, which may land in the middle of an echo: host input
    reaches that guest a character per 20 ms, as it never reads IIR (core/devices/serial.py's pacing)."""
    return _ECHO_TICK.sub("", text)


class Recorder:
    """Collects on_state and on_serial calls; expect() waits for serial output, state() for a state."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.serial = bytearray()
        self.states: list[tuple[str, str]] = []
        self._pos = 0

    def on_state(self, state: str, reason: str) -> None:
        with self.cond:
            self.states.append((state, reason))
            self.cond.notify_all()

    def on_serial(self, data: bytes) -> None:
        with self.cond:
            self.serial += data
            self.cond.notify_all()

    def expect(self, pattern: bytes | re.Pattern[bytes], timeout: float = 120) -> re.Match[bytes]:
        """Wait for `pattern` in the serial output after the previous match."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                match = regex.search(self.serial, self._pos)
                if match:
                    self._pos = match.end()
                    return match
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no {regex.pattern!r} on the serial console within {timeout} s; states "
                                f"{self.states}; output:\n{self.text()[-3000:]}", pytrace=False)
                self.cond.wait(left)

    def state(self, state: str, timeout: float = 60) -> str:
        """Wait until `state` has been reported; return its reason."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for seen, reason in self.states:
                    if seen == state:
                        return reason
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no {state!r} state within {timeout} s; states {self.states}; output:\n"
                                f"{self.text()[-3000:]}", pytrace=False)
                self.cond.wait(left)

    def text(self) -> str:
        return self.serial.decode("utf-8", "replace")


def guest_config(kernel, initrd, cmdline: str, **changes) -> VmConfig:
    cfg = VmConfig(name="vmproc-test", memory_mib=256, accel="software",
                   boot=BootConfig(kernel=str(kernel), initrd=str(initrd), cmdline=cmdline))
    return cfg.copy(**changes)


class Spawner:
    """spawner(config) -> (VmProcess, Recorder); every process it started is killed at the end of the test."""

    def __init__(self, runtime_dir: str) -> None:
        self.runtime_dir = runtime_dir
        self.processes: list[VmProcess] = []

    def __call__(self, config: VmConfig) -> tuple[VmProcess, Recorder]:
        recorder = Recorder()
        process = VmProcess.spawn(config, self.runtime_dir, recorder.on_state, recorder.on_serial)
        self.processes.append(process)
        return process, recorder

    def close(self) -> None:
        for process in self.processes:
            if not process.wait(0):
                try:
                    os.kill(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(15)


def screen_lines(frame) -> list[str]:
    """The text on a 720x400 text-mode frame, read back from its pixels (tests/helpers/screen_text.py)."""
    assert (frame.width, frame.height) == (720, 400), frame.mode
    return frame_text(frame)


def holds_open(pid: int, path) -> bool:
    """Whether process `pid` has `path` open (one of its /proc/<pid>/fd links names it)."""
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(f"{fd_dir}/{fd}") == str(path):
                return True
        except OSError:
            pass
    return False
