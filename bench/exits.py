"""Cost of a VM exit round trip (guest -> device model -> guest) under Vireo's KVM backend, next to QEMU's.

The guest (tests/guests/bench_exits.s, a Multiboot kernel) does N port writes, N port reads, N MMIO reads and N
MMIO writes to an unused port (0x3E0) and an unused address in the PCI hole (0xD0000000), printing a marker line
on COM1 between the loops. The host timestamps the first and the last byte of each marker line as they arrive;
a phase runs from the end of one marker to the start of the next, so it covers that phase's N exits and the one
LSR poll before the next marker's first byte.

Vireo runs the guest in-process (core.machine.Machine, --accel kvm) with a device on that port and that MMIO
page. QEMU runs the same kernel (-kernel, its own firmware) with `-accel kvm` when that works here, else
`-accel tcg` (where port and MMIO accesses are not VM exits at all; the table says which).

    .venv/bin/python bench/exits.py [--n 100000] [--repeat 3] [--qemu-accel auto|kvm|tcg|none] [--memory 128]

Each side runs --repeat times and each phase reports its best run: other load on the host only ever adds time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.machine import Machine, MachineConfig, MachineState  # noqa: E402
from tests.guests.build import guest_path  # noqa: E402

BENCH_PORT = 0x3E0
BENCH_MMIO = 0xD000_0000
PHASES = (("port write (out)", "bench: out done"), ("port read (in)", "bench: in done"),
          ("MMIO read", "bench: mmio-read done"), ("MMIO write", "bench: mmio-write done"))
START = "bench: start"


class MarkerClock:
    """Collects serial output lines with the arrival times of their first and last bytes."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, float, str]] = []
        self._partial = b""
        self._partial_t = 0.0
        self.done = threading.Event()

    def feed(self, data: bytes, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        for byte in data:
            if not self._partial:
                self._partial_t = now
            if byte == 0x0A:
                line = self._partial.decode(errors="replace").strip()
                self.lines.append((self._partial_t, now, line))
                if line == PHASES[-1][1]:
                    self.done.set()
                self._partial = b""
            else:
                self._partial += bytes((byte,))

    def phase_seconds(self) -> dict[str, float]:
        at = {text: (first, last) for first, last, text in self.lines}
        missing = [m for m in (START, *(marker for _, marker in PHASES)) if m not in at]
        if missing:
            raise RuntimeError(f"the guest did not print {missing}; output: {[t for _, _, t in self.lines]}")
        out, prev_end = {}, at[START][1]
        for name, marker in PHASES:
            first, last = at[marker]
            out[name] = first - prev_end
            prev_end = last
        return out


class BenchDevice:
    """The cheapest useful device: answers reads with a constant, ignores writes."""

    def io_read(self, port: int, size: int) -> int:
        return 0x5A

    def io_write(self, port: int, size: int, value: int) -> None:
        pass

    def mmio_read(self, addr: int, size: int) -> int:
        return 0x5A

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        pass


def run_vireo(kernel: Path, n: int, memory: int) -> dict[str, float]:
    clock = MarkerClock()
    m = Machine(MachineConfig(kernel=str(kernel), cmdline=f"n={n}", memory_mib=memory, accel="kvm"),
                serial_output=clock.feed)
    dev = BenchDevice()
    m.board.pio.register(BENCH_PORT, 1, dev)
    m.board.mmio.register(BENCH_MMIO, 0x1000, dev)
    m.start()
    state = m.wait(timeout=max(60.0, n * 4 * 200e-6))
    if state != MachineState.SHUTOFF:
        m.power_off()
        raise RuntimeError(f"Vireo run ended {state.value}: {m.reason}")
    return clock.phase_seconds()


def run_qemu(kernel: Path, n: int, memory: int, accel: str) -> dict[str, float]:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise RuntimeError("qemu-system-x86_64 not installed")
    cmd = [qemu, "-accel", accel, "-nodefaults", "-display", "none", "-serial", "stdio", "-m", str(memory),
           "-no-reboot", "-kernel", str(kernel), "-append", f"n={n}"]
    clock = MarkerClock()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + max(120.0, n * 4 * 500e-6)
    fd = proc.stdout.fileno()
    try:
        while not clock.done.is_set() and time.monotonic() < deadline:
            data = os.read(fd, 4096)
            if not data:
                break
            clock.feed(data, time.perf_counter())
    finally:
        proc.kill()
        _, err = proc.communicate()
    if not clock.done.is_set():
        raise RuntimeError(f"QEMU ({accel}) did not finish: {err.decode(errors='replace').strip()[-500:]}")
    return clock.phase_seconds()


def qemu_kvm_works(kernel: Path, memory: int) -> bool:
    try:
        run_qemu(kernel, 10, memory, "kvm")
    except RuntimeError:
        return False
    return True


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    return {name: min(r[name] for r in runs) for name, _ in PHASES}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="exits per phase (default 100000)")
    p.add_argument("--qemu-accel", default="auto", choices=("auto", "kvm", "tcg", "none"))
    p.add_argument("--memory", type=int, default=128, help="guest RAM in MiB")
    p.add_argument("--repeat", type=int, default=3, help="runs per side; the best of them counts (default 3)")
    args = p.parse_args(argv)
    kernel = guest_path("bench_exits")

    qemu: dict[str, float] | None = None
    qemu_accel = args.qemu_accel
    if qemu_accel == "auto":
        qemu_accel = "kvm" if qemu_kvm_works(kernel, args.memory) else "tcg"
    vireo_runs, qemu_runs = [], []
    for _ in range(max(1, args.repeat)):     # interleaved, so slow spells of the host hit both sides
        vireo_runs.append(run_vireo(kernel, args.n, args.memory))
        if qemu_accel != "none":
            qemu_runs.append(run_qemu(kernel, args.n, args.memory, qemu_accel))
    vireo = best(vireo_runs)
    if qemu_runs:
        qemu = best(qemu_runs)

    from core.hypervisor.hostcaps import kvm_status
    print(f"host /dev/kvm: {kvm_status().reason}")
    print(f"N = {args.n} per phase, best of {max(1, args.repeat)}; "
          f"QEMU: {'not run' if qemu is None else '-accel ' + qemu_accel}"
          + (" (TCG: no VM exits, accesses go straight to QEMU's memory dispatch)" if qemu_accel == "tcg" else ""))
    header = f"{'exit':18} {'Vireo µs/exit':>14} {'QEMU µs/exit':>14} {'QEMU/Vireo':>11}"
    print(header)
    print("-" * len(header))
    for name, _ in PHASES:
        v = vireo[name] / args.n * 1e6
        if qemu is None:
            print(f"{name:18} {v:14.2f} {'-':>14} {'-':>11}")
        else:
            q = qemu[name] / args.n * 1e6
            print(f"{name:18} {v:14.2f} {q:14.2f} {q / v:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
