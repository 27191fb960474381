"""How fast the IDE data port moves a CD's data by PIO, the way SeaBIOS's ATAPI driver reads boot loaders, kernels
and initrds: READ(10) packets with a byte count limit of 2048, then `rep insw` of 1024 words per DRQ block.

Measurements, printed as accesses per second and MB/s:
  handler   the port bus's read() of the data port called from Python, one access at a time (the device model's
            own path for every access; with data lanes, the path of single accesses only);
  string    the port bus's read_string() of a whole block, where the bus has data lanes (core/pio_lanes.py):
            what a KVM string exit costs;
  guest     a 16-bit real-mode guest on the software CPU issuing the packets and `rep insw` itself (the model
            plus the CPU's port-I/O path), reading the same 64 KiB of the disc over and over.

    .venv/bin/python bench/ide_pio.py [--mib 16]
"""
from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.devices.ide import AtapiCdrom, PiixIde  # noqa: E402
from core.devices.pci import COMMAND  # noqa: E402
from core.storage import create_image, open_image  # noqa: E402

BLOCKS_PER_COMMAND = 32                  # 64 KiB a READ(10), as SeaBIOS reads a boot image in pieces
DATA, STATUS = 0x170, 0x177


def _iso(directory: str) -> str:
    path = os.path.join(directory, "bench.iso")
    create_image(path, "raw", 1 << 20)
    with open(path, "r+b") as f:
        f.write(os.urandom(1 << 20))
    return path


def _controller(memory, pio, sink, iso: str) -> tuple[PiixIde, AtapiCdrom]:
    ide = PiixIde(memory, sink)
    ide.attach(pio)
    cd = AtapiCdrom(open_image(iso, "raw", read_only=True))
    ide.attach_drive(2, cd)
    ide.configure_as_firmware()
    ide.config_write(COMMAND, 2, 0x0005)
    return ide, cd


def bench_handler(iso: str, mib: int, string: bool = False) -> tuple[float, float]:
    from core.bus import PortIoBus
    from core.memory import GuestMemory

    class Sink:
        def set_irq(self, gsi: int, level: bool) -> None:
            pass

    pio = PortIoBus()
    memory = GuestMemory(1 << 20)
    _controller(memory, pio, Sink(), iso)
    read, write = pio.read, pio.write
    cdb = struct.pack(">BBIBHB", 0x28, 0, 0, 0, BLOCKS_PER_COMMAND, 0).ljust(12, b"\0")
    commands = mib * (1 << 20) // (BLOCKS_PER_COMMAND * 2048)
    accesses = 0
    start = time.perf_counter()
    for _ in range(commands):
        write(0x176, 1, 0xA0)
        write(0x174, 1, 0x00)
        write(0x175, 1, 0x08)
        write(STATUS, 1, 0xA0)
        for i in range(0, 12, 2):
            write(DATA, 2, cdb[i] | cdb[i + 1] << 8)
        for _ in range(BLOCKS_PER_COMMAND):
            read(STATUS, 1)
            if string:
                pio.read_string(DATA, 2, 1024)
            else:
                for _ in range(1024):
                    read(DATA, 2)
            accesses += 1024
        read(STATUS, 1)
    elapsed = time.perf_counter() - start
    return accesses / elapsed, accesses * 2 / elapsed / 1e6


GUEST = """
.code16
    xor %ax, %ax
    mov %ax, %ds
    mov $0x2000, %ax
    mov %ax, %es
    mov ${commands}, %bp
command:
    mov $0x176, %dx
    mov $0xa0, %al
    out %al, %dx
    mov $0x174, %dx
    xor %al, %al
    out %al, %dx
    mov $0x175, %dx
    mov $0x08, %al
    out %al, %dx
    mov $0x177, %dx
    mov $0xa0, %al
    out %al, %dx
    mov $0x170, %dx
    mov $0x7e00, %si
    mov $6, %cx
    cld
    rep outsw
    mov ${blocks}, %bx
block:
    mov $0x177, %dx
busy:
    in %dx, %al
    test $0x80, %al
    jnz busy
    mov $0x170, %dx
    xor %di, %di
    mov $1024, %cx
    rep insw
    dec %bx
    jnz block
    mov $0x177, %dx
    in %dx, %al
    dec %bp
    jnz command
"""


def bench_guest(iso: str, mib: int) -> tuple[float, float]:
    from core.hypervisor.base import CpuState, Segment
    from tests.helpers.software_guest import DONE_PORT, Rig, assemble

    commands = mib * (1 << 20) // (BLOCKS_PER_COMMAND * 2048)
    rig = Rig(accel="software", memory_bytes=1 << 20)
    try:
        _controller(rig.memory, rig.pio, rig.interrupts, iso)
        code = GUEST.format(commands=commands, blocks=BLOCKS_PER_COMMAND)
        code += f"\n    mov ${DONE_PORT}, %dx\n    out %al, %dx\n    hlt\n"
        rig.memory.write(0x7C00, assemble(code, 16, 0x7C00))
        rig.memory.write(0x7E00, struct.pack(">BBIBHB", 0x28, 0, 0, 0, BLOCKS_PER_COMMAND, 0).ljust(12, b"\0"))
        start = time.perf_counter()
        rig.run(CpuState(rip=0x7C00, cs=Segment(selector=0, base=0, type=0xB)), timeout=600)
        elapsed = time.perf_counter() - start
        assert rig.done, "the guest did not finish"
        accesses = commands * BLOCKS_PER_COMMAND * 1024
        return accesses / elapsed, accesses * 2 / elapsed / 1e6
    finally:
        rig.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=16, help="MiB read in each measurement (default 16)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        iso = _iso(d)
        from core.bus import PortIoBus
        benches = [("handler", bench_handler), ("guest", bench_guest)]
        if hasattr(PortIoBus, "read_string"):
            benches.insert(1, ("string", lambda iso, mib: bench_handler(iso, mib, string=True)))
        for name, bench in benches:
            rate, mbs = bench(iso, args.mib)
            print(f"{name:8} {rate / 1e6:6.2f} M data-port accesses/s   {mbs:6.1f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
