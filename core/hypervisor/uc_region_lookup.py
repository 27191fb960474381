"""Which memory region holds a guest-physical address, answered natively for guest RAM: a fast path in front of
unicorn's `find_memory_mapping` (qemu/unicorn_common.h).

Unicorn adds a region lookup to every slow-path guest load and store (load_helper and store_helper in
accel/tcg/cputlb.c call `uc->memory_mapping`), so that it can report unmapped or protected memory to hooks.
QEMU's own slow path has no such lookup. Each lookup is a FlatView walk (`address_space_translate` ->
flatview_translate). The slow path runs on every TLB refill, which follows every flush, so that is each CR3
write (Intel SDM vol. 3, 4.10.4.1). It also runs on every store to a page holding code, and on every access
whose TLB entry a colliding page evicted. In the `--smp` jobs the walk was about 1.2 % of the vCPU thread, and
14 % in a boot whose TLB thrashed (see uc_tlb_floor).

Guest RAM is host memory the backend gave unicorn (uc_mem_map_ptr), one region per range, at fixed
guest-physical ranges for the VM's life; uc_physread relies on the same. Each instance registers those
ranges here with the region QEMU's own lookup returns for them (checked at both ends of the range). Its
`uc->memory_mapping` pointer is then aimed at the stub below. The stub answers an address inside a registered
range of that instance from the table, and jumps to unicorn's function for every other address: MMIO, device
RAM mapped later, the interrupt-acknowledge page, addresses outside RAM. A memory-map change that overlaps a
registered range drops that instance's rows first (`forget_overlapping`), so no answer outlives its region.
"""
from __future__ import annotations

import ctypes
from ctypes import c_uint64, c_void_p

from core.hypervisor.uc_internals import UnicornInternalsError, _fn, addr_of
from core.hypervisor.uc_patch import _imm64, _NativePage

UC_MEMORY_MAPPING = 0x120      # struct uc_struct: uc_memory_mapping_t memory_mapping (after memory_map_ptr)
RANGE_ENTRIES = 256            # (uc, gpa start, size, MemoryRegion *) rows shared by every instance in the process
TOMBSTONE = 1                  # a freed row: never matches, the scan walks past it


def lookup_code(table: int, original: int) -> bytes:
    """MemoryRegion *memory_mapping(struct uc_struct *uc, hwaddr addr):
         movabs table, %rax
       next: mov (%rax), %rcx; test %rcx, %rcx; jz original          ; end of the table
         cmp %rcx, %rdi; jne skip                                     ; another instance's range
         mov %rsi, %rdx; sub 8(%rax), %rdx                            ; offset = addr - start
         cmp 16(%rax), %rdx; jae skip                                 ; offset < size
         mov 24(%rax), %rax; ret                                      ; the range's region
       skip: add $32, %rax; jmp next
       original: movabs original, %rax; jmp *%rax"""
    return (b"\x48\xb8" + _imm64(table)
            + bytes.fromhex("488b084885c9741d4839cf75124889f2482b5008483b50107305488b4018c34883c020ebdb")
            + b"\x48\xb8" + _imm64(original) + b"\xff\xe0")


class RegionLookup:
    """The stub above, placed once per process; `register` aims an instance at it. Without registration (or if
    placing it failed: `reason`) an instance keeps unicorn's lookup."""

    def __init__(self, page: _NativePage) -> None:
        self.active = False
        self.reason = ""
        self.table = (c_uint64 * (4 * RANGE_ENTRIES + 4))()
        self.original = 0
        self.stub = 0
        self._find = None
        try:
            self.original = addr_of(_fn("find_memory_mapping_x86_64", c_void_p))
            self._find = ctypes.CFUNCTYPE(c_void_p, c_void_p, c_uint64)(self.original)
            self.stub = page.add(lookup_code(ctypes.addressof(self.table), self.original))
            self.active = True
        except UnicornInternalsError as exc:
            self.reason = str(exc)

    def _pointer(self, uch: int) -> c_uint64:
        return c_uint64.from_address(uch + UC_MEMORY_MAPPING)

    def region_of(self, uch: int, gpa: int) -> int:
        """Unicorn's own answer (0 for unmapped)."""
        return self._find(uch, gpa) or 0

    def register(self, uch: int, ranges: list[tuple[int, int]]) -> None:
        """Guest RAM [gpa, gpa + size) for each (gpa, size), mapped in instance `uch` one region per range. On the
        instance's thread, outside emulation. A range QEMU does not answer with one region is left out."""
        if not self.active:
            return
        pointer = self._pointer(uch)
        if pointer.value not in (self.original, self.stub):
            return                                 # not the layout this was derived from: keep unicorn's lookup
        rows = []
        for gpa, size in ranges:
            region = self.region_of(uch, gpa)
            if size > 0 and region and region == self.region_of(uch, gpa + size - 1):
                rows.append((gpa, size, region))
        t = self.table
        free = [i for i in range(RANGE_ENTRIES) if t[4 * i] in (0, TOMBSTONE)]
        if not rows or len(free) < len(rows):
            return                                 # table full: unicorn's lookup for this instance (still right)
        for i, (gpa, size, region) in zip(free, rows, strict=False):
            t[4 * i + 1], t[4 * i + 2], t[4 * i + 3] = gpa, size, region
            t[4 * i] = uch                         # written last: a reader never sees half a row
        pointer.value = self.stub

    def registered(self, uch: int) -> list[tuple[int, int, int]]:
        """The (gpa, size, region) rows of instance `uch`."""
        t = self.table
        return [(t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]) for i in range(RANGE_ENTRIES) if t[4 * i] == uch]

    def forget_overlapping(self, uch: int, start: int, size: int) -> None:
        """Before instance `uch`'s map changes over [start, start + size): drop its rows there (on its thread)."""
        t = self.table
        for i in range(RANGE_ENTRIES):
            if t[4 * i] == uch and t[4 * i + 1] < start + size and start < t[4 * i + 1] + t[4 * i + 2]:
                t[4 * i] = TOMBSTONE

    def unregister(self, uch: int) -> None:
        """Give instance `uch` unicorn's lookup back and free its rows (it must not be emulating)."""
        if not self.active:
            return
        pointer = self._pointer(uch)
        if pointer.value == self.stub:
            pointer.value = self.original
        t = self.table
        for i in range(RANGE_ENTRIES):
            if t[4 * i] == uch:
                t[4 * i] = TOMBSTONE
