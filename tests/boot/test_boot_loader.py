"""load_kernel (core/boot/loader.py): format detection by content, file errors, ACPI tables written, and the
description each kind of kernel gets."""
from __future__ import annotations

import os

import pytest

from core.boot.loader import BootError, BootResult, load_kernel
from core.memory import GuestMemory
from tests.boot.test_boot_linux import synthetic_bzimage
from tests.boot.test_boot_multiboot import aout_kernel, elf32_kernel

MiB = 1 << 20


@pytest.fixture
def mem():
    m = GuestMemory(128 * MiB)
    yield m
    m.close()


def test_bzimage_detected(mem, tmp_path):
    k = tmp_path / "vmlinuz-test"
    k.write_bytes(synthetic_bzimage())
    initrd = tmp_path / "initrd.gz"
    initrd.write_bytes(b"\x1f\x8b" + os.urandom(5000))
    result = load_kernel(mem, str(k), str(initrd), "console=ttyS0", 2)
    assert isinstance(result, BootResult)
    assert "bzImage protocol 2.15" in result.description
    assert result.cpu_state.rip == 0x100_0000 + 0x200
    assert mem.read(result.rsdp_addr, 8) == b"RSD PTR "
    assert mem.read_u64(0x7000 + 0x70) == result.rsdp_addr           # the zero page points at it
    assert mem.read_u32(0x7000 + 0x21C) == 5002


def test_bzimage_decompressed_on_host(mem, tmp_path):
    k = tmp_path / "vmlinuz-test"
    k.write_bytes(synthetic_bzimage())
    result = load_kernel(mem, str(k), None, "", 1, decompress_on_host=True)
    assert result.cpu_state.rip == 0x100_0000
    assert "unpacked on the host" in result.description


@pytest.mark.parametrize("builder,description", [
    (lambda: elf32_kernel(), "Multiboot ELF"),
    (lambda: aout_kernel()[0], "Multiboot a.out kludge"),
])
def test_multiboot_detected(mem, tmp_path, builder, description):
    k = tmp_path / "kernel.mb"
    k.write_bytes(builder())
    result = load_kernel(mem, str(k), None, "x", 1)
    assert result.description == description
    assert result.cpu_state.regs["rax"] == 0x2BADB002
    assert mem.read(result.rsdp_addr, 8) == b"RSD PTR "


def test_neither_format(mem, tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(64 * 1024))
    with pytest.raises(BootError, match=r"junk\.bin is neither a Linux bzImage nor a Multiboot kernel"):
        load_kernel(mem, str(junk), None, "", 1)


@pytest.mark.parametrize("which", ["kernel", "initrd"])
def test_missing_files(mem, tmp_path, which):
    k = tmp_path / "vmlinuz"
    k.write_bytes(synthetic_bzimage())
    missing = str(tmp_path / "nope")
    args = (missing, None) if which == "kernel" else (str(k), missing)
    with pytest.raises(BootError) as exc:
        load_kernel(mem, args[0], args[1], "", 1)
    assert str(exc.value) == f"{which} {missing} does not exist"


def test_unreadable_and_empty_files(mem, tmp_path):
    with pytest.raises(BootError, match="is a directory"):
        load_kernel(mem, str(tmp_path), None, "", 1)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(BootError, match="is empty"):
        load_kernel(mem, str(empty), None, "", 1)
    if os.geteuid() != 0:        # root reads mode-000 files anyway
        locked = tmp_path / "locked"
        locked.write_bytes(b"x")
        locked.chmod(0)
        with pytest.raises(BootError, match="cannot read kernel"):
            load_kernel(mem, str(locked), None, "", 1)


def test_initrd_too_big_names_the_file(tmp_path):
    m = GuestMemory(32 * MiB)
    try:
        k = tmp_path / "vmlinuz"
        k.write_bytes(synthetic_bzimage())
        big = tmp_path / "big.img"
        with open(big, "wb") as f:
            f.truncate(64 * MiB)
        with pytest.raises(BootError) as exc:
            load_kernel(m, str(k), str(big), "", 1)
        msg = str(exc.value)
        assert "big.img" in msg and "--memory" in msg
    finally:
        m.close()
