"""The RAM section's zero-page scan (core/state/ram_scan.py): it finds exactly the pages that are not all zero,
whichever way it looks (pagemap and bytes comparisons for few backed pages, pagemap and numpy for many, numpy over
everything without pagemap), and with pagemap it never reads a page the kernel has not backed, so saving does not
fault in a large idle guest's untouched RAM."""
from __future__ import annotations

import random

import pytest

from core.memory import PAGE_SIZE, GuestMemory
from core.state import ram_scan
from core.state.container import StateReader, StateWriter

MIB = 1 << 20


def _memory() -> tuple[GuestMemory, set[int]]:
    """64 MiB: scattered data pages (one byte set anywhere in the page, the last byte too), pages written and then
    zeroed again (backed, but zero), and untouched pages; returns the data pages' numbers."""
    memory = GuestMemory(64 * MIB)
    rng = random.Random(15)
    data = set(rng.sample(range(memory.size // PAGE_SIZE), 300)) | {0, memory.size // PAGE_SIZE - 1}
    for page in data:
        memory.write(page * PAGE_SIZE + rng.choice([0, 1, 2048, PAGE_SIZE - 1]), b"\x5a")
    for page in rng.sample(sorted(set(range(memory.size // PAGE_SIZE)) - data), 200):
        memory.write(page * PAGE_SIZE + 100, b"x")
        memory.write(page * PAGE_SIZE + 100, b"\0")
    return memory, data


def _pages(memory: GuestMemory) -> set[int]:
    out = set()
    for gpa, view in ram_scan.nonzero_runs(memory):
        out.update(range(gpa // PAGE_SIZE, (gpa + len(view)) // PAGE_SIZE))
        view.release()
    return out


def _backed(memory: GuestMemory) -> int:
    return sum(end - start for region in memory.regions for start, end in ram_scan.backed_runs(memory, region))


@pytest.mark.parametrize("way", ["pagemap, bytes", "pagemap, numpy", "no pagemap"])
def test_the_scan_finds_exactly_the_pages_with_data(way, monkeypatch):
    memory, data = _memory()
    if way == "pagemap, numpy":
        monkeypatch.setattr(ram_scan, "SMALL_PAGES", 0)
    elif way == "no pagemap":
        monkeypatch.setattr(ram_scan, "PAGEMAP", "/nonexistent/pagemap")
    assert _pages(memory) == data
    memory.close()


def test_untouched_pages_are_not_read():
    """After a scan with pagemap, the pages the guest never wrote are still not backed (a scan that read them would
    have faulted each in): 64 MiB of RAM, a few hundred pages touched (backed in 4 KiB pages, or in 2 MiB ones where
the kernel uses transparent huge pages)."""
    memory, data = _memory()
    backed = _backed(memory)
    assert len(data) <= backed < memory.size // PAGE_SIZE // 2      # more with transparent huge pages
    assert _pages(memory) == data
    assert _backed(memory) == backed
    memory.close()


def test_state_file_round_trip(tmp_path):
    memory, data = _memory()
    path = tmp_path / "ram.state"
    with StateWriter(str(path)) as writer:
        writer.ram(memory)
    assert writer.bytes_ram == len(data) * PAGE_SIZE
    copy = GuestMemory(memory.size)
    reader = StateReader(str(path))
    assert list(reader.records()) == []
    reader.load_ram(copy)
    reader.close()
    assert bytes(copy.view(0, copy.size)) == bytes(memory.view(0, memory.size))
    memory.close()
    copy.close()
