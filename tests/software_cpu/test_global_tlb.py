"""Global pages in the soft TLB (core/hypervisor/uc_global_tlb.py): the stubs against GNU as, the patched jumps
against the library's own code, and a 64-bit guest that changes paging entries behind the TLB's back and reads
through them after each kind of invalidation (Intel SDM vol. 3, 4.10.2.4 and 4.10.4.1):

* a MOV to CR3 with CR4.PGE set keeps the global page's old translation and drops the non-global one's;
* INVLPG drops the global one;
* a CR4 write that clears and sets PGE drops it too;
* with PGE clear, G means nothing: a MOV to CR3 drops an entry whose paging entry has G set.

Without the change the first check fails: QEMU's flush at a CR3 write drops the global entry as well."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

pytest.importorskip("unicorn")

from core.hypervisor import uc_global_tlb  # noqa: E402
from tests.helpers.software_guest import PT, Rig, assemble, long_mode_setup  # noqa: E402
from tests.software_cpu.test_software_fastpaths import gas  # noqa: E402

PAGE_A, PAGE_B = 0x801000, 0x802000              # 4 KiB pages of the rig's identity map (PT entries 1 and 2)
FRAMES = {0x801000: 0xA1, 0x802000: 0xB1, 0x803000: 0xA2, 0x804000: 0xB2, 0x805000: 0xA3}
RESULTS = 0x9000
GLOBAL, PRESENT_RW_USER = 0x100, 0x7

GUEST = f"""
        .code64
        mov %cr4, %rax
        or $0x80, %rax
        mov %rax, %cr4                       # CR4.PGE
        mov {PAGE_A}, %rax                   # both translations cached
        mov {PAGE_B}, %rax
        movq ${0x803000 | GLOBAL | PRESENT_RW_USER}, {PT + 8}
        movq ${0x804000 | PRESENT_RW_USER}, {PT + 16}
        mov %cr3, %rcx
        mov %rcx, %cr3
        mov {PAGE_A}, %rax
        mov %rax, {RESULTS}                  # the global page: still the old frame (0xA1)
        mov {PAGE_B}, %rax
        mov %rax, {RESULTS + 8}              # the other: the new frame (0xB2)
        invlpg {PAGE_A}
        mov {PAGE_A}, %rax
        mov %rax, {RESULTS + 16}             # after INVLPG: the new frame (0xA2)
        movq ${0x805000 | GLOBAL | PRESENT_RW_USER}, {PT + 8}
        mov %cr4, %rax
        and $~0x80, %rax
        mov %rax, %cr4
        or $0x80, %rax
        mov %rax, %cr4
        mov {PAGE_A}, %rax
        mov %rax, {RESULTS + 24}             # after PGE off and on: the newest frame (0xA3)
        mov %cr4, %rax
        and $~0x80, %rax
        mov %rax, %cr4                       # PGE clear from here
        mov {PAGE_A}, %rax
        movq ${0x803000 | GLOBAL | PRESENT_RW_USER}, {PT + 8}
        mov %cr3, %rcx
        mov %rcx, %cr3
        mov {PAGE_A}, %rax
        mov %rax, {RESULTS + 32}             # G without PGE: flushed by CR3 (0xA2)
        mov $0x510, %dx
        out %al, %dx
        hlt
