"""Helpers for the software-CPU tests: assemble a tiny guest with GNU as, run it on a SoftwareAccelerator with a
debug port that records what the guest writes."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from core.bus import MmioBus, PortIoBus
from core.hypervisor.base import CpuState, ExitReason, VcpuExit
from core.memory import GuestMemory
from core.timers import TimerQueue

DEBUG_PORT = 0xE9


def assemble(source: str, bits: int, base: int) -> bytes:
    """Assemble `source` (AT&T syntax) and link it as a flat image loaded at `base`; return the bytes."""
    if shutil.which("as") is None or shutil.which("ld") is None:
        pytest.skip("GNU as/ld (binutils) not installed")
    with tempfile.TemporaryDirectory() as d:
        obj, binary = Path(d) / "g.o", Path(d) / "g.bin"
        arch, emul = ("--32", "elf_i386") if bits in (16, 32) else ("--64", "elf_x86_64")
        subprocess.run(["as", arch, "-o", str(obj), "-"], input=source.encode(), check=True, capture_output=True)
        subprocess.run(["ld", "-m", emul, "-Ttext", hex(base), "--oformat", "binary", "-o", str(binary), str(obj)],
                       check=True, capture_output=True)
        return binary.read_bytes()


class DebugPort:
    """Port 0xE9: every byte written is recorded (the Bochs/QEMU debug-console convention)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.words: list[int] = []

    def io_read(self, port: int, size: int) -> int:
        return 0xE9

    def io_write(self, port: int, size: int, value: int) -> None:
        if size == 1:
            self.out.append(value)
        else:
            self.words.append(value)


class Rig:
    """One VM with the software CPU: memory, buses, timers, the debug port."""

    def __init__(self, mem_mib: int = 16, cpus: int = 1) -> None:
        from core.hypervisor.software import SoftwareAccelerator
        self.memory = GuestMemory(mem_mib << 20)
        self.pio = PortIoBus()
        self.mmio = MmioBus()
        self.timers = TimerQueue(name="test-timers")
        self.debug = DebugPort()
        self.pio.register(DEBUG_PORT, 1, self.debug)
        self.accel = SoftwareAccelerator(self.memory, self.pio, self.mmio, cpus, self.timers)
        self.vcpus = [self.accel.create_vcpu(i) for i in range(cpus)]

    def run(self, state: CpuState, timeout: float = 10.0, vcpu: int = 0) -> VcpuExit:
        """Run until the vCPU exits for a reason other than a kick; a watchdog kicks it after `timeout`."""
        v = self.vcpus[vcpu]
        v.set_state(state)
        result: list[VcpuExit] = []
        expired = threading.Event()
        timer = threading.Timer(timeout, lambda: (expired.set(), v.kick()))
        timer.start()
        try:
            while True:
                ex = v.run()
                if ex.reason != ExitReason.KICKED or expired.is_set():
                    result.append(ex)
                    break
        finally:
            timer.cancel()
        return result[0]

    def close(self) -> None:
        self.accel.close()
        self.timers.stop()
