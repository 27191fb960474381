"""Write protection of translated code as QEMU does it, restored in unicorn 2.1.4 (see CodeDirtyTracking).

QEMU keeps a DIRTY_MEMORY_CODE bitmap over RAM (accel/tcg/cputlb.c, translate-all.c: tlb_protect_code when a page
gets its first translated block, tlb_unprotect_code when the last one goes) and sends a guest store through its
slow path (notdirty_write: invalidate the translated code in the range) only while the page holds translated
code. This module patches the library so that each registered unicorn instance keeps such a bitmap again: three
native stubs (their bytes below with their assembly), the redirection of two library functions through their
GOT slots, and a jump patched into notdirty_write, whose bytes are verified first (uc_patch does the writing).

Self-modifying code stays correct either way (Intel SDM vol. 3, 8.1.3 "Handling Self- and Cross-Modifying
Code": a store to code takes effect before the next instruction fetched from it); what changes is only how many
stores take the slow path.
"""
from __future__ import annotations

import ctypes
import mmap
import struct
from ctypes import c_uint64, c_void_p

from core.hypervisor.uc_internals import CPU_UC, UC_CPU, UnicornInternalsError, _fn, addr_of
from core.hypervisor.uc_patch import (
    _PAGE,
    _find_helper_slots,
    _imm64,
    _local_symbols,
    _NativePage,
    _patch_text,
    _poke_pointer,
)

# -- translated-code write protection, as QEMU tracks it (see CodeDirtyTracking) --------------------------------
# notdirty_write (accel/tcg/cputlb.c) of unicorn 2.1.4 for x86-64, from its entry up to and including the check
# this module replaces: `if (... && !(tlbe->addr_code != -1) && ...) tlb_set_dirty(...)`. Verified byte for byte
# before patching (the call displacements are relative, so the bytes do not depend on the load address).
NOTDIRTY_PROLOGUE = bytes.fromhex(
    "41574989ff41564189d641554989cd41544989f4554c89cd534889f381e3ff0f00004883ec28488b87a8810000498b7118"
    "4c894424084809de4889c7ff90200100004885c0742d4989c1f6808800000004753548837d08ff7413498b87a8810000"
    "8b80203a00004139415c7c0748837d10ff747c")
NOTDIRTY_GATE = 0x6D            # offset of `cmpq $-1, 0x10(%rbp); je set_dirty` (7 bytes)
NOTDIRTY_SET_DIRTY = 0xF0       # the hook-list check, then the tail call to tlb_set_dirty
NOTDIRTY_RETURN = 0x74          # epilogue: leave the TLB entry in the slow path
CODE_TABLE_ENTRIES = 64         # unicorn instances per process with a code bitmap (uc, bitmap, pages)


def notdirty_stub_code(table: int, set_dirty: int, keep_slow: int) -> bytes:
    """Jumped to from the gate inside notdirty_write (its frame: r9 = the MemoryRegion, r15 = the CPUState,
    0x10(%rsp) = the ram_addr written, rbp = the TLB entry):
         testb $UC_PROT_EXEC, 0x88(%r9); jz original   ; not an executable region: unicorn's own rule
         mov 0x10(%rsp), %rax; mov CPU_UC(%r15), %rcx    ; ram_addr, uc
         movabs table, %rdx
       find: mov (%rdx), %r8; test %r8, %r8; jz slow; cmp %r8, %rcx; je found; add $24, %rdx; jmp find
       found: shr $12, %rax; cmp 16(%rdx), %rax; jae slow; mov 8(%rdx), %rcx; bt %rax, (%rcx); jc slow
       dirty: movabs set_dirty, %rax; jmp *%rax         ; no translated code in the page: fast writes from now
       original: cmpq $-1, 0x10(%rbp); je dirty
       slow: movabs keep_slow, %rax; jmp *%rax"""
    return (bytes.fromhex("41f6818800000004 7449 488b442410 498b8f") + struct.pack("<I", CPU_UC)
            + b"\x48\xba" + _imm64(table)
            + bytes.fromhex("4c8b02 4d85c0 7432 4c39c1 7406 4883c218 ebed 48c1e80c 483b4210 731d 488b4a08"
                            "480fa301 7213")
            + b"\x48\xb8" + _imm64(set_dirty) + b"\xff\xe0"
            + bytes.fromhex("48837d10ff 74ed") + b"\x48\xb8" + _imm64(keep_slow) + b"\xff\xe0")


