"""VM-snapshot benchmark (issue 15): the time to take a snapshot of a running VM (disks + machine state, the state
in the first qcow2 disk's VM-state area) and to revert to it, Vireo (the Host API's snapshot_create /
snapshot_revert, docs/vm-snapshots.md: the VM process pauses, drains, writes the state and snapshots the disk; a
revert powers the VM off, reverts the disk, reads the state back out of the image and starts a new VM process from
it) against QEMU 7.2 under TCG (HMP `savevm` / `loadvm`, over the monitor), the same guest and image size on both
sides: tests/guests/counter.s (a 64-bit guest printing a counter every 100 ms) with a 64 MiB qcow2 disk.

  create   Vireo: snapshot_create() from the call to its return;  QEMU: `savevm s` until the prompt comes back.
           "create again" is a second snapshot in the same VM process: the first one also imports what the VM
           process had not needed yet (numpy for the qcow2 refcount walk, the state writer).
  revert   Vireo: snapshot_revert() from the call to its return (the VM running again, in a new process);
           QEMU: `loadvm s` until the prompt comes back (the same process).
  +line    revert, then until the guest's next counter line on the serial port.
  VM SIZE  the snapshot's vm_state_size in the image (qemu-img snapshot -l's column).

Ratios are QEMU / Vireo (above 1: Vireo is faster). Runs alternate; medians of --repeat runs.

    .venv/bin/python bench/vm_snapshot.py [--memory 512] [--repeat 3]
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

from core.config import BootConfig, ConfigStore, DiskConfig, DisplayConfig, SerialConfig, VmConfig  # noqa: E402
from core.host.local import LocalHost  # noqa: E402
from core.storage import open_image  # noqa: E402
from tests.guests.build import guest_path  # noqa: E402

COUNTER = re.compile(rb"counter: (\d+)")
DISK = "64M"


def _counters(data: bytes) -> list[int]:
    return [int(n) for n in COUNTER.findall(data)]


def _wait(read, above_count: int, timeout: float = 60) -> None:
    """Until the serial output holds more than `above_count` counter lines."""
    deadline = time.monotonic() + timeout
    while len(_counters(read())) <= above_count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no new counter line: {read()[-200:]!r}")
        time.sleep(0.002)


def _qcow2(path: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, DISK], check=True)


def vireo_round(kernel: Path, memory: int, directory: str) -> dict[str, float]:
    disk, log = os.path.join(directory, "vireo.qcow2"), os.path.join(directory, "vireo-serial.log")
    _qcow2(disk)
    runtime = tempfile.mkdtemp(prefix="rt-", dir=directory)
    host = LocalHost(ConfigStore(os.path.join(directory, "defs")), runtime_dir=runtime)
    cfg = VmConfig(name="bench-snap", memory_mib=memory, accel="software", boot=BootConfig(kernel=str(kernel)),
                   disks=[DiskConfig(disk, "qcow2")], display=DisplayConfig(type="none"),
                   serial=SerialConfig(log_file=log))
    info = host.define(cfg)

    def read() -> bytes:
        with open(log, "rb") as f:
            return f.read()
    try:
        host.start(info.uuid)
        _wait(read, 2)
        t0 = time.perf_counter()
        host.snapshot_create(info.uuid, "s")
        created = time.perf_counter() - t0
        t0 = time.perf_counter()
        host.snapshot_create(info.uuid, "s2")
        again = time.perf_counter() - t0
        _wait(read, len(_counters(read())) + 3)
        lines = len(_counters(read()))
        t0 = time.perf_counter()
        host.snapshot_revert(info.uuid, "s")
        reverted = time.perf_counter() - t0
        _wait(read, lines)
        line = time.perf_counter() - t0
        host.force_off(info.uuid)
        deadline = time.monotonic() + 20
        while host.get(info.uuid).state.active and time.monotonic() < deadline:
            time.sleep(0.02)
        with open_image(disk, read_only=True) as dev:
            size = dev.snapshots[0].vm_state_size
        host.delete(info.uuid, True)
    finally:
        host.close()
    return {"create": created, "create again": again, "revert": reverted, "+line": line, "size": size}


def _hmp(sock: socket.socket, command: str) -> str:
    sock.sendall(command.encode() + b"\n")
    buf = b""
    while not buf.endswith(b"(qemu) "):
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"QEMU's monitor closed during {command!r}: {buf[-300:]!r}")
        buf += chunk
    return buf.decode(errors="replace")


def qemu_round(kernel: Path, memory: int, directory: str) -> dict[str, float]:
    disk, monitor = os.path.join(directory, "qemu.qcow2"), os.path.join(directory, "qemu.mon")
    _qcow2(disk)
    proc = subprocess.Popen(["qemu-system-x86_64", "-accel", "tcg", "-nodefaults", "-display", "none", "-m",
                             str(memory), "-serial", "stdio", "-kernel", str(kernel),
                             "-drive", f"file={disk},format=qcow2,if=virtio",
                             "-monitor", f"unix:{monitor},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    data = bytearray()
    lock = threading.Lock()

    def pump() -> None:
        while chunk := os.read(proc.stdout.fileno(), 4096):
            with lock:
                data.extend(chunk)
    threading.Thread(target=pump, daemon=True).start()

    def read() -> bytes:
        with lock:
            return bytes(data)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(monitor):
            if time.monotonic() > deadline:
                raise RuntimeError("QEMU's monitor socket did not appear")
            time.sleep(0.002)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(monitor)
            sock.settimeout(120)
            buf = b""
            while not buf.endswith(b"(qemu) "):
                buf += sock.recv(65536)
            _wait(read, 2)
            t0 = time.perf_counter()
            out = _hmp(sock, "savevm s")
            created = time.perf_counter() - t0
            if "Error" in out:
                raise RuntimeError(f"savevm: {out}")
            t0 = time.perf_counter()
            _hmp(sock, "savevm s2")
            again = time.perf_counter() - t0
            _wait(read, len(_counters(read())) + 3)
            lines = len(_counters(read()))
            t0 = time.perf_counter()
            out = _hmp(sock, "loadvm s")
            reverted = time.perf_counter() - t0
            if "Error" in out:
                raise RuntimeError(f"loadvm: {out}")
            _wait(read, lines)
            line = time.perf_counter() - t0
    finally:
        proc.kill()
        proc.wait()
    with open_image(disk, read_only=True) as dev:
        size = dev.snapshots[0].vm_state_size
    os.unlink(disk)
    os.unlink(monitor)
    return {"create": created, "create again": again, "revert": reverted, "+line": line, "size": size}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memory", type=int, default=512, help="guest RAM in MiB (default 512)")
    p.add_argument("--repeat", type=int, default=3, help="runs per side (default 3; medians count)")
    args = p.parse_args(argv)
    kernel = guest_path("counter")
    vireo, qemu = [], []
    with tempfile.TemporaryDirectory(prefix="vireo-bench-vmsnap-") as directory:
        for _ in range(max(1, args.repeat)):
            vireo.append(vireo_round(kernel, args.memory, directory))
            qemu.append(qemu_round(kernel, args.memory, directory))
    print(f"VM snapshot of the running counter guest, {args.memory} MiB of RAM, {DISK} qcow2 disk, medians of "
          f"{len(vireo)} runs (Vireo: software CPU, VM process; QEMU 7.2: TCG, savevm/loadvm over HMP)")
    print(f"{'':18}{'Vireo':>12}{'QEMU':>12}{'QEMU/Vireo':>12}")
    for key in ("create", "create again", "revert", "+line"):
        v = statistics.median(r[key] for r in vireo)
        q = statistics.median(r[key] for r in qemu)
        print(f"{key + ' (s)':18}{v:12.3f}{q:12.3f}{q / v:12.2f}")
    v = statistics.median(r["size"] for r in vireo)
    q = statistics.median(r["size"] for r in qemu)
    print(f"{'VM SIZE (KiB)':18}{v / 1024:12.0f}{q / 1024:12.0f}{q / v:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
