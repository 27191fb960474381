"""A Machine with its serial output collected, for the save/restore tests: started fresh or from a state file."""
from __future__ import annotations

import re
import threading
import time

from core.hypervisor.select import choose_accelerator
from core.machine import Machine, MachineConfig
from core.machine_record import SavedState
from core.memory import GuestMemory
from core.state.container import StateReader, StateWriter


class Running:
    def __init__(self, config: MachineConfig | None = None, *, state_file: str | None = None,
                 accel: str | None = None) -> None:
        self._out = bytearray()
        self._cond = threading.Condition()
        if state_file is not None:
            config, saved = SavedState.open(state_file)
            try:
                config.accel = accel or config.accel
                self.machine = Machine(config, serial_output=self._serial,
                                       accel_choice=choose_accelerator(config.accel), restore=saved)
            finally:
                saved.close()
        else:
            assert config is not None
            self.machine = Machine(config, serial_output=self._serial)
        self.machine.start()

    def _serial(self, data: bytes) -> None:
        with self._cond:
            self._out += data
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return self._out.decode(errors="replace").replace("\r\n", "\n")

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = regex.search(self._out.decode(errors="replace").replace("\r\n", "\n"))
                if m:
                    return m
                left = deadline - time.monotonic()
                assert left > 0, f"timed out waiting for {pattern!r}; output: {self.output[-2000:]}"
                self._cond.wait(left)

    def close(self) -> None:
        if self.machine.state.value in ("running", "paused"):
            self.machine.power_off()
        self.machine.wait(10)


def rewrite(src: str, dst: str, mutate) -> None:
    """Copy a state file through the container, letting `mutate(records)` change the records (name -> [version,
    value]); the copy is well formed (CRCs right), so only the content can be wrong."""
    reader = StateReader(src)
    try:
        records = {name: [version, value] for name, version, value in reader.records()}
        memory = GuestMemory(records["machine"][1]["memory"])
        reader.load_ram(memory)
    finally:
        reader.close()
    mutate(records)
    with StateWriter(dst) as writer:
        for name, (version, value) in records.items():
            writer.record(name, version, value)
        writer.ram(memory)
    memory.close()
