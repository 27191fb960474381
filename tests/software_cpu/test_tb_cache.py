"""The software CPU's block lookup (core/hypervisor/uc_tb_cache.py): the stubs' bytes against GNU as; a 64-bit guest
whose two hot blocks share a jump-cache entry (QEMU's hash of 0x101001 and 0x101040 is the same), so every call
between them is a lookup the second-level table answers -- with the right code after the guest rewrites one of
them (the stale block carries CF_INVALID and must not be returned), and after every translated block was flushed
(tb_flush); and one block, not two, for kernel code run with SS from a descriptor and with a null SS (the CPU's
SS32 differs, which 64-bit code never reads)."""
from __future__ import annotations

import ctypes
import shutil

import pytest

pytest.importorskip("unicorn")

from core.hypervisor import uc_tb_cache  # noqa: E402
from tests.helpers.software_guest import Rig, assemble, long_mode_setup  # noqa: E402
from tests.software_cpu.test_software_fastpaths import gas  # noqa: E402

A, B = 0x101001, 0x101040
ROUNDS = 3000

GUEST = f"""
        .code64
        mov ${A:#x}, %rax
        mov ${B:#x}, %rbx
        xor %r8, %r8
        xor %r9, %r9
        mov ${ROUNDS}, %rcx
1:      call *%rax
        call *%rbx
        dec %rcx
        jnz 1b
        movb $5, 0x101004             # A: add $1 -> add $5 (a store to another page's code)
        mov ${ROUNDS}, %rcx
2:      call *%rax
        call *%rbx
        dec %rcx
        jnz 2b
        mov $0x510, %dx
        out %al, %dx                  # done: the test looks at the table, flushes every block
        mov ${ROUNDS}, %rcx
3:      call *%rax
        call *%rbx
        dec %rcx
        jnz 3b
        mov $0x510, %dx
        out %al, %dx
        hlt
        .org {A - 0x100000:#x}
        add $1, %r8                   # 49 83 c0 01: the immediate at A + 3
        ret
        .org {B - 0x100000:#x}
        add $2, %r9
        ret
"""


def _jump_cache_hash(pc: int) -> int:
    tmp = pc ^ (pc >> 6)
    return ((tmp >> 6) & 0xFC0) | (tmp & 0x3F)


@pytest.mark.skipif(shutil.which("as") is None, reason="GNU as not installed")
def test_the_wrapper_matches_its_assembly(tmp_path) -> None:
    registry, get_page, original = 0x1111111111111111, 0x2222222222222222, 0x3333333333333333
    assert uc_tb_cache.wrapper_code(registry, get_page, original) == gas(tmp_path, f"""
            test $0x8000, %ecx; jz 0f; or $0x20, %ecx
        0:  mov 0x81a8(%rdi), %rax
            movabs ${registry}, %r9
        1:  mov (%r9), %r10
            test %r10, %r10; jz orig
            cmp %r10, %rax; je 2f
            add $32, %r9; jmp 1b
        2:  mov 8(%r9), %r10
            mov 16(%r9), %r11; mov (%r11), %r11d
            cmp 24(%r9), %r11; jne flushed
            mov %ecx, %eax; shl $32, %rax; xor %rsi, %rax
            movabs $0x9e3779b97f4a7c15, %r9
            imul %r9, %rax
            shr ${64 - uc_tb_cache.CACHE_BITS}, %rax
            lea (%r10,%rax,8), %r10
            mov (%r10), %r9
            test %r9, %r9; jz miss
            cmp (%r9), %rsi; jne miss
            cmp 8(%r9), %rdx; jne miss
            cmp 0x10(%r9), %ecx; jne miss
            mov 0x18(%r9), %eax; and $0xff0effff, %eax; cmp %r8d, %eax; jne miss
            mov 0x8188(%rdi), %eax; cmp 0x1c(%r9), %eax; jne miss
            cmpq $-1, 0x50(%r9); jne miss
            push %rdi; push %rsi; push %rdx; push %rcx; push %r8; push %r9; push %r10
            mov 0x128(%rdi), %rdi
            movabs ${get_page}, %rax; call *%rax
            pop %r10; pop %r9; pop %r8; pop %rcx; pop %rdx; pop %rsi; pop %rdi
            and $-4096, %rax
            cmp 0x48(%r9), %rax; jne miss
            mov %r9, %rax; ret
        miss: push %r10; push %rsi; sub $8, %rsp
            movabs ${original}, %rax; call *%rax
            add $8, %rsp; pop %rsi; pop %r10
            test %rax, %rax; jz 3f
            mov %rax, (%r10)
        3:  ret
        flushed: mov %r11, 24(%r9)
            push %rdi; push %rcx
            mov %r10, %rdi; mov ${uc_tb_cache.CACHE_ENTRIES}, %ecx; xor %eax, %eax; rep stosq
            pop %rcx; pop %rdi
        orig: movabs ${original}, %rax; jmp *%rax""")
    assert uc_tb_cache.gen_wrapper_code(original) == gas(tmp_path, f"""
            test $0x8000, %ecx; jz 1f; or $0x20, %ecx
        1:  movabs ${original}, %rax; jmp *%rax""")
    assert uc_tb_cache.lookup_wrapper_code(original) == gas(tmp_path, f"""
            mov 0xb0(%rdi), %eax
            test $0x8000, %eax; jz 1f
            or $0x20, %eax; mov %eax, 0xb0(%rdi)
        1:  movabs ${original}, %rax; jmp *%rax""")


