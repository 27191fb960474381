"""A second-level cache of translated blocks in front of QEMU's hash table, per unicorn instance.

How QEMU finds the translated block for the guest's next instruction (accel/tcg, include/exec/tb-lookup.h): every
indirect jump, call and return that the translator could not chain (`lookup_tb_ptr`), and every entry from the CPU
loop, first looks in the CPU's `tb_jmp_cache` -- 4096 entries indexed by a hash of the virtual PC -- and on a miss
calls `tb_htable_lookup`: the physical page of the PC through the soft TLB, an xxhash of (physical PC, PC, flags,
cflags), and a walk of a bucket in the global `qht` comparing each candidate field by field (`tb_lookup_cmp`).

The jump cache misses a great deal. Its hash XORs the PC with itself shifted by 6, so blocks a few dozen bytes
apart can share an entry; and many hot kernel blocks existed twice, because x86 hflags carry SS32, which a 64-bit
kernel entered by SYSCALL has set (SS from STAR) and one entered by an interrupt from user mode has clear (SS
loaded with a null selector) -- the jump cache, indexed by the PC alone, swapped the two back and forth. Measured
in the network benchmark's request phase (a Debian guest serving HTTP): ~3 million lookups a second reached the
hash table, mostly hot pairs of kernel blocks 0x35-0xB3 bytes apart or one PC under both flags, and the walk took
about a quarter of the vCPU thread (perf: qht_lookup_custom, tb_lookup_cmp, tb_htable_lookup).

Two changes, installed together once per process before any instance exists (VIREO_TB_CACHE=0 leaves QEMU alone):

* One block per PC in 64-bit code. 64-bit code never reads SS32 (target/i386/translate.c: the stack size there
  is 64 bits; only PUSHA/POPA and a real-mode LRET, none valid in 64-bit code, look at it), so SS32 is set in
  the flags of every block of 64-bit code (HF_CS64): a wrapper in the GOT slot of `tb_gen_code_x86_64` sets it
  in the flags it translates under, the lookup wrapper below in the flags it looks for, and a wrapper in front of
  the `lookup_tb_ptr` helper (its GOT slot and its `all_helpers` entry, as uc_native interposes helpers) sets it
  in the CPU's own hflags, from which QEMU's inlined jump-cache check takes the flags. That bit of hflags is
  derived state: any load of CS recomputes it from SS's descriptor (cpu_x86_load_seg_cache), so leaving 64-bit
  code restores the real value; nothing else reads it.
* A second-level table. A wrapper sits in the GOT slot of `tb_htable_lookup_x86_64` (the jump cache inlined in
  its callers stays as it is): for a registered instance it first looks in a direct-mapped table of 65,536
  blocks indexed by a multiplicative hash of the PC and the flags, and accepts the block only if it passes every
  test `tb_lookup_cmp` makes -- same PC, CS base, flags, cflags under CF_HASH_MASK without CF_INVALID, trace
  state, one page only, and its first page the physical page the PC maps to now (the soft TLB's answer, as the
  original asks for). Anything else goes to the original lookup, whose answer fills the entry. An invalidated
  block (a write to its code) carries CF_INVALID before it leaves the hash table (do_tb_phys_invalidate), so the
  table never returns a block the original would not. A `tb_flush` frees every block, so an older pointer may
  point anywhere in the code buffer: the stub compares TBContext.tb_flush_count with the count at which it last
  emptied the table, and empties it again when they differ.

Each instance's table is its own and is only written by the thread running that instance; an instance is taken out
of the registry before it is closed, and one registered again gets a new, empty table.

Offsets, read from the disassembly of the pinned library (unicorn 2.1.4) and checked at install: CPUState.uc
(+0x81a8), CPUState.env_ptr (+0x128), the first word of CPUState.trace_dstate (+0x8188); TranslationBlock.pc
(+0), cs_base (+8), flags (+0x10), cflags (+0x18), trace_vcpu_dstate (+0x1c), page_addr[0] (+0x48),
page_addr[1] (+0x50); uc_struct.tcg_ctx (+0x300) and TCGContext.tb_ctx.tb_flush_count (+0x98d0);
CPUX86State.hflags (+0xb0).
"""
from __future__ import annotations

