"""The soft TLB's floor (core/hypervisor/uc_tlb_floor.py). The patched instructions are checked against GNU as. A
64-bit guest then reloads CR3 in a loop for longer than QEMU's 100 ms resize window while it touches a handful
of pages. QEMU's policy shrinks the TLB of the MMU mode in use to match that use. With the floor it stops at 1024
entries, and with QEMU's own code put back it goes down to 64: the same guest shows both."""
from __future__ import annotations

import ctypes
import shutil

import pytest

pytest.importorskip("unicorn")

from core.hypervisor import uc_tlb_floor  # noqa: E402
from core.hypervisor.uc_internals import CPU_ICOUNT_DECR, UC_CPU  # noqa: E402
from tests.helpers.software_guest import Rig, assemble, long_mode_setup  # noqa: E402
from tests.software_cpu.test_software_fastpaths import gas  # noqa: E402

MMU_MODES = 3                     # QEMU's x86 NB_MMU_MODES: kernel with SMAP, user, kernel without SMAP
TLB_FAST = CPU_ICOUNT_DECR - 16 * MMU_MODES     # X86CPU: neg.tlb.f[], {mask, table} each, just before icount_decr
ENTRY_BITS = 6                    # unicorn's CPUTLBEntry is 64 bytes (it adds the physical address)
TSC_SPAN = 1_500_000_000          # how long the guest flushes: 0.3 to 0.6 s at this era's TSC rates

GUEST = f"""
        .code64
        rdtsc
        shl $32, %rdx
        or %rdx, %rax
        mov %rax, %rsi
        movabs ${TSC_SPAN}, %rdi
        add %rdi, %rsi
1:      mov %cr3, %rax
        mov %rax, %cr3                # every CR3 write flushes the TLB, and a flush may resize it
        mov %rax, 0x200000            # a few pages in use between flushes
        mov 0x300000, %rbx
        rdtsc
        shl $32, %rdx
        or %rdx, %rax
        cmp %rsi, %rax
        jb 1b
        mov $0x510, %dx
        out %al, %dx
        hlt
"""


@pytest.mark.skipif(shutil.which("as") is None, reason="GNU as not installed")
def test_the_floor_matches_its_assembly(tmp_path) -> None:
    assert uc_tlb_floor.floor_code(1024) == gas(tmp_path, """
            mov $1024, %eax
            cmp %rax, %rbx
            cmovb %rax, %rbx
            nop""")
    assert uc_tlb_floor._QEMU_CODE == gas(tmp_path, """
            cmp $0x40, %rbx
            mov $0x40, %eax
            cmovb %rax, %rbx""")


def _tlb_sizes_after_the_guest() -> list[int]:
    rig = Rig(mem_mib=16)
    try:
        ex = rig.run(long_mode_setup(rig, assemble(GUEST, 64, 0x100000)), timeout=20)
        assert rig.done, ex.detail
        cpu = ctypes.c_uint64.from_address(rig.accel.uch + UC_CPU).value
        masks = [ctypes.c_uint64.from_address(cpu + TLB_FAST + 16 * i).value for i in range(MMU_MODES)]
        return [(m >> ENTRY_BITS) + 1 for m in masks]
    finally:
        rig.close()


def test_a_guest_that_flushes_often_keeps_1024_entries() -> None:
    wanted = uc_tlb_floor.wanted_floor()
    if wanted != uc_tlb_floor.FLOOR_ENTRIES:
        pytest.fail(f"{uc_tlb_floor.ENV_VAR} is set: this test is about the default floor")
    sizes = _tlb_sizes_after_the_guest()
    # The kernel mode without SMAP (CR4.SMAP is clear) was in use and resized; the others kept the initial 256.
    assert sizes == [256, 256, uc_tlb_floor.FLOOR_ENTRIES]
    try:
        uc_tlb_floor.install_tlb_floor(uc_tlb_floor.QEMU_FLOOR)
        assert _tlb_sizes_after_the_guest() == [256, 256, uc_tlb_floor.QEMU_FLOOR]     # QEMU's own policy
    finally:
        uc_tlb_floor.install_tlb_floor(wanted)