def _code_bitmap_lookup(table: int) -> bytes:
    """rdi = uc, rsi = ram_addr -> rax = page number, rcx = bitmap, or to the end label (+offset) if untracked:
         movabs table, %rdx
       find: mov (%rdx), %r8; test %r8, %r8; jz end; cmp %r8, %rdi; je found; add $24, %rdx; jmp find
       found: mov %rsi, %rax; shr $12, %rax; cmp 16(%rdx), %rax; jae end; mov 8(%rdx), %rcx"""
    return (b"\x48\xba" + _imm64(table)
            + bytes.fromhex("4c8b02 4d85c0 7420 4c39c7 7406 4883c218 ebed 4889f0 48c1e80c 483b4210 7308 488b4a08"))


def protect_stub_code(table: int, map_ram_ptr: int, reset_dirty: int) -> bytes:
    """void tlb_protect_code(uc, ram_addr) -- the page now holds translated code:
         <lookup>; bts %rax, (%rcx)                       ; mark it in this instance's code bitmap
       end: push %rbx; push %r12; sub $8, %rsp; mov %rdi, %rbx
         mov %rsi, %rdx; xor %esi, %esi; movabs qemu_map_ram_ptr, %rax; call *%rax     ; host = ptr(uc, 0, ram)
         mov UC_CPU(%rbx), %rdi; mov %rax, %rsi; mov $4096, %edx
         movabs tlb_reset_dirty, %rax; call *%rax        ; every TLB entry writing the page: slow path again
         add $8, %rsp; pop %r12; pop %rbx; ret"""
    return (_code_bitmap_lookup(table) + bytes.fromhex("480fab01")
            + bytes.fromhex("53 4154 4883ec08 4889fb 4889f2 31f6") + b"\x48\xb8" + _imm64(map_ram_ptr)
            + b"\xff\xd0" + b"\x48\x8b\xbb" + struct.pack("<I", UC_CPU) + bytes.fromhex("4889c6 ba00100000")
            + b"\x48\xb8" + _imm64(reset_dirty) + bytes.fromhex("ffd0 4883c408 415c 5b c3"))


def unprotect_stub_code(table: int) -> bytes:
    """void tlb_unprotect_code(uc, ram_addr) -- the page's last translated block is gone:
         <lookup>; btr %rax, (%rcx)
       end: ret"""
    return _code_bitmap_lookup(table) + bytes.fromhex("480fb301 c3")