import ctypes
import os
import struct
import threading
from ctypes import c_uint64

from core.hypervisor.uc_internals import UnicornInternalsError, _fn, addr_of
from core.hypervisor.uc_patch import _find_helper_slots, _imm64, _NativePage, _poke_pointer

CACHE_BITS = 16
CACHE_ENTRIES = 1 << CACHE_BITS
REGISTRY_WORDS = 4                  # uc, table, &tb_flush_count, the flush count when the table was last emptied
MAX_INSTANCES = 256
UC_TCG_CTX = 0x300
TB_FLUSH_COUNT = 0x98D0

# tb_htable_lookup: `mov 0x81a8(%rdi),%rbp; mov 0x8188(%rbx),%rax; mov 0x128(%rdi),%rdi` at +0x2a
_HTABLE_LOOKUP_FIELDS = (0x2A, bytes.fromhex("488baf a8810000 488b83 88810000 488bbf 28010000".replace(" ", "")))
# tb_lookup_cmp: the block's fields it compares -- pc, page_addr[0], cs_base, flags, trace_vcpu_dstate, cflags
# under CF_HASH_MASK | CF_INVALID, page_addr[1] against -1 (offset in the function, bytes)
_LOOKUP_CMP_CHECKS = ((0x06, "483906"), (0x18, "48397e48"), (0x2C, "48394e08"), (0x35, "394e10"),
                      (0x3D, "394e1c"), (0x42, "8b4e18"), (0x45, "81e1ffff0eff"), (0x50, "48837e50ff"))
# tb_flush: `addl $0x1,0x98d0(%rax)` (tb_ctx.tb_flush_count += 1)
_TB_FLUSH_COUNT = (0xF5, bytes.fromhex("8380d098000001"))

NORMALIZE = "f7c100800000 7403 83c920"      # test ecx, HF_CS64; jz 1f; or ecx, HF_SS32; 1:
# helper_lookup_tb_ptr: `or 0xb0(%rax),%ecx` (flags |= env->hflags) at +0x36; lookup_wrapper_code writes there
_LOOKUP_TB_PTR_HFLAGS = (0x36, bytes.fromhex("0b88b0000000"))
TEMPLATE = (
    NORMALIZE + " 488b87a8810000 49b9{registry} 4d8b11 4d85d2 0f84e8000000 4c39d0 7406 4983c120 ebe9"
    " 4d8b5108 4d8b5910 458b1b 4d3b5918 0f85b3000000"
    " 89c8 48c1e020 4831f0 49b9157c4a7fb979379e 490fafc1 48c1e8{shift:02x} 4d8d14c2"
    " 4d8b0a 4d85c9 7469 493b31 7564 493b5108 755e 413b4910 7558"
    " 418b4118 25ffff0eff 4439c0 754a 8b8788810000 413b411c 753e 49837950ff 7537"
    " 57565251415041514152 488bbf28010000 48b8{get_page} ffd0"
    " 415a41594158595a5e5f 482500f0ffff 493b4148 7504 4c89c8 c3"
    " 4152 56 4883ec08 48b8{original} ffd0 4883c408 5e 415a 4885c0 7403 498902 c3"
    " 4d895918 57 51 4c89d7 b9{entries} 31c0 f348ab 59 5f"
    " 48b8{original} ffe0")


