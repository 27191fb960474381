"""Tiny guests on the software CPU, for what only it has: atomicity of LOCK instructions under constant time-slice
stops, and HLT with interrupts off as an exit of its own (HALTED; KVM keeps such a HLT inside the kernel). The
scenarios both accelerators run (CPU modes, the APIC timer, triple fault, the VGA window) are in
tests/accel/test_cpu_modes.py."""
from __future__ import annotations

import threading

import pytest

from core.hypervisor.base import ExitReason
from tests.helpers.software_guest import Rig, assemble, long_mode_setup

pytest.importorskip("unicorn")


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


LOCKED = r"""
        .code64
start:  mov $2000000, %rcx
1:      lock incq counter(%rip)
        mov counter2(%rip), %rax
2:      lea 1(%rax), %rdx
        lock cmpxchg %rdx, counter2(%rip)
        jnz 2b
        dec %rcx
        jnz 1b
        mov counter(%rip), %rax
        mov $0xE9, %dx
        out %eax, %dx
        mov counter2(%rip), %rax
        out %eax, %dx
        cli
        hlt
        .align 8
counter: .quad 0
counter2: .quad 0
"""


def test_locked_instructions_stay_atomic_under_slice_stops(rig):
    """Stops requested from another thread end slices only between blocks: a LOCK RMW never runs twice."""
    code = assemble(LOCKED, 64, 0x100000)
    vcpu = rig.vcpus[0]
    done = threading.Event()
    stops = [0]

    def stopper() -> None:
        while not done.wait(0.0002):
            vcpu.kick_for_interrupt()
            stops[0] += 1
    t = threading.Thread(target=stopper)
    t.start()
    try:
        ex = rig.run(long_mode_setup(rig, code), timeout=60)
    finally:
        done.set()
        t.join()
    assert rig.debug.words == [2000000, 2000000]
    assert vcpu.stats_slices > 10 and stops[0] > 10
    assert ex.reason == ExitReason.HALTED


def test_hlt_with_interrupts_off_halts_for_good(rig):
    code = assemble(".code64\n cli\n hlt\n", 64, 0x100000)
    ex = rig.run(long_mode_setup(rig, code))
    assert ex.reason == ExitReason.HALTED
