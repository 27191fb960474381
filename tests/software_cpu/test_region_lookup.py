"""The slow path's region lookup (core/hypervisor/uc_region_lookup.py). The stub is checked against GNU as. It is
then called as unicorn calls it and must answer what unicorn's own lookup answers, for RAM, for MMIO and past the
physical-address limit, on both engines. A map change over a registered range drops its rows, and unregistering
gives the instance unicorn's lookup back. A guest whose loads and stores all take the slow path (its TLB is flushed
before each access) reads back what it wrote, from both RAM ranges."""
from __future__ import annotations

import ctypes
import shutil
from ctypes import c_uint64, c_void_p

import pytest

pytest.importorskip("unicorn")

from core.hypervisor import uc_region_lookup  # noqa: E402
from tests.helpers.software_guest import Rig, assemble, long_mode_setup  # noqa: E402
from tests.software_cpu.test_software_fastpaths import gas  # noqa: E402


def _instances(rig: Rig) -> list:
    return getattr(rig.accel, "cores", None) or [rig.accel]


@pytest.mark.skipif(shutil.which("as") is None, reason="GNU as not installed")
def test_the_stub_matches_its_assembly(tmp_path) -> None:
    table, original = 0x1111111111111111, 0x2222222222222222
    assert uc_region_lookup.lookup_code(table, original) == gas(tmp_path, f"""
            movabs ${table}, %rax
        next: mov (%rax), %rcx
            test %rcx, %rcx; jz original
            cmp %rcx, %rdi; jne skip
            mov %rsi, %rdx; sub 8(%rax), %rdx
            cmp 16(%rax), %rdx; jae skip
            mov 24(%rax), %rax; ret
        skip: add $32, %rax; jmp next
        original: movabs ${original}, %rax; jmp *%rax""")


@pytest.mark.parametrize("cpus", [1, 2])
def test_the_stub_answers_as_unicorn_does(cpus: int) -> None:
    rig = Rig(mem_mib=16, cpus=cpus)
    try:
        for core in _instances(rig):
            lookup = core.natives.region_lookup
            assert lookup.active, lookup.reason
            uch = core.uch
            assert c_uint64.from_address(uch + uc_region_lookup.UC_MEMORY_MAPPING).value == lookup.stub
            assert [(g, s) for g, s, _ in lookup.registered(uch)] == [(0, 0xA0000), (0xC0000, (16 << 20) - 0xC0000)]
            stub = ctypes.CFUNCTYPE(c_void_p, c_void_p, c_uint64)(lookup.stub)
            for gpa in (0, 0x1234, 0x9FFFF, 0xA0000, 0xB8000, 0xC0000, 0x7FFFFF, 0xFFFFFF, 0x1000000,
                        0xFEE00000, 0xFFFFFFF0, 1 << 40):
                assert (stub(uch, gpa) or 0) == lookup.region_of(uch, gpa), hex(gpa)
            assert lookup.region_of(uch, 0x1234) and lookup.region_of(uch, 1 << 40) == 0
    finally:
        rig.close()


def test_a_map_change_over_a_range_drops_its_rows_and_unregistering_gives_the_lookup_back() -> None:
    rig = Rig(mem_mib=16)
    uch, lookup = rig.accel.uch, rig.accel.natives.region_lookup
    try:
        lookup.forget_overlapping(uch, 0x9F000, 0x2000)          # the end of the first range
        assert [(g, s) for g, s, _ in lookup.registered(uch)] == [(0xC0000, (16 << 20) - 0xC0000)]
        stub = ctypes.CFUNCTYPE(c_void_p, c_void_p, c_uint64)(lookup.stub)
        assert (stub(uch, 0x1234) or 0) == lookup.region_of(uch, 0x1234)   # now unicorn's answer
        lookup.unregister(uch)                                     # what close does, before uc_close
        assert c_uint64.from_address(uch + uc_region_lookup.UC_MEMORY_MAPPING).value == lookup.original
        assert lookup.registered(uch) == []
    finally:
        rig.close()


ROUNDS = 200
GUEST = f"""
        .code64
        mov ${ROUNDS}, %rcx
        xor %r8, %r8
1:      mov %cr3, %rax
        mov %rax, %cr3                # an empty TLB: the next load and store take the slow path
        mov %rcx, 0x9f008             # the first RAM range
        mov %cr3, %rax
        mov %rax, %cr3
        add 0x9f008, %r8
        mov %rcx, 0x600008            # the second
        mov %cr3, %rax
        mov %rax, %cr3
        add 0x600008, %r8
        dec %rcx
        jnz 1b
        mov $0x510, %dx
        out %al, %dx
        hlt
"""


def test_slow_path_loads_and_stores_reach_ram() -> None:
    rig = Rig(mem_mib=16)
    try:
        ex = rig.run(long_mode_setup(rig, assemble(GUEST, 64, 0x100000)))
        assert rig.done, ex.detail
        assert rig.vcpus[0].get_state().regs["r8"] == 2 * sum(range(1, ROUNDS + 1))
        assert rig.memory.read_u64(0x9F008) == 1 and rig.memory.read_u64(0x600008) == 1
    finally:
        rig.close()
