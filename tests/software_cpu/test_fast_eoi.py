"""The native EOI write of the software CPU (core/hypervisor/uc_fast_eoi.py, Intel SDM vol. 3, 10.8.5): its bytes
against GNU as; the stub called directly -- a 4-byte write to the armed EOI address while armed is counted, every
other write reaches the Python callback with the piece's base; and the local APIC model around it: armed only for
a single edge-triggered vector in service with nothing requested, any use of the model applying the counted EOI
first, an interrupt accepted in between disarming it (so the EOI goes the slow way and wakes the CPU for it), and
a Linux guest taking nearly all its EOIs natively."""
from __future__ import annotations

import ctypes
from ctypes import c_uint32, c_uint64, c_void_p

import pytest

pytest.importorskip("unicorn")

from core.devices.lapic import DM_FIXED, REG_ISR  # noqa: E402
from core.hypervisor import uc_fast_eoi  # noqa: E402
from core.hypervisor.uc_fast_eoi import FAST, NOT_ARMED  # noqa: E402
from tests.helpers.software_guest import Rig  # noqa: E402
from tests.software_cpu.test_software_fastpaths import gas  # noqa: E402

_WRITE = ctypes.CFUNCTYPE(None, c_void_p, c_uint64, c_uint32, c_uint64, c_void_p)
APIC = 0xFEE0_0000


def test_stubs_match_their_assembly(tmp_path) -> None:
    assert uc_fast_eoi.WRITE_STUB == gas(tmp_path, """
            mov 8(%r8), %r9; mov (%r8), %r8
            lea (%r8,%rsi), %rax; cmp (%r9), %rax; jne bell
            cmp $4, %edx; jne slow
            mov 8(%r9), %r10; mov (%r10), %rax
        retry: bt $63, %rax; jnc slow
            lea 1(%rax), %r11; lock cmpxchg %r11, (%r10); jne retry
            ret
        bell: cmp $2, %edx; jne slow
            mov 24(%r9), %r10; mov (%r10), %r11
        next: test %r11, %r11; jz slow
            cmp 16(%r10), %rax; je ring
            add $16, %r10; dec %r11; jmp next
        ring: mov 24(%r10), %edi
            mov 24(%r9), %rsi; add $8, %rsi
            mov $8, %edx; mov $1, %eax; syscall
            ret
        slow: jmp *16(%r9)""")
    assert uc_fast_eoi.XCHG_STUB == gas(tmp_path, "mov %rsi, %rax; xchg %rax, (%rdi); ret")


class Wakes:
    """Counts the model's wake-ups of its CPU (which still happen)."""

    def __init__(self, cpu) -> None:
        self.count = 0
        original = cpu.wake

        def wake() -> None:
            self.count += 1
            original()
        cpu.wake = wake


@pytest.fixture
def apic_rig():
    """A one-vCPU software rig whose EOI stub is called directly, its slow path recorded instead of run."""
    rig = Rig(cpus=1)
    block = rig.accel.fast_eoi
    slow: list[tuple[int, int, int, int]] = []
    recorder = _WRITE(lambda _uc, offset, size, value, base: slow.append((offset, size, value, base)))
    block.block[2] = ctypes.cast(recorder, c_void_p).value
    stub = _WRITE(rig.accel.natives.fast_eoi.write_stub)
    user = block.user_for(APIC)

    def write(offset: int, size: int = 4, value: int = 0) -> None:
        stub(None, offset, size, value, user)

    yield rig, rig.vcpus[0].lapic, write, slow
    rig.close()


def _isr(lapic) -> int:
    return sum(lapic.mmio_read(REG_ISR + 16 * i, 4) << (32 * i) for i in range(8))


def test_an_armed_eoi_is_counted_natively_and_applied_at_the_next_use(apic_rig) -> None:
    rig, lapic, write, slow = apic_rig
    lapic.accept(DM_FIXED, 0x31)
    assert lapic.acknowledge() == 0x31
    assert rig.accel.fast_eoi.block[0] == APIC + 0xB0
    write(0xB0)
    assert slow == []                                   # taken by the stub
    assert lapic.isr == 1 << 0x31                       # not yet applied: nothing has looked
    assert _isr(lapic) == 0                             # the model's first use applies it
    write(0xB0)                                         # disarmed since: the model's own EOI path
    assert slow == [(0xB0, 4, 0, APIC)]


@pytest.mark.parametrize("offset, size", [(0xB0, 2), (0xB0, 8), (0xB4, 4), (0x80, 4)])
def test_other_writes_reach_the_python_callback(apic_rig, offset: int, size: int) -> None:
    _, lapic, write, slow = apic_rig
    lapic.accept(DM_FIXED, 0x31)
    lapic.acknowledge()
    write(offset, size, 0x5A)
    assert slow == [(offset, size, 0x5A, APIC)]
    assert _isr(lapic) == 1 << 0x31


