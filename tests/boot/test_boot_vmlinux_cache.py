"""The on-disk cache of kernels unpacked on the host: a second boot of the same kernel skips the unpacking."""
from __future__ import annotations

import pytest

from core.boot import linux, vmlinux_cache
from core.memory import GuestMemory


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIREO_CACHE_DIR", str(tmp_path))
    linux._vmlinux_cache.clear()
    yield tmp_path / "vmlinux"
    linux._vmlinux_cache.clear()


def test_store_load_evict_and_damaged_entries(cache):
    assert vmlinux_cache.load("ab" * 32, "xz") is None
    for i in range(vmlinux_cache.KEEP_ENTRIES + 2):
        vmlinux_cache.store(f"{i:064x}", "xz", b"\x7fELF" + bytes([i]) * 10)
    assert len(list(cache.glob("*.elf"))) == vmlinux_cache.KEEP_ENTRIES
    last = f"{vmlinux_cache.KEEP_ENTRIES + 1:064x}"
    assert vmlinux_cache.load(last, "xz") == b"\x7fELF" + bytes([vmlinux_cache.KEEP_ENTRIES + 1]) * 10
    (cache / f"{last}.xz.elf").write_bytes(b"garbage")
    assert vmlinux_cache.load(last, "xz") is None
    assert not (cache / f"{last}.xz.elf").exists()
    assert not list(cache.glob(".tmp-*"))


def test_unwritable_cache_only_costs_the_unpacking(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("VIREO_CACHE_DIR", str(blocker))
    vmlinux_cache.store("cd" * 32, "xz", b"\x7fELF")           # no exception
    assert vmlinux_cache.load("cd" * 32, "xz") is None


def test_second_load_of_a_kernel_reads_the_cache(cache, debian_kernel, monkeypatch):
    kernel = debian_kernel.read_bytes()
    first = linux.boot_linux(GuestMemory(256 << 20), kernel, None, "", None, decompress_on_host=True)
    assert "unpacked on the host" in first.description
    assert len(list(cache.glob("*.xz.elf"))) == 1
    linux._vmlinux_cache.clear()

    def no_unpacking(*args):
        raise AssertionError("unpacked again despite the cache")
    monkeypatch.setattr(linux, "decompress_payload", no_unpacking)
    second = linux.boot_linux(GuestMemory(256 << 20), kernel, None, "", None, decompress_on_host=True)
    assert second.cpu_state.rip == first.cpu_state.rip and second.kernel_range == first.kernel_range
