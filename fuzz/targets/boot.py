"""Boot loaders (core/boot/loader.py load_kernel: bzImage per Linux's Documentation/arch/x86/boot.rst, Multiboot v1,
ELF per the System V gABI): a hostile kernel file may only give a one-line BootError."""
from __future__ import annotations

import os

from core.boot.elf import load_segments, parse_elf
from core.boot.errors import BootError
from core.memory import GuestMemory
from fuzz.harness import Allow, scratch_dir, target

MiB = 1 << 20
_mem: GuestMemory | None = None
_dir = scratch_dir("boot")


def _memory() -> GuestMemory:
    global _mem
    if _mem is None:
        _mem = GuestMemory(64 * MiB)
    return _mem


def _seeds_kernel() -> list[bytes]:
    import lzma
    import struct

    from tests.boot.test_boot_linux import synthetic_bzimage, synthetic_vmlinux
    from tests.boot.test_boot_multiboot import aout_kernel, elf32_kernel
    elf = synthetic_vmlinux(text=b"\x90" * 16)
    xz = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + struct.pack("<I", len(elf))
    return [synthetic_bzimage(), synthetic_bzimage(version=0x206, xloadflags=0), synthetic_bzimage(payload=xz),
            synthetic_bzimage(payload=elf + struct.pack("<I", len(elf))),
            elf32_kernel(), aout_kernel()[0], aout_kernel(load_end=False)[0]]


@target("kernel", allowed=(BootError,), seeds=_seeds_kernel, max_len=8192)
def fuzz_kernel(data: bytes) -> None:
    """load_kernel on a hostile kernel file: bzImage (both ways of decompressing), Multiboot ELF and a.out."""
    from core.boot.loader import load_kernel
    path = os.path.join(_dir, "kernel")
    with open(path, "wb") as f:
        f.write(data)
    mem = _memory()
    for on_host in (False, True):
        with Allow(BootError):
            load_kernel(mem, path, None, "console=ttyS0", 1, decompress_on_host=on_host)


def _seeds_elf() -> list[bytes]:
    from tests.boot.test_boot_linux import synthetic_vmlinux
    from tests.boot.test_boot_multiboot import elf32_kernel
    return [synthetic_vmlinux(), elf32_kernel()]


@target("elf", allowed=(BootError,), seeds=_seeds_elf, max_len=8192)
def fuzz_elf(data: bytes) -> None:
    """parse_elf then load_segments into 64 MiB of guest memory."""
    image = parse_elf(data, "kernel")
    load_segments(_memory(), data, image, "kernel")
