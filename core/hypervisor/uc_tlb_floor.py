"""The smallest size QEMU's soft TLB may shrink to, raised from 64 entries to 1024 for the x86_64 target
(QEMU's accel/tcg/cputlb.c, tlb_mmu_resize_locked; unicorn 2.1.4's build).

QEMU keeps one direct-mapped TLB per MMU mode, indexed by the virtual page number modulo its size. It resizes it
at each flush from the most entries used between flushes in a 100 ms window: it halves it towards that use when
the use stays under 30 %, down to CPU_TLB_DYN_MIN_BITS, 64 entries. Every CR3 write flushes it (Intel SDM vol. 3,
4.10.4.1), and a guest that switches processes often uses few pages between switches. A pipe hand-off is one such
switch, so the TLB of such a guest sits at 64 entries. Two hot pages whose virtual addresses are a multiple of
256 KiB apart then share an entry, for example a process's stack and its input buffer. Each access to one
evicts the other into the 8-entry victim TLB, so every access takes the slow path: victim_tlb_hit, the load or
store helper, and unicorn's memory-region lookup.

This was measured in `bench/software_cpu.py --smp`: `dd | sha256sum` jobs ran at half speed in about one boot in
eight. The stack page and the read buffer shared index 21 of a 64-entry TLB, and the vCPU threads spent 40 % in
that path, against 5 % in other boots. With a floor of 1024 entries the same pair of pages collides 16 times
less often. The cost is at each flush: 64 KiB to clear per MMU mode in use, not 4 KiB. Request latency and boot
time in alternating runs showed no loss.

The patch rewrites the three instructions that compute `MAX(ceil, 1 << CPU_TLB_DYN_MIN_BITS)`, in place and at
the same length, after checking that they are the ones this was derived from. The allocation-failure fallback
further on still stops at 64. VIREO_TLB_FLOOR=64 keeps QEMU's floor, for comparisons.
"""
from __future__ import annotations

import ctypes
import os
import struct

from core.hypervisor.uc_internals import UnicornInternalsError, _fn, addr_of
from core.hypervisor.uc_patch import _local_symbols, _patch_text

FLOOR_ENTRIES = 1024
QEMU_FLOOR = 64
ENV_VAR = "VIREO_TLB_FLOOR"
_RESIZE = "tlb_mmu_resize_locked.constprop.0"
_ANCHOR = "tlb_flush_page_x86_64"        # the x86_64 copy of the resize function lies just before it
_MAX_GAP = 0x10000
_OFFSET = 0xDA                           # of the MAX() in the function
# cmp $0x40, %rbx; mov $0x40, %eax; cmovb %rax, %rbx
_QEMU_CODE = bytes.fromhex("4883fb40" "b840000000" "480f42d8")


def floor_code(entries: int) -> bytes:
    """mov $entries, %eax; cmp %rax, %rbx; cmovb %rax, %rbx; nop -- the new size is at least `entries`."""
    return b"\xb8" + struct.pack("<I", entries) + bytes.fromhex("4839c3" "480f42d8" "90")


def wanted_floor() -> int:
    """The floor to install: FLOOR_ENTRIES, or a power of two from 64 to 65536 given in VIREO_TLB_FLOOR."""
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return FLOOR_ENTRIES
    try:
        value = int(raw)
    except ValueError:
        raise UnicornInternalsError(f"{ENV_VAR}={raw!r} is not a number: give a power of two from 64 to 65536"
                                    ) from None
    if value < QEMU_FLOOR or value > 65536 or value & (value - 1):
        raise UnicornInternalsError(f"{ENV_VAR}={value} is not a power of two from 64 to 65536")
    return value


def _site() -> int:
    anchor = addr_of(_fn(_ANCHOR, None))
    before = [f for f in _local_symbols(_RESIZE) if anchor - _MAX_GAP < f < anchor]
    if not before:
        raise UnicornInternalsError(f"{_RESIZE} not found before {_ANCHOR} in the library's symbol table")
    return max(before) + _OFFSET


def install_tlb_floor(entries: int) -> None:
    """Make `entries` the smallest TLB size of every x86_64 unicorn instance in this process (once; again with
    the same value is a no-op). QEMU_FLOOR puts QEMU's own code back."""
    where = _site()
    current = ctypes.string_at(where, len(_QEMU_CODE))
    if current != _QEMU_CODE and (current[:1] != b"\xb8" or current[5:] != floor_code(0)[5:]):
        raise UnicornInternalsError(f"{_RESIZE} is not the unicorn 2.1.4 build the TLB floor was derived from")
    code = _QEMU_CODE if entries == QEMU_FLOOR else floor_code(entries)
    if current != code:
        _patch_text(where, code)