"""


@pytest.mark.skipif(shutil.which("as") is None, reason="GNU as not installed")
def test_the_stubs_match_their_assembly(tmp_path) -> None:
    a, b = 0x1111111111111111, 0x2222222222222222
    assert uc_global_tlb.mark_paging_code(a) == gas(tmp_path, f"""
        and %r15d, %ecx; mov %r9, %r15; and $0x100, %r15d; movabs ${a}, %rax; jmp *%rax""")
    assert uc_global_tlb.mark_flat_code(a) == gas(tmp_path, f"""
        mov %rsi, %r9; and %r15d, %ecx; xor %r15d, %r15d; movabs ${a}, %rax; jmp *%rax""")
    assert uc_global_tlb.set_page_code(a) == gas(tmp_path, f"""
        add %ecx, %ecx; test %r15d, %r15d; jz 1f; or ${uc_global_tlb.ATTR_GLOBAL}, %ecx
        1: movabs ${a}, %rax; jmp *(%rax)""")
    assert uc_global_tlb.cr3_flush_code(b) == gas(tmp_path, f"""
        mov 0x128(%rdi), %rax
        testb $0x80, 0x1c8(%rax)
        jz 9f
        addq $1, -0x878(%rax)
        testb ${uc_global_tlb.FULL_FLUSH_EVERY - 1}, -0x878(%rax)
        jz 9f
        push %rdi
        movzwl -0x890(%rax), %r9d
        lea -0x870(%rax), %rsi
        lea -0x40(%rax), %r10
        mov $3, %r11d
        pcmpeqd %xmm0, %xmm0
    1:  test $1, %r9b
        jz 5f
        mov (%r10), %rcx
        mov 8(%r10), %rdx
        shr $6, %rcx
        inc %rcx
        mov 0x2b0(%rsi), %r8
        xor %eax, %eax
    2:  mov (%rdx), %rdi
        and 8(%rdx), %rdi
        and 0x10(%rdx), %rdi
        cmp $-1, %rdi
        je 4f
        testb $0x10, 0xa(%r8)
        jz 3f
        inc %rax
        jmp 4f
    3:  movups %xmm0, (%rdx)
        movups %xmm0, 0x10(%rdx)
        movups %xmm0, 0x20(%rdx)
        movups %xmm0, 0x30(%rdx)
    4:  add $64, %rdx
        add $16, %r8
        dec %rcx
        jnz 2b
        mov %rax, 0x20(%rsi)
        movq $0, 0x28(%rsi)
        lea 0x30(%rsi), %rdi
        mov $64, %ecx
        mov $-1, %rax
        rep stosq
    5:  shr %r9d
        add $0x2b8, %rsi
        add $16, %r10
        dec %r11d
        jnz 1b
        pop %rdi
        add $0x138, %rdi
        xor %eax, %eax
        mov $0x1000, %ecx
        rep stosq
        ret
    9:  movabs ${b}, %rax
        jmp *(%rax)""")


@pytest.mark.skipif(shutil.which("objdump") is None, reason="binutils not installed")
def test_every_jump_into_the_fill_tail_is_patched() -> None:
    """The tail's first two instructions are overwritten: a branch into them that is not redirected would land
    inside the new jump. objdump reads the library file, as it was before patching."""
    from core.hypervisor.uc_internals import _require_lib
    lib = _require_lib()._name
    symbols = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True, check=True).stdout
    fill = int(re.search(r"^([0-9a-f]+) T x86_cpu_tlb_fill_x86_64$", symbols, re.M).group(1), 16)
    code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={fill:#x}",
                           f"--stop-address={fill + 0x1000:#x}", lib], capture_output=True, text=True,
                          check=True).stdout
    window = range(fill + uc_global_tlb._FILL_FALLTHROUGH, fill + uc_global_tlb._FILL_RESUME)
    branches = re.finditer(r"^\s*([0-9a-f]+):\s+j\w+\s+([0-9a-f]+) <", code, re.M)
    into = sorted(int(m.group(1), 16) - fill for m in branches if int(m.group(2), 16) in window)
    assert into == sorted(uc_global_tlb._FILL_JUMPS)


def _run_guest() -> dict[int, int]:
    rig = Rig(mem_mib=16)
    try:
        state = long_mode_setup(rig, assemble(GUEST, 64, 0x100000))
        for frame, marker in FRAMES.items():
            rig.memory.write_u64(frame, marker)
        rig.memory.write_u64(PT + 8, PAGE_A | GLOBAL | PRESENT_RW_USER)
        rig.memory.write_u64(PT + 16, PAGE_B | PRESENT_RW_USER)
        ex = rig.run(state, timeout=20)
        assert rig.done, ex.detail
        return {off: rig.memory.read_u64(RESULTS + off) for off in range(0, 40, 8)}
    finally:
        rig.close()


def test_a_cr3_write_keeps_global_pages_and_every_other_invalidation_drops_them() -> None:
    if not uc_global_tlb.wanted():
        pytest.fail(f"{uc_global_tlb.ENV_VAR}=0 is set: this test is about the change")
    got = _run_guest()
    assert got == {0: 0xA1, 8: 0xB2, 16: 0xA2, 24: 0xA3, 32: 0xA2}, {k: hex(v) for k, v in got.items()}