def wrapper_code(registry: int, get_page_addr_code: int, original: int) -> bytes:
    """TranslationBlock *wrapper(CPUState *cpu, target_ulong pc, target_ulong cs_base, uint32_t flags,
                                  uint32_t cf_mask):
         test ecx, HF_CS64; jz 0f; or ecx, HF_SS32             ; as the blocks are made (see above)
       0: mov rax, [rdi+0x81a8]; movabs r9, registry            ; cpu->uc
       1: mov r10, [r9]; test r10, r10; jz orig; cmp rax, r10; je 2f; add r9, 32; jmp 1b
       2: mov r10, [r9+8]; mov r11, [r9+16]; mov r11d, [r11]    ; the table; tb_flush_count now
         cmp r11, [r9+24]; jne flushed                          ; a flush since the table was last emptied
         mov eax, ecx; shl rax, 32; xor rax, rsi                ; the PC and the flags
         movabs r9, 0x9e3779b97f4a7c15; imul rax, r9; shr rax, 64-CACHE_BITS
         lea r10, [r10+rax*8]; mov r9, [r10]; test r9, r9; jz miss     ; the entry: a block, or none
         cmp rsi, [r9]; jne miss; cmp rdx, [r9+8]; jne miss; cmp ecx, [r9+0x10]; jne miss
         mov eax, [r9+0x18]; and eax, 0xff0effff; cmp eax, r8d; jne miss          ; CF_HASH_MASK | CF_INVALID
         mov eax, [rdi+0x8188]; cmp eax, [r9+0x1c]; jne miss; cmp qword [r9+0x50], -1; jne miss
         push rdi..r10 (7); mov rdi, [rdi+0x128]; movabs rax, get_page_addr_code; call rax
         pop r10..rdi; and rax, -4096; cmp rax, [r9+0x48]; jne miss                ; same physical page
         mov rax, r9; ret
       miss: push r10; push rsi; sub rsp, 8; movabs rax, original; call rax; add rsp, 8; pop rsi; pop r10
         test rax, rax; jz 3f; mov [r10], rax
       3: ret
       flushed: mov [r9+24], r11; push rdi; push rcx                 ; empty the table, note the count
         mov rdi, r10; mov ecx, CACHE_ENTRIES; xor eax, eax; rep stosq; pop rcx; pop rdi
       orig: movabs rax, original; jmp rax"""
    return bytes.fromhex(TEMPLATE.replace(" ", "").format(
        registry=_imm64(registry).hex(), shift=64 - CACHE_BITS, get_page=_imm64(get_page_addr_code).hex(),
        original=_imm64(original).hex(), entries=struct.pack("<I", CACHE_ENTRIES).hex()))


def gen_wrapper_code(original: int) -> bytes:
    """TranslationBlock *wrapper(CPUState *cpu, target_ulong pc, target_ulong cs_base, uint32_t flags,
                                  int cflags):
         test ecx, HF_CS64; jz 1f; or ecx, HF_SS32          ; 64-bit code: SS32 in the block's flags
       1: movabs rax, original; jmp rax"""
    return bytes.fromhex(NORMALIZE.replace(" ", "") + "48b8" + _imm64(original).hex() + "ffe0")


def lookup_wrapper_code(original: int) -> bytes:
    """const void *wrapper(CPUX86State *env)   -- lookup_tb_ptr, reached from translated code:
         mov eax, [rdi+0xb0]; test eax, HF_CS64; jz 1f       ; env->hflags
         or eax, HF_SS32; mov [rdi+0xb0], eax                ; 64-bit code: the CPU's flags say SS32 too
       1: movabs rax, original; jmp rax"""
    return bytes.fromhex("8b87b0000000 a900800000 7409 83c820 8987b0000000 48b8".replace(" ", "")
                         + _imm64(original).hex() + "ffe0")


def wanted() -> bool:
    """VIREO_TB_CACHE=0 leaves QEMU's lookup alone (for comparisons)."""
    return os.environ.get("VIREO_TB_CACHE", "1") != "0"