def test_an_interrupt_accepted_after_the_acknowledge_disarms_it(apic_rig) -> None:
    """The vector accepted while 0x31 is in service is only deliverable after the EOI: the EOI must go through
    the model, which then asks the CPU to take it."""
    rig, lapic, write, slow = apic_rig
    lapic.accept(DM_FIXED, 0x31)
    lapic.acknowledge()
    lapic.accept(DM_FIXED, 0x32)                        # same priority class: waits for the EOI
    assert not lapic.has_interrupt()
    write(0xB0)
    assert slow == [(0xB0, 4, 0, APIC)]
    assert lapic.fast_eoi.take() == 0                   # nothing was counted natively
    wakes = Wakes(lapic.cpu)
    lapic.mmio_write(0xB0, 4, 0)                        # what the slow path does
    assert wakes.count == 1 and lapic.has_interrupt() and lapic.acknowledge() == 0x32


def test_counted_eoi_before_an_accept_is_applied_before_deliverability_is_judged(apic_rig) -> None:
    rig, lapic, write, slow = apic_rig
    wakes = Wakes(lapic.cpu)
    lapic.accept(DM_FIXED, 0x31)
    wakes.count = 0
    lapic.acknowledge()
    write(0xB0)                                         # native EOI, then another thread's interrupt
    lapic.accept(DM_FIXED, 0x32)
    assert wakes.count == 1                             # deliverable at once: 0x31 is no longer in service
    assert slow == [] and lapic.acknowledge() == 0x32


@pytest.mark.parametrize("case", ["level", "nested", "pending"])
def test_not_armed_unless_one_edge_vector_is_in_service_and_nothing_requested(apic_rig, case: str) -> None:
    rig, lapic, write, slow = apic_rig
    word = lapic.fast_eoi
    if case == "level":
        lapic.accept(DM_FIXED, 0x31, level_trigger=True)
        lapic.acknowledge()
    elif case == "nested":
        lapic.accept(DM_FIXED, 0x31)
        lapic.acknowledge()
        lapic.accept(DM_FIXED, 0x41)                    # higher class: taken inside the first handler
        assert lapic.acknowledge() == 0x41
    else:
        lapic.accept(DM_FIXED, 0x41)
        lapic.accept(DM_FIXED, 0x31)
        assert lapic.acknowledge() == 0x41              # 0x31 still requested
    assert not word._word.value & FAST
    write(0xB0)
    assert slow == [(0xB0, 4, 0, APIC)]


def test_a_disarmed_instance_counts_nothing(apic_rig) -> None:
    rig, lapic, write, slow = apic_rig
    lapic.accept(DM_FIXED, 0x31)
    lapic.acknowledge()
    rig.accel.fast_eoi.disarm()
    assert rig.accel.fast_eoi.block[0] == NOT_ARMED
    write(0xB0)
    assert slow == [(0xB0, 4, 0, APIC)]


def test_linux_takes_its_eois_natively(debian_kernel, busybox_initramfs, tmp_path) -> None:
    """Debian's kernel on two parallel vCPUs: most EOIs of the boot and two hashing jobs are counted by the
    stub, and the jobs' sums are right."""
    import hashlib
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.helpers.initrd import initrd_with_current_init

    root = Path(__file__).resolve().parents[2]
    initrd = initrd_with_current_init(busybox_initramfs, tmp_path)
    script = f"""
import sys
sys.path.insert(0, {str(root)!r})
import core.devices.lapic as L
import core.hypervisor.uc_fast_eoi as F
counts = {{"fast": 0, "slow": 0}}
take, take_word, eoi = F.FastEoiWord.take, F.FastEoiWord.take_word, L.LocalApic._eoi
def counted_take(self):
    n = take(self)
    counts["fast"] += n
    return n
def counted_take_word(self):
    word = take_word(self)
    counts["fast"] += word & 0xFFFFFFFF          # the EOIs counted natively (uc_native_tick's layout)
    return word
def counted_eoi(self):
    counts["slow"] += 1
    eoi(self)
F.FastEoiWord.take, F.FastEoiWord.take_word, L.LocalApic._eoi = counted_take, counted_take_word, counted_eoi
import atexit
atexit.register(lambda: print("EOIS", counts["fast"], counts["slow"], flush=True))
sys.argv = ["main.py", "run", "--kernel", {str(debian_kernel)!r}, "--initrd", {str(initrd)!r},
            "--append", "console=ttyS0 quiet vireo.action=sha256-jobs vireo.jobs=2 vireo.mib=16",
            "--accel", "software", "--cpus", "2", "--timeout", "120"]
import runpy
runpy.run_path({str(root / "main.py")!r}, run_name="__main__")
"""
    env = {**os.environ, "VIREO_PARALLEL_VCPUS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                          cwd=root)
    out, err = proc.stdout, proc.stderr
    want = hashlib.sha256(bytes(16 << 20)).hexdigest()
    assert out.count(f"VIREO-SHA256-JOB={want}") == 2, out[-2000:] + err[-2000:]
    fast, slow = (int(n) for n in out.rsplit("EOIS", 1)[1].split())
    # ~98 % on an idle host; on a loaded one more interrupts (the timer, an IPI) reach the model between an
    # acknowledge and its EOI, which disarms it, as it must: 1,925 native against 276 under the full suite.
    assert fast > 200 and slow < fast // 3, f"{fast} EOIs taken natively, {slow} by the model"