class CodeDirtyTracking:
    """Fast guest writes to RAM that holds no translated code, also where the guest's page tables allow
    execution (no NX: a non-PAE 32-bit kernel, real mode, paging off).

    QEMU sends a store through its slow path (notdirty_write: invalidate translated code in the range) only while
    the physical page holds translated code -- its DIRTY_MEMORY_CODE bitmap, set by tlb_protect_code when a page
    gets its first translated block, cleared by tlb_unprotect_code when the last one goes. unicorn 2.1.4 removed
    that bitmap and approximates it by "the TLB entry is not executable", so without NX every store to every page
    takes the slow path for good (measured: the 32-bit kernel's in-guest decompression ran 20 s, mostly in
    notdirty_write). This restores QEMU's rule: tlb_protect_code / tlb_unprotect_code (called through the PLT)
    are redirected to stubs keeping one bitmap per unicorn instance (indexed by ram_addr page), and the gate in
    notdirty_write consults it. tlb_protect_code also puts every TLB entry writing that page back on the slow
    path (tlb_reset_dirty by host address), as QEMU does, so a write through another virtual alias is seen too.

    Installed once per process; if the library's bytes are not the expected ones nothing is patched (the
    backend stays correct, only slower) and `reason` says why."""

    def __init__(self, page: _NativePage) -> None:
        self.active = False
        self.reason = ""
        self.table = (c_uint64 * (3 * CODE_TABLE_ENTRIES + 3))()
        self._bitmaps: dict[int, object] = {}
        try:
            self._install(page)
            self.active = True
        except UnicornInternalsError as exc:
            self.reason = str(exc)

    def _install(self, page: _NativePage) -> None:
        funcs = _local_symbols("notdirty_write.isra.0")
        anchor = addr_of(_fn("tlb_set_dirty_x86_64", None))
        after = [f for f in funcs if f > anchor]
        if not after:
            raise UnicornInternalsError("notdirty_write not found in the library's symbol table")
        fn = min(after)
        if ctypes.string_at(fn, len(NOTDIRTY_PROLOGUE)) != NOTDIRTY_PROLOGUE:
            raise UnicornInternalsError("notdirty_write is not the unicorn 2.1.4 build this was derived from")
        slots = _find_helper_slots(["tlb_protect_code_x86_64", "tlb_unprotect_code_x86_64",
                                    "tlb_reset_dirty_by_vaddr_x86_64"])
        table = ctypes.addressof(self.table)
        gate = fn + NOTDIRTY_GATE
        stub = page.add(notdirty_stub_code(table, fn + NOTDIRTY_SET_DIRTY, fn + NOTDIRTY_RETURN))
        if abs(stub - (gate + 5)) >= 1 << 31:
            raise UnicornInternalsError("no native page within reach of the library for the notdirty gate")
        protect = page.add(protect_stub_code(table, addr_of(_fn("qemu_map_ram_ptr_x86_64", c_void_p)),
                                             addr_of(_fn("tlb_reset_dirty_x86_64", None))))
        unprotect = page.add(unprotect_stub_code(table))
        # unicorn's stand-in for the bitmap: after every translation, walk the whole TLB to put the block's page
        # back on the slow path. With the bitmap, tlb_protect_code does that once, when a page gets its first
        # block, and an entry is only made fast while its page has none -- so this becomes a no-op (`ret`).
        no_op = page.add(b"\xc3")
        for name, wrapper in (("tlb_protect_code_x86_64", protect), ("tlb_unprotect_code_x86_64", unprotect),
                              ("tlb_reset_dirty_by_vaddr_x86_64", no_op)):
            original, pointer_slots = slots[name]
            for slot in pointer_slots:
                _poke_pointer(slot, original, wrapper)
        # The gate last: from here on notdirty_write consults bitmaps the redirected helpers keep.
        _patch_text(gate, b"\xe9" + struct.pack("<i", stub - (gate + 5)) + b"\x90\x90")

    def register(self, uch: int, ram_bytes: int) -> None:
        """Give unicorn instance `uch` a code bitmap for ram_addr space [0, ram_bytes). Before it first runs."""
        if not self.active:
            return
        pages = (ram_bytes + _PAGE - 1) // _PAGE
        bitmap = mmap.mmap(-1, max(_PAGE, (pages + 7) // 8 + 8))
        t = self.table
        for i in range(CODE_TABLE_ENTRIES):
            if t[3 * i] in (0, 1):                 # free, or the tombstone of an unregistered instance
                self._bitmaps[uch] = bitmap
                t[3 * i + 1] = ctypes.addressof(ctypes.c_char.from_buffer(bitmap))
                t[3 * i + 2] = pages
                t[3 * i] = uch
                return
        # Table full: that instance keeps unicorn's rule (slow stores to executable pages), still correct.

    def bitmap(self, uch: int) -> memoryview | None:
        """Instance `uch`'s code bitmap (bit n: ram_addr page n holds translated code), or None without one."""
        bitmap = self._bitmaps.get(uch)
        return memoryview(bitmap) if bitmap is not None else None     # type: ignore[arg-type]

    def unregister(self, uch: int) -> None:
        t = self.table
        for i in range(CODE_TABLE_ENTRIES):
            if t[3 * i] == uch:
                t[3 * i] = 1                       # tombstone: the lookup walks past it, never matches
                t[3 * i + 1] = t[3 * i + 2] = 0
        self._bitmaps.pop(uch, None)