class BlockCache:
    """The wrapper (installed once per process) and the registry of instances that use it."""

    def __init__(self, page: _NativePage) -> None:
        self.registry = (c_uint64 * (REGISTRY_WORDS * (MAX_INSTANCES + 1)))()
        self._tables: dict[int, ctypes.Array] = {}
        self._lock = threading.Lock()
        lookup = addr_of(_fn("tb_htable_lookup_x86_64", None))
        flush = addr_of(_fn("tb_flush_x86_64", None))
        at, want = _HTABLE_LOOKUP_FIELDS
        lookup_tb_ptr = addr_of(_fn("helper_lookup_tb_ptr_x86_64", None))
        checks = [(lookup + at, want), (flush + _TB_FLUSH_COUNT[0], _TB_FLUSH_COUNT[1]),
                  (lookup_tb_ptr + _LOOKUP_TB_PTR_HFLAGS[0], _LOOKUP_TB_PTR_HFLAGS[1])]
        cmp = _local_tb_lookup_cmp(lookup)
        checks += [(cmp + off, bytes.fromhex(code)) for off, code in _LOOKUP_CMP_CHECKS]
        for where, code in checks:
            if ctypes.string_at(where, len(code)) != code:
                raise UnicornInternalsError("tb_htable_lookup/tb_lookup_cmp/tb_flush are not the unicorn 2.1.4 "
                                            "build the block cache was derived from")
        names = ["tb_htable_lookup_x86_64", "tb_gen_code_x86_64", "helper_lookup_tb_ptr_x86_64"]
        slots = _find_helper_slots(names)
        original, pointer_slots = slots["tb_htable_lookup_x86_64"]
        get_page = addr_of(_fn("get_page_addr_code_x86_64", None))
        self.wrapper = page.add(wrapper_code(ctypes.addressof(self.registry), get_page, original))
        # The blocks' flags first, then the lookups (before any instance exists, so every block is made so).
        for name, make in (("tb_gen_code_x86_64", gen_wrapper_code),
                           ("helper_lookup_tb_ptr_x86_64", lookup_wrapper_code)):
            name_original, name_slots = slots[name]
            stub = page.add(make(name_original))
            for slot in name_slots:
                _poke_pointer(slot, name_original, stub)
        for slot in pointer_slots:
            _poke_pointer(slot, original, self.wrapper)

    def register(self, uch: int) -> None:
        """Give instance `uch` a new, empty table (before it runs, or between two of its slices)."""
        tcg_ctx = ctypes.c_uint64.from_address(uch + UC_TCG_CTX).value
        with self._lock:
            self._remove(uch)
            for i in range(MAX_INSTANCES):
                e = REGISTRY_WORDS * i
                if self.registry[e] in (0, 1):                  # free, or the tombstone of a closed instance
                    break
            else:
                raise UnicornInternalsError(f"more than {MAX_INSTANCES} unicorn instances in one process")
            table = (c_uint64 * CACHE_ENTRIES)()
            self._tables[uch] = table
            count = tcg_ctx + TB_FLUSH_COUNT
            self.registry[e + 1] = ctypes.addressof(table)
            self.registry[e + 2] = count
            self.registry[e + 3] = ctypes.c_uint32.from_address(count).value
            self.registry[e] = uch

    def unregister(self, uch: int) -> None:
        """Stop using the table of `uch` (before the instance is closed, from any thread that cannot be inside
        its emulation)."""
        with self._lock:
            self._remove(uch)

    def _remove(self, uch: int) -> None:
        for i in range(MAX_INSTANCES):
            e = REGISTRY_WORDS * i
            if self.registry[e] == uch:
                self.registry[e] = 1                            # tombstone: the lookup walks past it
                self._tables.pop(uch, None)
                return


def _local_tb_lookup_cmp(lookup: int) -> int:
    """The address of the tb_lookup_cmp tb_htable_lookup passes to qht_lookup_custom (`lea rel32(%rip),%r8`
    at +0x77): there is one static copy per target in the library."""
    at = lookup + 0x77
    code = ctypes.string_at(at, 7)
    if code[:3] != bytes.fromhex("4c8d05"):
        raise UnicornInternalsError("tb_htable_lookup is not the unicorn 2.1.4 build the block cache was derived "
                                    "from")
    return at + 7 + struct.unpack("<i", code[3:])[0]