def _cached_blocks(rig: Rig) -> dict[int, set[int]]:
    """PC -> the blocks the instance's table holds for it."""
    table = rig.accel.natives.block_cache._tables[rig.accel.uch]
    found: dict[int, set[int]] = {}
    for i in range(uc_tb_cache.CACHE_ENTRIES):
        if table[i]:
            found.setdefault(ctypes.c_uint64.from_address(table[i]).value, set()).add(table[i])
    return found


def test_colliding_blocks_rewritten_code_and_a_flush() -> None:
    assert _jump_cache_hash(A) == _jump_cache_hash(B)          # the shape under test
    rig = Rig(mem_mib=16)
    try:
        if rig.accel.natives.block_cache is None:
            pytest.fail("the block cache was not installed (VIREO_TB_CACHE=0, or another unicorn build)")
        state = long_mode_setup(rig, assemble(GUEST, 64, 0x100000))
        ex = rig.run(state)
        assert rig.done, ex.detail
        after = rig.vcpus[0].get_state()
        # The rewritten block ran from the first call after the store, not the stale one the table still held.
        assert (after.regs["r8"], after.regs["r9"]) == (ROUNDS + 5 * ROUNDS, 4 * ROUNDS)
        assert {A, B} <= set(_cached_blocks(rig))             # the lookups went through the table
        rig.accel.uc.ctl_flush_tb()                           # every block freed: older entries are void
        rig._done.done.clear()
        ex = rig.run(after)
        assert rig.done, ex.detail
        final = rig.vcpus[0].get_state()
        assert (final.regs["r8"], final.regs["r9"]) == (ROUNDS + 10 * ROUNDS, 6 * ROUNDS)
        # The stub saw the flush (TBContext.tb_flush_count moved) and emptied the table before using it again.
        registry = rig.accel.natives.block_cache.registry
        e = next(i for i in range(0, len(registry), uc_tb_cache.REGISTRY_WORDS) if registry[i] == rig.accel.uch)
        assert registry[e + 3] == ctypes.c_uint32.from_address(registry[e + 2]).value >= 1
    finally:
        rig.close()


SS_GUEST = f"""
        .code64
        mov ${A:#x}, %rax
        mov ${B:#x}, %rbx
        xor %r8, %r8
        mov ${ROUNDS}, %rcx
1:      call *%rax                    # SS = 0x18, a flat data descriptor: SS32 set
        call *%rbx                    # (A and B share a jump-cache entry: the lookups reach the table)
        dec %rcx
        jnz 1b
        xor %edx, %edx
        mov %edx, %ss                 # a null SS, as an interrupt from user mode leaves it: SS32 clear
        mov ${ROUNDS}, %rcx
2:      call *%rax
        call *%rbx
        dec %rcx
        jnz 2b
        mov $0x510, %dx
        out %al, %dx
        hlt
        .org {A - 0x100000:#x}
        add $1, %r8
        ret
        .org {B - 0x100000:#x}
        ret
"""


def test_one_block_for_64_bit_code_under_either_ss() -> None:
    rig = Rig(mem_mib=16)
    try:
        state = long_mode_setup(rig, assemble(SS_GUEST, 64, 0x100000))
        ex = rig.run(state)
        assert rig.done, ex.detail
        after = rig.vcpus[0].get_state()
        assert after.regs["r8"] == 2 * ROUNDS and after.ss.selector == 0
        blocks = _cached_blocks(rig)[A]
        flags = {ctypes.c_uint32.from_address(tb + 0x10).value for tb in blocks}
        assert len(blocks) == 1 and all(f & 0x20 for f in flags), [hex(f) for f in flags]
    finally:
        rig.close()
