"""Which pages of guest RAM hold data, for the state file's RAM section (docs/machine-state.md, "File layout"):
runs of pages that are not all zero, in guest-physical order.

Guest RAM is one private anonymous mapping (core/memory.py). A page of it that the kernel has never backed --
neither present nor swapped out, as /proc/self/pagemap says (Linux Documentation/admin-guide/mm/pagemap.rst: one
64-bit entry per virtual page, bit 63 "page present", bit 62 "page swapped") -- reads as zeros, so it need not be
read at all. Reading it anyway faults the shared zero page in, page by page: for a 512 MiB guest that has touched
a few MiB that was most of the first save's time. So the scan asks pagemap first and reads only the pages the
kernel has backed (short gaps between backed runs are read through: cheaper than another run). Those are checked
for zeros a page at a time with bytes comparisons when there are few of them, and with numpy when there are many
(importing numpy costs more than comparing a few thousand pages). Without a readable pagemap (/proc not mounted,
not Linux) every page is read, with numpy, as before.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

from core.memory import PAGE_SIZE, GuestMemory, MemoryRegion

PAGEMAP = "/proc/self/pagemap"
_BACKED_BITS = 0xC0                  # present | swapped, in the top byte of each little-endian entry
_BACKED = bytes(1 if b & _BACKED_BITS else 0 for b in range(256))     # top byte -> 1 if backed, else 0
GAP_PAGES = 16                       # backed runs this close are scanned as one
SMALL_PAGES = 8192                   # up to this many pages (32 MiB) to check: bytes comparisons, no numpy
CHUNK_PAGES = (64 << 20) // PAGE_SIZE
_ZERO_PAGE = bytes(PAGE_SIZE)


def backed_runs(memory: GuestMemory, region: MemoryRegion) -> list[tuple[int, int]] | None:
    """The page runs [first, end) of `region` (page numbers from its start) the kernel has backed; pages outside
    them have never been written (they read as zeros). None when pagemap cannot be read."""
    pages = region.size // PAGE_SIZE
    first_entry = memory.host_address(region) // PAGE_SIZE * 8
    try:
        fd = os.open(PAGEMAP, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    entries = bytearray()
    try:
        while len(entries) < pages * 8:
            chunk = os.pread(fd, min(pages * 8 - len(entries), 8 << 20), first_entry + len(entries))
            if not chunk:
                return None
            entries += chunk
    except OSError:
        return None
    finally:
        os.close(fd)
    flags = bytes(entries[7::8]).translate(_BACKED)
    runs: list[tuple[int, int]] = []
    start = flags.find(1)
    while start >= 0:
        end = flags.find(0, start)
        if end < 0:
            end = pages
        if runs and start - runs[-1][1] <= GAP_PAGES:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
        start = flags.find(1, end)
    return runs


def nonzero_runs(memory: GuestMemory) -> Iterator[tuple[int, memoryview]]:
    """(guest-physical address, view of the pages) for each run of pages that are not all zero, in order. Call
    with nothing writing guest RAM (the vCPUs paused, the devices quiesced); release each view before the next."""
    regions = [(region, backed_runs(memory, region)) for region in memory.regions]
    if all(runs is not None for _, runs in regions):
        small = sum(end - start for _, runs in regions for start, end in runs or ()) <= SMALL_PAGES
    else:
        small = False
    for region, runs in regions:
        if runs is None:
            runs = [(0, region.size // PAGE_SIZE)]
        for start, end in runs:
            for first in range(start, end, CHUNK_PAGES):
                count = min(CHUNK_PAGES, end - first)
                gpa = region.gpa + first * PAGE_SIZE
                yield from (_scan_small if small else _scan_numpy)(memory, gpa, count)


def _scan_small(memory: GuestMemory, gpa: int, pages: int) -> Iterator[tuple[int, memoryview]]:
    view = memory.view(gpa, pages * PAGE_SIZE)
    try:
        run_start = None
        for i in range(pages + 1):
            # bytes(...) == bytes is a memcmp; comparing the memoryview itself goes element by element.
            nonzero = i < pages and bytes(view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]) != _ZERO_PAGE
            if nonzero and run_start is None:
                run_start = i
            elif not nonzero and run_start is not None:
                yield gpa + run_start * PAGE_SIZE, view[run_start * PAGE_SIZE:i * PAGE_SIZE]
                run_start = None
    finally:
        del view


def _scan_numpy(memory: GuestMemory, gpa: int, pages: int) -> Iterator[tuple[int, memoryview]]:
    import numpy as np
    view = memory.view(gpa, pages * PAGE_SIZE)
    try:
        nonzero = np.frombuffer(view, dtype=np.uint64).reshape(-1, PAGE_SIZE // 8).any(axis=1)
        # Runs of non-zero pages: where the flag changes.
        edges = np.flatnonzero(np.diff(np.concatenate(([0], nonzero.view(np.int8), [0]))))
        for first, end in zip(edges[0::2], edges[1::2], strict=True):
            yield gpa + int(first) * PAGE_SIZE, view[int(first) * PAGE_SIZE:int(end) * PAGE_SIZE]
    finally:
        del view
