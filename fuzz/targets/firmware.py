"""Firmware files and the firmware's memory (core/boot/firmware.py: load_firmware_image's size checks, the image at
the top of 4 GiB and its 128 KiB alias below 1 MiB, the i440FX PAM shadow-RAM decoding): a hostile image file may
only give a one-line FirmwareError (a BootError), and guest accesses to ROM and shadow RAM with any PAM setting
may never raise to the vCPU nor write the ROM."""
from __future__ import annotations

import os

from core.boot.errors import BootError
from core.bus import MmioBus
from core.memory import GuestMemory
from fuzz.harness import Program, scratch_dir, target

_dir = scratch_dir("fw")
_mem: GuestMemory | None = None


def _seeds() -> list[bytes]:
    return [b"\x00" + bytes(range(256)) * 4, b"\x01" + b"\x02\x59\x33" * 40, b"\x01" + bytes([3, 0x30, 0x11] * 20),
            b"\x00" + b"\xea\x5b\xe0\x00\xf0" + bytes(100)]


@target("firmware", allowed=(BootError,), seeds=_seeds, max_len=4096)
def fuzz_firmware(data: bytes) -> None:
    """A firmware file (byte 0 even: the rest as the file; odd: a 64 KiB image from the rest, then a program of
    PAM settings and ROM/shadow reads and writes)."""
    from core.boot.firmware import FirmwareMemory, load_firmware_image
    global _mem
    path = os.path.join(_dir, "bios.bin")
    if not data or not data[0] & 1:
        with open(path, "wb") as f:
            f.write(data[1:])
        load_firmware_image(path)
        return
    image = (data[1:] or b"\xf4") * (65536 // max(1, len(data) - 1) + 1)
    with open(path, "wb") as f:
        f.write(image[:65536])
    _, image = load_firmware_image(path)
    if _mem is None:
        _mem = GuestMemory(2 << 20)
    _mem.fill(0, _mem.size)
    mmio = MmioBus()
    fw = FirmwareMemory(image, _mem, mmio)
    rom_before = bytes(fw.rom.map)
    p = Program(data[1:])
    try:
        while p.more():
            op = p.u8() % 4
            if op == 0:
                fw.set_pam(p.take(7), force=bool(p.u8() & 1))
            elif op in (1, 2):
                size = p.choice((1, 2, 4, 8))
                addr = (0xC0000 + p.uint(3) % 0x40000) if p.u8() & 1 else (fw.rom_base + p.uint(3) % fw.rom.size)
                if op == 1:
                    mmio.write(addr, size, p.uint(8) & ((1 << (8 * size)) - 1))
                else:
                    mmio.read(addr, size)
            else:
                fw.reset()
        if bytes(fw.rom.map) != rom_before:
            raise AssertionError("a guest write changed the firmware ROM")
    finally:
        fw.close()
