"""Issue 18, defects 5-7 at the loaders: hostile or careless kernels, initrds and command lines give one-line
BootErrors, bounded in memory (a decompression bomb, a 40 GiB sparse file, a FIFO), and a Multiboot kernel's
headers-only segment below 1 MiB moves the ACPI tables instead of being refused."""
from __future__ import annotations

import os
import struct
import threading
import tracemalloc
import zlib

import pytest

from core import platform
from core.boot.acpi import build_acpi_tables
from core.boot.errors import BootError
from core.boot.linux import boot_linux, decompress_payload, parse_bzimage
from core.boot.loader import load_kernel
from core.memory import GuestMemory
from tests.boot.test_boot_linux import synthetic_bzimage

MiB = 1 << 20


@pytest.fixture
def mem64():
    m = GuestMemory(64 * MiB)
    yield m
    m.close()


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """256 MiB of zeros as one gzip stream (about 250 KiB)."""
    comp = zlib.compressobj(9, wbits=31)
    zeros = bytes(16 * MiB)
    return b"".join(comp.compress(zeros) for _ in range(16)) + comp.flush()


def test_bzimage_cut_to_518_bytes_is_a_one_line_error(debian_kernel):
    head = debian_kernel.read_bytes()[:518]
    with pytest.raises(BootError, match="truncated") as info:
        parse_bzimage(head, "cut.bin")
    assert "cut.bin" in str(info.value) and "\n" not in str(info.value)


def test_gzip_bomb_payload_is_refused_without_unpacking_it(mem64, gzip_bomb):
    # The size trailer a real build appends says 1 MiB; the stream says 256 MiB: stop at the first.
    kernel = synthetic_bzimage(payload=gzip_bomb + struct.pack("<I", 1 * MiB))
    tracemalloc.start()
    try:
        with pytest.raises(BootError, match="bomb|corrupt"):
            boot_linux(mem64, kernel, None, "", None, decompress_on_host=True, kernel_name="bomb.bin")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB, f"unpacking a bomb peaked at {peak >> 20} MiB"


def test_gzip_bomb_without_a_size_trailer_stops_at_guest_memory(gzip_bomb):
    tracemalloc.start()
    try:
        with pytest.raises(BootError, match="more than") as info:
            decompress_payload(gzip_bomb + b"\0\0\0\0", "bomb.bin", limit=32 * MiB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(info.value)
    assert peak < 80 * MiB, f"unpacking a bomb peaked at {peak >> 20} MiB"


def test_payload_declaring_more_than_guest_memory_is_refused_before_unpacking(gzip_bomb):
    with pytest.raises(BootError, match="give more --memory"):
        decompress_payload(gzip_bomb + struct.pack("<I", 256 * MiB), "big.bin", limit=64 * MiB)


@pytest.mark.parametrize("what", ["kernel", "initrd"])
def test_40_gib_sparse_file_is_refused_before_reading(tmp_path, mem64, debian_kernel, what):
    sparse = tmp_path / "sparse.img"
    with open(sparse, "wb") as f:
        f.truncate(40 << 30)
    kernel, initrd = (str(sparse), None) if what == "kernel" else (str(debian_kernel), str(sparse))
    with pytest.raises(BootError) as info:
        load_kernel(mem64, kernel, initrd, "", 1)
    line = str(info.value)
    assert what in line and "sparse.img" in line and "40960 MiB" in line and "\n" not in line


def test_fifo_as_kernel_is_refused_without_blocking(tmp_path, mem64):
    fifo = tmp_path / "kernel.fifo"
    os.mkfifo(fifo)
    result: list[BaseException | None] = []

    def load() -> None:
        try:
            load_kernel(mem64, str(fifo), None, "", 1)
            result.append(None)
        except BootError as exc:
            result.append(exc)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():
        with open(fifo, "wb"):      # release the blocked open so the thread ends
            pass
        pytest.fail("opening a FIFO as the kernel blocked")
    assert result and result[0] is not None and "not a regular file" in str(result[0])


@pytest.mark.parametrize("cmdline,ok", [
    ("console=ttyS0 x=" + os.fsdecode(b"\xff\xfe"), True),    # argv bytes that are not UTF-8
    ("x=\ud800", False),                                          # a lone surrogate: no byte form
])
def test_non_utf8_command_line(mem64, cmdline, ok):
    kernel = synthetic_bzimage()
    if ok:
        boot_linux(mem64, kernel, None, cmdline, None, kernel_name="k.bin")
        raw = mem64.read(platform.CMDLINE_ADDR, 64).split(b"\0", 1)[0]
        assert raw == b"console=ttyS0 x=\xff\xfe"
    else:
        with pytest.raises(BootError, match="command line") as info:
            boot_linux(mem64, kernel, None, cmdline, None, kernel_name="k.bin")
        assert "\n" not in str(info.value)


def test_acpi_tables_move_clear_of_a_kernel_range(mem64):
    first = build_acpi_tables(mem64, 1)
    assert first == platform.ACPI_TABLES_ADDR
    moved = build_acpi_tables(mem64, 1, avoid=[(0xDF000, 0xE0800)])
    assert moved >= 0xE0800 and mem64.read(moved, 8) == b"RSD PTR "
    with pytest.raises(BootError, match="no room for the ACPI tables"):
        build_acpi_tables(mem64, 1, avoid=[(0xE0000, 0x100000)])
