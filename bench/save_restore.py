"""Save/restore benchmark (issue 15): the time to save a running VM with 1 GiB of RAM to a state file and to
resume it from that file, Vireo (Machine.save / Machine(restore=...), docs/machine-state.md) against QEMU 7.2
under TCG (HMP `migrate "exec:cat > FILE"`, then `-incoming "exec:cat FILE"`), the same guest on both sides:
tests/guests/counter.s, a 64-bit guest printing a counter every 100 ms (its RAM is mostly untouched, as an idle
guest's is). The internal-snapshot half of issue 15's bench/snapshot.py is the qcow2 work's; this file holds the
save/restore half on its own.

  save     Vireo: Machine.save() from the call until the file is renamed into place (fsync'd);
           QEMU: from the migrate command until `info migrate` says completed (QEMU does not fsync).
  restore  Vireo: from opening the file to the machine running (state read, machine built, vCPUs started) and
           the guest's next counter line on the serial port;
           QEMU: from starting the process with -incoming to the guest's next counter line.
  size     the state file.

Ratios are QEMU / Vireo (above 1: Vireo is faster). Runs alternate; medians of --repeat runs.

    .venv/bin/python bench/save_restore.py [--memory 1024] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.machine import Machine, MachineConfig, MachineState  # noqa: E402
from core.machine_record import SavedState  # noqa: E402
from tests.guests.build import guest_path  # noqa: E402

COUNTER = re.compile(rb"counter: (\d+)")


class _Serial:
    def __init__(self) -> None:
        self.data = bytearray()
        self.cond = threading.Condition()

    def feed(self, chunk: bytes) -> None:
        with self.cond:
            self.data += chunk
            self.cond.notify_all()

    def wait_counter(self, above: int, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [int(n) for n in COUNTER.findall(bytes(self.data))]
                if found and found[-1] > above:
                    return found[-1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no counter above {above}: {bytes(self.data)[-200:]!r}")
                self.cond.wait(left)


def vireo_round(kernel: Path, memory: int, directory: str) -> dict[str, float]:
    path = os.path.join(directory, "vireo.state")
    serial = _Serial()
    machine = Machine(MachineConfig(kernel=str(kernel), memory_mib=memory, accel="software", display="none"),
                      serial_output=serial.feed)
    machine.start()
    last = serial.wait_counter(2)
    t0 = time.perf_counter()
    machine.save(path)
    saved = time.perf_counter() - t0
    machine.wait(10)
    size = os.path.getsize(path)
    serial2 = _Serial()
    t0 = time.perf_counter()
    config, state = SavedState.open(path)
    restored = Machine(config, serial_output=serial2.feed, restore=state)
    state.close()
    restored.start()
    started = time.perf_counter() - t0
    serial2.wait_counter(last)
    first_line = time.perf_counter() - t0
    restored.power_off()
    if restored.wait(10) != MachineState.SHUTOFF:
        raise RuntimeError(f"Vireo restore ended {restored.state.value}: {restored.reason}")
    os.unlink(path)
    return {"save": saved, "restore": started, "restore+line": first_line, "size": size}


def _hmp(sock_path: str, command: str) -> str:
    """One HMP command over the monitor socket; the text up to the next prompt."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        s.settimeout(30)
        buf = b""
        while not buf.endswith(b"(qemu) "):
            buf += s.recv(65536)
        s.sendall(command.encode() + b"\n")
        buf = b""
        while not buf.endswith(b"(qemu) "):
            buf += s.recv(65536)
        return buf.decode(errors="replace")


def _qemu(kernel: Path, memory: int, monitor: str, extra: list[str]) -> tuple[subprocess.Popen, _Serial]:
    proc = subprocess.Popen(["qemu-system-x86_64", "-accel", "tcg", "-nodefaults", "-display", "none", "-m",
                             str(memory), "-serial", "stdio", "-kernel", str(kernel), "-monitor",
                             f"unix:{monitor},server=on,wait=off", *extra],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    serial = _Serial()

    def pump() -> None:
        while chunk := os.read(proc.stdout.fileno(), 4096):
            serial.feed(chunk)
    threading.Thread(target=pump, daemon=True).start()
    return proc, serial


def _wait_monitor(path: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError("QEMU's monitor socket did not appear")
        time.sleep(0.002)


def qemu_round(kernel: Path, memory: int, directory: str) -> dict[str, float]:
    path = os.path.join(directory, "qemu.state")
    monitor = os.path.join(directory, "qemu.mon")
    proc, serial = _qemu(kernel, memory, monitor, [])
    try:
        _wait_monitor(monitor)
        last = serial.wait_counter(2)
        t0 = time.perf_counter()
        _hmp(monitor, f'migrate "exec:cat > {path}"')
        while "Migration status: completed" not in _hmp(monitor, "info migrate"):
            time.sleep(0.001)
        saved = time.perf_counter() - t0
    finally:
        proc.kill()
        proc.wait()
    os.unlink(monitor)
    size = os.path.getsize(path)
    t0 = time.perf_counter()
    proc, serial = _qemu(kernel, memory, monitor, ["-incoming", f"exec:cat {path}"])
    try:
        _wait_monitor(monitor)
        while "running" not in _hmp(monitor, "info status"):
            time.sleep(0.001)
        started = time.perf_counter() - t0
        serial.wait_counter(last)
        first_line = time.perf_counter() - t0
    finally:
        proc.kill()
        proc.wait()
    os.unlink(monitor)
    os.unlink(path)
    return {"save": saved, "restore": started, "restore+line": first_line, "size": size}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memory", type=int, default=1024, help="guest RAM in MiB (default 1024)")
    p.add_argument("--repeat", type=int, default=3, help="runs per side (default 3; medians count)")
    args = p.parse_args(argv)
    kernel = guest_path("counter")
    vireo, qemu = [], []
    with tempfile.TemporaryDirectory(prefix="vireo-bench-save-") as directory:
        for _ in range(max(1, args.repeat)):
            vireo.append(vireo_round(kernel, args.memory, directory))
            qemu.append(qemu_round(kernel, args.memory, directory))
    print(f"save/restore of the counter guest with {args.memory} MiB of RAM, medians of {len(vireo)} runs "
          f"(Vireo: software CPU; QEMU 7.2: TCG)")
    print(f"{'':14}{'Vireo':>12}{'QEMU':>12}{'QEMU/Vireo':>12}")
    for key in ("save", "restore", "restore+line"):
        v = statistics.median(r[key] for r in vireo)
        q = statistics.median(r[key] for r in qemu)
        print(f"{key + ' (s)':14}{v:12.3f}{q:12.3f}{q / v:12.2f}")
    v = statistics.median(r["size"] for r in vireo)
    q = statistics.median(r["size"] for r in qemu)
    print(f"{'file (KiB)':14}{v / 1024:12.0f}{q / 1024:12.0f}{q / v:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
